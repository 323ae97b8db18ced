"""Attaching to a container that already runs: the caller's side of the shim's attach endpoint
(runner.engine.attach_server). Runs where the engine runs: in the CLI natively, in the agent in the guest, in
the API server natively; through the VM the agent's attached-call frames carry the caller's stdio to it.

Docker's rules, kept here so every caller gets them alike:

- detach keys (``ctrl-p,ctrl-q`` unless chosen otherwise) typed on a terminal container's stdin end the
  attach; they are not passed on, the container runs on, and the attach's "exit code" is 0 (dockerd looks for
  them only with a terminal, as here);
- the end of the client's stdin closes the container's stdin only for a StdinOnce container without a
  terminal (``run -i`` attached); otherwise it ends the attach's streams, and the container's stdin stays open
  for the next one (``run -di`` then ``attach``); the docker CLI then waits for the container's exit, and so
  does ``runner attach`` (the handle's ``ended`` is ``"eof"``);
- when the container exits while attached, its exit code is the attach's (``ended`` is ``"exit"``);
- a container without ``-i`` and ``-t`` has no endpoint: its output is followed from its log, from now on.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import struct
import threading

from runner.engine import attach_server as wire
from runner.engine.process import AttachedProcess
from runner.errors import NotFound, UsageError
from runner.stdio import Stdio, TermSize, write_all

DEFAULT_DETACH_KEYS = "ctrl-p,ctrl-q"
_CTRL_EXTRA = {"@": 0, "[": 27, "\\": 28, "]": 29, "^": 30, "_": 31}


def parse_detach_keys(text: str | None) -> bytes:
    """Docker's ``--detach-keys`` format: comma-separated ``ctrl-<a-z@[\\]^_>`` or single characters."""
    text = DEFAULT_DETACH_KEYS if text is None else text
    out = bytearray()
    for key in text.split(","):
        key = key.strip()
        lower = key.lower()
        if lower.startswith("ctrl-") and len(key) == 6:
            c = lower[5]
            if "a" <= c <= "z":
                out.append(ord(c) - ord("a") + 1)
                continue
            if c in _CTRL_EXTRA:
                out.append(_CTRL_EXTRA[c])
                continue
        elif len(key) == 1 and ord(key) < 128:
            out.append(ord(key))
            continue
        raise UsageError(f"invalid detach keys {text!r}: unknown key {key!r}",
                         hint="use a comma-separated list of ctrl-<value> (a-z, @, [, \\, ], ^, _) or single "
                              "characters, e.g. ctrl-p,ctrl-q")
    if not out:
        raise UsageError("invalid detach keys: none given", hint="e.g. --detach-keys ctrl-p,ctrl-q")
    return bytes(out)


class EscapeScanner:
    """Finds the detach sequence in a stream of input chunks; bytes of a partial match are held back until
    they turn out not to be one (as Docker's escape proxy)."""

    def __init__(self, keys: bytes):
        self.keys = keys
        self.held = bytearray()

    def feed(self, data: bytes) -> tuple[bytes, bool]:
        """(bytes to pass on, whether the sequence is complete)."""
        out = bytearray()
        for b in data:
            if b == self.keys[len(self.held)]:
                self.held.append(b)
                if len(self.held) == len(self.keys):
                    return bytes(out), True
                continue
            out += self.held
            self.held.clear()
            if b == self.keys[0]:
                self.held.append(b)
                if len(self.keys) == 1:
                    return bytes(out), True
            else:
                out.append(b)
        return bytes(out), False


def attach(engine, rec, stdio: Stdio, size: TermSize | None, detach_keys: str | None) -> AttachedProcess:
    keys = parse_detach_keys(detach_keys)
    sock = wire.connect(engine.state.dir(rec.id))
    if sock is not None and not wire.await_ready(sock):
        sock.close()  # the container ended meanwhile: the log and the record tell the rest
        sock = None
    if sock is None:
        return LogAttach(engine, rec, stdio)
    return SocketAttach(engine, rec, sock, stdio, size, keys)


def send_resize(engine, cid: str, size: TermSize) -> bool:
    """Pass a new window size to a running container's terminal; False if it has no endpoint."""
    sock = wire.connect(engine.state.dir(cid))
    if sock is None:
        return False
    with sock:
        sock.sendall(wire.encode(wire.RESIZE, struct.pack(">HH", size.rows, size.cols)))
    return True


def _sink_gone(fd: int) -> bool:
    """Whether the reader of the caller's output pipe went away (POLLERR on a pipe's write end): the API
    client disconnected; a terminal or file never reports it."""
    poller = select.poll()
    poller.register(fd, 0)
    return any(ev & (select.POLLERR | select.POLLHUP) for _, ev in poller.poll(0))


# How an attach ended (the handle's ``ended``): the container exited; the client detached (keys, or its reader
# went away); the client's stdin ended (its streams end; the container may run on); the endpoint went away.
EXITED, DETACHED, STDIN_ENDED, LOST = "exit", "detach", "eof", "lost"


class _Attach(AttachedProcess):
    def __init__(self, engine, rec, stdio: Stdio):
        super().__init__(rec.id, rec.pid, None)
        self.engine = engine
        self.stdio = stdio
        self.ended = LOST
        self._done = threading.Event()
        self._sinks = {wire.OUT: stdio.stdout, wire.ERR: stdio.stderr}

    def _write(self, kind: int, data: bytes) -> bool:
        fd = self._sinks.get(kind)
        if fd is None:
            return True
        try:
            write_all(fd, data)
        except OSError:
            return False  # the caller's reader is gone: so is this attach
        return True

    def _exit_code(self) -> int:
        try:
            return self.engine.wait(self.container_id)
        except NotFound:
            return 0  # --rm: removed the moment it ended; its code went with it

    @property
    def detached(self) -> bool:
        return self.ended in (DETACHED, STDIN_ENDED)

    def wait(self) -> int:
        """The exit code once the container exited while attached; 0 once the attach ended without an exit."""
        self._done.wait()
        if self._code is None:
            self._code = 0 if self.detached else self._exit_code()
        return self._code


class SocketAttach(_Attach):
    """Attached through the shim's socket: live output, input, resizes."""

    def __init__(self, engine, rec, sock: socket.socket, stdio: Stdio, size: TermSize | None, keys: bytes):
        super().__init__(engine, rec, stdio)
        spec = rec.spec
        self.tty = bool(spec.get("tty"))
        self._close_on_eof = bool(spec.get("stdin_once")) and not self.tty
        self.sock = sock
        self._send_lock = threading.Lock()
        if size is not None:
            self.resize(size)
        threading.Thread(target=self._output, name=f"attach-out-{rec.id[:12]}", daemon=True).start()
        if stdio.stdin is not None and spec.get("interactive"):
            self._scanner = EscapeScanner(keys) if self.tty else None
            threading.Thread(target=self._input, name=f"attach-in-{rec.id[:12]}", daemon=True).start()

    def _send(self, data: bytes) -> bool:
        with self._send_lock:
            try:
                self.sock.sendall(data)
            except OSError:
                return False
        return True

    def resize(self, size: TermSize) -> None:
        if self.tty:
            self._send(wire.encode(wire.RESIZE, struct.pack(">HH", size.rows, size.cols)))

    def detach(self, how: str = DETACHED) -> None:
        """Leave the container running: the shim sees our socket close."""
        if self.ended == LOST:
            self.ended = how
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)

    def _output(self) -> None:
        decoder = wire.Decoder()
        try:
            while True:
                ready, _, _ = select.select([self.sock], [], [], 0.5)
                if not ready:
                    if _sink_gone(self.stdio.stdout):
                        self.detach()
                        return
                    continue
                try:
                    data = self.sock.recv(65536)
                except OSError:
                    data = b""
                if not data:
                    return  # detached, or the shim is gone: wait() asks the record
                for kind, payload in decoder.feed(data):
                    if kind == wire.EXIT and len(payload) == 4:
                        self._code = struct.unpack(">i", payload)[0]
                        self.ended = EXITED
                        return
                    if not self._write(kind, payload):
                        self.detach()
                        return
        except ValueError:  # a malformed frame: the endpoint cannot be trusted
            self.detach()
        finally:
            self._done.set()
            with contextlib.suppress(OSError):
                self.sock.close()

    def _input(self) -> None:
        while not self._done.is_set():
            try:
                data = os.read(self.stdio.stdin, 65536)
            except InterruptedError:
                continue
            except OSError:
                data = b""  # a terminal that went away reads as EIO: the end of input
            if not data:
                self._send(wire.encode(wire.STDIN_EOF))
                if not self._close_on_eof:
                    self.detach(STDIN_ENDED)  # Docker: without StdinOnce, the end of input ends the attach
                return
            escaped = False
            if self._scanner is not None:
                data, escaped = self._scanner.feed(data)
            if data and not self._send(wire.encode(wire.IN, data)):
                return
            if escaped:
                self.detach()
                return


class LogAttach(_Attach):
    """A container without ``-i`` and ``-t``: its output from now on, followed in its log; no input."""

    def __init__(self, engine, rec, stdio: Stdio):
        super().__init__(engine, rec, stdio)
        threading.Thread(target=self._follow, name=f"attach-log-{rec.id[:12]}", daemon=True).start()

    def _follow(self) -> None:
        try:
            self.engine.logs(self.container_id, Stdio(None, self.stdio.stdout, self.stdio.stderr),
                             follow=True, tail=0)
        except NotFound:
            pass
        except OSError:
            self.ended = DETACHED  # the caller's reader went away: the attach ends, the container runs on
        finally:
            self._done.set()
