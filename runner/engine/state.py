"""Containers on disk: one directory per container, a JSON record written atomically under a lock.

Why this shape: many CLI processes (and the agent's threads) touch the same containers at once, and any of
them may be killed at any moment. Every record update therefore takes the container's ``fcntl`` lock, writes
a temp file, fsyncs it and renames it over ``state.json`` — a reader sees the old or the new record, never
half of one. Name uniqueness is decided under one store-wide lock.

A record is never trusted blindly: ``reconcile`` checks that the shim (the container's monitor process) and
the container's PID 1 are still the processes the record names (pid *and* start time, because pids are
reused), so ``ps`` never shows a dead container as running even if its shim was SIGKILLed.

Layout of ``<root>/containers/<id>/``::

    state.json      the record (spec, status, pids, exit code, timestamps)
    lock            fcntl lock guarding state.json
    bundle/         OCI bundle: config.json + rootfs/ (overlay mount point, mounted only in the shim's namespace)
    upper/ work/    overlayfs upper and work dirs: the container's writable layer
    etc/            hostname, hosts, resolv.conf bind-mounted into the container
    container.log   stdout/stderr, framed (see runner.engine.logs)
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import shutil
import time
from dataclasses import asdict, dataclass, field, fields

from runner.errors import Conflict, NotFound

CREATED, RUNNING, EXITED = "created", "running", "exited"


def now() -> float:
    return time.time()


def write_json_atomic(path: str, data: dict, mode: int = 0o600) -> None:
    """Write JSON so that readers see either the old or the new content, even across a crash."""
    tmp = f"{path}.tmp.{os.getpid()}.{secrets.token_hex(4)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def proc_start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (field 22 of /proc/PID/stat), or None if gone.

    Together with the pid it names a process uniquely: a recycled pid has a different start time.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name (field 2) may contain spaces and parentheses; fields after the last ')' are safe.
    rest = data[data.rfind(b")") + 2:].split()
    if rest and rest[0] == b"Z":  # a zombie has exited already
        return None
    return int(rest[19]) if len(rest) > 19 else None


def alive(pid: int | None, start_time: int | None) -> bool:
    return bool(pid) and start_time is not None and proc_start_time(pid) == start_time


@dataclass
class ContainerRecord:
    id: str
    name: str
    spec: dict
    image_id: str
    image_ref: str
    created: float
    status: str = CREATED
    pid: int | None = None
    pid_start: int | None = None
    shim_pid: int | None = None
    shim_start: int | None = None
    exit_code: int | None = None
    oom_killed: bool = False
    started_at: float | None = None
    finished_at: float | None = None
    error: str = ""
    runtime: str = "builtin"
    removing: bool = False
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict) -> "ContainerRecord":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


class StateStore:
    """All container records under ``<root>/containers``."""

    def __init__(self, root: str):
        self.root = os.path.join(root, "containers")
        os.makedirs(self.root, mode=0o700, exist_ok=True)

    def dir(self, cid: str) -> str:
        return os.path.join(self.root, cid)

    @contextlib.contextmanager
    def _flock(self, path: str):
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def global_lock(self):
        return self._flock(os.path.join(self.root, ".lock"))

    def lock(self, cid: str):
        return self._flock(os.path.join(self.dir(cid), "lock"))

    def ids(self) -> list[str]:
        try:
            return sorted(e for e in os.listdir(self.root) if not e.startswith(".")
                          and os.path.exists(os.path.join(self.root, e, "state.json")))
        except FileNotFoundError:
            return []

    def load(self, cid: str) -> ContainerRecord:
        try:
            with open(os.path.join(self.dir(cid), "state.json")) as f:
                return ContainerRecord.from_dict(json.load(f))
        except FileNotFoundError:
            raise NotFound(f"no such container: {cid[:12]}") from None

    def save(self, rec: ContainerRecord) -> None:
        write_json_atomic(os.path.join(self.dir(rec.id), "state.json"), asdict(rec))

    def create(self, name: str | None, make_record) -> ContainerRecord:
        """Allocate an id and a unique name, then save the record ``make_record(id, name)`` returns."""
        from runner.engine.names import random_name
        with self.global_lock():
            taken = {self._name_of(i) for i in self.ids()}
            if name is not None and name in taken:
                raise Conflict(f'container name "{name}" is already in use',
                               hint=f"remove it with 'runner rm {name}' or choose another --name")
            while name is None or name in taken:
                name = random_name()
            cid = secrets.token_hex(32)
            os.makedirs(self.dir(cid), mode=0o700)
            rec = make_record(cid, name)
            self.save(rec)
            return rec

    def _name_of(self, cid: str) -> str | None:
        try:
            return self.load(cid).name
        except (NotFound, ValueError):
            return None

    def resolve(self, ref: str) -> str:
        """Container id from a full id, a unique id prefix or a name (Docker's rules)."""
        if not ref or "/" in ref or ref.startswith("."):
            raise NotFound(f"no such container: {ref}")  # no container has such a name (images may)
        ids = self.ids()
        if ref in ids:
            return ref
        by_name = [i for i in ids if self._name_of(i) == ref]
        if by_name:
            return by_name[0]
        by_prefix = [i for i in ids if i.startswith(ref)]
        if len(by_prefix) == 1:
            return by_prefix[0]
        if len(by_prefix) > 1:
            raise Conflict(f"container reference {ref!r} is ambiguous", hint="give more characters of the id")
        raise NotFound(f"no such container: {ref}")

    @contextlib.contextmanager
    def update(self, cid: str):
        """Yield the record under the container's lock; it is saved when the block ends without error."""
        with self.lock(cid):
            rec = self.load(cid)
            yield rec
            self.save(rec)

    def reconcile(self, rec: ContainerRecord) -> ContainerRecord:
        """Make a running record honest: if neither shim nor PID 1 lives, the container has exited."""
        if rec.status != RUNNING or alive(rec.shim_pid, rec.shim_start):
            return rec
        if alive(rec.pid, rec.pid_start):
            return rec  # the shim died but the workload runs on; it is still running
        with self.lock(rec.id):
            fresh = self.load(rec.id)
            if fresh.status == RUNNING and not alive(fresh.shim_pid, fresh.shim_start) \
                    and not alive(fresh.pid, fresh.pid_start):
                fresh.status = EXITED
                fresh.exit_code = 255 if fresh.exit_code is None else fresh.exit_code
                fresh.finished_at = fresh.finished_at or now()
                fresh.error = fresh.error or "the container's monitor process died; exit status unknown"
                self.save(fresh)
            return fresh

    def remove_dir(self, cid: str) -> None:
        shutil.rmtree(self.dir(cid), ignore_errors=True)
