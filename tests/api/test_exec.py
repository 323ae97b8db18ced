"""exec and attach through the Engine API with the docker CLI and docker-py, on both backends."""

from __future__ import annotations

import os
import subprocess
import uuid

import docker
import pytest

from tests.api.conftest import DOCKER
from tests.api.test_containers import _docker_in_pty, _ok
from tests.helpers import wait_for

IMAGE = "localhost/busybox"


@pytest.fixture
def running(api):
    """A running container that ends on SIGTERM; removed afterwards."""
    name = f"ex-{uuid.uuid4().hex[:8]}"
    _ok(api.docker("run", "-d", "--name", name, IMAGE, "sh", "-c",
                   "trap 'exit 0' TERM; echo boot; while true; do sleep 0.1; done"))
    yield name
    api.docker("rm", "-f", name)


def test_exec_exit_codes_stdin_and_detach(api, running):
    assert api.docker("exec", running, "sh", "-c", "exit 1").returncode == 1
    proc = api.docker("exec", running, "no-such-command")
    assert proc.returncode == 127 and b"executable file not found" in proc.stdout + proc.stderr
    proc = api.docker("exec", "-i", running, "sh", "-c", "cat; echo after-eof", input=b"piped\n")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == b"piped\nafter-eof\n"
    assert _ok(api.docker("exec", "-d", running, "sh", "-c", "echo detached > /tmp/mark")) == ""
    wait_for(lambda: api.docker("exec", running, "cat", "/tmp/mark").stdout == b"detached\n", 30,
             "the detached exec's file")


def test_exec_with_a_terminal(api, running):
    code, output = _docker_in_pty(api, ["exec", "-it", running, "sh", "-c",
                                        "echo ready; read line; echo got-$line; [ -t 0 ] && echo is-a-tty; exit 6"],
                                  rows=24, cols=80, answer=b"y\r", after=b"ready")
    assert b"got-y" in output and b"is-a-tty" in output, output
    assert code == 6, output


def test_exec_inspect_has_the_exit_code_when_the_stream_ends(api, running):
    client = docker.APIClient(base_url=api.host, timeout=120)
    try:
        cid = client.inspect_container(running)["Id"]
        for code in (0, 3, 42):
            exec_id = client.exec_create(cid, ["sh", "-c", f"echo out-{code}; exit {code}"])["Id"]
            assert client.exec_start(exec_id) == f"out-{code}\n".encode()
            info = client.exec_inspect(exec_id)  # at once: no polling, the code is recorded before the stream ends
            assert info["ExitCode"] == code and info["Running"] is False and info["ContainerID"] == cid
        with pytest.raises(docker.errors.NotFound):
            client.exec_inspect("0" * 64)
    finally:
        client.close()


def test_start_attached_and_attach_to_a_running_container(api):
    name = f"att-{uuid.uuid4().hex[:8]}"
    _ok(api.docker("create", "--name", name, IMAGE, "sh", "-c", "echo first-run; exit 2"))
    try:
        proc = api.docker("start", "-a", name)  # attach, then start: the output of that very start
        assert proc.returncode == 2 and proc.stdout == b"first-run\n", proc.stderr
    finally:
        api.docker("rm", "-f", name)
    name = f"att-{uuid.uuid4().hex[:8]}"
    _ok(api.docker("run", "-d", "--name", name, IMAGE, "sh", "-c",
                   "read line; echo got-$line; trap 'exit 0' TERM; while true; do echo tick; sleep 0.1; done"))
    try:
        # Attach to a running container: its output from now on, from the live log (stdin stays the one it
        # started with: the engine cannot rewire a running process's stdin).
        watcher = subprocess.Popen([DOCKER, "attach", "--no-stdin", name], stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, env=dict(os.environ, DOCKER_HOST=api.host))
        try:
            assert watcher.stdout.readline() == b"tick\n"
        finally:
            watcher.kill()
            watcher.wait()
        assert b"got-" in _ok(api.docker("logs", name)).encode()
    finally:
        api.docker("rm", "-f", name)
