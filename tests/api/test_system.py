"""`runner serve` itself: version negotiation, /_ping, /version, /info, errors, socket and lifecycle."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading

import pytest

from tests.api.conftest import ApiServer
from tests.helpers import REPO, wait_for

pytestmark = pytest.mark.root


class UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str):
        super().__init__("localhost", timeout=30)
        self._path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(30)
        self.sock.connect(self._path)


def request(server: ApiServer, method: str, path: str, body: bytes | None = None, headers=None):
    conn = UnixConnection(server.socket)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("api-root"))
    s = ApiServer("native", {"RUNNER_ROOT": root})
    yield s
    s.close()


def test_ping_headers_for_negotiation(server):
    status, headers, body = request(server, "GET", "/_ping")
    assert status == 200 and body == b"OK"
    assert headers["Api-Version"] == "1.44"
    assert headers["Builder-Version"] == "1" and headers["Swarm"] == "inactive"
    assert headers["Ostype"] == "linux" and "no-cache" in headers["Cache-Control"]
    status, headers, body = request(server, "HEAD", "/v1.41/_ping")
    assert status == 200 and body == b"" and headers["Api-Version"] == "1.44"


def test_docker_cli_negotiates_and_shows_version_and_info(server):
    proc = server.docker("version", "--format", "{{json .}}")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["Server"]["ApiVersion"] == "1.44" and data["Server"]["Os"] == "linux"
    client = tuple(int(x) for x in data["Client"]["ApiVersion"].split("."))
    assert (1, 41) <= client <= (1, 44)  # Debian's 20.10 client speaks 1.41; newer clients negotiate down
    proc = server.docker("info", "--format", "{{json .}}")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["Swarm"]["LocalNodeState"] == "inactive"
    assert info["NCPU"] == os.cpu_count() and info["OSType"] == "linux"


def test_pinned_older_api_version_is_served(server):
    proc = server.docker("version", "--format", "{{.Client.APIVersion}}", env={"DOCKER_API_VERSION": "1.41"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.decode().strip() == "1.41"


@pytest.mark.parametrize("path,status,text", [
    ("/v1.99/version", 400, "client version 1.99 is too new"),
    ("/v1.12/version", 400, "is too old"),
    ("/v1.x/version", 400, "malformed API version"),
    ("/v1.44/no/such/route", 404, "page not found"),
])
def test_bad_requests_get_json_errors(server, path, status, text):
    got, headers, body = request(server, "GET", path)
    assert got == status
    assert headers["Content-Type"] == "application/json"
    assert text in json.loads(body)["message"]


def test_malformed_http_and_huge_headers_do_not_stop_the_server(server):
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(30)
        s.connect(server.socket)
        s.sendall(b"GARBAGE\r\n\r\n")
        assert s.recv(4096).startswith(b"HTTP/1.")
    status, _, body = request(server, "GET", "/_ping", headers={"X-Big": "a" * 70000})
    assert status in (400, 431) and "message" in json.loads(body)
    assert request(server, "GET", "/_ping")[0] == 200


def test_twenty_clients_at_once(server):
    results = []

    def one():
        results.append(request(server, "GET", "/v1.44/version")[0])

    threads = [threading.Thread(target=one) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == [200] * 20


def test_socket_is_private_and_removed_on_sigterm(tmp_path):
    s = ApiServer("native", {"RUNNER_ROOT": str(tmp_path / "root")})
    try:
        assert stat.S_IMODE(os.stat(s.socket).st_mode) == 0o600
        assert s.stop() == 0
        assert not os.path.exists(s.socket)
    finally:
        s.close()


def test_serve_refuses_a_non_loopback_tcp_address(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "runner", "serve", "-H", "tcp://0.0.0.0:2375"],
                          capture_output=True, env=dict(os.environ, PYTHONPATH=REPO, RUNNER_ROOT=str(tmp_path)),
                          timeout=60)
    assert proc.returncode == 125
    assert b"not a loopback address" in proc.stderr and b"Traceback" not in proc.stderr


def test_detach_writes_a_pidfile_and_docker_env_prints_the_host(tmp_path):
    sock = tempfile.mktemp(prefix="rn-", suffix=".sock", dir="/tmp")
    pidfile = str(tmp_path / "serve.pid")
    env = dict(os.environ, PYTHONPATH=REPO, RUNNER_ROOT=str(tmp_path / "root"))
    proc = subprocess.run([sys.executable, "-m", "runner", "serve", "-d", "-H", f"unix://{sock}",
                           "--pidfile", pidfile], capture_output=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    pid = int(open(pidfile).read())
    try:
        assert f"export DOCKER_HOST=unix://{sock}" in proc.stdout.decode()
        out = subprocess.run([sys.executable, "-m", "runner", "docker-env", "-H", f"unix://{sock}"],
                             capture_output=True, env=env, timeout=60).stdout.decode()
        assert out.strip() == f"export DOCKER_HOST=unix://{sock}"
    finally:
        os.kill(pid, signal.SIGTERM)
    wait_for(lambda: not os.path.exists(sock) and not os.path.exists(pidfile), 30, "the detached server to exit")
