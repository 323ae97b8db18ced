"""The host-side connection cache: one SSH connection per machine, shared by every CLI call.

Why: under TCG a new SSH connection costs ~0.25 s (key exchange and auth in a slow guest), and importing
paramiko another ~0.15 s, against a budget of ~0.15 s for a whole ``runner run``. So the first CLI call that
needs the VM starts this small process (``python -m runner.agent.mux --machine NAME``); it holds the paramiko
transport and listens on a Unix socket in the machine's directory (0600, in a 0700 directory). ``runner vm
start`` (any boot, :meth:`runner.vm.machine.Machine.start`) starts it as its SSH login step, and it makes sure
this runner's agent serves (:func:`runner.agent.ship.ensure_agent`) before it says ready. Each later
call connects there and the mux opens a ``direct-tcpip`` channel to the agent for it, then just copies bytes
both ways. The mux never reads the agent protocol: the handshake (token proof, version) stays end to end
between the CLI and the agent, so the socket grants nothing a caller could not already do with the token.

Lifetime: it exits when its SSH transport dies (the VM stopped or crashed: so ``runner vm stop`` ends it
within a second, and a new boot gets a new mux), after ``IDLE_TIMEOUT`` without any connection, or on
SIGTERM (:func:`stop`). It removes its socket and pid file on the way out. A mux that cannot serve the
current boot (started for a QEMU since killed) or that serves but does not answer a probe (hung) is killed
and replaced by the next starter (:func:`_contend`): recovery never waits on it.

Hosts without Unix sockets (Windows) skip it: there each CLI call opens its own SSH connection.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

from runner.errors import RunnerError, VMError

IDLE_TIMEOUT = 30 * 60.0
START_TIMEOUT = 60.0
_SUN_PATH_MAX = 100  # sizeof(sun_path) is 104 on macOS, 108 on Linux

SUPPORTED = hasattr(socket, "AF_UNIX") and os.name == "posix"


def socket_path(machine_dir: Path) -> Path:
    """``<machine dir>/agent.sock``, or a short per-user temp path when that exceeds sun_path."""
    path = machine_dir / "agent.sock"
    if len(os.fsencode(path)) <= _SUN_PATH_MAX:
        return path
    from runner.vm.layout import short_socket_dir

    digest = hashlib.sha256(os.fsencode(machine_dir)).hexdigest()[:16]
    return short_socket_dir() / f"{digest}.agent"


def pid_path(machine_dir: Path) -> Path:
    return machine_dir / "agent-mux.pid"


def connect(machine_dir: Path, timeout: float = 5.0) -> socket.socket:
    """A connection through the mux to the agent (raises OSError if no mux listens)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(str(socket_path(machine_dir)))
        sock.settimeout(None)
    except OSError:
        sock.close()
        raise
    return sock


def start(machine: str, machine_dir: Path) -> None:
    """Start the mux for ``machine`` detached from this CLI call; return once it listens (or raise why not).

    It opens its own SSH connection (the caller's paramiko client cannot cross a process boundary) once the
    guest says READY, and makes sure our agent serves before it listens.
    """
    wait_started(spawn(machine, machine_dir), machine, machine_dir)


def spawn(machine: str, machine_dir: Path) -> subprocess.Popen:
    """Launch the mux without waiting: a booting machine's start launches it early, so that the mux's Python
    start and imports overlap the guest's boot instead of following it (then :func:`wait_started`)."""
    import subprocess  # not at the top: every VM CLI call imports this module, for connect()

    log_fd = os.open(machine_dir / "agent-mux.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    with open(log_fd, "ab") as log:
        return subprocess.Popen([sys.executable, "-m", "runner.agent.mux", "--machine", machine],
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log,
                                start_new_session=True, cwd=str(Path(__file__).resolve().parents[2]))


def wait_started(proc: subprocess.Popen, machine: str, machine_dir: Path) -> None:
    line = b""
    with contextlib.suppress(OSError):
        line = proc.stdout.readline()  # "ready" once it listens, "error <json>" or EOF if it failed
    proc.stdout.close()
    if not line.startswith(b"ready"):
        proc.wait(START_TIMEOUT)
        error = None
        if line.startswith(b"error "):
            with contextlib.suppress(ValueError):
                error = json.loads(line[6:])
        if isinstance(error, dict):
            raise RunnerError.from_dict(error)
        raise VMError(f"the SSH connection cache for machine {machine!r} did not start",
                      hint=f"see {machine_dir / 'agent-mux.log'}")


def stop(machine_dir: Path) -> bool:
    """Stop the machine's mux if one runs (for ``runner vm stop``; it would also notice by itself)."""
    try:
        pid = int(pid_path(machine_dir).read_text())
    except (OSError, ValueError):
        return False
    if "runner.agent.mux" not in _cmdline(pid):
        return False  # a recycled pid: never signal a process we cannot prove is ours
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
        return True
    return False


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().decode(errors="replace")
    except FileNotFoundError:
        if os.path.isdir("/proc"):
            return ""
    except OSError:
        return ""
    import subprocess

    proc = subprocess.run(["ps", "-o", "command=", "-p", str(pid)], capture_output=True)  # macOS: no /proc
    return proc.stdout.decode(errors="replace")


# ---------------------------------------------------------------------------------------------- the process

def _pipe(src_recv, dst_send, done) -> None:
    """Copy until EOF, then half-close the other side (the agent protocol relies on half-close for stdin)."""
    try:
        while data := src_recv(256 * 1024):
            dst_send(data)
    except (OSError, EOFError):
        pass
    finally:
        done()


def _relay(conn: socket.socket, transport: Any, port: int) -> None:
    try:
        chan = transport.open_channel("direct-tcpip", ("127.0.0.1", port), ("127.0.0.1", 0), timeout=30)
    except Exception:  # the agent is not listening (anymore): the client sees EOF and restarts it
        conn.close()
        return
    left = threading.Semaphore(0)

    def half_close_chan() -> None:
        with contextlib.suppress(OSError, EOFError):
            chan.shutdown_write()
        left.release()

    def half_close_conn() -> None:
        with contextlib.suppress(OSError):
            conn.shutdown(socket.SHUT_WR)
        left.release()

    up = threading.Thread(target=_pipe, args=(conn.recv, chan.sendall, half_close_chan), daemon=True)
    up.start()
    _pipe(chan.recv, conn.sendall, half_close_conn)
    left.acquire()
    left.acquire()
    chan.close()
    conn.close()


def serve(machine_name: str) -> int:
    from runner.vm.machine import Machine

    machine = Machine(machine_name)
    sock_path = socket_path(machine.paths.dir)
    # One mux per machine: the lock is held for the mux's whole life. A second starter (two CLI calls racing
    # after a boot) uses the first one once it answers; a holder that never can answer is replaced.
    lock_fd = os.open(machine.paths.dir / "agent-mux.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        verdict = _contend(machine, lock_fd)
        if verdict == "taken":
            return _serve_locked(machine, sock_path)
        if verdict == "answers":
            print("ready (already running)", flush=True)
            return 0
        if time.monotonic() > deadline:  # "starting": a mux of this boot waits for the guest, as we would
            raise VMError("another connection cache of this boot did not finish starting",
                          hint=f"see {machine.paths.dir / 'agent-mux.log'}")
        time.sleep(0.05)


HOLDER = "agent-mux.holder"  # who holds agent-mux.lock: pid, process identity, boot, whether it serves
PROBE_TIMEOUT = 10.0  # the agent's CHALLENGE through a serving mux: one SSH channel open, ~0.3 s under TCG


def _write_holder(machine, serving: bool = False) -> None:
    from runner.vm import layout
    from runner.vm.machine import _process_identity
    record = machine._live_record() or {}
    layout.write_private(machine.paths.dir / HOLDER, json.dumps(
        {"pid": os.getpid(), "identity": _process_identity(os.getpid()), "boot": record.get("identity"),
         "serving": serving}))


def _answers(machine_dir: Path, timeout: float) -> bool:
    """Whether a mux serves on the socket: the agent speaks first (its CHALLENGE), so a byte must arrive.
    A bare connect proves nothing: the kernel queues it even for a stopped process."""
    try:
        with connect(machine_dir, timeout=timeout) as sock:
            sock.settimeout(timeout)
            return bool(sock.recv(1))
    except OSError:
        return False


def _take(lock_fd: int) -> bool:
    import fcntl
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def _contend(machine, lock_fd: int) -> str:
    """"taken": this process holds the lock now; "answers": a live mux serves this boot; "starting": a mux
    of this boot is still starting (wait for it).

    Any other holder can never answer and is replaced at once, not waited on: one started for a QEMU that
    is dead now (SIGKILLed), or one that serves but does not answer the probe (hung). The holder is named
    by pid plus process start time (runner.vm.machine's identity) and its command line, so a recycled pid
    is never signalled."""
    from runner.vm.machine import _process_identity
    if _take(lock_fd):
        return "taken"
    try:
        holder = json.loads((machine.paths.dir / HOLDER).read_text())
        pid = int(holder["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        holder, pid = {}, 0  # not written yet (it is just starting), or an older runner's mux
    ours = bool(pid) and _process_identity(pid) == holder.get("identity") and "runner.agent.mux" in _cmdline(pid)
    record = machine._live_record()
    if not pid or (ours and record is not None and holder.get("boot") == record.get("identity")):
        if _answers(machine.paths.dir, PROBE_TIMEOUT if holder.get("serving") else 1.0):
            return "answers"
        if not holder.get("serving"):
            return "starting"
    if ours:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10  # the kernel releases a killed process's flock as it exits
    while not _take(lock_fd):
        if time.monotonic() > deadline:
            raise VMError("a stale connection cache holds the lock and could not be stopped",
                          hint=f"see {machine.paths.dir / 'agent-mux.log'}")
        time.sleep(0.02)
    return "taken"


def _serve_locked(machine, sock_path: Path) -> int:
    """The mux proper, once this process holds the machine's mux lock."""
    from runner.agent import ship
    from runner.vm import layout

    _write_holder(machine)
    machine_name = machine.name
    deadline = time.monotonic() + START_TIMEOUT
    polls = 0
    while not machine.guest_ready():  # spawned early by a booting machine's start: wait for the guest
        polls += 1
        if polls % 25 == 0 and machine.status().get("state") == "stopped" or time.monotonic() > deadline:
            raise VMError(f"machine {machine_name!r} did not become ready")
        time.sleep(0.02)
    client = machine.ssh()
    _write_holder(machine)  # the boot it really serves (a new boot may have replaced the one it was started for)
    ship.ensure_agent(client, machine.agent_port)  # what every caller connects to: our agent version, serving
    transport = client.get_transport()
    # One TCP connection carries every call's frames: Nagle's delay would cost up to 40 ms per small frame.
    transport.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    with contextlib.suppress(FileNotFoundError):
        sock_path.unlink()
    sock_path.parent.mkdir(parents=True, exist_ok=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)  # the socket is born 0600: no window in which another user could connect
    try:
        listener.bind(str(sock_path))
    finally:
        os.umask(old)
    listener.listen(64)
    _write_holder(machine, serving=True)
    listener.settimeout(1.0)
    layout.write_private(pid_path(machine.paths.dir), str(os.getpid()))

    def cleanup(*_: Any) -> None:
        with contextlib.suppress(OSError):
            if socket_path(machine.paths.dir) == sock_path:
                sock_path.unlink()
        with contextlib.suppress(OSError):
            pid_path(machine.paths.dir).unlink()
        os._exit(0)

    signal.signal(signal.SIGTERM, cleanup)
    signal.signal(signal.SIGINT, cleanup)
    print("ready", flush=True)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)  # the starter stopped reading: never block or die on a write to its pipe
    os.close(devnull)
    idle_since = time.monotonic()
    active = [0]
    lock = threading.Lock()

    def handle(conn: socket.socket) -> None:
        try:
            _relay(conn, transport, machine.agent_port)
        finally:
            with lock:
                active[0] -= 1

    while transport.is_active():
        try:
            conn, _ = listener.accept()
        except socket.timeout:
            with lock:
                if active[0]:
                    idle_since = time.monotonic()
            if time.monotonic() - idle_since > IDLE_TIMEOUT:
                break
            continue
        with lock:
            active[0] += 1
        idle_since = time.monotonic()
        threading.Thread(target=handle, args=(conn,), daemon=True).start()
    cleanup()
    return 0


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m runner.agent.mux", description=__doc__.split("\n")[0])
    parser.add_argument("--machine", required=True)
    args = parser.parse_args(argv)
    try:
        return serve(args.machine)
    except Exception as exc:
        # The starter reads this line and raises the same error (e.g. a host key that does not match).
        error = exc if isinstance(exc, RunnerError) else VMError(f"{type(exc).__name__}: {exc}")
        print(f"runner agent mux: {error.message}", file=sys.stderr)
        print("error " + json.dumps(error.to_dict()), flush=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
