"""SSH to the guest with paramiko: the machine's own client key, and the guest's host key pinned.

Trust model: runner generated the guest's host key and handed it to the guest in its boot config, so the
host already knows the only key the guest may present. The client holds exactly that key in its HostKeys and
a RejectPolicy: there is no trust-on-first-use, no ~/.ssh/known_hosts, and a different key (a port taken over
by another process, a stale forward to another VM) is refused with :class:`runner.errors.VMError`.

Waiting: QEMU's user-mode network accepts a TCP connection on the forwarded port before anything listens in
the guest, so "connect succeeded" means nothing and a paramiko connect against it waits out its banner timeout.
:func:`wait_for_banner` instead reads until the server's ``SSH-`` identification line arrives.
"""

from __future__ import annotations

import base64
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

from runner.errors import VMError

HOST = "127.0.0.1"
USER = "root"


def host_key_from_line(line: str) -> Any:
    """A paramiko PKey from an OpenSSH public key line (``ssh-ed25519 AAAA... comment``)."""
    import paramiko

    parts = line.split()
    if len(parts) < 2:
        raise VMError(f"malformed pinned host key {line!r}")
    return paramiko.PKey.from_type_string(parts[0], base64.b64decode(parts[1]))


def wait_for_banner(port: int, deadline: float, host: str = HOST) -> str:
    """Block until the SSH server on ``host:port`` sends its ``SSH-`` line; return it. TimeoutError at deadline.

    Retries back off from 50 ms to 500 ms: early tries are cheap (user-net closes at once when the guest
    refuses), later ones should not spin while a slow TCG guest boots.
    """
    delay, last = 0.05, "no connection yet"
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(last)
        try:
            with socket.create_connection((host, port), timeout=min(2.0, remaining)) as sock:
                sock.settimeout(min(2.0, max(0.1, deadline - time.monotonic())))
                data = b""
                while b"\n" not in data and len(data) < 256:
                    chunk = sock.recv(256)
                    if not chunk:
                        break
                    data += chunk
            if data.startswith(b"SSH-"):
                return data.split(b"\n")[0].decode(errors="replace").strip()
            last = f"got {data[:40]!r} instead of an SSH banner" if data else "connection closed before a banner"
        except OSError as exc:
            last = str(exc) or type(exc).__name__
        time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
        delay = min(delay * 2, 0.5)


# Connected SSH clients of this process, keyed by machine dir and the QEMU process identity (pid and start
# time), so a restarted machine never reuses a session to its previous boot.
_SESSIONS: dict[tuple[str, int, str], Any] = {}


def cached_session(key: tuple[str, int, str]) -> Any:
    """The live client remembered under ``key``, else None."""
    client = _SESSIONS.get(key)
    transport = client.get_transport() if client is not None else None
    return client if transport is not None and transport.is_active() else None


def remember_session(key: tuple[str, int, str], client: Any) -> None:
    _SESSIONS[key] = client


def forget_sessions(machine_dir: str) -> None:
    """Close every session of this process to the machine in ``machine_dir`` (any boot)."""
    for key in [k for k in _SESSIONS if k[0] == machine_dir]:
        _SESSIONS.pop(key).close()


def connect(port: int, client_key: Path, pinned_host_key: str, machine: str, timeout: float = 30.0,
            host: str = HOST) -> Any:
    """A connected, authenticated ``paramiko.SSHClient`` to the guest, or VMError naming what failed."""
    import paramiko

    pkey = paramiko.PKey.from_path(str(client_key))
    known = host_key_from_line(pinned_host_key)
    deadline = time.monotonic() + timeout
    delay = 0.1
    while True:
        client = paramiko.SSHClient()
        # Exactly one trusted key for this address; anything else is rejected, never learned.
        client.get_host_keys().add(f"[{host}]:{port}", known.get_name(), known)
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        try:
            client.connect(host, port=port, username=USER, pkey=pkey, look_for_keys=False, allow_agent=False,
                           timeout=max(1.0, deadline - time.monotonic()), banner_timeout=10, auth_timeout=10)
            return client
        except paramiko.BadHostKeyException as exc:
            client.close()
            raise _host_key_mismatch(machine, port) from exc
        except paramiko.AuthenticationException as exc:
            client.close()
            raise VMError(f"machine {machine!r} refused runner's SSH key: {exc}",
                          hint=f"the guest did not get this machine's key; recreate it with `runner vm rm "
                               f"{machine}`") from exc
        except paramiko.SSHException as exc:
            client.close()
            if "not found in known_hosts" in str(exc):  # the guest offered a key of another type
                raise _host_key_mismatch(machine, port) from exc
            last: Exception = exc
        except OSError as exc:
            client.close()
            last = exc
        if time.monotonic() + delay >= deadline:
            raise VMError(f"cannot open an SSH session to machine {machine!r} on {host}:{port}: {last}")
        time.sleep(delay)
        delay = min(delay * 2, 1.0)


def _host_key_mismatch(machine: str, port: int) -> VMError:
    return VMError(f"host key of machine {machine!r} does not match the pinned key (127.0.0.1:{port})",
                   hint="another process may own that port, or the machine's files were replaced; "
                        f"if you trust this, recreate the machine with `runner vm rm {machine}`")


def run(client: Any, command: str, timeout: float | None = None, stdin: bytes | None = None
        ) -> tuple[int, bytes, bytes]:
    """Run ``command`` in the guest; return (exit code, stdout, stderr). stderr is drained by a thread so
    a chatty command can never block on a full stderr window while we read stdout."""
    chan = client.get_transport().open_session(timeout=timeout)
    try:
        chan.settimeout(timeout)
        chan.exec_command(command)
        if stdin is not None:
            chan.sendall(stdin)
        chan.shutdown_write()
        err_chunks: list[bytes] = []
        reader = threading.Thread(target=_drain, args=(chan.recv_stderr, err_chunks), daemon=True)
        reader.start()
        out_chunks: list[bytes] = []
        _drain(chan.recv, out_chunks)
        reader.join(timeout)
        code = chan.recv_exit_status()
    except socket.timeout as exc:
        raise VMError(f"command {command!r} in the guest did not finish within {timeout:g} s") from exc
    finally:
        chan.close()
    return code, b"".join(out_chunks), b"".join(err_chunks)


def _drain(recv: Any, sink: list[bytes]) -> None:
    while True:
        chunk = recv(65536)
        if not chunk:
            return
        sink.append(chunk)


def interactive_shell(client: Any) -> int:
    """A raw-terminal shell over paramiko, for hosts without an ``ssh`` binary (POSIX terminals only)."""
    import select
    import shutil
    import sys
    import termios
    import tty

    cols, rows = shutil.get_terminal_size()
    chan = client.get_transport().open_session()
    chan.get_pty(term=os.environ.get("TERM", "xterm"), width=cols, height=rows)
    chan.invoke_shell()
    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    try:
        tty.setraw(fd)
        while True:
            readable, _, _ = select.select([chan, fd], [], [])
            if chan in readable:
                data = chan.recv(65536)
                if not data:
                    break
                os.write(sys.stdout.fileno(), data)
            if fd in readable:
                data = os.read(fd, 4096)
                if not data:
                    break
                chan.sendall(data)
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)
    code = chan.recv_exit_status() if chan.exit_status_ready() else 0
    chan.close()
    return code
