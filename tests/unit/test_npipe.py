"""The named-pipe listener's portable parts (runner/api/npipe.py); the Windows calls are unverified here.

What Linux can prove: ``npipe://`` addresses parse (and bad ones are refused) on every OS; the module imports
without touching Windows APIs; the socket-like adapter gives http.server and the hijacking handlers what they
use -- proved by running runner's real API Handler over it, with a socket pair standing in for the pipe (a pipe
end has read/write/close_write/close; a socket's recv/send/shutdown(SHUT_WR) behave the same way); and that
asking for a pipe listener off Windows is a clear PlatformError.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import types

import pytest

from runner.api import npipe
from runner.api.server import Address, make_server
from runner.errors import PlatformError, UsageError
from tests.helpers import REPO


class SocketPipe:
    """A pipe end as npipe.PipeSocket expects one, over one end of a socket pair."""

    def __init__(self, sock: socket.socket):
        self.sock, self.closed, self.half_closed = sock, False, False

    def read(self, size: int) -> bytes:
        return self.sock.recv(size)

    def write(self, data: bytes) -> int:
        return self.sock.send(data)

    def close_write(self) -> None:
        self.half_closed = True
        self.sock.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self.closed = True
        self.sock.close()

    def peer_closed(self) -> bool:
        import select
        poller = select.poll()
        poller.register(self.sock, select.POLLHUP)
        return any(ev & select.POLLHUP for _, ev in poller.poll(0))


@pytest.mark.parametrize("text, expected", [
    ("npipe:////./pipe/runner_engine", r"\\.\pipe\runner_engine"),
    ("npipe:////./pipe/docker_engine", r"\\.\pipe\docker_engine"),
    ("npipe://\\\\.\\pipe\\my-engine", r"\\.\pipe\my-engine"),
    ("npipe:////./PIPE/x.y", r"\\.\pipe\x.y"),
])
def test_pipe_addresses_parse_on_every_os(text, expected):
    assert npipe.pipe_name(text) == expected
    assert Address(text).path == expected and Address(text).scheme == "npipe"


@pytest.mark.parametrize("text, says", [
    ("npipe:////./pipe/", "1 to"),
    ("npipe:////server/pipe/engine", "only a pipe on this machine"),
    ("npipe:////./pipe/a/b", "without slashes"),
    ("npipe:////./pipe/" + "x" * 300, "1 to"),
    ("npipe:////./pipe/a\x01", "control"),
    ("npipe:////./other/engine", "only a pipe on this machine"),
])
def test_bad_pipe_addresses_are_refused_with_an_example(text, says):
    with pytest.raises(UsageError) as caught:
        Address(text)
    assert says in caught.value.message and "npipe:////./pipe/runner_engine" in caught.value.hint


def test_the_default_on_windows_is_the_runner_engine_pipe():
    from runner.api.server import WINDOWS_PIPE
    assert npipe.pipe_name(WINDOWS_PIPE) == r"\\.\pipe\runner_engine"


def test_the_module_imports_without_windows_apis():
    code = ("import sys; import runner.api.npipe, runner.api.server; "
            "print(sorted(m for m in ('_winapi', 'ctypes', 'msvcrt') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": REPO, "PATH": "/usr/bin:/bin"}).stdout
    assert out.strip() == "[]"


def test_listening_on_a_pipe_off_windows_is_a_clear_error():
    with pytest.raises(PlatformError) as caught:
        make_server(Address("npipe:////./pipe/runner_engine"), backend=None)
    assert "only on Windows" in caught.value.message and "unix://" in caught.value.hint


def test_adapter_reads_writes_and_half_closes_like_a_socket():
    ours, theirs = socket.socketpair()
    pipe = SocketPipe(ours)
    conn = npipe.PipeSocket(pipe)
    try:
        theirs.sendall(b"GET / HTTP/1.1\r\n\r\nrest")
        reader = conn.makefile("rb")
        assert reader.readline() == b"GET / HTTP/1.1\r\n"
        conn.sendall(b"x" * (npipe.BUFFER * 2 + 5))  # more than one message: split, none empty
        got = b""
        while len(got) < npipe.BUFFER * 2 + 5:
            got += theirs.recv(1 << 20)
        assert got == b"x" * (npipe.BUFFER * 2 + 5)
        with pytest.raises(OSError):
            conn.recv(1, socket.MSG_PEEK)
        with pytest.raises(OSError):
            conn.fileno()
        conn.shutdown(socket.SHUT_WR)
        assert pipe.half_closed and theirs.recv(1) == b""  # the client sees the end of the stream
        with pytest.raises(BrokenPipeError):
            conn.sendall(b"late")
        theirs.sendall(b"more")
        theirs.shutdown(socket.SHUT_WR)  # the client's half-close: reads end, once the bytes are read
        assert reader.read() == b"\r\nrestmore"
        assert conn.recv(10) == b""
        conn.close()
        conn.close()
        assert pipe.closed
    finally:
        ours.close()
        theirs.close()


def test_the_real_api_handler_serves_a_request_over_the_adapter():
    from runner.api.http import Handler
    from runner.api.server import load_routes

    load_routes()
    ours, theirs = socket.socketpair()
    pipe = SocketPipe(ours)
    server = types.SimpleNamespace(backend=None, context={"lock": threading.Lock()}, debug=False,
                                   address=Address("npipe:////./pipe/runner_engine"))

    def serve() -> None:
        conn = npipe.PipeSocket(pipe, r"\\.\pipe\runner_engine")
        try:
            Handler(conn, (r"\\.\pipe\runner_engine", 0), server)
        finally:
            conn.shutdown(socket.SHUT_WR)
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        theirs.sendall(b"GET /v1.44/_ping HTTP/1.1\r\nHost: api\r\nConnection: close\r\n\r\n")
        reply = b""
        while chunk := theirs.recv(65536):
            reply += chunk
        thread.join(10)
        assert not thread.is_alive() and pipe.closed
        head, _, body = reply.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200") and b"Api-Version: 1.44" in head and body == b"OK"
    finally:
        theirs.close()


def test_an_unknown_route_over_the_adapter_is_a_json_404():
    from runner.api.http import Handler
    from runner.api.server import load_routes

    load_routes()
    ours, theirs = socket.socketpair()
    server = types.SimpleNamespace(backend=None, context={"lock": threading.Lock()}, debug=False,
                                   address=Address("npipe:////./pipe/runner_engine"))
    conn = npipe.PipeSocket(SocketPipe(ours))
    thread = threading.Thread(target=lambda: (Handler(conn, ("npipe", 0), server), conn.close()), daemon=True)
    thread.start()
    try:
        theirs.sendall(b"GET /v1.44/nothing/here HTTP/1.1\r\nHost: api\r\nConnection: close\r\n\r\n")
        reply = b""
        while chunk := theirs.recv(65536):
            reply += chunk
        thread.join(10)
        head, _, body = reply.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 404") and "message" in json.loads(body)
    finally:
        theirs.close()


def test_the_handlers_ask_a_pipe_whether_its_client_left_without_polling_a_descriptor():
    from runner.api.attach import client_gone
    from runner.api.events import _gone

    ours, theirs = socket.socketpair()
    conn = npipe.PipeSocket(SocketPipe(ours))
    try:
        assert not client_gone(conn) and not _gone(conn, 0.1) and not conn.peer_closed()
        theirs.shutdown(socket.SHUT_WR)  # half-closed only: still there
        assert not client_gone(conn)
        theirs.close()
        assert client_gone(conn) and _gone(conn, 5)
    finally:
        conn.close()
