"""``runner login``/``logout`` against a real htpasswd registry, with a throw-away DOCKER_CONFIG."""

from __future__ import annotations

import base64
import json
import os
import stat

import pytest
import typer
from typer.testing import CliRunner

from regtest_servers import PASSWORD, USER
from runner.cli.registry import register
from runner.errors import RegistryError

pytestmark = pytest.mark.registry


@pytest.fixture
def cli(tmp_path, monkeypatch):
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker"))
    app = typer.Typer()
    register(app)
    runner = CliRunner()
    return lambda *args, **kw: runner.invoke(app, list(args), **kw), tmp_path / "docker" / "config.json"


def test_login_logout(basic_registry, cli):
    invoke, config = cli
    host = basic_registry.host
    result = invoke("login", host, "-u", USER, "--password-stdin", input=PASSWORD + "\n")
    assert result.exit_code == 0, result.output
    assert "Login Succeeded" in result.output and PASSWORD not in result.output
    assert stat.S_IMODE(os.stat(config).st_mode) == 0o600
    stored = json.loads(config.read_text())["auths"][host]["auth"]
    assert base64.b64decode(stored).decode() == f"{USER}:{PASSWORD}"

    result = invoke("logout", host)
    assert result.exit_code == 0 and f"Removing login credentials for {host}" in result.output
    assert json.loads(config.read_text())["auths"] == {}


def test_login_wrong_password_saves_nothing(basic_registry, cli):
    invoke, config = cli
    result = invoke("login", basic_registry.host, "-u", USER, "--password-stdin", input="wrong\n")
    assert isinstance(result.exception, RegistryError)
    assert str(result.exception) == f"unauthorized: authentication required for {basic_registry.host}"
    assert "wrong" not in result.output
    assert not config.exists()


def test_login_token_registry(token_registry, cli):
    invoke, config = cli
    host = token_registry.host
    result = invoke("login", host, "-u", USER, "-p", PASSWORD)
    assert result.exit_code == 0, result.output
    assert "insecure" in result.output  # the -p warning
    result = invoke("login", host, "-u", USER, "-p", "nope")
    assert isinstance(result.exception, RegistryError)
