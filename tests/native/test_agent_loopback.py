"""The real agent server process on this host, the real client over TCP, the real Engine: same results as native.

No VM is needed: the agent binds 127.0.0.1 here exactly as it does in the guest, and the client takes any
socket-like channel. Every scenario runs through both backends on one state root and compares what a user
would see (output bytes, exit codes, error text).
"""

from __future__ import annotations

import io
import json
import os
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from runner.agent.client import AgentClient
from runner.backends.agent import AgentBackend
from runner.backends.native import NativeBackend
from runner.errors import CommandNotFound, NotFound, RunnerError
from runner.stdio import Stdio, TermSize
from runner.vm.ship import local_version, package_root
from tests.helpers import wait_for

pytestmark = pytest.mark.root

IMAGE = "localhost/busybox"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def agent(tmp_path_factory):
    """(port, token, root) of an agent server process serving a temp root."""
    tmp = tmp_path_factory.mktemp("agent")
    root = str(tmp / "root")
    token = secrets.token_hex(32)
    token_file = tmp / "token"
    token_file.write_text(token + "\n")
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "runner.agent.server", "--port", str(port),
                             "--token-file", str(token_file), "--root", root],
                            cwd=package_root(), stderr=open(tmp / "agent.log", "wb"))
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("agent did not start: " + (tmp / "agent.log").read_text())
            time.sleep(0.05)
    yield port, token, root
    proc.terminate()
    proc.wait(10)
    native = NativeBackend(root)
    for c in native.ps(all=True):
        native.rm(c["Id"], force=True)


def connect(port: int, token: str) -> AgentClient:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return AgentClient(sock, token, local_version(), where="the test agent")


@pytest.fixture
def backends(agent):
    port, token, root = agent
    remote = AgentBackend(lambda: connect(port, token))
    yield NativeBackend(root), remote
    remote.close()


def attached(backend, spec: dict, stdin: bytes | None = None, size: TermSize | None = None,
             during=None) -> tuple[int, bytes, bytes]:
    """Run ``spec`` attached with pipes as the CLI's stdio; return (exit code, stdout, stderr)."""
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    in_r = in_w = None
    if stdin is not None:
        in_r, in_w = os.pipe()
    chunks = {out_r: [], err_r: []}
    readers = [threading.Thread(target=_drain, args=(fd, chunks[fd]), daemon=True) for fd in chunks]
    for t in readers:
        t.start()
    try:
        handle = backend.run(spec, Stdio(in_r, out_w, err_w), size)
        if during is not None:
            during(handle, chunks[out_r])
        if in_w is not None:
            os.write(in_w, stdin)
            os.close(in_w)
            in_w = None
        code = handle.wait()
    finally:  # also on failure: the readers must see EOF, or they would outlive the test
        for fd in (in_r, in_w, out_w, err_w):
            if fd is not None:
                os.close(fd)
    for t in readers:
        t.join(10)
    return code, b"".join(chunks[out_r]), b"".join(chunks[err_r])


def _drain(fd: int, sink: list) -> None:
    while data := os.read(fd, 65536):
        sink.append(data)
    os.close(fd)


def both(backends, fn):
    native, remote = backends
    return fn(native), fn(remote)


def spec(*command: str, **extra) -> dict:
    return {"image": IMAGE, "command": list(command), "auto_remove": True, **extra}


def test_output_and_exit_codes_match(backends):
    n, r = both(backends, lambda b: attached(b, spec("sh", "-c", "echo out; echo err >&2; exit 3")))
    assert n == r == (3, b"out\n", b"err\n")
    n, r = both(backends, lambda b: attached(b, spec("true")))
    assert n == r == (0, b"", b"")


def test_large_output_and_stdin_with_half_close(backends):
    data = os.urandom(1_000_000)
    n, r = both(backends, lambda b: attached(b, spec("sh", "-c", "cat; echo after-eof", interactive=True),
                                             stdin=data))
    assert n == r == (0, data + b"after-eof\n", b"")


def test_terminal_size_and_resize(backends):
    def scenario(b):
        def during(handle, out):
            _wait_for(out, b"ready")
            handle.resize(TermSize(33, 101))
        return attached(b, spec("sh", "-c", "stty size; echo ready; read x; stty size", tty=True,
                                interactive=True), stdin=b"go\n", size=TermSize(24, 80), during=during)
    n, r = both(backends, scenario)
    assert n[0] == r[0] == 0
    assert b"24 80" in n[1] and b"33 101" in n[1]
    assert n[1] == r[1]


def test_signal_reaches_the_container(backends):
    def scenario(b):
        def during(handle, out):
            _wait_for(out, b"ready")
            handle.signal(signal.SIGUSR1)
        return attached(b, spec("sh", "-c", "trap 'echo got; exit 42' USR1; echo ready; "
                                            "while true; do sleep 0.05; done"), during=during)
    n, r = both(backends, scenario)
    assert n == r == (42, b"ready\ngot\n", b"")


def _wait_for(chunks: list, marker: bytes, timeout: float = 20) -> None:
    wait_for(lambda: marker in b"".join(chunks), timeout, f"{marker!r} in {b''.join(chunks)!r}", interval=0.02)


def test_errors_are_the_same(backends):
    def fails(b, fn):
        with pytest.raises(RunnerError) as info:
            fn(b)
        e = info.value
        return type(e), e.message, e.hint, e.exit_code
    n, r = both(backends, lambda b: fails(b, lambda b: attached(b, spec("no-such-command"))))
    assert n == r and n[0] is CommandNotFound and n[3] == 127
    n, r = both(backends, lambda b: fails(b, lambda b: b.inspect("no-such-container")))
    assert n == r and n[0] is NotFound


def test_detached_logs_exec_inspect_ps(backends):
    native, remote = backends
    cid = remote.run(spec("sh", "-c", "echo one; echo two >&2; sleep 30", auto_remove=False), None)
    assert isinstance(cid, str)
    try:
        wait_for(lambda: native.inspect(cid)["State"]["Status"] == "running", 10, "the container to run")
        out_r, out_w = os.pipe()
        h = remote.exec(cid, {"command": ["sh", "-c", "echo in-exec; exit 5"]}, Stdio(None, out_w, out_w))
        assert h.wait() == 5
        os.close(out_w)
        assert os.read(out_r, 100) == b"in-exec\n"
        os.close(out_r)
        assert remote.inspect(cid) == native.inspect(cid)
        assert [c["Id"] for c in remote.ps()] == [c["Id"] for c in native.ps()]

        def logs(b):
            o_r, o_w = os.pipe()
            e_r, e_w = os.pipe()
            b.logs(cid, Stdio(None, o_w, e_w))
            os.close(o_w)
            os.close(e_w)
            return os.read(o_r, 100), os.read(e_r, 100)
        wait_for(lambda: logs(native) == (b"one\n", b"two\n"), 10, "both lines in the container's log")
        assert logs(native) == logs(remote) == (b"one\n", b"two\n")
        assert "/" + remote.stop(cid, timeout=1) == native.inspect(cid)["Name"]  # Docker's leading slash
        assert remote.wait(cid) == native.wait(cid)
    finally:
        native.rm(cid, force=True)


def test_save_and_load_round_trip(backends):
    native, remote = backends
    native_tar, remote_tar = io.BytesIO(), io.BytesIO()
    native.save([IMAGE], native_tar)
    remote.save([IMAGE], remote_tar)
    assert remote_tar.getvalue() == native_tar.getvalue() and len(native_tar.getvalue()) > 100_000
    assert remote.load(io.BytesIO(remote_tar.getvalue())) == native.load(io.BytesIO(native_tar.getvalue()))
    with pytest.raises(RunnerError) as r_err:
        remote.load(io.BytesIO(b"not a tar" * 1000))
    with pytest.raises(RunnerError) as n_err:
        native.load(io.BytesIO(b"not a tar" * 1000))
    assert (type(r_err.value), r_err.value.message) == (type(n_err.value), n_err.value.message)
    assert remote.images() == native.images()


def test_info(backends):
    native, remote = backends
    expected = native.info()
    expected.pop("backend")  # the one key a backend adds about itself
    assert remote.info() == expected


def test_daemon_mode_starts_once_per_version(agent, tmp_path):
    """--daemon: returns once listening, writes the pid file, and a second start reuses the running agent."""
    _, token, root = agent
    token_file = tmp_path / "config.json"
    token_file.write_text('{"agent_token": "%s", "agent_port": 1}' % token)  # the guest's config format
    port = free_port()
    argv = [sys.executable, "-m", "runner.agent.server", "--port", str(port), "--token-file", str(token_file),
            "--root", root, "--daemon", "--run-dir", str(tmp_path / "run")]
    first = subprocess.run(argv, cwd=package_root(), capture_output=True, timeout=60)
    assert first.returncode == 0 and first.stdout.startswith(b"ready pid="), first.stderr
    record = json.loads((tmp_path / "run" / "agent.pid").read_text())
    try:
        assert record["version"] == local_version() and record["port"] == port
        client = connect(port, token)
        assert client.call("ping") is None
        client.close()
        again = subprocess.run(argv, cwd=package_root(), capture_output=True, timeout=60)
        assert again.returncode == 0 and b"already running" in again.stdout
        assert json.loads((tmp_path / "run" / "agent.pid").read_text())["pid"] == record["pid"]
    finally:
        os.kill(record["pid"], signal.SIGTERM)
    wait_for(lambda: not (tmp_path / "run" / "agent.pid").exists(), 10, "the agent to remove its pid file on SIGTERM")


def test_client_death_leaves_the_container_running_detached(agent, backends):
    native, _ = backends
    port, token, _ = agent
    client = connect(port, token)
    out_r, out_w = os.pipe()
    handle = AgentBackend(lambda: client).run(
        spec("sh", "-c", "echo started; sleep 1; echo finished", auto_remove=False), Stdio(None, out_w, out_w))
    assert os.read(out_r, 100) == b"started\n"
    client._chan.shutdown(socket.SHUT_RDWR)  # the CLI dies
    try:
        with pytest.raises(RunnerError, match="lost the connection"):
            handle.wait()
        assert native.inspect(handle.container_id)["State"]["Running"]
        assert native.wait(handle.container_id) == 0
        o_r, o_w = os.pipe()
        native.logs(handle.container_id, Stdio(None, o_w, o_w))
        os.close(o_w)
        assert os.read(o_r, 100) == b"started\nfinished\n"  # output still logged after the client left
    finally:
        native.rm(handle.container_id, force=True)


def test_round_trip_latency(agent):
    port, token, _ = agent
    t = time.perf_counter()
    client = connect(port, token)
    client.call("ping")
    first = time.perf_counter() - t
    samples = []
    for _ in range(300):
        t = time.perf_counter()
        client.call("ping")
        samples.append(time.perf_counter() - t)
    client.close()
    median = statistics.median(samples)
    print(f"\nnew connection + handshake + ping: {first * 1e3:.2f} ms; "
          f"ping in one connection: median {median * 1e3:.3f} ms")
    assert median < 0.005
