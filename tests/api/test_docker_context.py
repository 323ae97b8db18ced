"""The docker context `runner docker-env --context` writes, read by the real docker CLI (and docker-py): no
DOCKER_HOST anywhere, `docker --context runner ...` and `docker context use runner` reach the server; the
context's removal leaves the CLI on its default context. Host-side only, so the native server suffices."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.api.conftest import DOCKER
from tests.helpers import cli, ok

pytestmark = pytest.mark.root


def _docker(config: str, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("DOCKER_HOST", "DOCKER_CONTEXT")}
    env["DOCKER_CONFIG"] = config
    return subprocess.run([DOCKER, *args], capture_output=True, timeout=120, env=env)


def test_docker_context_use_and_removal(native_api, tmp_path, monkeypatch):
    config = str(tmp_path / "docker-config")
    env = {"DOCKER_CONFIG": config}
    written = ok(cli(["docker-env", "--context", "-H", native_api.host], env=env))
    assert "docker context use runner" in written
    listed = ok(_docker(config, "context", "ls", "--format", "{{.Name}} {{.DockerEndpoint}}")).splitlines()
    assert f"runner {native_api.host}" in listed
    assert ok(_docker(config, "--context", "runner", "version", "--format", "{{.Server.APIVersion}}")).strip()
    assert _docker(config, "ps").returncode != 0  # the default context: no daemon on /var/run/docker.sock
    ok(_docker(config, "context", "use", "runner"))
    assert ok(_docker(config, "ps", "-a", "--format", "{{.ID}}")) is not None  # now through runner
    from docker.context import ContextAPI  # docker-py reads the same store
    monkeypatch.setenv("DOCKER_CONFIG", config)
    assert ContextAPI.get_context("runner").Host == native_api.host
    removed = ok(cli(["docker-env", "--context-rm"], env=env))
    assert "it was the current one" in removed
    assert _docker(config, "context", "inspect", "runner").returncode != 0
    assert ok(_docker(config, "context", "inspect", "--format", "{{.Name}}")).strip() == "default"  # the current
    assert "no docker context" in ok(cli(["docker-env", "--context-rm"], env=env))
