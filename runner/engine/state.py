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

``<root>/trash/<id>/`` holds the files of ``--rm`` containers that have exited, while a background process
deletes them (``StateStore.remove_dir_soon``).
"""

from __future__ import annotations

import contextlib
import json
import os
import time

from runner.errors import Conflict, NotFound
from runner.procs import FileLock, alive, write_atomic
from runner.procs import start_time as proc_start_time  # noqa: F401  (the shim and network import it here)
from runner.records import Record

CREATED, RUNNING, EXITED, RESTARTING = "created", "running", "exited", "restarting"
LIVE = (RUNNING, RESTARTING)  # a shim owns the container: running, or waiting to start it again (--restart)
_NEW: dict = {}  # marks "not given": a fresh dict per record, as a dataclass default_factory does


def now() -> float:
    return time.time()


def write_json_atomic(path: str, data: dict, mode: int = 0o600, durable: bool = True,
                      sync_dir: bool = False) -> None:
    """Write JSON so that readers see either the old or the new content, even across a crash.

    The rename makes the switch atomic for readers. The fsync before it is what survives a crash: without
    it the renamed file could turn up empty after a power loss. ``durable=False`` skips only the fsync, for
    files whose content is worthless after a crash anyway (rewritten at every start, or about to be removed);
    readers still never see half a file.
    """
    write_atomic(path, json.dumps(data, sort_keys=True).encode(), mode, durable, sync_dir)


# Written by the VM's agent at each boot of a saved guest state (runner.agent.server): such boots share the
# kernel's boot_id, and their processes reuse the very pids and start times of the last boot of that state.
BOOT_NONCE = "/run/runner/boot-nonce"


def boot_id() -> str | None:
    """This boot's random id: a running record from another boot outlived its machine (a killed VM, a
    host reboot), which reconcile reports as such, as Docker reports exit 255 when its daemon died. The
    kernel's id, plus the agent's nonce in a VM resumed from a snapshot (see :data:`BOOT_NONCE`)."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            kernel = f.read().strip()
    except OSError:
        return None
    try:
        with open(BOOT_NONCE) as f:
            return kernel + "/" + f.read().strip()
    except OSError:
        return kernel


def _other_boot(rec: "ContainerRecord") -> bool:
    """A record of a running container written in another boot: whatever pid it names now is someone else."""
    recorded = rec.extra.get("boot_id")
    return recorded is not None and recorded != boot_id()


class ContainerRecord(Record):
    """One container's record, as stored in state.json (a plain record class: see runner.records)."""

    _fields = ("id", "name", "spec", "image_id", "image_ref", "created", "status", "pid", "pid_start",
               "shim_pid", "shim_start", "exit_code", "oom_killed", "started_at", "finished_at", "error",
               "runtime", "removing", "extra")

    def __init__(self, id: str, name: str, spec: dict, image_id: str, image_ref: str, created: float,
                 status: str = CREATED, pid: int | None = None, pid_start: int | None = None,
                 shim_pid: int | None = None, shim_start: int | None = None, exit_code: int | None = None,
                 oom_killed: bool = False, started_at: float | None = None, finished_at: float | None = None,
                 error: str = "", runtime: str = "builtin", removing: bool = False, extra: dict = _NEW):
        self.id, self.name, self.spec, self.image_id, self.image_ref = id, name, spec, image_id, image_ref
        self.created, self.status, self.pid, self.pid_start = created, status, pid, pid_start
        self.shim_pid, self.shim_start, self.exit_code, self.oom_killed = shim_pid, shim_start, exit_code, oom_killed
        self.started_at, self.finished_at, self.error = started_at, finished_at, error
        self.runtime, self.removing = runtime, removing
        self.extra = {} if extra is _NEW else extra

    def to_dict(self) -> dict:
        return {name: getattr(self, name) for name in self._fields}

    @classmethod
    def from_dict(cls, data: dict) -> "ContainerRecord":
        known = cls._fields
        return cls(**{k: v for k, v in data.items() if k in known})


def _mark_dead(rec: ContainerRecord) -> bool:
    """Record that a RUNNING container whose shim and PID 1 are both gone has exited; True if it changed."""
    if rec.status not in LIVE or (not _other_boot(rec) and (alive(rec.shim_pid, rec.shim_start)
                                                             or alive(rec.pid, rec.pid_start))):
        return False
    rec.status = EXITED
    rec.exit_code = 255 if rec.exit_code is None else rec.exit_code
    rec.finished_at = rec.finished_at or now()
    rec.error = rec.error or (
        "the machine stopped while the container was running; exit status unknown"
        if _other_boot(rec)
        else "the container's monitor process died; exit status unknown")
    rec.extra.pop("network", None)  # as the shim does at exit: an exited container publishes nothing
    return True


class StateStore:
    """All container records under ``<root>/containers``."""

    def __init__(self, root: str):
        self.root = os.path.join(root, "containers")
        self.trash = os.path.join(root, "trash")  # removed containers' files, being deleted (remove_dir_soon)
        os.makedirs(self.root, mode=0o700, exist_ok=True)

    def dir(self, cid: str) -> str:
        return os.path.join(self.root, cid)

    def global_lock(self):
        return FileLock(os.path.join(self.root, ".lock"))

    def lock(self, cid: str):
        return FileLock(os.path.join(self.dir(cid), "lock"))

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
        except FileNotFoundError as exc:
            raise NotFound(f"no such container: {cid[:12]}") from exc

    def save(self, rec: ContainerRecord, durable: bool = True, sync_dir: bool = False) -> None:
        """Write the record; on a full disk through its spare file (runner.diskfull), so that the exit of a
        container that filled the disk is still recorded. ``sync_dir`` makes the rename itself durable."""
        from runner.diskfull import write_or_reserve
        path, data = os.path.join(self.dir(rec.id), "state.json"), rec.to_dict()
        write_or_reserve(path, json.dumps(data, sort_keys=True).encode(),
                         lambda: write_json_atomic(path, data, durable=durable, sync_dir=sync_dir))

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
            cid = os.urandom(32).hex()  # what secrets.token_hex(32) does, without importing secrets
            os.makedirs(self.dir(cid), mode=0o700)
            try:
                rec = make_record(cid, name)
                self.save(rec)
            except BaseException:  # e.g. a full disk: no empty container directory is left behind
                self.remove_dir(cid)
                raise
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
    def update(self, cid: str, durable: bool = True, sync_dir: bool = False):
        """Yield the record under the container's lock; it is saved when the block ends without error."""
        with self.lock(cid):
            rec = self.load(cid)
            yield rec
            self.save(rec, durable, sync_dir)

    def reconcile(self, rec: ContainerRecord) -> ContainerRecord:
        """Make a running record honest: if neither shim nor PID 1 lives, the container has exited.

        The corrected record is returned even when it cannot be saved (a full disk): ``ps`` and ``inspect``
        must work without writing, since they are how a user finds what to remove.
        """
        if rec.status not in LIVE:
            return rec
        if not _other_boot(rec):
            if alive(rec.shim_pid, rec.shim_start):
                return rec
            if alive(rec.pid, rec.pid_start):
                return rec  # the shim died but the workload runs on; it is still running
        from runner.diskfull import is_full
        try:
            with self.lock(rec.id):
                fresh = self.load(rec.id)
                if _mark_dead(fresh):
                    self.save(fresh)
                return fresh
        except OSError as exc:  # the lock file or the record could not be written: show it unsaved
            if not is_full(exc):
                raise
            _mark_dead(rec)
            return rec

    def remove_dir(self, cid: str) -> None:
        import shutil  # here: shutil imports zlib, bz2 and lzma, ~5 ms the start path does not need
        shutil.rmtree(self.dir(cid), ignore_errors=True)

    def remove_dir_soon(self, cid: str) -> None:
        """Remove a container's directory now as far as anyone can see, and delete its files in the background.

        For ``--rm`` at exit: the directory is renamed into ``<root>/trash`` (one atomic step: the id, the
        name and the record are gone when this returns), then a detached child deletes the files. Deleting
        them in line costs 5-40 ms here (each freed ext4 block ~2 ms on this host) while the user waits for
        the exit code. The child holds none of the caller's files (stdio becomes /dev/null), so nobody
        reading the container's output waits for it. A child killed half-way leaves its entry in the trash;
        the next one deletes entries older than a minute (not newer ones: another child may be on them).
        """
        gone = os.path.join(self.trash, cid)
        try:
            os.makedirs(self.trash, mode=0o700, exist_ok=True)
            os.rename(self.dir(cid), gone)
        except OSError:
            self.remove_dir(cid)
            return
        try:
            pid = os.fork()
        except OSError:  # no process to spare: delete in line after all
            import shutil
            shutil.rmtree(gone, ignore_errors=True)
            return
        if pid != 0:
            return
        try:  # the child: never returns into the caller's code
            null = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(null, fd)
            os.closerange(3, os.sysconf("SC_OPEN_MAX"))
            import shutil
            shutil.rmtree(gone, ignore_errors=True)
            stale = time.time() - 60
            for name in os.listdir(self.trash):
                path = os.path.join(self.trash, name)
                with contextlib.suppress(OSError):
                    if os.lstat(path).st_mtime < stale:
                        shutil.rmtree(path, ignore_errors=True)
        finally:
            os._exit(0)
