"""The docker context runner writes (runner/api/dockercontext.py): where, what, and what it never touches.

The real docker CLI reading it is tested in tests/api/test_docker_context.py."""

from __future__ import annotations

import hashlib
import json

import pytest

from runner.api import dockercontext as dc
from runner.errors import Conflict


def test_the_store_is_docker_config_or_home(tmp_path, monkeypatch):
    assert dc.config_dir({"DOCKER_CONFIG": str(tmp_path)}) == tmp_path
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert dc.config_dir({}) == tmp_path / "home" / ".docker"


def test_written_as_the_docker_cli_stores_a_context(tmp_path):
    path = dc.write("unix:///run/runner/docker.sock", tmp_path)
    assert path == tmp_path / "contexts" / "meta" / hashlib.sha256(b"runner").hexdigest() / "meta.json"
    meta = json.loads(path.read_text())
    assert meta == {"Name": "runner", "Metadata": {"Description": dc.DESCRIPTION},
                    "Endpoints": {"docker": {"Host": "unix:///run/runner/docker.sock", "SkipTLSVerify": False}}}
    assert path.stat().st_mode & 0o777 == 0o644
    dc.write("npipe:////./pipe/runner_engine", tmp_path)  # an update of our own context
    assert json.loads(path.read_text())["Endpoints"]["docker"]["Host"] == "npipe:////./pipe/runner_engine"


def test_a_context_of_that_name_runner_did_not_write_is_left_alone(tmp_path):
    path = dc.meta_file("runner", tmp_path)
    path.parent.mkdir(parents=True)
    foreign = {"Name": "runner", "Metadata": {"Description": "mine"}, "Endpoints": {"docker": {"Host": "tcp://x:1"}}}
    path.write_text(json.dumps(foreign))
    with pytest.raises(Conflict) as caught:
        dc.write("unix:///s.sock", tmp_path)
    assert "not made by runner" in caught.value.message and "docker context rm runner" in caught.value.hint
    with pytest.raises(Conflict):
        dc.remove(tmp_path)
    assert json.loads(path.read_text()) == foreign


def test_removing_the_current_context_resets_the_cli_to_its_default(tmp_path):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"auths": {"r:5000": {"auth": "eA=="}}, "currentContext": "runner"}))
    config.chmod(0o600)
    dc.write("unix:///s.sock", tmp_path)
    assert dc.remove(tmp_path) == (True, True)
    assert not dc.meta_file("runner", tmp_path).parent.exists()
    assert json.loads(config.read_text()) == {"auths": {"r:5000": {"auth": "eA=="}}}  # the rest kept
    assert config.stat().st_mode & 0o777 == 0o600
    assert dc.remove(tmp_path) == (False, False)
    config.write_text(json.dumps({"currentContext": "other"}))
    dc.write("unix:///s.sock", tmp_path)
    assert dc.remove(tmp_path) == (True, False)
    assert json.loads(config.read_text()) == {"currentContext": "other"}
