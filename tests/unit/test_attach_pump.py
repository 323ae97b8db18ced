"""The attach pump (runner/api/attach.py) on its own: a socket pair for the client's connection, the session's
own pipes for the process. What Docker clients rely on, without a container: output written before the pump
runs is not lost and is framed per stream; the client's half-close ends stdin and nothing else; a client that
goes away ends the session at once even while the process is quiet (its reader is woken), and the process's
next write fails (it drops the sink). The same paths with real clients: tests/api (natively, and through the
VM in a Windows-shaped Python: tests/vm/test_winsim_api.py).
"""

from __future__ import annotations

import os
import socket
import struct
import threading

import pytest

from runner.api import attach
from runner.api.attach import AttachSession, client_gone
from tests.helpers import wait_for


def _frames(sock: socket.socket, want: int) -> list[tuple[int, bytes]]:
    """Read multiplexed frames until ``want`` payload bytes arrived."""
    data, got = b"", 0
    frames = []
    while got < want:
        chunk = sock.recv(65536)
        assert chunk, f"the stream ended after {frames}"
        data += chunk
        while len(data) >= 8:
            stream, size = struct.unpack(">BxxxI", data[:8])
            if len(data) < 8 + size:
                break
            frames.append((stream, data[8:8 + size]))
            got += size
            data = data[8 + size:]
    return frames


@pytest.fixture(params=["poll", "threads"])
def readers(request, monkeypatch):
    """Both ways PipeReaders reads: one thread polling (Linux, macOS), a thread per pipe (Windows: no poll)."""
    if request.param == "threads":
        monkeypatch.setattr(attach, "_POLL_PIPES", False)
    return request.param


def _pump(session: AttachSession) -> threading.Thread:
    session.bind()
    thread = threading.Thread(target=session.pump, daemon=True)
    thread.start()
    return thread


def test_early_output_half_close_and_the_end(readers):
    server, client = socket.socketpair()
    session = AttachSession(server, tty=False, stdin=True)
    io = session.stdio()
    os.write(io.stdout, b"early")  # before anybody reads: the pipe keeps it
    os.write(io.stderr, b"oops")
    thread = _pump(session)
    try:
        frames = _frames(client, 9)
        assert sorted(frames) == [(1, b"early"), (2, b"oops")]
        client.sendall(b"input")
        assert os.read(io.stdin, 100) == b"input"
        client.shutdown(socket.SHUT_WR)  # the client's stdin ended
        assert os.read(io.stdin, 100) == b""  # ... so did the process's
        os.write(io.stdout, b"after")  # output goes on after the half-close
        assert _frames(client, 5) == [(1, b"after")]
        session.writers_done()  # the process ended
        thread.join(10)
        assert not thread.is_alive() and client.recv(1) == b""
    finally:
        client.close()
        session.close()


@pytest.mark.parametrize("tty", [True, False])
def test_a_client_that_leaves_ends_the_session_while_the_process_is_quiet(readers, tty):
    server, client = socket.socketpair()
    session = AttachSession(server, tty=tty, stdin=True)
    io = session.stdio()
    before = threading.active_count()
    thread = _pump(session)
    wait_for(lambda: threading.active_count() > before, 10, "the pump's client thread")
    client.close()  # gone entirely, and the process writes nothing: its reader must be woken
    thread.join(10)
    assert not thread.is_alive()
    wait_for(lambda: threading.active_count() <= before, 10, "the pump's threads to end")
    assert os.read(io.stdin, 10) == b""  # the process's stdin ended with the client (StdinOnce)
    with pytest.raises(BrokenPipeError):
        for _ in range(100):  # the wake byte may sit in the pipe; then the read end is closed
            os.write(io.stdout, b"x" * 65536)
    session.writers_done()


def test_without_poll_a_socket_is_gone_only_when_reset(monkeypatch):
    monkeypatch.setattr(attach, "_POLL", None)  # as on Windows: select on the socket only
    listener = socket.create_server(("127.0.0.1", 0))
    peer = socket.create_connection(listener.getsockname())
    ours, _ = listener.accept()
    listener.close()
    try:
        assert not client_gone(ours, 0.05)
        peer.shutdown(socket.SHUT_WR)  # a half-close is not "gone"
        assert not client_gone(ours, 0.05)
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        peer.close()  # closing with linger 0 sends a reset
        wait_for(lambda: client_gone(ours, 0.05), 10, "the reset after the half-close to be seen")
    finally:
        ours.close()
    listener = socket.create_server(("127.0.0.1", 0))
    peer = socket.create_connection(listener.getsockname())
    ours, _ = listener.accept()
    listener.close()
    try:
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        peer.close()
        wait_for(lambda: client_gone(ours, 0.05), 10, "the reset to be seen")
    finally:
        ours.close()


@pytest.mark.parametrize("poll", [True, False])
def test_hung_up_sees_a_half_close_but_not_unread_data(poll, monkeypatch):
    import time

    if not poll:
        monkeypatch.setattr(attach, "_POLL", None)  # as on Windows: select and a peek
    ours, peer = socket.socketpair()
    try:
        peer.sendall(b"next request")
        began = time.monotonic()
        assert not attach.hung_up(ours, 0.2)
        assert time.monotonic() - began >= 0.15  # waited, not a busy return the watcher would loop on
        assert ours.recv(100) == b"next request"
        peer.shutdown(socket.SHUT_WR)
        assert attach.hung_up(ours, 5)
    finally:
        ours.close()
        peer.close()
