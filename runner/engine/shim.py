"""The shim: one small process per running container that owns it from start to exit.

Why a shim (containerd and conmon have one too): somebody must be the container's parent to learn its real
exit status, keep its output flowing into the log and clean up, even when the CLI that started it has
exited (``-d``) or been killed. The shim is forked from the caller (no new interpreter: fork is cheap, a
Python start is not, least of all in a TCG guest) and lives in its own session, so a Ctrl-C typed at the
terminal never reaches it; the CLI forwards signals deliberately instead.

Sequence (caller = CLI process natively, the agent in the guest)::

    caller                                shim                                   container
    ──────                                ────                                   ─────────
    socketpair(SEQPACKET) = sync
    fork ───────────────────────────────► setsid, [fork again if detached]
                                          [bridge: bind published ports, lease an
                                           address, wire netns + veth (network.py)]
                                          unshare(NEWNS), / rprivate
                                          mount overlay on bundle/rootfs
                                          write config.json (user resolved)
                                          runtime.start(bundle) ─── fork ──────► namespaces, pivot_root,
                                            [-t: console socket] ◄── pty master ── [pty from its devpts]
                                                                                 caps, exec workload
                                          record: running, pid [+ address, ports]
                                          [start the port proxy threads]
    recv sync ◄── {"started": pid} [+master] relay output → log (+ caller fds)
    [wait: recv sync]                     waitpid → exit code, OOM?, runtime.delete
                                          [close ports, delete veth, release lease]
                                          record: exited  [--rm: remove dir]
    exit code ◄──── {"exited": code} ──── _exit

The overlay is mounted inside the shim's private mount namespace: the host's mount table never sees it and
it disappears by itself when the shim and the container are gone, even after a SIGKILL, so a killed shim
cannot leak a mount.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import signal
import socket

from runner.diskfull import disk_full_error, is_full
from runner.stdio import Stdio, TermSize
from runner.engine import bundle, logs, network
from runner.engine.process import AttachedProcess, exit_code_of, set_winsize  # noqa: F401  (re-exported)
from runner.engine.state import EXITED, RUNNING, boot_id, now, proc_start_time
from runner.errors import ContainerStartError, RunnerError


class ContainerProcess(AttachedProcess):
    """The caller's handle on an attached container: its exit code arrives from the shim."""

    def __init__(self, engine, container_id: str, sync: socket.socket, shim_pid: int, pid: int,
                 master: int | None):
        super().__init__(container_id, pid, master)
        self.engine = engine
        self._sync = sync
        self._shim_pid = shim_pid

    def wait(self) -> int:
        if self._code is None:
            msg, _ = _recv(self._sync)
            self._sync.close()
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self._shim_pid, 0)
            self._close_master()
            if msg and "exited" in msg:
                self._code = int(msg["exited"])
            else:  # the shim died: the record, reconciled, says what is known
                self._code = self.engine.wait(self.container_id)
        return self._code


# The sync channel is a SOCK_SEQPACKET pair: one JSON message per packet, and it can carry the terminal's
# master fd (SCM_RIGHTS) from the shim back to the caller, which needs it to pass on window-size changes.
def _recv(sock: socket.socket) -> tuple[dict | None, list[int]]:
    try:
        data, fds, _, _ = socket.recv_fds(sock, 65536, 1)
    except OSError:
        return None, []
    if not data:
        return None, fds
    return json.loads(data), fds


def _send(sock: socket.socket, msg: dict, fds: list[int] = ()) -> None:
    with contextlib.suppress(OSError):
        socket.send_fds(sock, [json.dumps(msg).encode()], list(fds))


def launch(engine, cid: str, stdio: Stdio | None, size: TermSize | None, tty: bool,
           restarts: bool = False) -> ContainerProcess | None:
    """Fork the shim for container ``cid``; return once the workload runs (or raise its start error).

    Attached (``stdio`` given) returns a :class:`ContainerProcess`; detached returns None and the shim is
    re-parented to init, so the caller never has to reap it. ``restarts``: the container has a restart
    policy, so its shim may outlive the attached caller's first exit: it is re-parented to init as well.
    """
    orphan = stdio is None or restarts
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    pid = os.fork()
    if pid == 0:  # ---- child: becomes the shim (or the intermediate when detaching)
        code = 125
        try:
            gc.enable()  # a long-lived process now, even if the caller (a short CLI run) had turned it off
            ours.close()
            os.setsid()
            if orphan and os.fork() != 0:
                os._exit(0)  # the intermediate: lets the shim be adopted by init
            code = _shim_main(engine, cid, stdio, size if tty else None, tty, theirs)
        except BaseException:  # never let an exception unwind into the caller's code in this child
            with contextlib.suppress(BaseException):
                import traceback  # only on this failure path: importing it costs every start ~3 ms
                _send(theirs, {"error": {"message": "shim failed: " + traceback.format_exc(limit=3)}})
        finally:
            os._exit(code)
    # ---- parent
    theirs.close()
    if orphan:
        os.waitpid(pid, 0)  # reap the intermediate right away
    msg, fds = _recv(ours)
    master = fds[0] if fds else None
    if not msg or "started" not in msg:
        if stdio is not None:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        ours.close()
        for fd in fds:
            os.close(fd)
        err = (msg or {}).get("error") or {"message": "the container's shim exited before starting it"}
        raise RunnerError.from_dict(err)
    if stdio is None:
        ours.close()
        for fd in fds:
            os.close(fd)
        return None
    return ContainerProcess(engine, cid, ours, pid, int(msg["started"]), master)


def _close_fds_except(keep: set[int]) -> None:
    """Close every fd the caller had open (the agent's sockets, the CLI's files) except ``keep``."""
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2 and fd not in keep:
            with contextlib.suppress(OSError):
                os.close(fd)


def _detach(net) -> None:
    """Release the container's network; on a full disk its lease stays in the file, but names this dead
    shim, so the next lease on that network reclaims it (runner.engine.network: stale leases)."""
    try:
        net.detach()
    except OSError as exc:
        if not is_full(exc):
            raise


def _isolate(stdio: Stdio | None, sync: socket.socket) -> int:
    """Make this forked child a shim: default signal dispositions, none of the caller's fds; returns an fd
    on /dev/null. A detached shim must not hold the caller's pipes or terminal open."""
    # Signal dispositions the caller installed (Ctrl-C forwarding, SIGWINCH) must not run in the shim.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGWINCH, signal.SIGQUIT):
        signal.signal(sig, signal.SIG_DFL)
    keep = {sync.fileno()}
    if stdio is not None:
        keep |= {fd for fd in (stdio.stdin, stdio.stdout, stdio.stderr) if fd is not None}
    _close_fds_except(keep)
    devnull = os.open("/dev/null", os.O_RDWR)
    if stdio is None:
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
    return devnull


class _Workload:
    """The container's process as the shim sees it: pid (None until the runtime started it), the output
    fds to relay (``sources``), the pty master with ``-t``, and what to pump into its stdin."""

    pid: int | None = None
    master: int | None = None
    pump_stdin: tuple[int, int] | None = None
    sources: dict = {}

    def start(self, runtime, bundle: str, cid: str, stdio: Stdio | None, tty: bool, devnull: int,
              hub=None, interactive: bool = False) -> None:
        starter = stdio.stdin if stdio is not None else None
        if tty:
            # runc's console socket: the pty is made inside the container, its master comes back here.
            console, console_theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                self.pid = runtime.start(bundle, cid, (devnull,) * 3, console_socket=console_theirs.fileno())
            finally:
                console_theirs.close()
            _, fds, _, _ = socket.recv_fds(console, 16, 1)
            console.close()
            if not fds:
                raise ContainerStartError("the container did not hand over its terminal")
            self.master = fds[0]
            self.sources = {self.master: logs.STDOUT}
            if hub is not None:  # the hub feeds the master: the starter's input and any attacher's
                hub.wire(self.master if interactive else None, self.master, starter if interactive else None)
            elif starter is not None:
                self.pump_stdin = (starter, self.master)
            return
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        cin, in_w = (starter if starter is not None else devnull), None
        if hub is not None and interactive and (starter is None or _pollable(starter)):
            cin, in_w = os.pipe2(os.O_CLOEXEC)  # -i: the shim keeps the write end, so attachers can feed it
        try:
            self.pid = runtime.start(bundle, cid, (cin, out_w, err_w))
        finally:
            os.close(out_w)  # only the container holds the write ends now: EOF arrives when it exits
            os.close(err_w)
            if in_w is not None:
                os.close(cin)
        if hub is not None:
            hub.wire(in_w, None, starter if in_w is not None else None)
        self.sources = {out_r: logs.STDOUT, err_r: logs.STDERR}

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)


def _pollable(fd: int) -> bool:
    """Whether the relay's selector can watch ``fd``: a regular file or /dev/null cannot (EPERM). Such a
    starter's stdin (``run -i < file``) is then the container's own, as without an attach endpoint: the file
    is read at the container's pace, never into the shim's memory."""
    import select
    ep = select.epoll()
    try:
        ep.register(fd, select.EPOLLIN)
        return True
    except OSError:
        return False
    finally:
        ep.close()


def _relay(engine, cid: str, work: _Workload, stdio: Stdio | None, sync: socket.socket, log_opts, hub=None) -> str:
    """Tell the caller the workload runs, then relay its output until it closes; returns an error text if
    the relay failed (the workload is then killed: nobody would drain its output any more)."""
    try:
        _send(sync, {"started": work.pid}, [work.master] if work.master is not None and stdio is not None else [])
        from runner.spec import log_limits
        max_size, max_file = log_limits(log_opts)
        log = logs.LogWriter(engine.log_path(cid), max_size, max_file)
        sinks = {logs.STDOUT: stdio.stdout, logs.STDERR: stdio.stderr} if stdio is not None else {}
        try:
            logs.relay(work.sources, log, sinks, work.pump_stdin, hub)
        finally:
            log.close()
    except BaseException as exc:
        work.kill()
        return f"runner's monitor failed: {type(exc).__name__}: {exc}"
    return ""


def _shim_main(engine, cid: str, stdio: Stdio | None, size: TermSize | None, tty: bool,
               sync: socket.socket) -> int:
    devnull = _isolate(stdio, sync)
    store = engine.state
    container_bundle = engine.bundle(cid)
    work = _Workload()
    net = network.NO_NETWORK
    runtime = hub = None
    try:
        rec = store.load(cid)  # read once: attaching the network does not change the record
        interactive = bool(rec.spec.get("interactive"))
        hub = _open_hub(store, cid, rec.spec, tty)
        runtime = engine.runtime_for(rec.runtime)
        net = network.attach(engine, rec)  # ports bound, address leased, netns wired
        # private mount ns + overlay + config.json (+ copy-up into new volumes)
        bundle.prepare(engine.images_store, container_bundle, rec, engine.empty_dir(), net.netns_path, size,
                       os.path.join(engine.root, "volumes"))
        work.start(runtime, container_bundle.dir, cid, stdio, tty, devnull, hub, interactive)
        engine.journal_container("start", _record_running(store, cid, work, net, restarted=False))
        net.serve()
        from runner.engine.build import watch_builder
        watch_builder(rec, lambda: work.kill())  # a build step dies with its builder
    except (RunnerError, OSError) as exc:
        _start_failed(engine, cid, exc, work, net, hub, sync)
        if runtime is not None:
            runtime.delete(container_bundle.dir, cid)
        return 125
    code, oom, delay, died = 0, False, 0.0, False
    while True:
        began = now()
        monitor = _health_monitor(engine, cid, rec)
        error = _relay(engine, cid, work, stdio, sync, rec.spec.get("log_opts"), hub)
        _, status = os.waitpid(work.pid, 0)
        if monitor is not None:
            monitor.stop()
        code = exit_code_of(status)
        oom = runtime.oom_killed(container_bundle.dir, cid)
        runtime.delete(container_bundle.dir, cid)
        delay = None if rec.spec.get("restart") in (None, "", "no") else \
            _restart_delay(engine, cid, code, error, now() - began, delay)
        if delay is None:
            break
        _record_exit(engine, cid, code, oom, error, restarting=True)
        engine.journal_container("die", rec, exitCode=str(code))
        if hub is not None:  # attachers hear of the exit after the record tells it (inspect agrees with them)
            hub.exited(code)
        died = True
        if stdio is not None:  # the attached caller hears of the first exit; the restarts run detached
            _send(sync, {"exited": code})
            stdio = _detach_caller(stdio, sync, devnull)
        from runner.engine import restart
        if not restart.wait(store, cid, delay):
            break
        work = _Workload()
        try:
            work.start(runtime, container_bundle.dir, cid, None, tty, devnull, hub, interactive)
            engine.journal_container("start", _record_running(store, cid, work, net, restarted=True))
            died = False
        except (RunnerError, OSError) as exc:
            if work.pid is not None:
                work.kill()
                os.waitpid(work.pid, 0)
            runtime.delete(container_bundle.dir, cid)
            error = f"cannot restart the container: {exc}"
            break
    _detach(net)
    if net is network.NO_NETWORK and rec.extra.get("network_mode"):
        # Started on no network after a `network disconnect` of its last one: a `network connect` since
        # may have wired it, with veths and leases this shim never made.
        network.forget(engine, cid)
    container_bundle.release()
    _finish(engine, rec, code, oom, error, died)
    if hub is not None:  # after the record: an attacher told the exit code finds the container exited
        hub.exited(code)
        hub.close()
    _send(sync, {"exited": code})
    return code


def _open_hub(store, cid: str, spec: dict, tty: bool):
    """The container's attach endpoint (runner.engine.attach_server), for ``-i`` or ``-t`` containers only:
    the only ones that can be given input or resized later; others pay nothing for it."""
    if not (spec.get("interactive") or tty):
        return None
    from runner.engine import attach_server
    return attach_server.Hub(store.dir(cid), bool(spec.get("stdin_once")) and not tty)


def _start_failed(engine, cid: str, exc: BaseException, work: _Workload, net, hub, sync: socket.socket) -> None:
    """Undo a start that failed part-way and tell the caller why, in one line."""
    if work.pid is not None:  # the workload runs, but its bookkeeping failed: it must not live on unwatched
        work.kill()
        os.waitpid(work.pid, 0)
    if is_full(exc):
        exc = disk_full_error(exc.filename if isinstance(exc.filename, str) else engine.root,
                              f"starting container {cid[:12]}")
    elif not isinstance(exc, RunnerError):
        exc = ContainerStartError(f"cannot start container: {exc}")
    _detach(net)
    if hub is not None:
        hub.close()
    _send(sync, {"error": exc.to_dict()})


def _finish(engine, rec, code: int, oom: bool, error: str, died: bool) -> None:
    """The last exit: recorded, told to the event journal; with --rm the container and its anonymous volumes
    go. With --rm the record is removed right after this write, so a crash could only leave a record that is
    gone anyway: no fsync for it (the write itself stays atomic for concurrent readers)."""
    from runner.engine.build import orphaned
    auto_remove = bool(rec.spec.get("auto_remove")) or orphaned(rec)  # a killed build's step: nobody reads it
    _record_exit(engine, rec.id, code, oom, error, restarting=False, durable=not auto_remove)
    if not died:  # (a stop between two runs: its exit was told already)
        engine.journal_container("die", rec, exitCode=str(code))
    if auto_remove:
        engine.remove_container_files(rec.id, background=True)
        engine.journal_container("destroy", rec)
        _remove_anonymous_volumes(engine, rec.spec)


def _record_running(store, cid: str, work: _Workload, net, restarted: bool):
    """The record says: running, this pid, this shim. A restart counts; if the user stopped the container while
    it was being started again, the new run ends at once (runner.engine.restart)."""
    # The rename of state.json survives a crash only once its directory is synced too: without it a
    # machine killed within the journal's commit interval (5 s) came back with the Created record.
    with store.update(cid, sync_dir=True) as rec:
        rec.status, rec.pid, rec.pid_start = RUNNING, work.pid, proc_start_time(work.pid)
        rec.shim_pid, rec.shim_start = os.getpid(), proc_start_time(os.getpid())
        rec.started_at, rec.exit_code, rec.oom_killed, rec.error = now(), None, False, ""
        rec.finished_at = None
        if not restarted or "network" not in rec.extra:
            # (A restart keeps the namespace and what `network connect`/`disconnect` changed in it meanwhile.)
            rec.extra["network"] = net.settings
        rec.extra["boot_id"] = boot_id()
        if restarted:
            rec.extra["restart_count"] = int(rec.extra.get("restart_count") or 0) + 1
            if rec.extra.get("manual_stop"):
                work.kill()
    return rec


def _health_monitor(engine, cid: str, rec):
    """Start probing the container's healthcheck if it has one (runner.engine.health)."""
    config = rec.extra.get("healthcheck")
    if not config:
        return None
    from runner.engine import health
    return health.Monitor(engine, cid, config).start()


def _restart_delay(engine, cid: str, code: int, error: str, ran_for: float, last_delay: float):
    """Seconds before the restart policy starts the container again (runner.engine.restart), or None."""
    if error:
        return None  # the monitor itself failed: nobody would drain a new run's output
    try:
        rec = engine.state.load(cid)
    except (OSError, ValueError, RunnerError):
        return None  # removed meanwhile
    from runner.engine import restart
    return restart.next_delay(rec, code, ran_for, last_delay)


def _record_exit(engine, cid: str, code: int, oom: bool, error: str, restarting: bool, durable: bool = True):
    """The record says: exited (or restarting); the updated record, or None when it could not be written."""
    from runner.engine.state import RESTARTING
    try:
        with engine.state.update(cid, durable=durable) as rec:
            rec.status, rec.exit_code, rec.oom_killed, rec.finished_at = \
                RESTARTING if restarting else EXITED, code, oom, now()
            rec.error = error
            if not restarting:
                rec.extra.pop("network", None)
    except OSError as exc:
        # A full disk (the workload may have filled it) even past the record's spare file: the exit code
        # still reaches an attached caller, and a --rm container is still removed.
        if not is_full(exc):
            raise
        return None
    except RunnerError:
        return None  # removed meanwhile (rm -f)
    return rec


def _detach_caller(stdio: Stdio, sync: socket.socket, devnull: int) -> None:
    """Let go of the attached caller's fds: later runs of a restarting container only write their log."""
    for fd in {stdio.stdin, stdio.stdout, stdio.stderr} - {None}:
        with contextlib.suppress(OSError):
            os.dup2(devnull, fd) if fd <= 2 else os.close(fd)
    with contextlib.suppress(OSError):
        sync.shutdown(socket.SHUT_RDWR)
    return None


def _remove_anonymous_volumes(engine, spec: dict) -> None:
    """``run --rm``: the container's anonymous volumes go with it, as Docker's do."""
    names = [m["source"] for m in spec.get("mounts") or [] if m.get("type") == "volume" and m.get("source")]
    if names:
        from runner.engine import volumes
        with contextlib.suppress(OSError, RunnerError):
            volumes.Volumes(engine).remove_anonymous(names)
