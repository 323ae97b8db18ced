"""docker-py and testcontainers against `runner serve`, on both backends: the libraries as users call them."""

from __future__ import annotations

import os
import time
import urllib.request
import uuid

import docker
import pytest

from tests.helpers import wait_for

IMAGE = "localhost/busybox"


@pytest.fixture
def client(api):
    c = docker.DockerClient(base_url=api.host, timeout=120)
    yield c
    c.close()


def test_docker_py_detached_container_logs_exec_stop_wait_remove(client):
    name = f"dpy-{uuid.uuid4().hex[:8]}"
    ct = client.containers.run(IMAGE, ["sh", "-c", "trap 'exit 0' TERM; echo hello; echo oops >&2; "
                                                   "while true; do sleep 0.1; done"],
                               detach=True, name=name, labels={"suite": "docker-py"})
    try:
        assert ct.name == name
        ct.reload()
        assert ct.status == "running" and ct.labels == {"suite": "docker-py"}
        wait_for(lambda: b"oops" in ct.logs(), 30, "the container's output in its log")
        assert ct.logs(stdout=True, stderr=False) == b"hello\n"
        assert ct.logs(stdout=False, stderr=True) == b"oops\n"
        stamped = ct.logs(stdout=True, stderr=False, timestamps=True)
        assert stamped.endswith(b" hello\n") and stamped[:2] == b"20" and b"T" in stamped.split(b" ")[0]
        assert ct.logs(since=int(time.time()) + 3600) == b""  # since: only output at or after that time
        assert ct.logs(since=int(time.time()) - 3600) == b"hello\noops\n"
        result = ct.exec_run(["sh", "-c", "echo in-exec; exit 3"])
        assert result.exit_code == 3 and result.output == b"in-exec\n"
        out, err = ct.exec_run(["sh", "-c", "echo o; echo e >&2"], demux=True).output
        assert (out, err) == (b"o\n", b"e\n")
        assert [c.name for c in client.containers.list(filters={"label": "suite=docker-py"})] == [name]
        ct.stop(timeout=10)
        assert ct.wait() == {"StatusCode": 0, "Error": None}
        ct.reload()
        assert ct.status == "exited"
    finally:
        ct.remove(force=True)
    with pytest.raises(docker.errors.NotFound):
        client.containers.get(name)


def test_docker_py_attached_run_returns_output_and_raises_on_failure(client):
    assert client.containers.run(IMAGE, ["echo", "attached"], remove=True) == b"attached\n"
    with pytest.raises(docker.errors.ContainerError) as info:
        client.containers.run(IMAGE, ["sh", "-c", "echo bad >&2; exit 2"], remove=True)
    assert info.value.exit_status == 2


def test_testcontainers_exposed_port_and_log_wait(api, monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", api.host)
    monkeypatch.setenv("TESTCONTAINERS_RYUK_DISABLED", "true")  # its reaper image cannot be pulled here
    # This test machine is itself a container (/.dockerenv): testcontainers would then assume Docker-in-Docker
    # and reach containers at a gateway address. A user's machine reaches them at the docker host.
    monkeypatch.setenv("TESTCONTAINERS_CONNECTION_MODE", "docker_host")
    from testcontainers.core.config import testcontainers_config
    from testcontainers.core.container import DockerContainer
    from testcontainers.core.docker_client import ConnectionMode
    from testcontainers.core.waiting_utils import wait_for_logs
    monkeypatch.setattr(testcontainers_config, "connection_mode_override", ConnectionMode.docker_host)
    monkeypatch.setattr(testcontainers_config, "ryuk_disabled", True)

    container = DockerContainer(IMAGE).with_command(["sh", "-c", "echo serving; exec httpd -f -p 80 -h /etc"]) \
        .with_exposed_ports(80)
    with container:
        wait_for_logs(container, "serving", timeout=60)
        host, port = container.get_container_host_ip(), container.get_exposed_port(80)
        assert host in ("localhost", "127.0.0.1")

        def fetch():
            try:
                return urllib.request.urlopen(f"http://{host}:{port}/hostname", timeout=5).read()
            except OSError:
                return None
        hostname = wait_for(fetch, 60, "the container's httpd at the exposed port").strip().decode()
        assert container.get_wrapped_container().id.startswith(hostname)
    assert os.environ["DOCKER_HOST"] == api.host
