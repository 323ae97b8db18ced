"""The connection cache process: holds one SSH connection to a machine and relays each caller to the agent.

Started by :func:`runner.vm.muxctl.spawn` as ``python -m runner.vm.muxd --machine NAME``; the why, the
socket and its lifetime are described in :mod:`runner.vm.muxctl`. It never reads the agent protocol: each
connection to its Unix socket becomes one ``direct-tcpip`` channel to the agent, bytes copied both ways.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sys
import threading
import time
from typing import Any

from runner import procs
from runner.errors import RunnerError, VMError
from runner.vm import layout, ship
from runner.vm.machine import Machine
from runner.vm.muxctl import PROBE_TIMEOUT, START_TIMEOUT, connect

IDLE_TIMEOUT = 30 * 60.0


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
    machine = Machine(machine_name)
    # One mux per machine: the lock is held for the mux's whole life. A second starter (two CLI calls racing
    # after a boot) uses the first one once it answers; a holder that never can answer is replaced.
    lock = procs.FileLock(machine.paths.agent_mux_lock, timeout=0)
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        verdict = _contend(machine, lock)
        if verdict == "taken":
            return _serve_locked(machine)
        if verdict == "answers":
            print("ready (already running)", flush=True)
            return 0
        if time.monotonic() > deadline:  # "starting": a mux of this boot waits for the guest, as we would
            raise VMError("another connection cache of this boot did not finish starting",
                          hint=f"see {machine.paths.agent_mux_log}")
        time.sleep(0.05)


def _serve_locked(machine: Machine) -> int:
    """The mux proper, once this process holds the machine's mux lock."""
    sock_path = machine.paths.agent_socket
    _write_holder(machine)
    _wait_guest(machine)
    client = machine.ssh()
    _write_holder(machine)  # the boot it really serves (a new boot may have replaced the one it was started for)
    ship.ensure_agent(client, machine.agent_port)  # what every caller connects to: our agent version, serving
    transport = client.get_transport()
    # One TCP connection carries every call's frames: Nagle's delay would cost up to 40 ms per small frame.
    transport.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    listener = _listen(sock_path)
    _write_holder(machine, serving=True)
    layout.write_private(machine.paths.agent_mux_pid, str(os.getpid()))

    def cleanup(*_: Any) -> None:
        with contextlib.suppress(OSError):
            if machine.paths.agent_socket == sock_path:
                sock_path.unlink()
        with contextlib.suppress(OSError):
            machine.paths.agent_mux_pid.unlink()
        os._exit(0)

    signal.signal(signal.SIGTERM, cleanup)
    signal.signal(signal.SIGINT, cleanup)
    print("ready", flush=True)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)  # the starter stopped reading: never block or die on a write to its pipe
    os.close(devnull)
    _accept_loop(listener, transport, machine.agent_port)
    cleanup()
    return 0


def _write_holder(machine: Machine, serving: bool = False) -> None:
    record = machine._live_record() or {}
    layout.write_private(machine.paths.agent_mux_holder, json.dumps(
        {"pid": os.getpid(), "identity": procs.identity(os.getpid()), "boot": record.get("identity"),
         "serving": serving}))


def _answers(machine: Machine, timeout: float) -> bool:
    """Whether a mux serves on the socket: the agent speaks first (its CHALLENGE), so a byte must arrive.
    A bare connect proves nothing: the kernel queues it even for a stopped process."""
    try:
        with connect(machine.paths, timeout=timeout) as sock:
            sock.settimeout(timeout)
            return bool(sock.recv(1))
    except OSError:
        return False


def _take(lock: procs.FileLock) -> bool:
    try:
        lock.acquire()
        return True
    except RunnerError:
        return False


def _contend(machine: Machine, lock: procs.FileLock) -> str:
    """"taken": this process holds the lock now; "answers": a live mux serves this boot; "starting": a mux
    of this boot is still starting (wait for it).

    Any other holder can never answer and is replaced at once, not waited on: one started for a QEMU that
    is dead now (SIGKILLed), or one that serves but does not answer the probe (hung). The holder is named
    by pid plus process identity (runner.procs) and its command line, so a recycled pid is never signalled."""
    if _take(lock):
        return "taken"
    try:
        holder = json.loads(machine.paths.agent_mux_holder.read_text())
        pid = int(holder["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        holder, pid = {}, 0  # not written yet (it is just starting), or an older runner's mux
    ours = bool(pid) and procs.identity(pid) == holder.get("identity") \
        and "runner.vm.muxd" in (procs.cmdline(pid) or "")
    record = machine._live_record()
    if not pid or (ours and record is not None and holder.get("boot") == record.get("identity")):
        if _answers(machine, PROBE_TIMEOUT if holder.get("serving") else 1.0):
            return "answers"
        if not holder.get("serving"):
            return "starting"
    if ours:
        procs.kill(pid)
    deadline = time.monotonic() + 10  # the kernel releases a killed process's flock as it exits
    while not _take(lock):
        if time.monotonic() > deadline:
            raise VMError("a stale connection cache holds the lock and could not be stopped",
                          hint=f"see {machine.paths.agent_mux_log}")
        time.sleep(0.02)
    return "taken"


def _wait_guest(machine: Machine) -> None:
    """Spawned early by a booting machine's start: wait until the guest says READY."""
    deadline = time.monotonic() + START_TIMEOUT
    polls = 0
    while not machine.guest_ready():
        polls += 1
        if polls % 25 == 0 and machine.status().get("state") == "stopped" or time.monotonic() > deadline:
            raise VMError(f"machine {machine.name!r} did not become ready")
        time.sleep(0.02)


def _listen(sock_path: Any) -> socket.socket:
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
    listener.settimeout(1.0)
    return listener


def _accept_loop(listener: socket.socket, transport: Any, port: int) -> None:
    """Relay each connection in its own thread while the SSH transport lives and someone used us lately."""
    idle_since = time.monotonic()
    active = [0]
    lock = threading.Lock()

    def handle(conn: socket.socket) -> None:
        try:
            _relay(conn, transport, port)
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


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m runner.vm.muxd", description=__doc__.split("\n")[0])
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
