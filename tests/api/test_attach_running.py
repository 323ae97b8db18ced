"""Attaching to a container that already runs through the Engine API, on both backends: the docker CLI's
`docker attach` on a real terminal (typing, detach keys, exit code), docker-py's ``attach_socket`` (stdin into
a `-di` container, two attachers at once), resize of a running container's terminal, a client that vanishes
mid-attach, and `docker logs --until`."""

from __future__ import annotations

import json
import os
import socket
import struct
import time
import uuid

import docker
import pytest

from tests.api.conftest import DOCKER
from tests.helpers import wait_for
from tests.ptysession import PtySession

IMAGE = "localhost/busybox"


def _name(prefix: str) -> str:
    return f"api-{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def client(api):
    c = docker.DockerClient(base_url=api.host, timeout=120)
    yield c
    c.close()


@pytest.fixture
def names(api):
    """Containers a test made, removed at its end whatever happened."""
    made: list[str] = []
    yield made
    for name in made:
        api.docker("rm", "-f", name)


def _docker_pty(api, *args: str, rows: int = 33, cols: int = 111) -> PtySession:
    env = dict(os.environ, DOCKER_HOST=api.host, DOCKER_CONFIG=os.path.join(api.dir, "docker-config"))
    return PtySession([DOCKER, *args], env, rows, cols)


def _running(api, name: str) -> bool:
    p = api.docker("inspect", "-f", "{{.State.Running}}", name)
    return p.stdout.strip() == b"true"


def _read_until(sock: socket.socket, needle: bytes, timeout: float = 30, tty: bool = False) -> bytes:
    """Read an attach stream until ``needle`` is in its payload (demultiplexed unless ``tty``)."""
    sock.settimeout(timeout)
    raw, deadline = b"", time.monotonic() + timeout
    while True:
        payload = raw if tty else _payload(raw)
        if needle in payload:
            return payload
        assert time.monotonic() < deadline, f"{needle!r} not seen in {payload!r}"
        chunk = sock.recv(65536)
        assert chunk, f"the stream ended before {needle!r}: {payload!r}"
        raw += chunk


def _payload(raw: bytes) -> bytes:
    out = b""
    while len(raw) >= 8:
        _, length = struct.unpack(">BxxxI", raw[:8])
        if len(raw) < 8 + length:
            break
        out, raw = out + raw[8:8 + length], raw[8 + length:]
    return out


def test_docker_attach_types_into_a_running_tty_shell_detaches_and_exits(api, names):
    name = _name("tty")
    names.append(name)
    assert api.docker("run", "-dit", "--name", name, IMAGE, "sh").returncode == 0
    session = _docker_pty(api, "attach", name)
    try:
        session.send(b"echo $((6 * 7))-answer\r")
        session.expect(b"42-answer")
        session.send(b"\x10\x11")  # the docker CLI's default detach keys
        session.wait()
    finally:
        session.close()
    assert _running(api, name)
    session = _docker_pty(api, "attach", name, rows=24, cols=90)
    try:
        session.send(b"stty size\r")  # docker attach resizes the container's terminal to its own
        session.expect(b"24 90")
        session.send(b"exit 3\r")
        assert session.wait() == 3
    finally:
        session.close()
    assert api.docker("inspect", "-f", "{{.State.ExitCode}}", name).stdout.strip() == b"3"


def test_docker_py_attach_socket_feeds_a_di_container_and_two_attachers_see_its_output(client, names):
    name = _name("di")
    names.append(name)
    ct = client.containers.run(IMAGE, ["sh"], detach=True, stdin_open=True, name=name)
    params = {"stdin": 1, "stream": 1, "stdout": 1, "stderr": 1}
    first = ct.attach_socket(params=params)._sock
    second = ct.attach_socket(params=params)._sock
    try:
        first.sendall(b"echo from-first; echo to-stderr >&2\n")
        for sock in (first, second):
            got = _read_until(sock, b"to-stderr")
            assert b"from-first" in got
        second.sendall(b"echo from-second\n")
        assert b"from-second" in _read_until(first, b"from-second")
        first.shutdown(socket.SHUT_RDWR)  # a detach: the container and the other attacher go on
        second.sendall(b"echo still-here\n")
        _read_until(second, b"still-here")
        ct.reload()
        assert ct.status == "running"
        second.sendall(b"exit 9\n")
        assert ct.wait(timeout=60)["StatusCode"] == 9
    finally:
        for sock in (first, second):
            sock.close()


def test_resize_of_a_running_container_reaches_stty(client, names):
    name = _name("resize")
    names.append(name)
    ct = client.containers.run(IMAGE, ["sh"], detach=True, stdin_open=True, tty=True, name=name)
    sock = ct.attach_socket(params={"stdin": 1, "stream": 1, "stdout": 1})._sock
    try:
        client.api.resize(ct.id, height=17, width=63)
        seen = b""
        for _ in range(15):  # the new size reaches the terminal asynchronously: ask until it shows
            sock.sendall(b"stty size\r")
            try:
                seen = _read_until(sock, b"17 63", timeout=2, tty=True)
                break
            except (AssertionError, socket.timeout):
                continue
        assert b"17 63" in seen
    finally:
        sock.close()


_COUNT_SOCKETS = """
import json, os
shim = json.load(open("/var/lib/runner/containers/{cid}/state.json"))["shim_pid"]
print(sum(os.readlink(f"/proc/{{shim}}/fd/{{fd}}").startswith("socket:") for fd in os.listdir(f"/proc/{{shim}}/fd")))
"""


def _shim_sockets(rn, cid: str) -> int:
    """How many sockets the container's shim holds (its listener, its sync, one per attacher); through the VM
    counted in the guest."""
    if rn.backend == "native":
        with open(os.path.join(rn.root, "containers", cid, "state.json")) as f:
            shim = json.load(f)["shim_pid"]
        fds = os.listdir(f"/proc/{shim}/fd")
        return sum(1 for fd in fds if os.readlink(f"/proc/{shim}/fd/{fd}").startswith("socket:"))
    import base64
    from tests.helpers import cli
    script = base64.b64encode(_COUNT_SOCKETS.format(cid=cid).encode()).decode()  # no quoting through ssh
    p = cli(["vm", "ssh", "--", "echo", script, "|", "base64", "-d", "|", "python3"], backend="vm", env=rn.env)
    assert p.returncode == 0, (p.stdout, p.stderr)
    return int(p.stdout.split()[-1])


def test_a_client_that_vanishes_mid_attach_leaves_the_container_running(rn, client, names):
    name = _name("vanish")
    names.append(name)
    ct = client.containers.run(IMAGE, ["sh"], detach=True, stdin_open=True, name=name)
    before = _shim_sockets(rn, ct.id)
    sock = ct.attach_socket(params={"stdout": 1, "stderr": 1, "stream": 1})._sock  # output only: no stdin
    wait_for(lambda: _shim_sockets(rn, ct.id) == before + 1, 30, "the attach to reach the shim")
    sock.shutdown(socket.SHUT_RDWR)  # gone without a word (docker-py's response still holds the socket:
    sock.close()                     # a close alone would not end the connection)
    # The server noticed and let go of the shim's connection too, also through the VM, though the container
    # is silent (nothing written would fail) and no stdin could end.
    wait_for(lambda: _shim_sockets(rn, ct.id) == before, 30, "the shim to drop the vanished attacher")
    ct.reload()
    assert ct.status == "running"
    again = ct.attach_socket(params={"stdin": 1, "stream": 1, "stdout": 1})._sock
    try:
        again.sendall(b"echo second-life\n")  # the stdin stayed open: the next attach types into it
        _read_until(again, b"second-life")
    finally:
        again.close()


def test_docker_logs_until(api, names):
    name = _name("until")
    names.append(name)
    p = api.docker("run", "--name", name, IMAGE, "sh", "-c", "echo one; sleep 1.2; echo two")
    assert p.returncode == 0, p.stderr
    stamped = api.docker("logs", "-t", name).stdout.decode().splitlines()
    assert [line.split(" ", 1)[1] for line in stamped] == ["one", "two"]
    second = stamped[1].split(" ", 1)[0]
    assert api.docker("logs", "--until", second, name).stdout == b"one\n"
    assert api.docker("logs", "--until", "2000-01-01T00:00:00Z", name).stdout == b""
