"""One hijacked attach (``/containers/{id}/attach``, ``/exec/{id}/start``): the client's socket on one side,
pipes that the container's (or exec'd process's) stdio is wired to on the other.

Why pipes and a pump rather than the socket itself as the container's stdio: without a TTY Docker clients
expect stdout and stderr multiplexed into 8-byte-header frames on the one connection, so somebody must read the
two streams apart; the same pipes serve both backends (natively the engine's shim writes them, through the VM
the agent client does). Guarantees users rely on:

- output written before the client reads is never lost: a pipe holds it, and when it is full the writer waits
  (as Docker's attach applies back-pressure);
- the client's half-close (``CloseWrite`` after its stdin ended) closes the container's stdin and nothing else:
  output keeps flowing until the process ends;
- a client that goes away entirely (``POLLHUP``) ends the session at once: the read ends are closed, so the
  writer gets EPIPE and drops this sink, and the container runs on (its log keeps everything), as with Docker.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import threading

from runner.api.streams import STDERR, STDOUT, frame
from runner.stdio import Stdio

_HUP = select.POLLHUP | select.POLLERR | select.POLLNVAL
_RDHUP = getattr(select, "POLLRDHUP", 0x2000)


def client_gone(sock: socket.socket) -> bool:
    """Whether the peer has closed the connection entirely (not merely half-closed it)."""
    if hasattr(sock, "peer_closed"):  # a Windows named pipe (runner.api.npipe): no descriptor to poll
        return sock.peer_closed()
    poller = select.poll()
    poller.register(sock.fileno(), _HUP)
    return any(ev & _HUP for _, ev in poller.poll(0))


def hung_up(sock: socket.socket, timeout: float) -> bool:
    """Wait up to ``timeout`` for the client to close its end (or even only its sending half, as Go's server
    takes a read EOF after the body for a cancelled request); True when it did. Unread data does not wake it."""
    if hasattr(sock, "peer_closed"):  # a Windows named pipe (runner.api.npipe)
        return sock.peer_closed(timeout)
    poller = select.poll()
    poller.register(sock.fileno(), _HUP | _RDHUP)
    try:
        return bool(poller.poll(int(timeout * 1000)))
    except (OSError, ValueError):
        return True


class AttachSession:
    """The pipes behind one attached connection and the pump between them and the socket."""

    def __init__(self, sock: socket.socket, tty: bool, stdin: bool, stdout: bool = True, stderr: bool = True):
        self.sock = sock
        self.tty = tty
        self.want = {STDOUT: stdout, STDERR: stderr}
        self._bound = threading.Event()
        self._closed = False
        self._lock = threading.Lock()
        self._out_r, self._out_w = os.pipe2(os.O_CLOEXEC)
        self._err_r = self._err_w = None
        if not tty:
            self._err_r, self._err_w = os.pipe2(os.O_CLOEXEC)
        self._in_r = self._in_w = None
        if stdin:
            self._in_r, self._in_w = os.pipe2(os.O_CLOEXEC)

    def stdio(self) -> Stdio:
        """The fds to give the engine: with a TTY all output arrives on stdout."""
        return Stdio(self._in_r, self._out_w, self._err_w if self._err_w is not None else self._out_w)

    def bind(self) -> None:
        """The process runs with :meth:`stdio`: start pumping."""
        self._bound.set()

    def wait_bound(self) -> bool:
        """Block until :meth:`bind` (True) or the client hangs up or the session is closed (False)."""
        while not self._bound.wait(0.25):
            if self._closed or client_gone(self.sock):
                return False
        return not self._closed

    def writers_done(self) -> None:
        """The process ended and every byte it wrote is in the pipes: close our write ends, so the pump sees
        EOF after draining them, and the stdin pipe (nobody reads it any more; a write blocked on it fails)."""
        for name in ("_in_r", "_out_w", "_err_w"):
            fd = getattr(self, name)
            if fd is not None:
                setattr(self, name, None)
                with contextlib.suppress(OSError):
                    os.close(fd)
        with self._lock:
            if self._in_w is not None:
                with contextlib.suppress(OSError):
                    os.close(self._in_w)
                self._in_w = None

    def pump(self) -> None:
        """Copy output to the client (framed without a TTY) and the client's input to stdin, until the output
        ends or the client goes away; then close everything of ours."""
        sources = {self._out_r: STDOUT}
        if self._err_r is not None:
            sources[self._err_r] = STDERR
        poller = select.poll()
        for fd in sources:
            poller.register(fd, select.POLLIN)
        sock_fd = self.sock.fileno()
        poller.register(sock_fd, select.POLLIN | _RDHUP if self._in_w is not None else _RDHUP)
        try:
            while sources:
                for fd, ev in poller.poll():
                    if fd == sock_fd:
                        if ev & _HUP and not ev & select.POLLIN:
                            return  # the client is gone
                        if not self._from_client():
                            if client_gone(self.sock):
                                return
                            poller.modify(sock_fd, 0)  # half-closed: POLLHUP (a full close) still reports
                        continue
                    data = os.read(fd, 65536)
                    if not data:
                        poller.unregister(fd)
                        del sources[fd]
                        continue
                    stream = sources[fd]
                    if self.want[stream]:
                        self.sock.sendall(data if self.tty else frame(stream, data))
        except OSError:
            return  # the client went away mid-write: the container runs on, as in Docker
        finally:
            self.close()

    def _from_client(self) -> bool:
        """Read what the client sent; False once it half-closed (or closed): its stdin has ended."""
        try:
            data = self.sock.recv(65536)
        except OSError:
            data = b""
        with self._lock:
            if not data or self._in_w is None:
                if self._in_w is not None:
                    os.close(self._in_w)  # the half-close: the container's stdin ends, its output does not
                    self._in_w = None
                return bool(data)
            try:
                os.write(self._in_w, data)  # blocking: a process not reading its stdin slows the client down
            except OSError:
                os.close(self._in_w)
                self._in_w = None
        return True

    def discard(self) -> None:
        """Close every pipe but leave the connection alone (the process never started)."""
        self.writers_done()
        self._close_readers()

    def _close_readers(self) -> None:
        for name in ("_out_r", "_err_r"):
            fd = getattr(self, name)
            if fd is not None:
                setattr(self, name, None)
                with contextlib.suppress(OSError):
                    os.close(fd)

    def abandon(self) -> None:
        """End a session whose pipes were never handed to a process: every fd of ours, and the connection."""
        self.discard()
        self.close()

    def close(self) -> None:
        """Close the read ends (a writer still running gets EPIPE and drops this sink) and the connection."""
        if self._closed:
            return
        self._closed = True
        self._bound.set()
        with self._lock:  # the client is gone: so is the container's stdin (Docker's StdinOnce)
            if self._in_w is not None:
                with contextlib.suppress(OSError):
                    os.close(self._in_w)
                self._in_w = None
        self._close_readers()
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self.sock.close()
