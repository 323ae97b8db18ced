"""The shim's attach endpoint: how a client reaches a container that already runs (``runner attach``, the API's
``/containers/{id}/attach`` and ``/resize`` of a running container).

Why in the shim: a container's stdin is fixed when it starts (a pipe, or the pty's slave), so only the process
that holds the other end (the pipe's write end, the pty master) can feed it later. For containers created with
``-i`` (OpenStdin) or ``-t`` the shim keeps that end and listens on a unix socket in the container's directory
(``attach.sock``, 0600, as conmon's attach socket). Containers with neither pay nothing: no socket, no hub.

Bind and connect go through ``/proc/self/fd/N/attach.sock`` (N: an ``O_PATH`` fd on the directory), as conmon
does: a state root deep in the file system would make the plain path longer than a unix socket's 108 bytes.

Wire format, both directions: frames of a 1-byte kind, a 4-byte big-endian length and the payload::

    client -> shim   IN (0) bytes for stdin       STDIN_EOF (3) the client's stdin ended      RESIZE (4) >HH rows cols
    shim -> client   READY (6) first: accepted    OUT (1) stdout bytes     ERR (2) stderr bytes     EXIT (5) >i code

A client leaves by closing its socket (detach); the container runs on. Docker's StdinOnce: STDIN_EOF closes the
container's stdin only when the container was created with it (``run -i`` attached) and has no terminal;
otherwise it is ignored here (the client ends its attach instead, see runner.engine.attach_client). Every
client gets all output, live; the log still receives everything. A client slower than the container's output
gets back-pressure, as with Docker: while more than ``MAX_PENDING`` bytes wait for it, the relay reads no more
output (the container blocks on its pipe). A client that takes nothing at all for ``STALL_TIMEOUT`` seconds
is dropped, so a hung attacher cannot stop a container for good. Several clients may type at once: their
input is interleaved as it arrives, as with Docker.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import socket
import struct
import time

IN, OUT, ERR, STDIN_EOF, RESIZE, EXIT, READY = 0, 1, 2, 3, 4, 5, 6
HEADER = struct.Struct(">BI")
MAX_FRAME = 1024 * 1024
MAX_PENDING = 1024 * 1024  # output queued for one client before the relay waits for it
STALL_TIMEOUT = 10.0  # seconds a client over MAX_PENDING may take nothing before it is dropped
STDIN_HIGH = 256 * 1024  # stdin queued for the container before clients' input is no longer read
SOCKET_NAME = "attach.sock"


def encode(kind: int, data: bytes = b"") -> bytes:
    return HEADER.pack(kind, len(data)) + data


def socket_path(dir_fd: int) -> str:
    """The socket's name through the directory fd: short whatever the state root's length."""
    return f"/proc/self/fd/{dir_fd}/{SOCKET_NAME}"


def connect(container_dir: str) -> socket.socket | None:
    """A connection to the container's attach endpoint, or None when it has none (neither -i nor -t, or the
    container does not run)."""
    try:
        dir_fd = os.open(container_dir, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.connect(socket_path(dir_fd))
    except OSError:
        sock.close()
        return None
    finally:
        os.close(dir_fd)
    return sock


def await_ready(sock: socket.socket, timeout: float = 10.0) -> bool:
    """Wait for the shim's READY: from then on every output chunk reaches this client (a connection still in
    the listen backlog would miss what the container writes before the shim accepts it)."""
    sock.settimeout(timeout)
    try:
        data = sock.recv(HEADER.size, socket.MSG_WAITALL)
    except OSError:
        return False
    finally:
        with contextlib.suppress(OSError):
            sock.settimeout(None)
    return data == encode(READY)


class Decoder:
    """Incremental frame parser for both ends."""

    def __init__(self):
        self._buf = b""

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        self._buf += data
        frames = []
        while len(self._buf) >= HEADER.size:
            kind, length = HEADER.unpack_from(self._buf)
            if length > MAX_FRAME:
                raise ValueError(f"attach frame of {length} bytes")
            if len(self._buf) < HEADER.size + length:
                break
            frames.append((kind, self._buf[HEADER.size:HEADER.size + length]))
            self._buf = self._buf[HEADER.size + length:]
        return frames


class _Client:
    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.decoder = Decoder()
        self.pending = bytearray()
        self.events = 0
        self.stalled_since: float | None = None


class Hub:
    """The attach endpoint of one container, driven by the shim's relay loop (runner.engine.logs.relay): it
    registers its sockets in the relay's selector, gets each output chunk, and owns the container's stdin.

    ``stdin`` is the fd the container's input goes to (pipe write end, or the pty master with ``-t``), None
    without ``-i``; ``close_on_eof``: Docker's StdinOnce on a container without a terminal. ``starter`` is the
    attached starter's own stdin fd (``run -i``), fed in like a client's; its end closes a pipe stdin as it
    always did."""

    def __init__(self, container_dir: str, close_on_eof: bool):
        self.close_on_eof = close_on_eof
        self.stdin: int | None = None
        self.master: int | None = None
        self.starter: int | None = None
        self._stdin_buf = bytearray()
        self._pending_eof = False
        self._clients: dict[int, _Client] = {}
        self._sel: selectors.BaseSelector | None = None
        self._dir_fd = os.open(container_dir, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        path = socket_path(self._dir_fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # a killed shim's socket: nobody listens on it any more
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        old = os.umask(0o177)  # 0600 from the start: no window in which others could connect
        try:
            self.listener.bind(path)
        finally:
            os.umask(old)
        self.listener.listen(16)
        self.listener.setblocking(False)

    def dispatch(self, callback, mask: int) -> None:
        """Run one of the hub's selector callbacks for the relay. A failure here (a bug) must never cost the
        container its monitor: the endpoint shuts down, the container and its log go on."""
        try:
            callback(mask)
        except Exception:
            self.shutdown()

    def shutdown(self) -> None:
        """Stop serving attachers for good (the relay keeps running without the hub's sockets)."""
        if self._sel is not None:
            for fd in [k.fd for k in self._sel.get_map().values() if k.data[0] == "hub"]:
                with contextlib.suppress(KeyError, ValueError, OSError):
                    self._sel.unregister(fd)
        for client in list(self._clients.values()):
            client.events = 0
            self._drop(client)
        self.starter = None
        with contextlib.suppress(OSError):
            self.listener.close()

    # -- a new run of the container (its first start, or a restart)
    def wire(self, stdin: int | None, master: int | None, starter: int | None) -> None:
        """``stdin``: the fd the container's input goes to, now the hub's to close (a pipe's write end; for a
        terminal pass the master, which is duplicated: the relay reads the master itself, and a duplicate can
        be watched for writability beside it, so a long paste waits for room in the terminal, not for the
        next key)."""
        if stdin is not None and stdin == master:
            stdin = os.dup(master)
        self.stdin, self.master, self.starter = stdin, master, starter
        self._stdin_buf.clear()
        self._pending_eof = False
        if stdin is not None:
            os.set_blocking(stdin, False)  # a container not reading its stdin must never stall the relay

    def register(self, sel: selectors.BaseSelector) -> None:
        self._sel = sel
        if self.listener.fileno() < 0:
            return  # shut down (see dispatch)
        sel.register(self.listener, selectors.EVENT_READ, ("hub", self._accept))
        for client in self._clients.values():
            self._interest(client)
        if self.starter is not None:
            try:
                sel.register(self.starter, selectors.EVENT_READ, ("hub", self._from_starter))
            except PermissionError:  # a regular file or /dev/null cannot be polled: read it all now
                self._slurp_starter()

    def unregister(self) -> None:
        """The run's output ended: stop watching (the relay's selector is closed next)."""
        self._sel = None
        for client in self._clients.values():
            client.events = 0

    # -- events from the relay's selector
    def _accept(self, _mask: int) -> None:
        try:
            sock, _ = self.listener.accept()
        except BlockingIOError:
            return
        sock.setblocking(False)
        client = _Client(sock)
        self._clients[sock.fileno()] = client
        client.pending += encode(READY)
        if self._flush(client):
            self._interest(client)

    def _from_starter(self, _mask: int) -> None:
        try:
            data = os.read(self.starter, 65536)
        except OSError:
            data = b""
        if data:
            self._queue_stdin(data)
            return
        self._sel.unregister(self.starter)
        self.starter = None
        if self.master is None:  # a pipe: the starter's end of input is the container's (as before)
            self._eof_stdin()

    def _slurp_starter(self) -> None:
        while data := os.read(self.starter, 65536):
            self._queue_stdin(data)
        self.starter = None
        if self.master is None:
            self._eof_stdin()

    def _client_event(self, client: _Client, mask: int) -> None:
        if mask & selectors.EVENT_WRITE and not self._flush(client):
            return
        if mask & selectors.EVENT_READ:
            try:
                data = client.sock.recv(65536)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                self._drop(client)  # detached (or gone): the container runs on
                return
            try:
                frames = client.decoder.feed(data)
            except ValueError:
                self._drop(client)
                return
            for kind, payload in frames:
                self._client_frame(kind, payload)
        if client.sock.fileno() in self._clients:
            self._interest(client)

    def _client_frame(self, kind: int, payload: bytes) -> None:
        if kind == IN and payload:
            self._queue_stdin(payload)
        elif kind == STDIN_EOF and self.close_on_eof and self.master is None:
            self._eof_stdin()
        elif kind == RESIZE and len(payload) == 4:
            self.resize(*struct.unpack(">HH", payload))

    def resize(self, rows: int, cols: int) -> None:
        if self.master is not None and rows and cols:
            from runner.engine.process import set_winsize
            from runner.stdio import TermSize
            with contextlib.suppress(OSError):
                set_winsize(self.master, TermSize(rows, cols))

    # -- stdin
    def _queue_stdin(self, data: bytes) -> None:
        if self.stdin is None:
            return  # no -i, or the container's stdin was closed: the input goes nowhere, as a closed pipe's
        self._stdin_buf += data
        self._write_stdin()

    def _write_stdin(self, _mask: int = 0) -> None:
        while self._stdin_buf and self.stdin is not None:
            try:
                n = os.write(self.stdin, self._stdin_buf)
            except BlockingIOError:
                break
            except OSError:  # the container closed its stdin (EPIPE) or its terminal went away (EIO)
                self._stdin_buf.clear()
                self._close_stdin()
                return
            del self._stdin_buf[:n]
        if not self._stdin_buf and self._pending_eof:
            self._close_stdin()
            return
        self._stdin_interest()

    def _stdin_interest(self) -> None:
        if self._sel is None or self.stdin is None:
            return
        key = self._sel.get_map().get(self.stdin)
        if self._stdin_buf and key is None:
            self._sel.register(self.stdin, selectors.EVENT_WRITE, ("hub", self._write_stdin))
        elif not self._stdin_buf and key is not None:
            self._sel.unregister(self.stdin)
        for client in self._clients.values():
            self._interest(client)

    def _eof_stdin(self) -> None:
        """End of the container's input once what is queued is written (a pipe only)."""
        self._pending_eof = True
        if not self._stdin_buf:
            self._close_stdin()

    def _close_stdin(self) -> None:
        if self.stdin is None:
            return
        if self._sel is not None and self._sel.get_map().get(self.stdin) is not None:
            self._sel.unregister(self.stdin)
        with contextlib.suppress(OSError):
            os.close(self.stdin)
        self.stdin = None

    # -- output
    def output(self, stream: int, data: bytes) -> None:
        frame = encode(OUT if stream == 1 else ERR, data)
        for client in list(self._clients.values()):
            client.pending += frame
            if self._flush(client):
                self._interest(client)

    def congested(self) -> bool:
        """Whether some client has more than MAX_PENDING bytes waiting (the relay then pauses the output);
        one that took nothing for STALL_TIMEOUT seconds meanwhile is dropped instead."""
        busy, now = False, time.monotonic()
        for client in list(self._clients.values()):
            if len(client.pending) <= MAX_PENDING:
                client.stalled_since = None
            elif client.stalled_since is None:
                client.stalled_since, busy = now, True
            elif now - client.stalled_since > STALL_TIMEOUT:
                self._drop(client)
            else:
                busy = True
        return busy

    def _flush(self, client: _Client) -> bool:
        """Send what is queued for ``client``; False if it was dropped."""
        try:
            while client.pending:
                n = client.sock.send(client.pending)
                del client.pending[:n]
                client.stalled_since = None  # it takes output: slow, not hung
        except BlockingIOError:
            pass
        except OSError:
            self._drop(client)
            return False
        return True

    def _interest(self, client: _Client) -> None:
        if self._sel is None:
            return
        events = selectors.EVENT_READ if len(self._stdin_buf) < STDIN_HIGH else 0
        if client.pending:
            events |= selectors.EVENT_WRITE
        if events == client.events:
            return
        fd = client.sock.fileno()
        if client.events == 0:
            self._sel.register(fd, events, ("hub", lambda mask, c=client: self._client_event(c, mask)))
        elif events == 0:
            self._sel.unregister(fd)
        else:
            self._sel.modify(fd, events, ("hub", lambda mask, c=client: self._client_event(c, mask)))
        client.events = events

    def _drop(self, client: _Client) -> None:
        fd = client.sock.fileno()
        if self._sel is not None and client.events:
            with contextlib.suppress(KeyError, ValueError):
                self._sel.unregister(fd)
        self._clients.pop(fd, None)
        with contextlib.suppress(OSError):
            client.sock.close()

    # -- the end of a run, and of the container
    def exited(self, code: int) -> None:
        """The workload ended: tell every attached client its exit code and let them go (a restart starts
        without them, as Docker's attach ends at the first exit)."""
        self._close_stdin()
        if self.master is not None:
            self.master = None  # the shim closes it with the workload
        for client in list(self._clients.values()):
            with contextlib.suppress(OSError):
                client.sock.setblocking(True)
                client.sock.settimeout(2)
                client.sock.sendall(bytes(client.pending) + encode(EXIT, struct.pack(">i", code)))
            self._drop(client)

    def close(self) -> None:
        for client in list(self._clients.values()):
            self._drop(client)
        with contextlib.suppress(OSError):
            os.unlink(socket_path(self._dir_fd))
        with contextlib.suppress(OSError):
            self.listener.close()
        with contextlib.suppress(OSError):
            os.close(self._dir_fd)
