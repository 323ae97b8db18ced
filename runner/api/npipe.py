"""The Engine API on a Windows named pipe (``npipe:////./pipe/runner_engine``), where Docker clients look on Windows.

Why this shape: http.server wants a socket (``makefile``, ``sendall``, ``recv``, ``shutdown``), so one
connected pipe instance is wrapped in :class:`PipeSocket`, and :class:`PipeServer` offers what
``runner serve`` uses of a socketserver (``serve_forever``, ``shutdown``, ``server_close``). As moby's
listener (go-winio): message mode, so a half-close (the client's end of stdin) is a zero-length message;
64 KiB buffers; overlapped I/O, because Windows serialises the reads and writes of a synchronous handle and an
attach reads stdin while it writes output; one thread per connection, as over the unix socket.

Who can connect: the pipe gets the DACL ``D:P(A;;GA;;;SY)(A;;GA;;;BA)(A;;GA;;;OW)`` -- SYSTEM, the
Administrators and the pipe's owner (the account running ``runner serve``); nobody else. Windows' default
pipe DACL would also let Everyone open it for reading. The first instance is created with
FILE_FLAG_FIRST_PIPE_INSTANCE, so a name already taken (another server, or a process squatting it) is an
error instead of a shared name, and PIPE_REJECT_REMOTE_CLIENTS refuses clients over the network (SMB).

Standard library only: ``_winapi`` (CPython's pipe calls, as multiprocessing uses them) and ``ctypes`` for the
security descriptor, imported only when a listener is created, so this module imports on every OS and its
portable parts (the address, the adapter) are tested on Linux. Unverified on real Windows (see the README).
"""

from __future__ import annotations

import errno
import io
import socket
import threading

from runner.errors import PlatformError, UsageError

SDDL = "D:P(A;;GA;;;SY)(A;;GA;;;BA)(A;;GA;;;OW)"
BUFFER = 64 << 10
_MAX_NAME = 256  # characters of \\.\pipe\NAME in all

# Win32 constants (numbers, so that the portable parts need no _winapi)
_PIPE_ACCESS_DUPLEX = 0x3
_FILE_FLAG_OVERLAPPED = 0x40000000
_FILE_FLAG_FIRST_PIPE_INSTANCE = 0x00080000
_PIPE_TYPE_MESSAGE, _PIPE_READMODE_MESSAGE, _PIPE_REJECT_REMOTE_CLIENTS = 0x4, 0x2, 0x8
_PIPE_UNLIMITED_INSTANCES = 255
_ERROR_BROKEN_PIPE, _ERROR_NO_DATA, _ERROR_PIPE_CONNECTED = 109, 232, 535
_ERROR_MORE_DATA, _ERROR_IO_PENDING, _ERROR_ACCESS_DENIED = 234, 997, 5
_WAIT_TIMEOUT, _INFINITE = 258, 0xFFFFFFFF


def pipe_name(text: str) -> str:
    r"""``npipe:////./pipe/NAME`` (Docker's spelling; backslashes too) -> ``\\.\pipe\NAME``; UsageError otherwise.

    Only a pipe on this machine (``.``): a remote pipe would be a network listener without authentication."""
    rest = text[len("npipe://"):] if text.startswith("npipe://") else None
    if rest is None:
        raise UsageError(f"invalid --host {text!r}: not an npipe:// address", hint="e.g. npipe:////./pipe/runner_engine")
    rest = rest.replace("\\", "/")
    if not rest.lower().startswith("//./pipe/"):
        raise UsageError(f"invalid --host {text!r}: only a pipe on this machine can be served",
                         hint="e.g. npipe:////./pipe/runner_engine")
    name = rest[len("//./pipe/"):]
    full = "\\\\.\\pipe\\" + name
    if not name or "/" in name or len(full) > _MAX_NAME or any(ord(c) < 32 for c in name):
        raise UsageError(f"invalid --host {text!r}: a pipe name is 1 to {_MAX_NAME - 9} characters without "
                         f"slashes, backslashes or control characters", hint="e.g. npipe:////./pipe/runner_engine")
    return full


class _RawPipe(io.RawIOBase):
    """``makefile``'s raw stream: reads and writes go through the :class:`PipeSocket`."""

    def __init__(self, sock: "PipeSocket", mode: str):
        super().__init__()
        self._sock, self._mode = sock, mode

    def readable(self) -> bool:
        return "r" in self._mode

    def writable(self) -> bool:
        return "w" in self._mode

    def readinto(self, buffer) -> int:
        return self._sock.recv_into(buffer)

    def write(self, data) -> int:
        return self._sock.send(data)


class PipeSocket:
    """What http.server and the hijacking handlers use of a socket, over one connected pipe end.

    ``pipe`` has ``read(n) -> bytes`` (b"" at the end: the client closed, or sent its zero-length
    half-close message), ``write(data) -> int`` (BrokenPipeError when the client is gone), ``close_write()``,
    ``peer_closed()`` and ``close()``. On Windows it is :class:`_WinPipe`; the tests use a socket pair.
    """

    def __init__(self, pipe, peer: str = "npipe"):
        self._pipe, self._peer = pipe, peer
        self._eof = self._write_closed = self._closed = False
        self._write_lock = threading.Lock()  # a message is written whole, never interleaved with another
        self.timeout: float | None = None

    def recv(self, size: int, flags: int = 0) -> bytes:
        if flags:
            raise OSError(errno.EOPNOTSUPP, "a named pipe has no recv flags (MSG_PEEK)")
        if self._eof or self._closed:
            return b""
        data = self._pipe.read(size)
        if not data:
            self._eof = True
        return data

    def recv_into(self, buffer, size: int = 0) -> int:
        view = memoryview(buffer).cast("B")
        data = self.recv(size or len(view))
        view[:len(data)] = data
        return len(data)

    def send(self, data) -> int:
        view = memoryview(data).cast("B")[:BUFFER]
        if not view:
            return 0  # a zero-length message would mean "end of stream" to the client
        if self._write_closed or self._closed:
            raise BrokenPipeError(errno.EPIPE, "the named pipe is closed for writing")
        with self._write_lock:
            return self._pipe.write(bytes(view))

    def sendall(self, data) -> None:
        view = memoryview(data).cast("B")
        while view:
            view = view[self.send(view):]

    def makefile(self, mode: str = "r", buffering: int | None = None, **_: object):
        raw = _RawPipe(self, mode.replace("b", ""))
        if buffering == 0:
            return raw
        size = buffering if buffering and buffering > 0 else io.DEFAULT_BUFFER_SIZE
        return io.BufferedReader(raw, size) if "r" in mode else io.BufferedWriter(raw, size)

    def shutdown(self, how: int) -> None:
        """SHUT_WR sends the zero-length message a message-mode client takes as the end (go-winio's
        CloseWrite); SHUT_RD makes further reads return b""."""
        if how in (socket.SHUT_WR, socket.SHUT_RDWR) and not self._write_closed and not self._closed:
            self._write_closed = True
            try:
                with self._write_lock:
                    self._pipe.close_write()
            except OSError:
                pass  # the client is gone: nothing to tell it
        if how in (socket.SHUT_RD, socket.SHUT_RDWR):
            self._eof = True

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._pipe.close()

    def settimeout(self, timeout: float | None) -> None:
        self.timeout = timeout  # kept for callers that read it back; pipe I/O here blocks until done

    def gettimeout(self) -> float | None:
        return self.timeout

    def setsockopt(self, *args: object) -> None:
        """No options on a pipe (http.server asks for TCP_NODELAY on TCP only)."""

    def getpeername(self) -> str:
        return self._peer

    def fileno(self) -> int:
        raise io.UnsupportedOperation("a named pipe connection has no socket descriptor to poll")

    def peer_closed(self, timeout: float = 0) -> bool:
        """Whether the client has closed its end, waiting up to ``timeout`` for it: what the handlers ask a
        socket with poll/select (a pipe cannot be polled, so its state is peeked every 50 ms)."""
        import time

        deadline = time.monotonic() + timeout
        while not (self._closed or self._pipe.peer_closed()):
            if time.monotonic() >= deadline:
                return False
            time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
        return True


class _WinPipe:
    """One connected server end of a message-mode pipe, overlapped: a read and a write may wait at once."""

    def __init__(self, handle: int):
        import _winapi  # type: ignore[import-not-found]

        self._w, self.handle = _winapi, handle

    def _wait(self, ov) -> None:
        if self._w.WaitForMultipleObjects([ov.event], False, _INFINITE) != 0:
            ov.cancel()

    def read(self, size: int) -> bytes:
        try:
            ov, err = self._w.ReadFile(self.handle, size, overlapped=True)
        except OSError as exc:
            if exc.winerror in (_ERROR_BROKEN_PIPE, _ERROR_NO_DATA):
                return b""
            raise
        try:
            try:
                if err == _ERROR_IO_PENDING:
                    self._wait(ov)
            finally:
                nread, err = ov.GetOverlappedResult(True)
        except OSError as exc:  # a pending read fails here when the client closes meanwhile (_winapi raises)
            if exc.winerror in (_ERROR_BROKEN_PIPE, _ERROR_NO_DATA):
                return b""
            raise
        if err not in (0, _ERROR_MORE_DATA):  # ERROR_MORE_DATA: the rest of this message comes with the next read
            return b""  # ERROR_OPERATION_ABORTED: our handle was closed under a waiting read
        return bytes(ov.getbuffer()[:nread])

    def write(self, data: bytes) -> int:
        try:
            ov, err = self._w.WriteFile(self.handle, data, overlapped=True)
            try:
                if err == _ERROR_IO_PENDING:
                    self._wait(ov)
            finally:
                written, err = ov.GetOverlappedResult(True)
        except OSError as exc:
            if exc.winerror in (_ERROR_BROKEN_PIPE, _ERROR_NO_DATA):
                raise BrokenPipeError(errno.EPIPE, "the client closed the named pipe") from exc
            raise
        if err != 0 or (data and not written):  # aborted (our handle closed under it): never "0 written, retry"
            raise BrokenPipeError(errno.EPIPE, f"the write to the named pipe was aborted (error {err})")
        return written

    def peer_closed(self) -> bool:
        try:
            self._w.PeekNamedPipe(self.handle, 0)
            return False
        except OSError:  # ERROR_BROKEN_PIPE: the client closed its handle
            return True

    def close_write(self) -> None:
        ov, err = self._w.WriteFile(self.handle, b"", overlapped=True)
        if err == _ERROR_IO_PENDING:
            self._wait(ov)
        ov.GetOverlappedResult(True)

    def close(self) -> None:
        _kernel32().FlushFileBuffers(self.handle)  # what we wrote reaches the client before the handle goes
        self._w.CloseHandle(self.handle)


class PipeServer:
    """Serves ``handler_class`` on the pipe ``name`` (``\\\\.\\pipe\\NAME``), one thread per connection.

    The first instance is created here, so a taken name fails at once; while one client is being handed to
    its thread the next instance already exists, so clients never find the name missing."""

    def __init__(self, name: str, handler_class):
        try:
            import _winapi  # type: ignore[import-not-found]
        except ImportError:
            raise PlatformError("named pipes exist only on Windows",
                                hint="use unix:///path/docker.sock or tcp://127.0.0.1:PORT") from None
        self._w, self.pipe_name, self.RequestHandlerClass = _winapi, name, handler_class
        self.server_address = name
        self._stop, self._done = threading.Event(), threading.Event()
        self._sa, self._sd = _security_attributes(SDDL)
        self._next: int | None = self._create(first=True)

    def _create(self, first: bool) -> int:
        open_mode = _PIPE_ACCESS_DUPLEX | _FILE_FLAG_OVERLAPPED | (_FILE_FLAG_FIRST_PIPE_INSTANCE if first else 0)
        mode = _PIPE_TYPE_MESSAGE | _PIPE_READMODE_MESSAGE | _PIPE_REJECT_REMOTE_CLIENTS
        try:
            return self._w.CreateNamedPipe(self.pipe_name, open_mode, mode, _PIPE_UNLIMITED_INSTANCES, BUFFER,
                                           BUFFER, 0, _address_of(self._sa))
        except OSError as exc:
            if first and exc.winerror == _ERROR_ACCESS_DENIED:
                raise PlatformError(f"another server is already listening on {self.pipe_name}",
                                    hint="stop it first, or choose another --host") from exc
            raise PlatformError(f"cannot listen on {self.pipe_name}: {exc.strerror or exc}") from exc

    def _accept(self, handle: int, poll_interval: float) -> bool:
        """Wait for a client on ``handle``; False (handle closed) when the server is shutting down."""
        try:
            ov = self._w.ConnectNamedPipe(handle, overlapped=True)
        except OSError as exc:  # a client connected (and maybe left) before we waited: serve it
            if exc.winerror in (_ERROR_PIPE_CONNECTED, _ERROR_NO_DATA):
                return True
            raise
        while self._w.WaitForMultipleObjects([ov.event], False, int(poll_interval * 1000)) == _WAIT_TIMEOUT:
            if self._stop.is_set():
                ov.cancel()
                ov.GetOverlappedResult(True)
                self._w.CloseHandle(handle)
                return False
        _, err = ov.GetOverlappedResult(True)
        return err in (0, _ERROR_PIPE_CONNECTED)

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        try:
            while not self._stop.is_set() and self._next is not None:
                handle, self._next = self._next, None
                if not self._accept(handle, poll_interval):
                    break
                self._next = self._create(first=False)
                threading.Thread(target=self._serve_one, args=(handle,), daemon=True,
                                 name="npipe-client").start()
        finally:
            self._done.set()

    def _serve_one(self, handle: int) -> None:
        conn = PipeSocket(_WinPipe(handle), self.pipe_name)
        try:
            self.RequestHandlerClass(conn, (self.pipe_name, 0), self)
        except Exception:  # a broken client must not end the server; http.server logged what it could
            pass
        finally:
            conn.shutdown(socket.SHUT_WR)
            conn.close()

    def shutdown(self) -> None:
        self._stop.set()
        self._done.wait()

    def server_close(self) -> None:
        handle, self._next = self._next, None
        if handle is not None:
            self._w.CloseHandle(handle)
        if self._sd:
            _kernel32().LocalFree(self._sd)
            self._sd = None


def _kernel32():
    """kernel32 through ctypes, for the two calls _winapi lacks (FlushFileBuffers, LocalFree); its own function
    so that the unit tests can stand a fake in for it."""
    import ctypes

    kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)  # type: ignore[attr-defined]
    kernel32.FlushFileBuffers.argtypes = [ctypes.c_void_p]
    kernel32.LocalFree.argtypes = [ctypes.c_void_p]
    return kernel32


def _security_attributes(sddl: str):
    """A SECURITY_ATTRIBUTES holding ``sddl``'s descriptor (ctypes), and the descriptor to LocalFree later."""
    import ctypes
    from ctypes import wintypes

    class SecurityAttributes(ctypes.Structure):
        _fields_ = [("nLength", wintypes.DWORD), ("lpSecurityDescriptor", ctypes.c_void_p),
                    ("bInheritHandle", wintypes.BOOL)]

    advapi32 = ctypes.WinDLL("advapi32", use_last_error=True)  # type: ignore[attr-defined]
    descriptor = ctypes.c_void_p()
    if not advapi32.ConvertStringSecurityDescriptorToSecurityDescriptorW(ctypes.c_wchar_p(sddl), 1,
                                                                         ctypes.byref(descriptor), None):
        raise PlatformError(f"cannot build the named pipe's access list: WinError {ctypes.get_last_error()}")
    return SecurityAttributes(ctypes.sizeof(SecurityAttributes), descriptor, False), descriptor.value


def _address_of(structure) -> int:
    import ctypes

    return ctypes.addressof(structure)
