"""Engine API tests: a real `runner serve` per backend, driven by real Docker clients.

``api`` is a running server (one per backend for the whole session, like the contract suite's drivers):
its ``docker(...)`` runs the docker CLI binary against it, ``host`` is the DOCKER_HOST value for docker-py and
testcontainers. Servers are stopped by PID with SIGTERM at the end (and must remove their socket).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile

import pytest

from tests.helpers import REPO, wait_for

# The docker CLI of Debian's docker.io (scripts/setup installs it): the client a fresh machine has, even where
# another docker binary comes first on PATH. Only the client runs; no daemon is ever started by the tests.
DOCKER = "/usr/bin/docker" if os.path.exists("/usr/bin/docker") else (shutil.which("docker") or "docker")

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "registry"))
from tests.contract.conftest import native_driver, vm_driver  # noqa: E402,F401
from tests.registry.conftest import registry, tmp_root  # noqa: E402,F401


class ApiServer:
    """`python -m runner --backend B serve -H unix://DIR/docker.sock` as a child process of the test."""

    def __init__(self, backend: str, env: dict[str, str]):
        self.backend = backend
        self.dir = tempfile.mkdtemp(prefix="runner-api-")
        self.socket = os.path.join(self.dir, "docker.sock")
        self.host = f"unix://{self.socket}"
        self.env = dict(os.environ, PYTHONPATH=REPO, **env)
        self.log = open(os.path.join(self.dir, "serve.log"), "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "runner", "--backend", backend, "serve", "-H", self.host],
                                     env=self.env, stdout=self.log, stderr=subprocess.STDOUT)
        try:
            wait_for(lambda: self.proc.poll() is not None or self._answers(), 120, "runner serve to listen")
            assert self.proc.poll() is None, f"runner serve exited: {self.output()}"
        except BaseException:
            self.stop()
            raise

    def _answers(self) -> bool:
        return os.path.exists(self.socket) and self.docker("version", "--format", "{{.Server.Version}}",
                                                           timeout=30).returncode == 0

    def docker(self, *args: str, input: bytes | None = None, timeout: float = 180,
               env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        """The docker CLI (the client only: it never starts a daemon) against this server."""
        full = dict(os.environ, DOCKER_HOST=self.host, DOCKER_CONFIG=os.path.join(self.dir, "docker-config"))
        full.update(env or {})
        return subprocess.run([DOCKER, *args], input=input, capture_output=True, timeout=timeout, env=full)

    def output(self) -> str:
        self.log.flush()
        with open(self.log.name, errors="replace") as f:
            return f.read()

    def stop(self) -> int | None:
        """SIGTERM by PID, wait for the exit; SIGKILL only if it hangs (then the test that sees it fails)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        return self.proc.returncode

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def native_api(native_driver):
    server = ApiServer("native", {"RUNNER_ROOT": native_driver.root})
    yield server
    server.close()


@pytest.fixture(scope="session")
def vm_api(vm_driver):
    server = ApiServer("vm", vm_driver.env)
    yield server
    server.close()


@pytest.fixture(params=[pytest.param("native", marks=pytest.mark.root),
                        pytest.param("vm", marks=pytest.mark.vm)])
def api(request):
    """The running Engine API server of each backend (the same scenarios, the same assertions)."""
    return request.getfixturevalue(f"{request.param}_api")


@pytest.fixture
def rn(api, request):
    """runner's own CLI on the same engine state as the server ``api`` (its backend's contract driver)."""
    return request.getfixturevalue(f"{api.backend}_driver")
