"""Where the Engine API listens, and the server's lifecycle (``runner serve``).

One thread per connection (docker clients hold connections open for attach, logs -f and events, and 20 at
once must work); the backend is shared. The socket is created ``0600`` from its first moment (umask around
the bind, inside a ``0700``-or-root-owned directory), or ``0660`` with a group, because whoever can write it
controls containers as root. TCP only on loopback: the API has no authentication of its own. On Windows the
default is the named pipe ``//./pipe/runner_engine`` (runner.api.npipe, with its own access list).
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import socket
import socketserver
import threading
from urllib.parse import urlsplit

from runner.api.http import Handler
from runner.errors import PlatformError, UsageError

WINDOWS_PIPE = "npipe:////./pipe/runner_engine"


def default_host() -> str:
    """``unix:///run/runner/docker.sock`` for root; the user's runtime dir otherwise (``$XDG_RUNTIME_DIR``)."""
    if os.name == "nt":
        return WINDOWS_PIPE
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        return "unix:///run/runner/docker.sock"
    import platformdirs
    return "unix://" + os.path.join(platformdirs.user_runtime_dir("runner"), "docker.sock")


class Address:
    """A parsed ``--host``: ``unix:///path``, ``tcp://127.0.0.1:2375`` (loopback only), or a Windows pipe."""

    def __init__(self, text: str):
        self.text = text
        parts = urlsplit(text)
        self.scheme = parts.scheme
        if parts.scheme == "unix":
            self.path = parts.path
            if not self.path.startswith("/"):
                raise UsageError(f"invalid --host {text!r}: a unix socket needs an absolute path",
                                 hint="e.g. unix:///run/runner/docker.sock")
        elif parts.scheme == "tcp":
            try:
                self.host, self.port = parts.hostname, parts.port
            except ValueError as exc:
                raise UsageError(f"invalid --host {text!r}: {exc}") from exc
            if not self.host or self.port is None:
                raise UsageError(f"invalid --host {text!r}: give a host and a port", hint="e.g. tcp://127.0.0.1:2375")
            if not _is_loopback(self.host):
                raise UsageError(f"refusing to serve the Engine API on {self.host}: it is not a loopback address",
                                 hint="the API has no authentication; use 127.0.0.1 or ::1, or a unix socket")
        elif parts.scheme == "npipe":
            from runner.api.npipe import pipe_name
            self.path = pipe_name(text)  # parsed on every OS; listening on one needs Windows
        else:
            raise UsageError(f"invalid --host {text!r}", hint="use unix:///path/docker.sock or tcp://127.0.0.1:PORT")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class _Threads(socketserver.ThreadingMixIn):
    daemon_threads = True  # a stuck client never blocks shutdown
    block_on_close = False
    request_queue_size = 128  # listen backlog: socketserver's 5 refuses the 6th of many clients connecting at once

    def handle_error(self, request, client_address) -> None:
        """A client that vanished between requests (a killed docker CLI resets its kept-alive connections over
        TCP) is nobody's error: socketserver would print a traceback for it. Anything else is one line, the
        traceback only with --debug."""
        import sys
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionResetError, ConnectionAbortedError, BrokenPipeError, TimeoutError)):
            return
        if getattr(self, "debug", False):
            super().handle_error(request, client_address)
        else:
            sys.stderr.write(f"runner: error serving a client: {type(exc).__name__}: {exc}\n")


if hasattr(socketserver, "UnixStreamServer"):  # not on Windows: its Python has no AF_UNIX
    class UnixServer(_Threads, socketserver.UnixStreamServer):
        pass


class TCPServer(_Threads, socketserver.TCPServer):
    allow_reuse_address = True


class _TCP6Server(TCPServer):
    address_family = socket.AF_INET6


# The handler modules: importing one registers its routes (runner.api.router.route).
HANDLER_MODULES = ("system", "images", "networks", "events", "inspection", "containers", "container_io", "exec",
                   "build", "volumes", "archive")


def load_routes() -> None:
    import importlib
    for name in HANDLER_MODULES:
        importlib.import_module(f"runner.api.{name}")


def make_server(address: Address, backend, context: dict | None = None, group: str | None = None,
                debug: bool = False) -> socketserver.BaseServer:
    """Bind the listener (not serving yet). ``context`` is shared state the handlers keep across requests."""
    load_routes()
    if address.scheme == "unix":
        server = _bind_unix(address.path, group)
    elif address.scheme == "npipe":
        if group is not None:
            raise UsageError("--group applies to unix sockets", hint="the pipe's access list is fixed: SYSTEM, "
                                                                     "Administrators and the owner")
        from runner.api.npipe import PipeServer
        server = PipeServer(address.path, Handler)
    else:
        cls = _TCP6Server if ":" in address.host else TCPServer
        server = cls((address.host.strip("[]"), address.port), Handler)
    server.backend = backend
    server.context = context if context is not None else {}
    server.context.setdefault("lock", threading.Lock())
    server.debug = debug
    server.address = address
    return server


def _bind_unix(path: str, group: str | None) -> "UnixServer":
    if not hasattr(socket, "AF_UNIX"):
        raise PlatformError("this Python has no unix sockets (Windows)",
                            hint=f"serve on the named pipe ({WINDOWS_PIPE}) or tcp://127.0.0.1:PORT")
    directory = os.path.dirname(path)
    os.makedirs(directory, mode=0o755 if os.geteuid() == 0 else 0o700, exist_ok=True)
    _remove_stale_socket(path)
    old = os.umask(0o177)  # 0600 from the first moment: no window where others could connect
    try:
        server = UnixServer(path, Handler)
    except OSError as exc:
        raise PlatformError(f"cannot listen on {path}: {exc.strerror}") from exc
    finally:
        os.umask(old)
    if group is not None:
        import grp  # Unix only
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError as exc:
            server.server_close()
            os.unlink(path)
            raise UsageError(f"no such group: {group}") from exc
        os.chown(path, -1, gid)
        os.chmod(path, 0o660)
    return server


def _remove_stale_socket(path: str) -> None:
    """A socket file left by a killed server is removed; one that a live server answers on is a conflict."""
    if not os.path.lexists(path):
        return
    import stat
    if not stat.S_ISSOCK(os.lstat(path).st_mode):
        raise UsageError(f"{path} exists and is not a socket", hint="remove it or choose another --host")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1)
        probe.connect(path)
    except OSError:
        os.unlink(path)  # nobody listens: stale
        return
    finally:
        probe.close()
    raise UsageError(f"another server is already listening on {path}",
                     hint="stop it first, or choose another --host")


def serve_until_signalled(server: socketserver.BaseServer, on_ready=None) -> None:
    """Serve in this thread until SIGTERM or SIGINT, then stop accepting, close and remove the socket.

    Containers are not touched: they keep running, and the next server sees them (their state is on disk)."""
    import signal

    stopping = threading.Event()

    def stop(signum, frame):
        if not stopping.is_set():
            stopping.set()
            threading.Thread(target=server.shutdown, daemon=True).start()

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        if on_ready is not None:
            on_ready()
        server.serve_forever(poll_interval=0.5)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        server.server_close()
        if server.address.scheme == "unix":
            with contextlib.suppress(FileNotFoundError):
                os.unlink(server.address.path)
