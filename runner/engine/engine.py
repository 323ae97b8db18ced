"""The Engine: the one place where container semantics live.

Natively the CLI calls it in-process (``NativeBackend``); in the VM the agent calls this very class, so a
behaviour exists once. Its public methods are exactly the :class:`runner.backends.base.Backend` operations,
with JSON-safe arguments and results, so the agent can serve them generically.

Linux only and standard library only (it runs inside the guest, which has nothing but python3).
"""

from __future__ import annotations

import contextlib
import os
import select
import signal as signals
import time

from runner.stdio import Stdio, TermSize
from runner.engine import DEFAULT_ROOT, emulation, logs, network, shim
from runner.engine.bundle import Bundle
from runner.engine.runtime import security
from runner.engine.state import CREATED, LIVE, RUNNING, ContainerRecord, StateStore, now
from runner.diskfull import needs_space
from runner.errors import Conflict, NotFound, PlatformError, UsageError
from runner.spec import ContainerSpec, ExecSpec

TYPE_CHECKING = False  # annotations only: importing typing costs the start path ~6 ms
if TYPE_CHECKING:
    from typing import IO

DEFAULT_IMAGE = "localhost/busybox:latest"


def default_root() -> str:
    return os.environ.get("RUNNER_ROOT") or DEFAULT_ROOT


def _effective_health(image_health: dict | None, user: dict | None) -> dict | None:
    """The healthcheck a container runs: the user's fields over the image's (Docker merges them so), None when
    there is none or it is ``["NONE"]`` (``--no-healthcheck``)."""
    merged = dict(image_health or {})
    for key, value in (user or {}).items():
        if value not in (None, [], 0) or key == "Test" and value:
            merged[key] = value
    test = merged.get("Test") or []
    if not test or test[0] == "NONE":
        return None
    return merged


def _add_image_volumes(cspec: ContainerSpec, image_volumes: dict | None) -> None:
    """The image's ``VOLUME`` paths that no mount of the user covers become anonymous volumes (Docker's rule)."""
    from runner.spec import Mount
    taken = {m.target.rstrip("/") for m in cspec.mounts}
    for path in sorted(image_volumes or {}):
        if isinstance(path, str) and path.startswith("/") and path.rstrip("/") not in taken:
            mount = Mount("", path, type="volume")
            if not mount.problems():
                cspec.mounts.append(mount)


def parse_signal(name: str | int) -> int:
    """``KILL``, ``SIGKILL``, ``9`` → 9; anything else is a usage error."""
    text = str(name).upper()
    if text.isdigit():
        num = int(text)
        if 0 < num < signals.NSIG:
            return num
    else:
        sig = getattr(signals, text if text.startswith("SIG") else "SIG" + text, None)
        if isinstance(sig, signals.Signals):
            return int(sig)
    raise UsageError(f"invalid signal {name!r}", hint="use a name like TERM, KILL, HUP or a number")


class Engine:
    """Containers and images under one state root (``/var/lib/runner`` by default, ``$RUNNER_ROOT``)."""

    def __init__(self, root: str | None = None, runtime=None, publish_address: str | None = None):
        """``publish_address``: where published ports' proxies listen instead of the address the user asked
        for (the VM agent's ``0.0.0.0``, where QEMU's host forwards arrive); reports keep the user's."""
        if os.name != "posix" or not os.path.exists("/proc/self/ns"):
            raise PlatformError("containers need a Linux kernel",
                                hint="on macOS and Windows use the VM backend: runner --backend vm ...")
        self.root = root or default_root()
        try:
            os.makedirs(self.root, mode=0o700, exist_ok=True)
        except PermissionError as exc:
            raise PlatformError(f"cannot write the state directory {self.root}",
                                hint="run runner as root (sudo), or set RUNNER_ROOT") from exc
        self.state = StateStore(self.root)
        self.publish_address = publish_address
        self._runtime = runtime
        self._runtimes: dict = {}
        self._store = None

    # ------------------------------------------------------------------ plumbing
    @property
    def runtime(self):
        if self._runtime is None:
            from runner.engine.runtime.builtin import BuiltinRuntime
            self._runtime = BuiltinRuntime()
        return self._runtime

    def runtime_for(self, name: str | None):
        """The runtime named on a container (``--runtime``): builtin, or runc on PATH (same OCI bundle).

        None or the default runtime's own name gives :attr:`runtime` (a test may have injected one)."""
        if not name or name == self.runtime.name:
            return self.runtime
        if name not in self._runtimes:
            if name != "runc":
                raise UsageError(f"unknown or invalid runtime name: {name}", hint="use builtin or runc")
            from runner.engine.runtime.runc import RuncRuntime
            self._runtimes[name] = RuncRuntime()
        return self._runtimes[name]

    @property
    def images_store(self):
        if self._store is None:
            from runner.images.store import Store
            self._store = Store(os.path.join(self.root, "images"), in_use=self._image_in_use)
        return self._store

    def _image_in_use(self, image_id: str) -> bool:
        for cid in self.state.ids():
            with contextlib.suppress(NotFound, ValueError):
                if self.state.load(cid).image_id == image_id:
                    return True
        return False

    def log_path(self, cid: str) -> str:
        return os.path.join(self.state.dir(cid), "container.log")

    def _require_root(self) -> None:
        if os.geteuid() != 0:
            raise PlatformError("creating containers needs root privileges",
                                hint="run it with sudo, or use the VM backend: runner --backend vm ...")

    def _record(self, ref: str) -> ContainerRecord:
        return self.state.reconcile(self.state.load(self.state.resolve(ref)))

    def _image(self, ref: str):
        from runner.images.reference import Reference
        store = self.images_store
        try:
            return store.resolve(ref)
        except NotFound:
            with contextlib.suppress(UsageError):
                if Reference.parse(ref).name == Reference.parse(DEFAULT_IMAGE).name:
                    from runner.images.default import ensure_default_image
                    return ensure_default_image(store)
            raise

    # ------------------------------------------------------------------ bundles (runner.engine.bundle)
    def bundle(self, cid: str) -> Bundle:
        return Bundle(self.state.dir(cid))

    def bundle_dir(self, cid: str) -> str:
        return self.bundle(cid).dir

    def empty_dir(self) -> str:
        """The lower layer of an image that has none (the shim creates it on first use)."""
        return os.path.join(self.root, "empty")

    # ------------------------------------------------------------------ containers
    @needs_space("creating a container")
    def create(self, spec: dict) -> str:
        self._require_root()
        cspec = ContainerSpec.from_dict(spec).validate()
        network.check(self, cspec)  # the network exists (the default one is made on first use)
        for m in cspec.mounts:
            if m.type == "bind" and not os.path.exists(m.source):
                raise NotFound(f"bind source path does not exist: {m.source}",
                               hint="create the directory first, or fix the -v source path")
        runtime = self.runtime_for(cspec.runtime)  # an unknown runtime or a missing runc fails here
        security.check(cspec)  # a missing --device fails here, before anything exists
        image = self._image(cspec.image)
        emulation.check(cspec.image, image.config, cspec.platform)  # --platform, and a foreign arch runs here
        image_cfg = image.config.get("config") or {}
        extra = {}
        health = _effective_health(image_cfg.get("Healthcheck"), cspec.healthcheck)
        if health:
            extra["healthcheck"] = health

        def make(cid: str, name: str) -> ContainerRecord:
            hostname = cspec.hostname or cid[:12]
            return ContainerRecord(id=cid, name=name, spec=cspec.to_dict(), image_id=image.id,
                                   image_ref=cspec.image, created=now(), runtime=runtime.name,
                                   extra={"hostname": hostname, **extra})

        if not any(m.type == "volume" for m in cspec.mounts) and not image_cfg.get("Volumes"):
            rec = self.state.create(cspec.name, make)
        else:
            from runner.engine import volumes
            vols = volumes.Volumes(self)
            with vols.lock():  # no prune between making the volumes and the record that uses them
                _add_image_volumes(cspec, image_cfg.get("Volumes"))
                for m in cspec.mounts:
                    if m.type == "volume":
                        m.source = vols.create_locked(m.source or None)["Name"]
                rec = self.state.create(cspec.name, make)
        try:
            bundle = self.bundle(rec.id)
            bundle.make_dirs()
            bundle.write_etc_files(cspec.network, rec.extra["hostname"], network.resolv_conf_for_container)
        except BaseException:
            self.state.remove_dir(rec.id)
            raise
        self.journal_container("create", rec)
        return rec.id

    @needs_space("starting container {ref}")
    def start(self, ref: str, stdio: Stdio | None, size: TermSize | None = None):
        self._require_root()
        rec = self._record(ref)
        with self.state.lock(rec.id):
            rec = self.state.load(rec.id)
            if rec.status in LIVE:
                raise Conflict(f"container {rec.name} is already running")
            if rec.status != CREATED or rec.extra.get("manual_stop") or rec.extra.get("paused"):
                rec.status = CREATED  # (a fresh container, from runner run, is CREATED already: nothing to write)
                rec.extra.pop("manual_stop", None)
                rec.extra.pop("paused", None)
                rec.extra.pop("health", None)
                rec.extra["restart_count"] = 0
                self.state.save(rec)
        prime = getattr(self.runtime_for(rec.runtime), "prime", None)
        # The kernel-side wait of the container's cgroup join, paid meanwhile: see cgroups.prime_migrations.
        unprime = prime() if prime is not None else None
        try:
            handle = shim.launch(self, rec.id, stdio, size, bool(rec.spec.get("tty")),
                                 rec.spec.get("restart") not in (None, "", "no"))
        finally:
            if unprime is not None:
                unprime()
        return handle if handle is not None else rec.id

    def run(self, spec: dict, stdio: Stdio | None, size: TermSize | None = None):
        cid = self.create(spec)
        try:
            return self.start(cid, stdio, size)
        except BaseException:
            self._remove(cid, spec.get("runtime"))  # nothing half-created is left behind
            raise

    def attach(self, ref: str, stdio: Stdio, size: TermSize | None = None, detach_keys: str | None = None):
        """Attach ``stdio`` to a running container (docker attach): its output from now on, and with ``-i`` its
        stdin; returns a handle whose ``wait`` gives the exit code, or 0 once detached (its ``ended`` says how:
        runner.engine.attach_client)."""
        from runner.engine import attach_client
        rec = self._live_record(ref, "attach to")
        return attach_client.attach(self, rec, stdio, size, detach_keys)

    def resize(self, ref: str, rows: int, cols: int) -> None:
        """A running container's terminal gets a new window size (the API's ``/containers/{id}/resize``)."""
        from runner.engine import attach_client
        rec = self._live_record(ref, "resize")
        if rows and cols:
            attach_client.send_resize(self, rec.id, TermSize(rows, cols))

    def _live_record(self, ref: str, what: str) -> ContainerRecord:
        rec = self.state.reconcile(self._record(ref))
        if rec.status != RUNNING:
            raise Conflict(f"You cannot {what} a stopped container, start it first",
                           hint=f"runner start {rec.name}")
        if rec.extra.get("paused"):
            raise Conflict(f"You cannot {what} a paused container, unpause it first",
                           hint=f"runner unpause {rec.name}")
        return rec

    @needs_space("starting a process in container {ref}")
    def exec(self, ref: str, exec_spec: dict, stdio: Stdio, size: TermSize | None = None):
        from runner.engine import execution
        rec = self._record(ref)
        if rec.status != RUNNING:
            raise Conflict(f"container {rec.name} is not running")
        if rec.extra.get("paused"):
            raise Conflict(f"container {rec.id} is paused, unpause the container before exec",
                           hint=f"runner unpause {rec.name}")
        spec = ExecSpec.from_dict(exec_spec)
        handle = execution.start_exec(self, rec, spec, stdio, size)
        self.journal_container("exec_start: " + " ".join(spec.command), rec)
        return handle

    def kill(self, ref: str, signal: str = "KILL") -> str:
        signum = parse_signal(signal)
        rec = self._record(ref)
        if rec.status not in LIVE:
            raise Conflict(f"container {rec.name} is not running")
        if signum in (signals.SIGKILL, signals.SIGTERM, signals.SIGINT):
            self._manual_stop(rec.id)  # as dockerd: a container killed by its user is not restarted
        if rec.status == RUNNING:
            with contextlib.suppress(ProcessLookupError):
                os.kill(rec.pid, signum)
            self.journal_container("kill", rec, signal=str(signum))
            self._thaw(rec)  # a frozen task acts on the signal once thawed (cgroup v1)
        return rec.name

    def _manual_stop(self, cid: str) -> None:
        """Mark that the user stopped the container: its shim does not restart it (--restart), and stops
        waiting to if it is between two runs."""
        if not (self.state.load(cid).spec.get("restart") or "no").startswith("no"):
            with contextlib.suppress(NotFound), self.state.update(cid) as rec:
                rec.extra["manual_stop"] = True

    def stop(self, ref: str, timeout: float = 10) -> str:
        rec = self._record(ref)
        if rec.status in LIVE:
            self._manual_stop(rec.id)
            rec = self._record(rec.id)
        if rec.status == RUNNING:
            with contextlib.suppress(ProcessLookupError):
                os.kill(rec.pid, signals.SIGTERM)
            self.journal_container("kill", rec, signal=str(int(signals.SIGTERM)))
            self._thaw(rec)
            if not self._wait_exited(rec.id, timeout):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(rec.pid, signals.SIGKILL)
                self._wait_exited(rec.id, None)
            self.journal_container("stop", rec)
        elif rec.status in LIVE:  # between two runs (--restart): its shim sees the mark and ends
            self._wait_exited(rec.id, None)
        return rec.name

    def _wait_exited(self, cid: str, timeout: float | None, live: tuple = LIVE) -> bool:
        """Wait until the record says exited (or the container is gone); False on timeout. ``live``: the states
        that count as not yet exited (``wait`` returns at a restarting container's exit, as docker wait does)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        pidfd = None
        first_start = None
        try:
            while True:
                try:
                    rec = self.state.reconcile(self.state.load(cid))
                except NotFound:
                    return True
                first_start = first_start or rec.started_at
                if rec.status not in live or rec.started_at != first_start:  # (or a restart happened meanwhile)
                    return True
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                # Sleep on the shim's pidfd: woken the moment it exits, with a short poll as a fallback.
                if pidfd is None and rec.shim_pid:
                    with contextlib.suppress(OSError):
                        pidfd = os.pidfd_open(rec.shim_pid)
                step = 0.05 if remaining is None else min(0.05, remaining)
                if pidfd is not None:
                    select.select([pidfd], [], [], step)
                else:
                    time.sleep(step)
        finally:
            if pidfd is not None:
                os.close(pidfd)  # the agent lives long: one leaked fd per stop or wait adds up

    def wait(self, ref: str) -> int:
        cid = self.state.resolve(ref)
        self._wait_exited(cid, None, (RUNNING,))
        try:
            rec = self.state.load(cid)
        except NotFound as exc:
            raise NotFound(f"container {ref} was removed before its exit code was read") from exc
        return rec.exit_code if rec.exit_code is not None else 0

    @needs_space("removing container {ref}")
    def rm(self, ref: str, force: bool = False, volumes: bool = False) -> str:
        """``volumes`` (``rm -v``): also remove the container's anonymous volumes that nothing else mounts."""
        rec = self._record(ref)
        if rec.status in LIVE:
            if not force:
                raise Conflict(f"container {rec.name} is running", hint="stop it first, or use rm -f")
            self._manual_stop(rec.id)
            if rec.status == RUNNING:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(rec.pid, signals.SIGKILL)
                self._thaw(rec)
            self._wait_exited(rec.id, None)
        self._remove(rec.id, rec.runtime)
        self.journal_container("destroy", rec)
        if volumes:
            self._remove_anonymous_volumes(rec.spec)
        return rec.name

    def _remove_anonymous_volumes(self, spec: dict) -> None:
        names = [m["source"] for m in spec.get("mounts") or [] if m.get("type") == "volume" and m.get("source")]
        if names:
            from runner.engine import volumes
            volumes.Volumes(self).remove_anonymous(names)

    def _remove(self, cid: str, runtime: str | None = None) -> None:
        with contextlib.suppress(Exception):
            self.runtime_for(runtime).delete(self.bundle_dir(cid), cid)
        network.forget(self, cid)  # a lease or veth a killed shim could not release
        from runner.engine import observe
        from runner.engine.runtime import freezer
        with contextlib.suppress(Exception):
            freezer.forget(observe.cgroup_path(cid))
        self.remove_container_files(cid)

    def remove_container_files(self, cid: str, background: bool = False) -> None:
        """Delete the container's directory; ``background``: gone at once, files deleted by a child process."""
        if background:
            self.state.remove_dir_soon(cid)
        else:
            self.state.remove_dir(cid)

    def ps(self, all: bool = False, filters: dict | None = None) -> list[dict]:
        """``filters``: Docker's (``{"label": ["k=v"], "status": ["exited"], ...}``, see runner.engine.filters);
        a ``status`` filter lists stopped containers too, as docker's does."""
        from runner.engine import filters as flt, views
        from runner.engine.volumes import volumes_dir
        f = flt.normalize(filters, flt.CONTAINER_KEYS)
        all = all or "status" in f or "exited" in f
        ancestors = flt.ancestor_ids(self.images_store, f["ancestor"]) if "ancestor" in f else None
        out = []
        for cid in self.state.ids():
            with contextlib.suppress(NotFound, ValueError):
                rec = self.state.reconcile(self.state.load(cid))
                if all or rec.status in LIVE:
                    summary = views.container_summary(rec, volumes_root=volumes_dir(self.root))
                    if not f or flt.container_match({**summary, "Health": views.health_status(rec) or "none",
                                                     "ExitCode": rec.exit_code}, f, ancestors):
                        out.append((rec.created, summary))
        return [c for _, c in sorted(out, key=lambda c: c[0], reverse=True)]

    def inspect(self, ref: str) -> dict:
        from runner.engine import views
        rec = self._record(ref)
        config = {}
        with contextlib.suppress(OSError, ValueError):
            import json
            with open(os.path.join(self.bundle_dir(rec.id), "config.json")) as f:
                config = json.load(f)
        etc = self.bundle(rec.id).etc
        paths = {"ResolvConfPath": os.path.join(etc, "resolv.conf"), "HostnamePath": os.path.join(etc, "hostname"),
                 "HostsPath": os.path.join(etc, "hosts"), "LogPath": self.log_path(rec.id)}
        from runner.engine.volumes import volumes_dir
        return views.container_inspect(rec, ContainerSpec.from_dict(rec.spec), config, paths,
                                       volumes_dir(self.root))

    def logs(self, ref: str, stdio: Stdio, follow: bool = False, tail: int | None = None,
             since: float | None = None, timestamps: bool = False, until: float | None = None) -> None:
        """Write the container's output to ``stdio``. ``since``: only output written at or after this Unix
        time (Docker's ``--since``); ``until``: only output written before it, and a follow ends when it is
        reached (``--until``); ``timestamps``: each line prefixed with its RFC 3339 time and a space, as
        ``docker logs -t`` prints it (the log keeps a time per chunk: every line of a chunk gets it)."""
        rec = self._record(ref)
        cid = rec.id

        def running() -> bool:
            if until is not None and time.time() >= until:
                return False
            with contextlib.suppress(NotFound):
                return self.state.reconcile(self.state.load(cid)).status == RUNNING
            return False

        path = self.log_path(cid)
        sinks = {logs.STDOUT: stdio.stdout, logs.STDERR: stdio.stderr}
        def frames(follow_fn=None, idle: bool = False):
            for frame in logs.read_frames(path, follow_fn, idle=idle):
                if frame[0] == logs.IDLE or ((since is None or frame[1] >= since)
                                             and (until is None or frame[1] < until)):
                    yield frame

        def emit(stream: int, ts: float, data: bytes) -> None:
            if timestamps:
                data = logs.with_timestamps(ts, data)
            logs.write_all(sinks.get(stream, stdio.stdout), data)

        if tail is None or tail < 0:  # everything, as written
            for frame in frames(running if follow else None):
                emit(*frame)
            return
        # Docker's --tail counts lines (its log entries), not the chunks the workload's writes happened to be.
        if not follow:  # one pass: the log may rotate meanwhile
            import collections
            for entry in collections.deque(logs.lines(frames()), maxlen=tail):
                emit(*entry)
            return
        skip = max(0, sum(1 for _ in logs.lines(frames())) - tail)
        for i, entry in enumerate(logs.lines(frames(running, idle=True))):
            if i >= skip:
                emit(*entry)

    # ------------------------------------------------------------------ inspection extras (runner.engine.observe)
    def top(self, ref: str, ps_args: str | None = None) -> dict:
        from runner.engine import observe
        rec = self._record(ref)
        if rec.status != RUNNING:
            raise Conflict(f"container {rec.id} is not running")
        return observe.top(rec.id, ps_args)

    def stats(self, ref: str) -> dict:
        """One sample of Docker's stats JSON (the API server streams samples and fills ``precpu_stats``)."""
        from runner.engine import observe, views
        rec = self._record(ref)
        return observe.stats(rec, views.iso_time(time.time()))

    def changes(self, ref: str) -> list[dict]:
        """The container's file changes against its image (Kind 0 modified, 1 added, 2 deleted)."""
        from runner.engine import observe
        rec = self._record(ref)
        found = observe.changes(os.path.join(self.state.dir(rec.id), "upper"))
        store = self.images_store
        return observe.classify(found, store.layer_dirs(store.resolve(rec.image_id)))

    def rename(self, ref: str, new_name: str) -> str:
        """Give a container a new name (409 when another container has it); returns the old name."""
        from runner.spec import _NAME_RE
        new_name = new_name.lstrip("/")
        if not _NAME_RE.match(new_name):
            raise UsageError(f"invalid container name {new_name!r}: use letters, digits, '_', '.', '-'")
        cid = self.state.resolve(ref)
        with self.state.global_lock():
            if any(self.state._name_of(i) == new_name for i in self.state.ids() if i != cid):
                raise Conflict(f'Conflict. The container name "/{new_name}" is already in use',
                               hint="remove that container or choose another name")
            with self.state.update(cid) as rec:
                old, rec.name = rec.name, new_name
        if os.geteuid() == 0:
            network.Networks(self).rename(cid, new_name)  # peers on its network know it by the new name
        self.journal_container("rename", rec, oldName="/" + old)
        return old

    def pause(self, ref: str) -> str:
        return self._set_paused(ref, True)

    def unpause(self, ref: str) -> str:
        return self._set_paused(ref, False)

    def _set_paused(self, ref: str, paused: bool) -> str:
        from runner.engine import observe
        from runner.engine.runtime import freezer
        self._require_root()
        rec = self._record(ref)
        with self.state.lock(rec.id):
            rec = self.state.load(rec.id)
            if rec.status != RUNNING:
                raise Conflict(f"container {rec.id} is not running")
            if bool(rec.extra.get("paused")) == paused:
                raise Conflict(f"container {rec.id} is {'already' if paused else 'not'} paused")
            freezer.set_frozen(observe.cgroup_path(rec.id), paused)
            if paused:
                rec.extra["paused"] = True
            else:
                rec.extra.pop("paused", None)
            self.state.save(rec)
        self.journal_container("pause" if paused else "unpause", rec)
        return rec.name

    def _thaw(self, rec: ContainerRecord) -> None:
        """Unfreeze a paused container that is being stopped or killed."""
        if not rec.extra.get("paused"):
            return
        from runner.engine import observe
        from runner.engine.runtime import freezer
        with contextlib.suppress(Exception):
            freezer.set_frozen(observe.cgroup_path(rec.id), False)
        with contextlib.suppress(NotFound, OSError):
            with self.state.update(rec.id) as fresh:
                fresh.extra.pop("paused", None)

    def container_prune(self, labels: list | None = None, until: float | None = None) -> dict:
        from runner.engine import space
        return space.prune_containers(self, labels, until)

    # ------------------------------------------------------------------ events (runner.engine.events)
    def journal(self, kind: str, action: str, actor_id: str, attributes: dict | None = None) -> None:
        from runner.engine import events
        events.record(self.root, kind, action, actor_id, attributes)

    def journal_container(self, action: str, rec: ContainerRecord, **extra: str) -> None:
        attrs = {**(rec.spec.get("labels") or {}), "image": rec.image_ref, "name": rec.name, **extra}
        self.journal("container", action, rec.id, attrs)

    def events(self, since: int = 0, until: int | None = None, filters: dict | None = None) -> dict:
        """Journal events with ``since < timeNano <= until`` (nanoseconds) matching Docker's ``filters``:
        ``{"events": [...], "cursor": n}``; the next call passes ``cursor`` as ``since``. Events younger
        than a moment are left for the next call: a writer that took its time stamp earlier may still be
        appending, and must not fall behind a cursor that passed it."""
        from runner.engine import events
        settled = time.time_ns() - 200_000_000
        bound = settled if until is None else min(until, settled)
        found = events.read(self.root, since, bound)
        cursor = found[-1]["timeNano"] if found else max(since, min(bound, settled))
        return {"events": [e for e in found if events.matches(e, filters or {})], "cursor": cursor}

    # ------------------------------------------------------------------ networks (runner.engine.network)
    def port(self, ref: str) -> dict:
        """The published ports of a running container, ``{"80/tcp": [{"HostIp", "HostPort"}]}``."""
        from runner.engine import views
        return views.port_map((self._record(ref).extra.get("network") or {}).get("Ports") or [])

    @needs_space("creating network {name}")
    def network_create(self, name: str, subnet: str | None = None, labels: dict | None = None) -> dict:
        self._require_root()
        if labels is not None and not (isinstance(labels, dict) and all(
                isinstance(k, str) and k and isinstance(v, str) for k, v in labels.items())):
            raise UsageError("network labels must map non-empty strings to strings")
        created = network.Networks(self).create(name, subnet, labels)
        self.journal("network", "create", created.get("Id", name), {"name": name, "type": "bridge"})
        return created

    def network_ls(self, filters: dict | None = None) -> list[dict]:
        from runner.engine import filters as flt
        f = flt.normalize(filters, flt.NETWORK_KEYS)
        nets = []
        for name in network.Networks(self).names():
            try:
                nets.append(network.Networks(self).inspect(name))
            except NotFound:
                continue  # removed while this list was taken (compose removes a project's networks in parallel)
        return [n for n in nets if not f or flt.named_match(n, f)]

    # ------------------------------------------------------------------ volumes (runner.engine.volumes)
    @needs_space("creating volume {name}")
    def volume_create(self, name: str | None = None, labels: dict | None = None,
                      options: dict | None = None) -> dict:
        from runner.engine import volumes
        return volumes.Volumes(self).create(name, labels, options)

    def volume_ls(self, filters: dict | None = None) -> list[dict]:
        from runner.engine import volumes
        return volumes.Volumes(self).ls(filters)

    def volume_inspect(self, name: str) -> dict:
        from runner.engine import volumes
        return volumes.Volumes(self).inspect(name)

    def volume_rm(self, name: str, force: bool = False) -> str:
        from runner.engine import volumes
        return volumes.Volumes(self).remove(name, force)

    def volume_prune(self, all: bool = False, filters: dict | None = None) -> dict:
        from runner.engine import volumes
        return volumes.Volumes(self).prune(all, filters)

    # ------------------------------------------------------------------ files (runner.engine.archive: cp, /archive)
    def archive_stat(self, ref: str, path: str) -> dict:
        """Docker's ``X-Docker-Container-Path-Stat`` of a container path (``HEAD /containers/{id}/archive``)."""
        from runner.engine import archive
        return archive.stat_of(self, self._record(ref), path)

    def archive_get(self, ref: str, path: str, stream: IO[bytes]) -> None:
        """A tar of the container's ``path`` into ``stream`` (``GET /containers/{id}/archive``, ``cp`` out)."""
        from runner.engine import archive
        archive.get(self, self._record(ref), path, stream)

    @needs_space("copying files into container {ref}")
    def archive_put(self, stream: IO[bytes], ref: str, path: str) -> dict:
        """Extract the tar from ``stream`` into the container's directory ``path`` (``PUT .../archive``). The
        stream comes first, as in every upload method (the agent passes it positionally)."""
        from runner.engine import archive
        return archive.put(self, self._record(ref), path, stream)

    # ------------------------------------------------------------------ restart policies at engine start
    def restore(self) -> list[str]:
        """Start again what a restart policy keeps running (``always``; ``unless-stopped`` unless its user
        stopped it) but does not run: called when the engine comes up (the VM agent at boot; ``runner serve``),
        as dockerd does at its start. Returns the ids started; one container's failure does not stop the rest."""
        from runner.engine import restart
        return restart.restore(self)

    def network_inspect(self, name: str) -> dict:
        return network.Networks(self).inspect(name)

    def network_connect(self, name: str, ref: str, aliases: list | None = None) -> str:
        """Connect container ``ref`` to network ``name`` (``aliases``: its more names there): recorded for a
        created or stopped one, wired at once into a running one (runner.engine.netconnect)."""
        self._require_root()
        from runner.engine import netconnect
        return netconnect.connect(self, name, ref, aliases)

    def network_disconnect(self, name: str, ref: str, force: bool = False) -> str:
        """Disconnect container ``ref`` from network ``name`` (``force``: drop a gone container's leftovers)."""
        self._require_root()
        from runner.engine import netconnect
        return netconnect.disconnect(self, name, ref, force)

    def network_rm(self, name: str) -> str:
        self._require_root()
        found = network.Networks(self).inspect(name)
        network.Networks(self).remove(name)
        self.journal("network", "destroy", found.get("Id", name), {"name": found.get("Name", name), "type": "bridge"})
        return name

    # ------------------------------------------------------------------ images
    def images(self) -> list[dict]:
        from runner.engine import views
        return [views.image_summary(img) for img in self.images_store.list()]

    def image_inspect(self, ref: str) -> dict:
        from runner.engine import views
        return views.image_inspect(self._image(ref))

    @needs_space("pulling {ref}")
    def pull(self, ref: str, platform: str | None = None, credentials: dict | None = None,
             progress=None, endpoints: dict | None = None) -> dict:
        """``endpoints``: where registry connections really go (the VM backend maps the host's loopback
        registries to the address the guest reaches them at); see runner.images.registry.RegistryClient."""
        from runner.engine import views
        from runner.images.pull import pull
        image = pull(self.images_store, ref, platform=platform, credentials=credentials, progress=progress,
                     endpoints=endpoints)
        self.journal("image", "pull", ref, {"name": ref})
        return views.image_summary(image)

    def push(self, ref: str, credentials: dict | None = None, progress=None,
             endpoints: dict | None = None) -> str:
        from runner.images.push import push
        digest = push(self.images_store, ref, credentials=credentials, progress=progress, endpoints=endpoints)
        self.journal("image", "push", ref, {"name": ref})
        return digest

    @needs_space("tagging {source}")
    def tag(self, source: str, target: str) -> None:
        image = self.images_store.tag(source, target)
        self.journal("image", "tag", image.id, {"name": target})

    @needs_space("removing image {ref}")
    def rmi(self, ref: str, force: bool = False) -> list[str]:
        lines = self.images_store.remove(ref, force=force)
        self.images_store.sweep_tmp()  # a user freeing space gets a killed writer's leftovers back too
        for line in lines:
            action, _, what = line.partition(": ")
            self.journal("image", "untag" if action == "Untagged" else "delete", what, {"name": what})
        return lines

    def image_history(self, ref: str) -> list[dict]:
        from runner.engine import views
        return views.image_history(self._image(ref))

    @needs_space("pruning images")
    def image_prune(self, all: bool = False, labels: list | None = None, until: float | None = None) -> dict:
        from runner.engine import space
        return space.prune_images(self, all, labels, until)

    @needs_space("loading images")
    def load(self, stream: IO[bytes]) -> list[str]:
        from runner.images import archive
        self.images_store.sweep_tmp()  # what a killed load, pull or rmi left goes first
        names = archive.load(self.images_store, stream)
        for name in names:
            self.journal("image", "load", name, {"name": name})
        return names

    @needs_space("saving images")
    def save(self, refs: list[str], stream: IO[bytes]) -> None:
        from runner.images import archive
        for ref in refs:
            self._image(ref)  # the default image is made on demand, as for run
        archive.save(self.images_store, refs, stream)

    @needs_space("importing an image")
    def import_image(self, stream: IO[bytes], name: str, changes: list[str] | None = None) -> str:
        """``changes``: Dockerfile instructions (``--change``), applied by runner.images.dockerfile."""
        from runner.images.rootfs import import_rootfs
        self.images_store.sweep_tmp()
        image_id = import_rootfs(self.images_store, stream, name, changes=changes or ()).id
        self.journal("image", "import", image_id, {"name": name})
        return image_id

    @needs_space("building an image")
    def build(self, stream: IO[bytes], options: dict | None = None, progress=None, cancel=None,
              endpoints: dict | None = None) -> str:
        """Build an image from a context tar ``stream`` (a Dockerfile inside it) as Docker's classic builder;
        ``options``: tags, dockerfile, buildargs, target, nocache, labels, network, ... (runner.images.builder
        check_options); ``progress`` gets Docker's ``POST /build`` JSON events; ``cancel`` (a
        runner.stdio.Cancel) stops it when its client goes away; ``endpoints`` as for :meth:`pull`, for the base
        images it pulls. Returns the image ID."""
        self._require_root()
        from runner.engine import build
        return build.build(self, stream, options or {}, progress, cancel, endpoints)

    def build_prune(self) -> dict:
        """Forget the build cache: remove the build's intermediate step images nobody named (and the blobs
        only they used), as ``docker builder prune``; ``{"CachesDeleted": [...], "SpaceReclaimed": bytes}``."""
        from runner.engine import space
        return space.build_prune(self)

    # ------------------------------------------------------------------ disk space (runner.engine.space)
    def system_df(self) -> dict:
        from runner.engine import space
        return space.df(self)

    @needs_space("pruning")
    def system_prune(self, all: bool = False, volumes: bool = False) -> dict:
        from runner.engine import space
        return space.prune(self, all_images=all, volumes=volumes)

    def info(self) -> dict:
        from runner import __version__
        from runner.engine.runtime import cgroups
        layout = cgroups.detect()
        controllers = sorted({c for h in layout.hierarchies for c in h.controllers})
        return {"root": self.root, "runtime": self.runtime.name,
                "cgroups": f"v{layout.version} ({', '.join(controllers) or 'no controllers'})",
                "version": __version__, "kernel": os.uname().release, "arch": os.uname().machine,
                "containers": len(self.state.ids()), "ncpu": os.cpu_count() or 1, "mem_total": _mem_total(),
                "os": _os_name(), "hostname": os.uname().nodename, "cgroup_version": layout.version}



def _mem_total() -> int:
    """MemTotal of /proc/meminfo in bytes (0 if unreadable): Docker's ``MemTotal`` in ``/info``."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _os_name() -> str:
    """PRETTY_NAME of os-release (Docker's ``OperatingSystem``)."""
    try:
        with open("/etc/os-release") as f:
            for line in f:
                if line.startswith("PRETTY_NAME="):
                    return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return "Linux"
