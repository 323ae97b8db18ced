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
- a client that goes away entirely ends the session at once: the read ends are closed, so the writer gets
  EPIPE and drops this sink, and the container runs on (its log keeps everything), as with Docker.

Why a thread per stream and no poll loop: Windows' Python can wait on sockets only (no ``select.poll``, and
``select.select`` refuses pipes) and has no ``os.pipe2``, and ``runner serve`` on Windows pumps the VM's
containers through this very code. So each pipe has a reader thread (:class:`PipeReaders`) and the client's
side of the connection one more (its input to stdin, then a watch for a full close). Each pipe end belongs to
the one thread that uses it from the moment the pump starts, and only that thread closes it: closing an fd
that another thread is blocked on neither wakes that thread (Linux) nor is safe (the number may be reused).
A reader blocked on a quiet pipe is woken by a byte written through our own write end once the session ended
(the byte is dropped: the reader sees the end first).
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import threading
import time
from typing import Callable

from runner.api.streams import STDERR, STDOUT, frame
from runner.stdio import Stdio, write_all

_POLL = getattr(select, "poll", None)  # absent on Windows
_POLL_PIPES = _POLL is not None  # whether PipeReaders may wait on pipes with poll (apart for the tests)
_HUP = (select.POLLHUP | select.POLLERR | select.POLLNVAL) if _POLL is not None else 0
_RDHUP = getattr(select, "POLLRDHUP", 0x2000) if _POLL is not None else 0  # the peer shut its sending half
_WATCH = 0.25  # seconds between looks at a half-closed client whose full close nothing can wait for
CHUNK = 65536


def client_gone(sock: socket.socket, timeout: float = 0.0) -> bool:
    """Whether the peer has closed the connection entirely (not merely half-closed it), waiting up to
    ``timeout`` seconds for that (it may answer False sooner).

    A unix socket's full close is POLLHUP where poll exists; a named pipe is asked (no descriptor to poll).
    Over TCP a clean close after a half-close looks exactly like the half-close until a write fails (Linux
    reports POLLHUP only after a reset), so without poll (Windows) a reset is the one sign read here and
    writers notice the rest, as they do over TCP on Linux."""
    if hasattr(sock, "peer_closed"):  # a Windows named pipe (runner.api.npipe)
        return sock.peer_closed(timeout)
    try:
        if _POLL is not None:
            poller = _POLL()
            poller.register(sock.fileno(), _HUP)
            return any(ev & _HUP for _, ev in poller.poll(int(timeout * 1000)))
        readable, _, _ = select.select([sock], [], [], timeout)
        if readable and sock.recv(1, socket.MSG_PEEK) == b"":
            # At EOF (half-closed) a later reset no longer shows in recv: the socket's pending error does.
            return sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) != 0
        return False
    except (OSError, ValueError):  # reset, or a socket closed meanwhile (fileno -1)
        return True


class PipeReaders:
    """Reads each ``(fd, stream)`` until its end and hands every chunk to ``deliver(stream, data)``, one call
    at a time. Each pipe is closed as its reading ends, so a writer still writing gets EPIPE. A ``deliver``
    that raises OSError (the client left) stops them all and calls ``on_fail``; after :meth:`stop`, whatever
    is still read is dropped.

    Where poll exists, one thread (the caller) waits on all the pipes: it takes what two pipes hold in the
    order they were registered (stdout first), which keeps a log's stdout and stderr in their order when one
    writer fills both in turn (``logs``; Docker keeps its json-file's order). Windows has no poll for pipes:
    there each pipe has a thread of its own (the first is the caller), each stream keeps its own order, and
    chunks that two streams got at the same moment may reach the client either way round (as Docker's attach,
    which copies the two streams in two goroutines)."""

    def __init__(self, sources: list[tuple[int, int]], deliver: Callable[[int, bytes], None],
                 on_fail: Callable[[], None] | None = None):
        self._sources, self._deliver, self._on_fail = list(sources), deliver, on_fail
        self._lock = threading.Lock()
        self.stopped = threading.Event()

    def run(self) -> None:
        """Until every source ended (or stopped and woke)."""
        if _POLL_PIPES and len(self._sources) > 1:
            self._poll_all()
            return
        threads = [threading.Thread(target=self._read, args=src, name=f"pipe-{src[1]}", daemon=True)
                   for src in self._sources[1:]]
        for t in threads:
            t.start()
        if self._sources:
            self._read(*self._sources[0])
        for t in threads:
            t.join()

    def stop(self) -> None:
        self.stopped.set()

    def _read(self, fd: int, stream: int) -> None:
        failed = False
        try:
            while not self.stopped.is_set():
                data = os.read(fd, CHUNK)
                if not data or self.stopped.is_set():
                    return
                with self._lock:
                    self._deliver(stream, data)
        except OSError:
            failed = not self.stopped.is_set()
            self.stopped.set()
        finally:
            with contextlib.suppress(OSError):
                os.close(fd)
        # Only now, with this pipe closed: on_fail may write into the others to wake their readers, and a
        # write into this one, full and unread, would wait for ever.
        if failed and self._on_fail is not None:
            self._on_fail()

    def _poll_all(self) -> None:
        open_ = dict(self._sources)
        poller = _POLL()
        for fd in open_:
            poller.register(fd, select.POLLIN)
        failed = False
        try:
            while open_ and not self.stopped.is_set():
                for fd, _ in poller.poll():
                    data = os.read(fd, CHUNK)
                    if self.stopped.is_set():
                        return
                    if not data:
                        poller.unregister(fd)
                        del open_[fd]
                        os.close(fd)
                        continue
                    self._deliver(open_[fd], data)
        except OSError:
            failed = not self.stopped.is_set()
            self.stopped.set()
        finally:
            for fd in open_:
                with contextlib.suppress(OSError):
                    os.close(fd)
        if failed and self._on_fail is not None:  # every pipe closed: see _read
            self._on_fail()


def hung_up(sock: socket.socket, timeout: float) -> bool:
    """Wait up to ``timeout`` for the client to close its end (or even only its sending half, as Go's server
    takes a read EOF after the body for a cancelled request); True when it did. Unread data does not wake it.

    Without poll (Windows) the socket is selected and peeked: EOF or a reset is a hang-up; unread data is
    not, and the rest of ``timeout`` is then waited out instead of selecting again at once (a busy loop)."""
    if hasattr(sock, "peer_closed"):  # a Windows named pipe (runner.api.npipe)
        return sock.peer_closed(timeout)
    try:
        if _POLL is not None:
            poller = _POLL()
            poller.register(sock.fileno(), _HUP | _RDHUP)
            return bool(poller.poll(int(timeout * 1000)))
        deadline = time.monotonic() + timeout
        readable, _, _ = select.select([sock], [], [], timeout)
        if readable:
            if sock.recv(1, socket.MSG_PEEK) == b"":
                return True
            time.sleep(max(0.0, deadline - time.monotonic()))
        return False
    except (OSError, ValueError):
        return True


class AttachSession:
    """The pipes behind one attached connection and the pump between them and the socket."""

    def __init__(self, sock: socket.socket, tty: bool, stdin: bool, stdout: bool = True, stderr: bool = True):
        self.sock = sock
        self.tty = tty
        self.want = {STDOUT: stdout, STDERR: stderr}
        self._bound = threading.Event()
        self._ended = threading.Event()
        self._state = threading.Lock()  # only for the ended flag: never held while blocking
        self._lock = threading.Lock()  # the fds of ours that several threads may write or close
        self._readers: PipeReaders | None = None  # from pump() on, the output read ends are theirs
        # os.pipe: non-inheritable (O_CLOEXEC) on every OS, where pipe2 is Unix only.
        self._out_r, self._out_w = os.pipe()
        self._err_r = self._err_w = None
        if not tty:
            self._err_r, self._err_w = os.pipe()
        self._in_r = self._in_w = None
        if stdin:
            self._in_r, self._in_w = os.pipe()

    @property
    def _closed(self) -> bool:
        return self._ended.is_set()

    def stdio(self) -> Stdio:
        """The fds to give the engine: with a TTY all output arrives on stdout."""
        return Stdio(self._in_r, self._out_w, self._err_w if self._err_w is not None else self._out_w)

    def bind(self) -> None:
        """The process runs with :meth:`stdio`: start pumping."""
        self._bound.set()

    def wait_bound(self) -> bool:
        """Block until :meth:`bind` (True) or the client hangs up or the session is closed (False)."""
        while not self._bound.wait(_WATCH):
            if self._closed or client_gone(self.sock):
                return False
        return not self._closed

    def writers_done(self) -> None:
        """The process ended and every byte it wrote is in the pipes: close our write ends, so the pump sees
        EOF after draining them, and the stdin pipe (nobody reads it any more; a write blocked on it fails)."""
        with self._lock:
            for name in ("_in_r", "_out_w", "_err_w", "_in_w"):  # _in_w is still ours only before the pump
                fd = getattr(self, name)
                if fd is not None:
                    setattr(self, name, None)
                    with contextlib.suppress(OSError):
                        os.close(fd)

    def pump(self) -> None:
        """Copy output to the client (framed without a TTY) and the client's input to stdin, until the output
        ends or the client goes away; then close everything of ours."""
        with self._lock:
            if self._closed:
                return  # closed before it began: close() dealt with every fd
            sources = [(self._out_r, STDOUT)] + ([(self._err_r, STDERR)] if self._err_r is not None else [])
            self._out_r = self._err_r = None
            stdin_w, self._in_w = self._in_w, None
            self._readers = PipeReaders(sources, self._send, on_fail=self.close)
        threading.Thread(target=self._from_client, args=(stdin_w,), name="attach-client", daemon=True).start()
        try:
            self._readers.run()
        finally:
            self.close()

    def _send(self, stream: int, data: bytes) -> None:
        if self.want[stream]:
            self.sock.sendall(data if self.tty else frame(stream, data))

    def _from_client(self, stdin_w: int | None) -> None:
        """Copy what the client sends to the container's stdin (dropped without one). Its half-close ends that
        stdin and nothing else; a full close (or a reset) ends the session. This thread owns ``stdin_w``."""
        reset = False
        try:
            while not self._closed:
                try:
                    data = self.sock.recv(CHUNK)
                except OSError:
                    data, reset = b"", True
                if not data:
                    break
                if stdin_w is not None and not self._closed:
                    try:
                        write_all(stdin_w, data)  # blocking: a process not reading its stdin slows the client
                    except OSError:
                        os.close(stdin_w)
                        stdin_w = None
        finally:
            if stdin_w is not None:
                with contextlib.suppress(OSError):
                    os.close(stdin_w)  # the half-close: the container's stdin ends, its output does not
        if reset or self._closed:
            self.close()
            return
        while not self._closed:
            began = time.monotonic()
            if client_gone(self.sock, _WATCH):
                self.close()
                return
            rest = _WATCH - (time.monotonic() - began)
            if rest > 0:
                self._ended.wait(rest)

    def discard(self) -> None:
        """Close every pipe but leave the connection alone (the process never started)."""
        self.writers_done()
        self._close_readers()

    def _close_readers(self) -> None:
        with self._lock:
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
        with self._state:
            if self._ended.is_set():
                return
            self._ended.set()
        self._bound.set()
        with self._lock:  # the client is gone: so is the container's stdin (Docker's StdinOnce)
            if self._in_w is not None:  # not pumping yet (the pump's client thread owns it otherwise)
                with contextlib.suppress(OSError):
                    os.close(self._in_w)
                self._in_w = None
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes our threads blocked on the connection
        if self._readers is not None:
            self._readers.stop()
            self._wake_readers()
        self._close_readers()
        with contextlib.suppress(OSError):
            self.sock.close()

    def _wake_readers(self) -> None:
        """A byte through each write end still ours, so a reader blocked on a quiet pipe returns, sees the
        stop and closes its end. Bounded even on a full pipe: that reader is not blocked, it reads (room) or
        closes (EPIPE here); it is not stuck sending either, the connection is shut down already."""
        with self._lock:
            for fd in {self._out_w, self._err_w} - {None}:
                with contextlib.suppress(OSError):
                    os.write(fd, b"\0")
