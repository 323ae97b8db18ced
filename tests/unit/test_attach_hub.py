"""The shim's attach endpoint (runner.engine.attach_server.Hub) driven by the real relay loop over real pipes,
a real unix socket and a real pty, without a container: input reaches the container's stdin, output reaches
every attacher, StdinOnce closes the stdin, a slow attacher is dropped, a resize reaches the terminal."""

from __future__ import annotations

import fcntl
import os
import pty
import socket
import struct
import termios
import threading

import pytest

from runner.engine import attach_server as wire
from runner.engine import logs


class Relay:
    """logs.relay in a thread with one output pipe, as the shim runs it."""

    def __init__(self, hub):
        self.out_r, self.out_w = os.pipe()
        self.thread = threading.Thread(target=logs.relay, args=({self.out_r: logs.STDOUT}, None, {}, None, hub),
                                       daemon=True)
        self.thread.start()

    def stop(self) -> None:
        os.close(self.out_w)  # the workload's output ends: the relay returns
        self.thread.join(10)
        assert not self.thread.is_alive()
        os.close(self.out_r)


def _connect(directory: str) -> socket.socket:
    sock = wire.connect(directory)
    assert sock is not None
    assert wire.await_ready(sock)  # accepted: from now on it sees every chunk
    sock.settimeout(10)
    return sock


def _frames(sock: socket.socket, want: int) -> list[tuple[int, bytes]]:
    decoder, got = wire.Decoder(), []
    while len(got) < want:
        data = sock.recv(65536)
        assert data, f"closed after {got}"
        got += decoder.feed(data)
    return got


def _read_exactly(fd: int, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = os.read(fd, n - len(data))
        assert chunk
        data += chunk
    return data


@pytest.fixture
def stdin_pipe():
    r, w = os.pipe()
    yield r, w
    for fd in (r, w):
        try:
            os.close(fd)
        except OSError:
            pass


def test_input_output_two_attachers_stdin_once_and_exit(tmp_path, stdin_pipe):
    in_r, in_w = stdin_pipe
    hub = wire.Hub(str(tmp_path), close_on_eof=True)
    assert oct(os.stat(tmp_path / wire.SOCKET_NAME).st_mode & 0o777) == "0o600"
    hub.wire(in_w, None, None)
    relay = Relay(hub)
    a, b = _connect(str(tmp_path)), _connect(str(tmp_path))
    try:
        a.sendall(wire.encode(wire.IN, b"from-a\n"))
        b.sendall(wire.encode(wire.IN, b"from-b\n"))
        got = _read_exactly(in_r, 14)
        assert sorted(got.splitlines()) == [b"from-a", b"from-b"]
        os.write(relay.out_w, b"answer\n")
        assert _frames(a, 1) == [(wire.OUT, b"answer\n")]
        assert _frames(b, 1) == [(wire.OUT, b"answer\n")]
        b.sendall(wire.encode(wire.STDIN_EOF))  # StdinOnce without a terminal: the container's stdin ends
        assert os.read(in_r, 10) == b""
        relay.stop()
        hub.exited(7)
        assert _frames(a, 1) == [(wire.EXIT, struct.pack(">i", 7))]
        assert a.recv(10) == b""  # and let go
    finally:
        a.close()
        b.close()
        hub.close()
    assert not (tmp_path / wire.SOCKET_NAME).exists()
    assert wire.connect(str(tmp_path)) is None


def test_without_stdin_once_the_stdin_stays_open_and_a_detach_changes_nothing(tmp_path, stdin_pipe):
    in_r, in_w = stdin_pipe
    hub = wire.Hub(str(tmp_path), close_on_eof=False)
    hub.wire(in_w, None, None)
    relay = Relay(hub)
    try:
        a = _connect(str(tmp_path))
        a.sendall(wire.encode(wire.IN, b"one\n") + wire.encode(wire.STDIN_EOF))
        a.close()  # detached
        b = _connect(str(tmp_path))
        b.sendall(wire.encode(wire.IN, b"two\n"))
        assert _read_exactly(in_r, 8) == b"one\ntwo\n"
        b.close()
    finally:
        relay.stop()
        hub.close()


def test_a_slow_client_gets_everything_and_a_hung_one_is_dropped(tmp_path, monkeypatch):
    """Back-pressure for the one that reads (it receives every byte), a drop for the one that never does."""
    monkeypatch.setattr(wire, "MAX_PENDING", 256 * 1024)
    monkeypatch.setattr(wire, "STALL_TIMEOUT", 2.0)  # the reader may be descheduled a while on a busy host
    hub = wire.Hub(str(tmp_path), close_on_eof=False)
    hub.wire(None, None, None)
    relay = Relay(hub)
    slow, fast = _connect(str(tmp_path)), _connect(str(tmp_path))
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    try:
        total, chunk = 0, b"y" * 65536
        received = bytearray()

        def drain() -> None:
            decoder = wire.Decoder()
            while data := fast.recv(65536):
                for kind, payload in decoder.feed(data):
                    if kind == wire.OUT:
                        received.extend(payload)
        reader = threading.Thread(target=drain, daemon=True)
        reader.start()
        for _ in range(64):  # 4 MiB: far more than the hung client's socket and its allowance hold
            os.write(relay.out_w, chunk)  # blocks while the relay waits for the clients
            total += len(chunk)
        relay.stop()
        hub.exited(0)
        reader.join(10)
        assert len(received) == total  # the reading client got everything, however fast the writer
        slow.settimeout(10)
        seen = b""
        while data := slow.recv(65536):
            seen += data
        assert len(seen) < total  # the hung one was cut off instead of stalling the container for good
    finally:
        slow.close()
        fast.close()
        hub.close()


def test_resize_reaches_the_terminal_and_input_goes_into_the_master(tmp_path):
    master, slave = pty.openpty()
    hub = wire.Hub(str(tmp_path), close_on_eof=False)
    hub.wire(master, master, None)
    relay = Relay(hub)
    try:
        client = _connect(str(tmp_path))
        client.sendall(wire.encode(wire.RESIZE, struct.pack(">HH", 19, 71)) + wire.encode(wire.IN, b"typed\n"))
        attrs = termios.tcgetattr(slave)
        attrs[3] &= ~termios.ECHO
        termios.tcsetattr(slave, termios.TCSANOW, attrs)
        assert os.read(slave, 100) == b"typed\n"  # the line arrives after the resize, in order
        rows, cols = struct.unpack("HHHH", fcntl.ioctl(slave, termios.TIOCGWINSZ, b"\0" * 8))[:2]
        assert (rows, cols) == (19, 71)
        client.close()
    finally:
        relay.stop()
        hub.close()
        os.close(slave)
        os.close(master)


def test_a_failing_hub_shuts_down_and_the_relay_goes_on(tmp_path):
    hub = wire.Hub(str(tmp_path), close_on_eof=False)
    hub.wire(None, None, None)

    def broken(_mask):
        raise RuntimeError("a bug in the hub")
    hub._accept = broken
    relay = Relay(hub)
    try:
        sock = wire.connect(str(tmp_path))  # the accept fails: the endpoint goes, the relay does not
        assert sock is not None and not wire.await_ready(sock, 5)
        sock.close()
        os.write(relay.out_w, b"still relayed")
    finally:
        relay.stop()  # returns: the relay survived
        hub.close()


def test_a_long_paste_into_a_terminal_arrives_whole_without_more_input(tmp_path):
    """More input than the terminal holds at once: the rest goes in as the program reads, not only when the
    next key is typed."""
    import tty
    master, slave = pty.openpty()
    tty.setraw(slave)
    hub = wire.Hub(str(tmp_path), close_on_eof=False)
    hub.wire(master, master, None)
    relay = Relay(hub)
    try:
        client = _connect(str(tmp_path))
        paste = bytes(range(32, 127)) * 2000  # ~190 KB
        client.sendall(wire.encode(wire.IN, paste))
        assert _read_exactly(slave, len(paste)) == paste
        client.close()
    finally:
        relay.stop()
        hub.close()
        os.close(slave)
        os.close(master)
