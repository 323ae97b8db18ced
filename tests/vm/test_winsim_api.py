"""`runner serve` as Windows runs it, as far as Linux can show it: the server in a Python shaped like Windows'
(tests/winsim.py: no select.poll, select on sockets only, no os.pipe2, no AF_UNIX, no SIGKILL/SIGHUP, ...),
serving the VM backend, driven by the real docker CLI. TCP on loopback stands in for the named pipe (whose own
code is unit-tested in tests/unit/test_npipe.py). The machine is the session's one VM machine (the contract
suite's ``vm_driver``), so this adds a server, not a boot, to a full run.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import shutil
import uuid

import pytest

from tests.contract.conftest import vm_driver  # noqa: F401  (the session's one machine)
from tests.helpers import REPO, ok, wait_for

pytestmark = pytest.mark.vm
WINSIM = os.path.join(REPO, "tests", "winsim.py")
IMAGE = "localhost/busybox"
# Debian docker.io's CLI (the client only; no daemon is ever started), as tests/api uses it.
DOCKER = "/usr/bin/docker" if os.path.exists("/usr/bin/docker") else (shutil.which("docker") or "docker")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class WinsimServer:
    """``python tests/winsim.py --vm serve -H tcp://127.0.0.1:PORT``, stopped by PID with SIGTERM."""

    def __init__(self, env: dict, tmp):
        self.host = f"tcp://127.0.0.1:{_free_port()}"
        self.report, self.log_path = tmp / "winsim.json", tmp / "serve.log"
        self.config = tmp / "docker-config"
        self.log = open(self.log_path, "wb")
        full = dict(os.environ, PYTHONPATH=REPO, WINSIM_REPORT=str(self.report), **env)
        self.proc = subprocess.Popen([sys.executable, WINSIM, "--vm", "serve", "-H", self.host], env=full,
                                     stdout=self.log, stderr=subprocess.STDOUT)

    def docker(self, *args: str, input: bytes | None = None, timeout: float = 180):
        env = dict(os.environ, DOCKER_HOST=self.host, DOCKER_CONFIG=str(self.config))
        return subprocess.run([DOCKER, *args], input=input, capture_output=True, timeout=timeout, env=env)

    def docker_popen(self, *args: str) -> subprocess.Popen:
        env = dict(os.environ, DOCKER_HOST=self.host, DOCKER_CONFIG=str(self.config))
        return subprocess.Popen([DOCKER, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                stdin=subprocess.PIPE, env=env)

    def output(self) -> str:
        if not self.log.closed:
            self.log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        return self.proc.returncode


def test_docker_cli_through_a_windows_shaped_server(vm_driver, tmp_path):  # noqa: F811
    ok(vm_driver("ps"))  # the machine runs and the default image is there before the server starts
    server = WinsimServer(vm_driver.env, tmp_path)
    name = f"winsim-{uuid.uuid4().hex[:8]}"
    logs = None
    try:
        wait_for(lambda: server.proc.poll() is not None or server.docker("version", timeout=30).returncode == 0,
                 300, "the winsim server to answer")
        assert server.proc.poll() is None, server.output()
        run = server.docker("run", "--rm", IMAGE, "echo", "hello")
        assert (run.returncode, run.stdout) == (0, b"hello\n"), run.stderr
        piped = server.docker("run", "--rm", "-i", IMAGE, "sh", "-c", "cat; echo err >&2; echo done",
                              input=b"piped\n" * 2000)
        assert piped.returncode == 0, piped.stderr
        assert piped.stdout == b"piped\n" * 2000 + b"done\n" and piped.stderr == b"err\n"
        assert server.docker("run", "--rm", IMAGE, "sh", "-c", "exit 3").returncode == 3
        ok(server.docker("run", "-d", "--name", name, IMAGE, "sh", "-c",
                         "trap 'exit 0' TERM; echo started; while true; do sleep 0.2; done"))
        logs = server.docker_popen("logs", "-f", name)
        assert logs.stdout.readline() == b"started\n"
        exec_ = server.docker("exec", name, "sh", "-c", "echo from-exec; exit 4")
        assert (exec_.returncode, exec_.stdout) == (4, b"from-exec\n"), exec_.stderr
        assert name in ok(server.docker("ps", "--format", "{{.Names}}")).split()
        ok(server.docker("stop", name))
        assert logs.wait(60) == 0  # the follow ends with the container
        assert ok(server.docker("inspect", "-f", "{{.State.Status}} {{.State.ExitCode}}", name)).split() == \
            ["exited", "0"]
        ok(server.docker("rm", name))
        # A client killed mid-attach: its stdin ends with it (over TCP without poll, its FIN is all there is
        # to see), the container's `read` returns, and the --rm container goes.
        gone = f"{name}-gone"
        client = server.docker_popen("run", "-i", "--rm", "--name", gone, IMAGE, "sh", "-c",
                                     "echo started; read line; echo never")
        try:
            assert client.stdout.readline() == b"started\n"
        finally:
            client.kill()
            client.communicate()
        wait_for(lambda: server.docker("inspect", gone).returncode != 0, 60, "the abandoned container to go")
    finally:
        if logs is not None and logs.poll() is None:
            logs.kill()
            logs.wait()
        vm_driver("rm", "-f", name)
        vm_driver("rm", "-f", f"{name}-gone")
        code = server.stop()
    out = server.output()
    assert code == 0 and "Traceback" not in out, out
    report = json.loads(server.report.read_text())
    for gone in ("select.poll", "os.pipe2", "socket.AF_UNIX", "signal.SIGKILL", "signal.SIGHUP"):
        assert gone in report["removed"], gone
    # The wait route asked the TCP connection whether its client left through select, on a socket only.
    assert report["select_checked"] > 0 and report["select_refused"] == 0, report
