"""The agent protocol and both of its ends, against a small fake engine (no root, no VM, no real containers).

The server's :class:`Connection` runs in a thread on one end of a socketpair, the real :class:`AgentClient`
on the other; only the Engine is fake, so framing, handshake, validation, streams, handles and connection
loss are tested exactly as they run in the guest.
"""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import statistics
import threading
import time

import pytest

from runner.agent import protocol as P
from runner.agent.client import AgentClient
from runner.agent.protocol import collect_sources
from runner.agent.server import Connection
from runner.backends.agent import AgentBackend
from runner.errors import CommandNotFound, NotFound, RunnerError, UsageError, VMError
from runner.stdio import Stdio, TermSize
from runner.vm.ship import local_version, package_root, start_script, tarball
from tests.helpers import wait_for

TOKEN = "ab" * 32
VERSION = "0123456789abcdef"


class FakeProcess:
    def __init__(self, stdio: Stdio, code: int):
        self.container_id = "c0ffee"
        self.resizes: list[TermSize] = []
        self.signals: list[int] = []
        self.waited = threading.Event()
        self.release = threading.Event()
        self._code = code
        self._thread = threading.Thread(target=self._work, args=(stdio,), daemon=True)
        self._thread.start()

    def _work(self, stdio: Stdio) -> None:
        os.write(stdio.stdout, b"hello\n")
        os.write(stdio.stderr, b"warning\n")
        if stdio.stdin is not None:
            data = b""
            while chunk := os.read(stdio.stdin, 65536):
                data += chunk
            os.write(stdio.stdout, data.upper())
        self.release.wait(10)

    def wait(self) -> int:
        self._thread.join()
        self.waited.set()
        return self._code

    def resize(self, size: TermSize) -> None:
        self.resizes.append(size)

    def signal(self, signum: int) -> None:
        self.signals.append(signum)
        self.release.set()


class FakeEngine:
    """Records calls; behaves like the Engine's API (same names, same stdio/stream/progress conventions)."""

    def __init__(self):
        self.calls: list[tuple[str, dict]] = []
        self.processes: list[FakeProcess] = []
        self.loaded = b""
        self.auto_release = True

    def create(self, spec: dict) -> str:
        self.calls.append(("create", spec))
        return "c0ffee"

    def run(self, spec: dict, stdio: Stdio | None, size: TermSize | None = None):
        self.calls.append(("run", {"spec": spec, "size": size}))
        if spec.get("image") == "missing":
            raise NotFound("no such image: missing", hint="pull it first")
        if spec.get("command") == ["nope"]:
            raise CommandNotFound("nope: command not found")
        if stdio is None:
            return "c0ffee"
        proc = FakeProcess(stdio, 3)
        if self.auto_release:
            proc.release.set()
        self.processes.append(proc)
        return proc

    def inspect(self, ref: str) -> dict:
        if ref != "c0ffee":
            raise NotFound(f"no such container: {ref}")
        return {"Id": "c0ffee", "State": {"Running": False}}

    def wait(self, ref: str) -> int:
        return 7

    def ps(self, all: bool = False) -> list[dict]:
        return [{"Id": "c0ffee", "all": all}]

    def logs(self, ref: str, stdio: Stdio, follow: bool = False, tail: int | None = None,
             since: float | None = None, timestamps: bool = False) -> None:
        os.write(stdio.stdout, b"out line\n")
        os.write(stdio.stderr, b"err line\n")

    def pull(self, ref: str, platform=None, credentials=None, progress=None) -> dict:
        for i in range(3):
            progress({"layer": i, "status": "done"})
        return {"Id": "sha256:1", "credentials": credentials}

    def load(self, stream) -> list[str]:
        self.loaded = stream.read()
        if self.loaded.startswith(b"bad"):
            raise RunnerError("not a tar archive")
        return ["localhost/x:latest"]

    def build(self, stream, options=None, progress=None, cancel=None) -> str:
        """Reports progress *while* the context still uploads (first chunk read), then at the end. With the
        option ``tags: ["wait"]`` it waits for its cancel (a RUN step that would run for long)."""
        first = stream.read(1000)
        progress({"stream": "Step 1/1 : FROM x\n"})
        rest = stream.read()
        self.built = first + rest
        self.cancel = cancel
        if options and options.get("tags") == ["wait"]:
            stopped = threading.Event()
            cancel.on_set(stopped.set)
            progress({"stream": "running\n"})
            if stopped.wait(10):
                raise RunnerError("the build was cancelled: its client went away")
        if options and options.get("fail"):
            raise RunnerError("step 1/1 failed", hint="its last output lines")
        progress({"aux": {"ID": "sha256:" + "b" * 64}})
        return "sha256:" + "b" * 64

    def save(self, refs: list[str], stream) -> None:
        for ref in refs:
            stream.write(ref.encode() * 50000)

    def tag(self, source: str, target: str) -> None:
        self.calls.append(("tag", {"source": source, "target": target}))

    def info(self) -> dict:
        raise ZeroDivisionError("a bug in the engine")


def serve(engine, token=TOKEN, version=VERSION):
    """A server Connection on one end of a socketpair; returns the other end."""
    server_sock, client_sock = socket.socketpair()
    conn = Connection(server_sock, engine, version, token)
    threading.Thread(target=conn.serve, daemon=True).start()
    return client_sock, conn


@pytest.fixture
def engine():
    return FakeEngine()


@pytest.fixture
def backend(engine):
    sock, _ = serve(engine)
    b = AgentBackend(lambda: AgentClient(sock, TOKEN, VERSION, where="the test"))
    yield b
    b.close()


def pipe_stdio(with_stdin: bool):
    """Local pipes standing in for the CLI's 0/1/2: returns (stdio, stdin writer, stdout reader, stderr reader)."""
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    in_r = in_w = None
    if with_stdin:
        in_r, in_w = os.pipe()
    return Stdio(in_r, out_w, err_w), in_w, out_r, err_r, [fd for fd in (in_r, out_w, err_w) if fd is not None]


def read_all(fd: int) -> bytes:
    data = b""
    while chunk := os.read(fd, 65536):
        data += chunk
    os.close(fd)
    return data


# ------------------------------------------------------------------------------------------------- framing

def test_frames_round_trip_even_byte_by_byte():
    frames = [
        P.encode_json(P.REQUEST, 1, {"method": "ps", "args": {}}),
        P.encode(P.DATA, 1, b"\x00\xffbinary", P.STDIN),
        P.encode(P.EOF, 1, stream=P.STDIN),
        P.encode_json(P.RESIZE, 2, {"rows": 24, "cols": 80}),
        P.encode_json(P.HELLO, 0, {"version": VERSION, "proof": "0" * 64}),
    ]
    wire = b"".join(frames)
    dec = P.Decoder(P.FROM_CLIENT)
    got = []
    for i in range(len(wire)):
        got += dec.feed(wire[i:i + 1])
    assert [(f.kind, f.call_id, f.stream) for f in got] == [
        (P.REQUEST, 1, 0), (P.DATA, 1, P.STDIN), (P.EOF, 1, P.STDIN), (P.RESIZE, 2, 0), (P.HELLO, 0, 0)]
    assert got[1].payload == b"\x00\xffbinary"
    assert got[3].json() == {"rows": 24, "cols": 80}
    assert not dec.pending


def test_oversize_frames_are_refused_before_the_payload_is_read():
    dec = P.Decoder(P.FROM_CLIENT)
    with pytest.raises(P.ProtocolError, match="exceeds the limit"):
        dec.feed(P.HEADER.pack(P.REQUEST, 0, 1, P.MAX_JSON + 1))
    dec = P.Decoder(P.FROM_CLIENT)
    with pytest.raises(P.ProtocolError, match="exceeds the limit"):
        dec.feed(P.HEADER.pack(P.DATA, P.STDIN, 1, P.MAX_DATA + 1))
    with pytest.raises(ValueError):
        P.encode(P.DATA, 1, b"x" * (P.MAX_DATA + 1), P.STDIN)


@pytest.mark.parametrize("header, why", [
    (P.HEADER.pack(99, 0, 1, 0), "unexpected frame kind"),
    (P.HEADER.pack(P.REPLY, 0, 1, 2), "unexpected frame kind"),  # server-only kind sent by a client
    (P.HEADER.pack(P.DATA, P.STDOUT, 1, 1), "not allowed in this direction"),
    (P.HEADER.pack(P.EOF, P.STDIN, 1, 3), "must be empty"),
    (P.HEADER.pack(P.REQUEST, 1, 1, 2), "must have stream 0"),
    (P.HEADER.pack(P.REQUEST, 0, 0, 2), "call id 0"),
    (P.HEADER.pack(P.HELLO, 0, 5, 2), "call id 5"),
])
def test_bad_headers_are_refused(header, why):
    with pytest.raises(P.ProtocolError, match=why):
        P.Decoder(P.FROM_CLIENT).feed(header)


@pytest.mark.parametrize("payload", [b"{", b"[1, 2]", b"\xff\xfe", b"[" * 100000])
def test_bad_json_is_a_protocol_error(payload):
    with pytest.raises(P.ProtocolError):
        P.Frame(P.REQUEST, 1, payload).json()


def test_message_fields_are_validated():
    with pytest.raises(P.ProtocolError):
        P.parse_resize(P.Frame(P.RESIZE, 1, b'{"rows": 70000, "cols": 80}'))
    with pytest.raises(P.ProtocolError):
        P.parse_resize(P.Frame(P.RESIZE, 1, b'{"rows": true, "cols": 80}'))
    with pytest.raises(P.ProtocolError):
        P.parse_signal(P.Frame(P.SIGNAL, 1, b'{"signal": "KILL; rm -rf /"}'))
    with pytest.raises(P.ProtocolError):
        P.parse_exit(P.Frame(P.EXIT, 1, b'{"exit_code": -1}'))
    with pytest.raises(P.ProtocolError):  # an attach's end is one of four words, nothing else
        P.parse_ended(P.Frame(P.EXIT, 1, b'{"exit_code": 0, "ended": "rm -rf"}'))
    assert P.parse_ended(P.Frame(P.EXIT, 1, b'{"exit_code": 0, "ended": "eof"}')) == "eof"
    assert P.parse_ended(P.Frame(P.EXIT, 1, b'{"exit_code": 0}')) is None
    with pytest.raises(P.ProtocolError):
        P.parse_error(P.Frame(P.ERROR, 1, b'{"type": "NotFound", "message": 3, "exit_code": 1}'))
    with pytest.raises(P.ProtocolError):
        P.parse_hello(P.Frame(P.HELLO, 0, b'{"version": "x", "proof": "zz"}'))
    err = P.parse_error(P.Frame(P.ERROR, 1, json.dumps(CommandNotFound("x", hint="h").to_dict()).encode()))
    assert type(err) is CommandNotFound and err.exit_code == 127 and err.hint == "h"


def _request(method, args=None, stdio=None):
    return P.parse_request(P.Frame(P.REQUEST, 1, json.dumps(P.request_payload(method, args or {}, stdio)).encode()))


@pytest.mark.parametrize("method, args, stdio, why", [
    ("format_disk", {}, None, "has no method"),
    ("__init__", {}, None, "has no method"),
    ("stop", {}, None, "missing argument 'ref'"),
    ("stop", {"ref": "a", "timeout": "10"}, None, "invalid argument 'timeout'"),
    ("rm", {"ref": "a", "force": 1}, None, "invalid argument 'force'"),
    ("wait", {"ref": 5}, None, "invalid argument 'ref'"),
    ("ps", {"all": True, "evil": 1}, None, "unknown arguments evil"),
    ("save", {"refs": ["a", 3]}, None, "invalid argument 'refs'"),
    ("pull", {"ref": "a", "credentials": {"user": 1}}, None, "invalid argument 'credentials'"),
    ("run", {"spec": {}, "size": {"rows": -1, "cols": 2}}, None, "invalid argument 'size'"),
    ("exec", {"ref": "a", "exec_spec": {}}, None, "needs stdio"),
    ("ps", {}, {"stdin": True}, "takes no stdio"),
    ("logs", {"ref": "a"}, {"stdin": True}, "takes no stdin"),
    ("run", {"spec": {}}, {"stdin": "yes"}, "invalid stdio"),
])
def test_requests_are_checked_against_the_whitelist(method, args, stdio, why):
    with pytest.raises(RunnerError, match=why):
        _request(method, args, stdio)


def test_valid_requests_parse():
    req = _request("run", {"spec": {"image": "x"}, "size": {"rows": 1, "cols": 2}}, {"stdin": True})
    assert req.method.kind == P.ATTACH and req.stdin and req.attached
    req = _request("stop", {"ref": "a", "timeout": 2.5})
    assert req.args == {"ref": "a", "timeout": 2.5} and not req.attached


def test_every_table_method_is_an_engine_method():
    """The agent serves the table by calling the Engine's method of that name: each must exist."""
    from runner.engine.engine import Engine
    missing = [n for n in set(P.METHODS) - P.AGENT_ONLY if not callable(getattr(Engine, n, None))]
    assert missing == [] and P.AGENT_ONLY == {"ping"}


# ------------------------------------------------------------------------------------------------- versions

def test_version_is_a_hash_of_the_shipped_sources():
    files = collect_sources(package_root())
    assert "runner/engine/engine.py" in files and "runner/agent/server.py" in files
    assert "runner/stdio.py" in files and "runner/procs.py" in files and "runner/errors.py" in files
    assert not any(f.startswith(("runner/cli/", "runner/vm/", "runner/backends/")) for f in files)
    assert P.version_of(files) == local_version()
    changed = dict(files)
    changed["runner/errors.py"] += b"\n"
    assert P.version_of(changed) != P.version_of(files)
    assert tarball(files) == tarball(dict(reversed(list(files.items()))))  # deterministic


def test_start_script_unpacks_atomically_and_starts_the_daemon(tmp_path):
    script = start_script("0123456789abcdef", 7070)
    assert "mv \"$t\" /var/lib/runner/agent/0123456789abcdef" in script
    assert script.rstrip().endswith("--root /var/lib/runner --daemon")


# ------------------------------------------------------------------------------------------------- handshake

def test_wrong_token_is_refused_with_a_clear_error(engine):
    sock, _ = serve(engine)
    client = AgentClient(sock, "cd" * 32, VERSION)
    with pytest.raises(VMError, match="wrong agent token"):
        client.call("ping")


def test_version_mismatch_is_refused_before_anything_is_sent(engine):
    sock, _ = serve(engine, version="fedcba9876543210")
    with pytest.raises(P.VersionMismatch, match="runs code version fedcba9876543210, but this runner is version "
                                                "0123456789abcdef"):
        AgentClient(sock, TOKEN, VERSION)


def test_server_refuses_a_client_claiming_another_version(engine):
    sock, _ = serve(engine)
    dec = P.Decoder(P.FROM_SERVER)
    _, nonce = P.parse_challenge(dec.feed(sock.recv(4096))[0])
    other = "1111111111111111"
    sock.sendall(P.encode_json(P.HELLO, 0, {"version": other, "proof": P.auth_proof(TOKEN, nonce, VERSION)}))
    frame = dec.feed(sock.recv(4096))[0]
    assert frame.kind == P.ERROR and "client is version 1111111111111111" in P.parse_error(frame).message
    assert sock.recv(4096) == b""


def test_a_proof_cannot_be_replayed(engine):
    """The nonce differs per connection, so a proof sniffed from one is useless for the next."""
    sock, _ = serve(engine)
    dec = P.Decoder(P.FROM_SERVER)
    _, nonce = P.parse_challenge(dec.feed(sock.recv(4096))[0])
    proof = P.auth_proof(TOKEN, nonce, VERSION)
    sock2, _ = serve(engine)
    P.Decoder(P.FROM_SERVER).feed(sock2.recv(4096))
    sock2.sendall(P.encode_json(P.HELLO, 0, {"version": VERSION, "proof": proof}))
    assert P.Decoder(P.FROM_SERVER).feed(sock2.recv(4096))[0].kind == P.ERROR


def test_requests_before_hello_and_garbage_close_the_connection(engine):
    sock, conn = serve(engine)
    sock.recv(4096)
    sock.sendall(P.encode_json(P.REQUEST, 1, {"method": "ps", "args": {}}))
    assert sock.recv(4096) == b""
    sock, conn = serve(engine)
    client = AgentClient(sock, TOKEN, VERSION)
    client.send_frame(P.HEADER.pack(P.REQUEST, 0, 9, P.MAX_JSON + 1))  # oversize: the agent hangs up
    with pytest.raises(VMError, match="lost the connection"):
        client.call("ping")


# ------------------------------------------------------------------------------------------------- calls

def test_plain_calls_and_errors_arrive_unchanged(backend, engine):
    assert backend.create({"image": "x"}) == "c0ffee"
    assert backend.ps(all=True) == [{"Id": "c0ffee", "all": True}]
    assert backend.wait("c0ffee") == 7
    assert backend.tag("a", "b") is None
    with pytest.raises(NotFound) as info:
        backend.inspect("nope")
    assert str(info.value) == "no such container: nope" and info.value.exit_code == 125
    with pytest.raises(NotFound) as info:
        backend.run({"image": "missing"}, None)
    assert info.value.hint == "pull it first"
    with pytest.raises(CommandNotFound) as info:
        backend.run({"image": "x", "command": ["nope"]}, Stdio(None, 1, 2))
    assert info.value.exit_code == 127
    with pytest.raises(RunnerError, match="failed in info: ZeroDivisionError"):
        backend.info()
    with pytest.raises(RunnerError, match="has no method"):  # checked locally with the agent's own rules
        backend.client.call("format_disk")
    assert backend.run({"image": "x"}, None) == "c0ffee"  # detached


def test_unknown_method_is_refused_by_the_agent(engine):
    sock, _ = serve(engine)
    client = AgentClient(sock, TOKEN, VERSION)
    call = client._calls  # bypass the local check: what a broken or hostile client would send
    with client._calls_lock:
        from runner.agent.client import _Call
        c = _Call(99, "format_disk")
        call[99] = c
    client.send_frame(P.encode_json(P.REQUEST, 99, {"method": "format_disk", "args": {}}))
    with pytest.raises(RunnerError, match="has no method 'format_disk'"):
        client.finish(c)


def test_attached_run_relays_stdio_exit_resize_and_signal(backend, engine):
    engine.auto_release = False
    stdio, in_w, out_r, err_r, lent = pipe_stdio(with_stdin=True)
    handle = backend.run({"image": "x"}, stdio, TermSize(24, 80))
    assert handle.container_id == "c0ffee"
    os.write(in_w, b"some input")
    os.close(in_w)  # the half-close: the container reads EOF while its output still flows
    handle.resize(TermSize(50, 132))
    wait_for(lambda: engine.processes and engine.processes[0].resizes, 10, "the resize to reach the process")
    handle.signal(signal.SIGUSR1)
    assert handle.wait() == 3
    for fd in lent:
        os.close(fd)
    assert read_all(out_r) == b"hello\nSOME INPUT"
    assert read_all(err_r) == b"warning\n"
    proc = engine.processes[0]
    assert proc.resizes == [TermSize(50, 132)] and proc.signals == [signal.SIGUSR1]
    assert engine.calls[0][1]["size"] == TermSize(24, 80)


def test_logs_progress_upload_and_download(backend, engine):
    stdio, _, out_r, err_r, lent = pipe_stdio(with_stdin=False)
    backend.logs("c0ffee", stdio)
    for fd in lent:
        os.close(fd)
    assert read_all(out_r) == b"out line\n" and read_all(err_r) == b"err line\n"

    events = []
    assert backend.pull("x", credentials={"username": "u", "password": "p"}, progress=events.append) == {
        "Id": "sha256:1", "credentials": {"username": "u", "password": "p"}}
    assert [e["layer"] for e in events] == [0, 1, 2]

    blob = os.urandom(300_000)
    assert backend.load(io.BytesIO(blob)) == ["localhost/x:latest"]
    assert engine.loaded == blob

    out = io.BytesIO()
    backend.save(["ab", "cd"], out)
    assert out.getvalue() == b"ab" * 50000 + b"cd" * 50000

    with pytest.raises(RunnerError, match="not a tar archive"):
        backend.load(io.BytesIO(b"bad" + b"x" * 2_000_000))
    assert backend.create({"image": "x"}) == "c0ffee"  # the connection survives a failed upload


def test_build_uploads_the_context_and_streams_progress_back(backend, engine):
    """The upload-with-progress kind: PROGRESS frames reach the caller's callback during and after the upload,
    the context arrives whole, errors arrive unchanged and the connection survives them."""
    context = os.urandom(3 * P.CHUNK + 123)
    events = []
    assert backend.build(io.BytesIO(context), {"tags": ["x"]}, events.append) == "sha256:" + "b" * 64
    assert engine.built == context
    assert events == [{"stream": "Step 1/1 : FROM x\n"}, {"aux": {"ID": "sha256:" + "b" * 64}}]
    with pytest.raises(RunnerError, match="step 1/1 failed") as info:
        backend.build(io.BytesIO(b"tar"), {"fail": True}, events.append)
    assert info.value.hint == "its last output lines"
    assert backend.create({"image": "x"}) == "c0ffee"
    assert P.METHODS["build"].kind == P.UPLOAD_PROGRESS and P.METHODS["load"].kind == P.UPLOAD


def test_a_build_is_cancelled_by_the_hosts_cancel_and_by_a_dropped_connection(backend, engine):
    """The host's Cancel (the API server's client hung up) reaches the guest's build as a SIGNAL frame; a
    connection that drops (the host's CLI killed) cancels it too, as dockerd cancels a build whose client left."""
    from runner.stdio import Cancel
    cancel = Cancel()
    events = []

    def progress(event):
        events.append(event)
        if event == {"stream": "running\n"}:
            cancel.set()  # from the caller's side, while the build runs
    with pytest.raises(RunnerError, match="cancelled"):
        backend.build(io.BytesIO(b"ctx"), {"tags": ["wait"]}, progress, cancel)
    first = engine.cancel
    assert first.is_set()
    assert backend.create({"image": "x"}) == "c0ffee"  # the connection survives a cancelled call
    sock, _ = serve(engine)
    client = AgentClient(sock, TOKEN, VERSION)
    dropped = AgentBackend(lambda: client)
    done = threading.Event()

    def build():
        with pytest.raises(VMError):
            dropped.build(io.BytesIO(b"ctx"), {"tags": ["wait"]}, lambda e: e == {"stream": "running\n"}
                          and sock.shutdown(socket.SHUT_RDWR))
        done.set()
    threading.Thread(target=build, daemon=True).start()
    assert done.wait(10)
    wait_for(lambda: engine.cancel is not first and engine.cancel.is_set(), 10,
             "the agent to cancel the build of a client that is gone")
    assert P.METHODS["build"].cancellable and not P.METHODS["load"].cancellable


def test_connection_loss_fails_pending_calls_and_lets_the_container_run_on(engine):
    engine.auto_release = False
    sock, conn = serve(engine)
    client = AgentClient(sock, TOKEN, VERSION)
    backend = AgentBackend(lambda: client)
    stdio, in_w, out_r, err_r, lent = pipe_stdio(with_stdin=True)
    handle = backend.run({"image": "x"}, stdio)
    sock.shutdown(socket.SHUT_RDWR)  # the channel dies (VM stopped, SSH dropped)
    with pytest.raises(VMError, match="lost the connection"):
        handle.wait()
    with pytest.raises(VMError, match="lost the connection"):
        backend.ps()
    proc = engine.processes[0]
    assert not proc.waited.is_set()  # still running, detached, as with Docker
    proc.release.set()
    assert proc.waited.wait(5)  # and its exit is still collected by the agent


def test_concurrent_calls_share_one_connection(backend, engine):
    """Whichever thread reads the connection, every call gets its own frames: plain calls from many threads,
    a streaming download and an attached process at once."""
    engine.auto_release = False
    client = backend.client
    stdio, in_w, out_r, err_r, lent = pipe_stdio(with_stdin=True)
    handle = backend.run({"image": "x"}, stdio)
    errors: list[BaseException] = []

    def calls(n: int) -> None:
        try:
            for i in range(n):
                assert client.call("ping") is None
                assert backend.ps(all=bool(i % 2)) == [{"Id": "c0ffee", "all": bool(i % 2)}]
                if i % 10 == 0:
                    out = io.BytesIO()
                    backend.save(["ab"], out)
                    assert out.getvalue() == b"ab" * 50000
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=calls, args=(40,)) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors and not any(t.is_alive() for t in threads)
    os.write(in_w, b"late input")
    os.close(in_w)
    handle.signal(signal.SIGUSR1)
    assert handle.wait() == 3
    for fd in lent:
        os.close(fd)
    assert read_all(out_r) == b"hello\nLATE INPUT"
    assert client.call("ping") is None  # alone again: the caller reads its own reply


def test_a_lone_call_reads_its_reply_itself(backend):
    """One call in flight: no reader thread is started, the calling thread reads its own reply."""
    client = backend.client
    for _ in range(3):
        assert client.call("ping") is None
    assert client._reader is None


def test_inbox_is_bounded_and_closable():
    box = P.Inbox(limit=10)
    box.put(b"x" * 10, 10)
    waiting = threading.Event()

    class Cond(threading.Condition):  # says when a caller blocks, so the test need not guess how long
        def wait(self, timeout=None):
            waiting.set()
            return super().wait(timeout)

    box._cond = Cond()
    blocked = threading.Thread(target=box.put, args=(b"y", 1))
    blocked.start()
    assert waiting.wait(10) and blocked.is_alive()  # back-pressure: put waits for room
    assert box.get() == b"x" * 10
    blocked.join(1)
    assert box.get() == b"y"
    assert box.get(block=False) is P.Inbox.EMPTY
    box.put(b"z" * 20, 20)
    box.close()
    assert box.get() is None
    box.put(b"dropped", 7)  # after close: dropped, never blocks
    assert box.get() is None


def test_round_trip_inside_one_connection_is_fast(backend):
    client = backend.client
    client.call("ping")
    samples = []
    for _ in range(200):
        t = time.perf_counter()
        client.call("ping")
        samples.append(time.perf_counter() - t)
    median = statistics.median(samples)
    print(f"ping round trip: median {median * 1e3:.3f} ms, p95 {sorted(samples)[190] * 1e3:.3f} ms")
    assert median < 0.005


def test_mux_relays_calls_and_streams_to_a_channel(engine):
    """The connection cache copies bytes between a local socket and an SSH channel, in both directions."""
    from runner.vm import muxd

    class Channel:  # what paramiko's direct-tcpip channel offers the relay
        def __init__(self, sock):
            self.sock = sock

        def recv(self, n):
            return self.sock.recv(n)

        def sendall(self, data):
            self.sock.sendall(data)

        def shutdown_write(self):
            self.sock.shutdown(socket.SHUT_WR)

        def close(self):
            self.sock.close()

    class Transport:
        def open_channel(self, kind, dest, src, timeout=None):
            assert kind == "direct-tcpip" and dest == ("127.0.0.1", 7070)
            return Channel(serve(engine)[0])

    ours, theirs = socket.socketpair()
    threading.Thread(target=muxd._relay, args=(theirs, Transport(), 7070), daemon=True).start()
    backend = AgentBackend(lambda: AgentClient(ours, TOKEN, VERSION))
    stdio, in_w, out_r, err_r, lent = pipe_stdio(with_stdin=True)
    handle = backend.run({"image": "x"}, stdio)
    os.write(in_w, b"through the mux")
    os.close(in_w)
    assert handle.wait() == 3
    for fd in lent:
        os.close(fd)
    assert read_all(out_r) == b"hello\nTHROUGH THE MUX"
    assert backend.ps() == [{"Id": "c0ffee", "all": False}]
    backend.close()


def test_mux_socket_path_stays_within_sun_path(tmp_path):
    from runner.vm.layout import MachinePaths

    assert MachinePaths("m", tmp_path).agent_socket == tmp_path / "agent.sock"
    long_dir = tmp_path / ("x" * 120)
    assert len(str(MachinePaths("m", long_dir).agent_socket)) <= 100
