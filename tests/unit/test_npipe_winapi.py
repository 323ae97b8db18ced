"""The named-pipe listener's Win32 logic (runner/api/npipe.py) against a fake ``_winapi`` and kernel32.

Windows cannot run here, so what is proved is the logic around the calls, against the behaviour CPython's
``_winapi`` documents and multiprocessing relies on: overlapped calls return ``(ov, err)`` with
ERROR_IO_PENDING or ERROR_MORE_DATA as ``err``; ``GetOverlappedResult`` raises for a pipe broken meanwhile and
returns ERROR_OPERATION_ABORTED for a cancelled operation; a client that came and left before
``ConnectNamedPipe`` makes it raise ERROR_NO_DATA. That the real calls behave so is unverified (README).
The fake is used only here; the portable adapter runs runner's real Handler in tests/unit/test_npipe.py.
"""

from __future__ import annotations

import collections
import re
import threading

import pytest

from runner.api import npipe
from runner.errors import PlatformError


def _winerr(code: int) -> OSError:
    exc = OSError(22, f"[WinError {code}]")
    exc.winerror = code
    return exc


class FakeOverlapped:
    def __init__(self):
        self.event = threading.Event()  # WaitForMultipleObjects waits on it
        self.result, self.data, self.error, self.cancelled = (0, 0), b"", None, False

    def complete(self, n: int = 0, err: int = 0, data: bytes = b"", error: OSError | None = None) -> None:
        self.result, self.data, self.error = (n, err), data, error
        self.event.set()

    def GetOverlappedResult(self, wait: bool):
        if wait:
            self.event.wait()
        if self.error is not None:
            raise self.error
        return self.result

    def getbuffer(self):
        return memoryview(self.data)

    def cancel(self) -> None:
        if not self.event.is_set():
            self.cancelled = True
            self.complete(0, 995)  # ERROR_OPERATION_ABORTED


class Instance:
    """One server end of the fake pipe and its client."""

    def __init__(self, fake: "FakeWinapi", handle: int, open_mode: int, mode: int):
        self.fake, self.handle, self.open_mode, self.mode = fake, handle, open_mode, mode
        self.state = "waiting"  # connected, gone
        self.leave_early = False
        self.connect_ov: FakeOverlapped | None = None
        self.inbound: collections.deque[bytes] = collections.deque()
        self.outbound: list[bytes] = []
        self.pending_read: tuple[FakeOverlapped, int] | None = None

    # the client's side
    def send(self, message: bytes) -> None:
        with self.fake.cond:
            if self.pending_read is not None:
                ov, size = self.pending_read
                self.pending_read = None
                self.inbound.append(message)
                self._fill(ov, size)
            else:
                self.inbound.append(message)

    def leave(self) -> None:
        with self.fake.cond:
            self.state = "gone"
            if self.pending_read is not None:
                self.pending_read[0].complete(error=_winerr(109))  # ERROR_BROKEN_PIPE
                self.pending_read = None

    def received(self) -> bytes:
        return b"".join(self.outbound)

    def _fill(self, ov: FakeOverlapped, size: int) -> int:
        message = self.inbound.popleft()
        part, rest = message[:size], message[size:]
        if rest:
            self.inbound.appendleft(rest)
        err = 234 if rest else 0  # ERROR_MORE_DATA: the rest of the message comes with the next read
        ov.complete(len(part), err, part)
        return err


class FakeWinapi:
    """The part of CPython's _winapi that npipe uses."""

    def __init__(self):
        self.cond = threading.Condition()
        self.instances: dict[int, Instance] = {}
        self.closed: list[int] = []
        self.created: list[tuple] = []
        self.taken = False
        self._next = 100

    def CreateNamedPipe(self, name, open_mode, mode, max_instances, out_size, in_size, timeout, sa):
        with self.cond:
            if self.taken and open_mode & npipe._FILE_FLAG_FIRST_PIPE_INSTANCE:
                raise _winerr(5)  # ERROR_ACCESS_DENIED: another process owns the name
            self._next += 1
            self.created.append((name, open_mode, mode, max_instances, out_size, in_size, sa))
            self.instances[self._next] = Instance(self, self._next, open_mode, mode)
            self.cond.notify_all()
            return self._next

    def ConnectNamedPipe(self, handle, overlapped=True):
        assert overlapped
        inst = self.instances[handle]
        with self.cond:
            if inst.leave_early:
                raise _winerr(232)  # ERROR_NO_DATA: a client connected and left before we waited
            inst.connect_ov = FakeOverlapped()
            self.cond.notify_all()
            return inst.connect_ov

    def WaitForMultipleObjects(self, events, wait_all, milliseconds):
        timeout = None if milliseconds == npipe._INFINITE else milliseconds / 1000
        return 0 if events[0].wait(timeout) else npipe._WAIT_TIMEOUT

    def ReadFile(self, handle, size, overlapped=True):
        inst = self.instances[handle]
        with self.cond:
            ov = FakeOverlapped()
            if inst.inbound:
                return ov, inst._fill(ov, size)
            if inst.state == "gone" or handle in self.closed:
                raise _winerr(109)
            inst.pending_read = (ov, size)
            return ov, npipe._ERROR_IO_PENDING

    def WriteFile(self, handle, data, overlapped=True):
        inst = self.instances[handle]
        with self.cond:
            if inst.state == "gone":
                raise _winerr(232)
            inst.outbound.append(bytes(data))
            self.cond.notify_all()
            ov = FakeOverlapped()
            ov.complete(len(data), 0)
            return ov, 0

    def PeekNamedPipe(self, handle, size=0):
        if self.instances[handle].state == "gone" or handle in self.closed:
            raise _winerr(109)
        return 0, 0

    def CloseHandle(self, handle):
        with self.cond:
            self.closed.append(handle)
            self.cond.notify_all()
            inst = self.instances[handle]
            if inst.pending_read is not None:
                inst.pending_read[0].complete(0, 995)
                inst.pending_read = None

    # the test's side
    def client_connects(self, timeout: float = 10) -> Instance:
        """The next instance waiting in ConnectNamedPipe gets a client."""
        with self.cond:
            assert self.cond.wait_for(lambda: self._waiting() is not None, timeout), "no instance is listening"
            inst = self._waiting()
            inst.state = "connected"
            inst.connect_ov.complete()
            return inst

    def _waiting(self) -> Instance | None:
        for inst in self.instances.values():
            if inst.connect_ov is not None and not inst.connect_ov.event.is_set():
                return inst
        return None


class FakeKernel32:
    def __init__(self):
        self.flushed: list[int] = []
        self.freed: list[int] = []

    def FlushFileBuffers(self, handle):
        self.flushed.append(handle)
        return 1

    def LocalFree(self, pointer):
        self.freed.append(pointer)
        return 0


@pytest.fixture
def fake(monkeypatch):
    win, kernel32, sddls = FakeWinapi(), FakeKernel32(), []
    monkeypatch.setitem(__import__("sys").modules, "_winapi", win)
    monkeypatch.setattr(npipe, "_kernel32", lambda: kernel32)
    monkeypatch.setattr(npipe, "_security_attributes", lambda sddl: (sddls.append(sddl) or "SA", 4242))
    monkeypatch.setattr(npipe, "_address_of", lambda sa: 777 if sa == "SA" else 0)
    win.kernel32, win.sddls = kernel32, sddls
    return win


class EchoHandler:
    """A handler as socketserver calls it: reads lines until the end, answers each, records what it saw."""

    seen: list = []

    def __init__(self, conn, address, server):
        created = len(server._w.created)  # the next instance exists before this client is served
        reader = conn.makefile("rb")
        lines = []
        while line := reader.readline():
            lines.append(line)
            conn.sendall(b"got " + line)
        EchoHandler.seen.append((created, lines))


def _serve(server) -> threading.Thread:
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    return thread


def test_the_first_instance_claims_the_name_with_the_access_list_and_message_mode(fake):
    server = npipe.PipeServer(r"\\.\pipe\runner_test", EchoHandler)
    name, open_mode, mode, max_instances, out_size, in_size, sa = fake.created[0]
    assert name == r"\\.\pipe\runner_test" and sa == 777 and fake.sddls == [npipe.SDDL]
    assert open_mode == npipe._PIPE_ACCESS_DUPLEX | npipe._FILE_FLAG_OVERLAPPED | npipe._FILE_FLAG_FIRST_PIPE_INSTANCE
    assert mode == npipe._PIPE_TYPE_MESSAGE | npipe._PIPE_READMODE_MESSAGE | npipe._PIPE_REJECT_REMOTE_CLIENTS
    assert (max_instances, out_size, in_size) == (npipe._PIPE_UNLIMITED_INSTANCES, npipe.BUFFER, npipe.BUFFER)
    server.server_close()
    assert fake.closed == [101] and fake.kernel32.freed == [4242]


def test_a_name_another_process_holds_is_a_clear_error(fake):
    fake.taken = True
    with pytest.raises(PlatformError) as caught:
        npipe.PipeServer(r"\\.\pipe\runner_engine", EchoHandler)
    assert "already listening on \\\\.\\pipe\\runner_engine" in caught.value.message and "--host" in caught.value.hint


def test_the_accept_loop_serves_each_client_in_turn_and_stops_cleanly(fake):
    EchoHandler.seen = []
    server = npipe.PipeServer(r"\\.\pipe\runner_test", EchoHandler)
    thread = _serve(server)
    try:
        first = fake.client_connects()
        first.send(b"one\n")
        first.send(b"")  # the client's half-close: a zero-length message
        with fake.cond:
            assert fake.cond.wait_for(lambda: first.handle in fake.closed, 10)
        assert first.received() == b"got one\n"  # then the zero-length message: our end of the stream
        assert first.outbound[-1] == b"" and first.handle in fake.kernel32.flushed
        # Later instances are not "first" (that flag would fail with the name taken by ourselves).
        assert all(not c[1] & npipe._FILE_FLAG_FIRST_PIPE_INSTANCE for c in fake.created[1:])
        second = fake.client_connects()
        second.send(b"two\n")
        with fake.cond:
            assert fake.cond.wait_for(lambda: second.outbound, 10)  # answered: now it leaves
        second.leave()  # gone without a half-close: the pending read fails, the handler ends
        with fake.cond:
            assert fake.cond.wait_for(lambda: second.handle in fake.closed, 10)
        assert [lines for _, lines in EchoHandler.seen] == [[b"one\n"], [b"two\n"]]
        assert all(created >= 2 for created, _ in EchoHandler.seen)
    finally:
        server.shutdown()
        thread.join(10)
        server.server_close()
    assert not thread.is_alive()
    waiting = [i for i in fake.instances.values() if i.state == "waiting"]
    assert waiting and all(i.connect_ov.cancelled for i in waiting if i.connect_ov)
    assert sorted(fake.closed) == sorted(fake.instances)  # every instance closed: nothing leaks


def test_a_client_that_came_and_went_before_the_wait_is_served_and_closed(fake):
    EchoHandler.seen = []
    server = npipe.PipeServer(r"\\.\pipe\runner_test", EchoHandler)
    fake.instances[101].leave_early = True
    fake.instances[101].state = "gone"
    thread = _serve(server)
    try:
        with fake.cond:
            assert fake.cond.wait_for(lambda: 101 in fake.closed and len(fake.created) >= 2, 10)
        assert EchoHandler.seen == [(2, [])]
    finally:
        server.shutdown()
        thread.join(10)
        server.server_close()


def test_reads_follow_message_boundaries_and_end_on_a_broken_or_closed_pipe(fake):
    handle = fake.CreateNamedPipe("p", 0, 0, 1, 0, 0, 0, 0)
    inst = fake.instances[handle]
    inst.state = "connected"
    pipe = npipe._WinPipe(handle)
    inst.send(b"abcdef")
    assert pipe.read(4) == b"abcd" and pipe.read(4) == b"ef"  # ERROR_MORE_DATA: the rest comes next
    got = []
    reader = threading.Thread(target=lambda: got.append(pipe.read(10)))
    reader.start()
    with fake.cond:
        assert fake.cond.wait_for(lambda: inst.pending_read is not None, 10)
    inst.leave()  # a read waiting when the client goes: b"", not an exception
    reader.join(10)
    assert got == [b""]
    with pytest.raises(BrokenPipeError):
        pipe.write(b"late")


def test_a_write_aborted_under_it_raises_instead_of_reporting_nothing_written(fake, monkeypatch):
    handle = fake.CreateNamedPipe("p", 0, 0, 1, 0, 0, 0, 0)
    fake.instances[handle].state = "connected"

    def aborted(h, data, overlapped=True):
        ov = FakeOverlapped()
        ov.complete(0, 995)
        return ov, 0
    monkeypatch.setattr(fake, "WriteFile", aborted)
    conn = npipe.PipeSocket(npipe._WinPipe(handle))
    with pytest.raises(BrokenPipeError):
        conn.sendall(b"x")  # before: send() returned 0 and sendall looped for ever


def test_the_access_list_grants_system_administrators_and_the_owner_only():
    match = re.fullmatch(r"D:P((?:\([^)]*\))+)", npipe.SDDL)
    assert match, "a protected DACL (P: no inherited entries) and nothing else"
    aces = re.findall(r"\(([^)]*)\)", match.group(1))
    parsed = [ace.split(";") for ace in aces]
    assert all(len(p) == 6 and p[0] == "A" and p[2] == "GA" for p in parsed)  # allow, generic all
    assert sorted(p[5] for p in parsed) == ["BA", "OW", "SY"]
    assert not {"WD", "AN", "NU", "AU", "BU"} & {p[5] for p in parsed}  # no Everyone, anonymous, network, users


def test_runner_api_handler_answers_through_the_win32_pipe_calls(fake):
    from runner.api.http import Handler
    from runner.api.server import Address, load_routes

    load_routes()
    server = npipe.PipeServer(r"\\.\pipe\runner_engine", Handler)
    server.backend, server.context, server.debug = None, {"lock": threading.Lock()}, False
    server.address = Address("npipe:////./pipe/runner_engine")
    thread = _serve(server)
    try:
        client = fake.client_connects()
        client.send(b"GET /v1.44/_ping HTTP/1.1\r\nHost: api\r\nConnection: close\r\n\r\n")
        with fake.cond:
            assert fake.cond.wait_for(lambda: client.handle in fake.closed, 10)
        head, _, body = client.received().partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200") and b"Api-Version: 1.44" in head and body == b"OK"
        assert client.outbound[-1] == b"" and all(len(m) <= npipe.BUFFER for m in client.outbound)
    finally:
        server.shutdown()
        thread.join(10)
        server.server_close()
