"""compose's ``stdin_open``/``tty`` against ``runner serve``, on both backends: services brought up detached
keep their stdin open, and ``docker compose attach`` (a real terminal) and docker-py type into them."""

from __future__ import annotations

import os
import socket
import subprocess
import uuid

import docker

from tests.api.test_attach_running import _read_until
from tests.api.test_compose import _compose_binary
from tests.ptysession import PtySession

COMPOSE_FILE = """
services:
  shell:
    image: localhost/busybox
    command: ["sh"]
    stdin_open: true
    tty: true
  pipe:
    image: localhost/busybox
    command: ["sh"]
    stdin_open: true
"""


def test_compose_stdin_open_and_tty_services_can_be_attached(api, tmp_path):
    name = f"att{uuid.uuid4().hex[:8]}"
    (tmp_path / "compose.yaml").write_text(COMPOSE_FILE)
    env = dict(os.environ, DOCKER_HOST=api.host, DOCKER_CONFIG=os.path.join(api.dir, "docker-config"))
    compose = [_compose_binary(), "-p", name]

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*compose, *args], cwd=tmp_path, capture_output=True, timeout=240, env=env)

    up = run("up", "-d")
    try:
        assert up.returncode == 0, (up.stdout, up.stderr, api.output()[-3000:])
        session = PtySession([*compose, "--project-directory", str(tmp_path), "attach", "shell"], env)
        try:
            session.send(b"echo $((20 + 22))-from-compose\r")
            session.expect(b"42-from-compose")
            session.send(b"\x10\x11")  # compose detects the keys itself and says so, as with dockerd
            session.wait()
            assert b"read escape sequence" in session.output
        finally:
            session.close()
        client = docker.DockerClient(base_url=api.host, timeout=120)
        try:
            pipe = client.containers.get(f"{name}-pipe-1")
            assert pipe.attrs["Config"]["OpenStdin"] and not pipe.attrs["Config"]["Tty"]
            sock = pipe.attach_socket(params={"stdin": 1, "stream": 1, "stdout": 1})._sock
            try:
                sock.sendall(b"echo via-pipe\n")
                _read_until(sock, b"via-pipe")
            finally:
                sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            shell = client.containers.get(f"{name}-shell-1")
            assert shell.status == "running"  # detached, not ended
        finally:
            client.close()
    finally:
        down = run("down", "-t", "1")
        assert down.returncode == 0, (down.stdout, down.stderr)
