"""Pure pieces of the CLI: env parsing, backend choice, error printing, rendering."""

import pytest

from runner.backends.select import choose
from runner.cli.runopts import build_spec, parse_env
from runner.cli.render import duration, human_size
from runner.errors import CommandNotFound, RunnerError, UsageError


def test_parse_env(tmp_path):
    f = tmp_path / "env"
    f.write_text("# comment\nA=1\n\nB=two words\nFROM_HOST\n")
    assert parse_env(["C=3", "D"], [str(f)], {"D": "dee", "FROM_HOST": "h"}) == [
        "A=1", "B=two words", "FROM_HOST=h", "C=3", "D=dee"]
    with pytest.raises(UsageError):
        parse_env(["=x"], [], {})
    with pytest.raises(UsageError):
        parse_env([], [str(tmp_path / "missing")], {})


def test_build_spec_entrypoint_rules():
    common = dict(env=[], env_file=[], workdir=None, user=None, name=None, hostname=None, memory="64m",
                  cpus=None, pids_limit=None, volume=["/a:/b:ro"], read_only=False, network="none", tty=False,
                  interactive=False, rm=True)
    spec = build_spec("img", ["ls", "-l"], entrypoint=None, **common)
    assert spec["command"] == ["ls", "-l"] and spec["entrypoint"] is None
    assert spec["limits"]["memory"] == 64 << 20 and spec["mounts"][0]["readonly"] is True
    assert build_spec("img", [], entrypoint="", **common)["entrypoint"] == []
    assert build_spec("img", [], entrypoint="/bin/x", **common)["entrypoint"] == ["/bin/x"]


def test_backend_choice_precedence():
    assert choose("vm", env={"RUNNER_BACKEND": "native"}, read_config=False).reason == "--backend flag"
    c = choose(None, env={"RUNNER_BACKEND": "vm"}, platform="linux", read_config=False)
    assert (c.backend, c.reason) == ("vm", "RUNNER_BACKEND environment variable")
    c = choose(None, env={}, platform="linux", config_value="vm")
    assert (c.backend, c.reason) == ("vm", "config file")
    assert choose(None, env={}, platform="darwin", read_config=False).backend == "vm"
    assert choose(None, env={}, platform="win32", read_config=False).backend == "vm"
    assert choose(None, env={}, platform="linux", read_config=False).backend == "native"
    with pytest.raises(UsageError):
        choose("docker", env={}, read_config=False)


def test_errors_round_trip_through_dicts():
    err = CommandNotFound("exec: nope: not found", hint="check PATH")
    back = RunnerError.from_dict(err.to_dict())
    assert type(back) is CommandNotFound and back.exit_code == 127 and back.hint == "check PATH"
    assert type(RunnerError.from_dict({"type": "Evil", "message": "m"})) is RunnerError


def test_rendering():
    assert duration(0.2) == "Less than a second"
    assert duration(61) == "1 minute" and duration(7200) == "2 hours"
    assert human_size(1_500_000) == "1.5MB" and human_size(12) == "12B"


def test_debug_shows_the_root_cause_chain(tmp_path):
    """Errors keep their cause (``raise ... from exc``): ``--debug`` shows the OSError under the one-line error,
    and without ``--debug`` the user sees only the line and its hint."""
    import subprocess
    import sys

    from tests.helpers import REPO
    env = {"PYTHONPATH": REPO, "RUNNER_ROOT": str(tmp_path), "PATH": "/usr/bin:/bin"}
    missing = str(tmp_path / "missing.tar")
    plain = subprocess.run([sys.executable, "-m", "runner", "load", "-i", missing], capture_output=True, env=env)
    debug = subprocess.run([sys.executable, "-m", "runner", "--debug", "load", "-i", missing], capture_output=True,
                           env=env)
    assert plain.returncode == debug.returncode == 125
    assert plain.stderr.decode().startswith("Error: cannot open") and b"Traceback" not in plain.stderr
    text = debug.stderr.decode()
    assert "FileNotFoundError" in text and "The above exception was the direct cause" in text, text


def test_every_command_has_working_help():
    """`runner CMD --help` renders for every command and sub-command (help texts carry Docker's literal
    [brackets], which rich markup once turned into a crash of `runner run --help`)."""
    import typer.main
    from typer.testing import CliRunner

    from runner.cli.app import app
    root = typer.main.get_command(app)
    paths = []

    def walk(cmd, path):
        paths.append(path)
        for name, sub in (getattr(cmd, "commands", None) or {}).items():
            walk(sub, path + [name])
    walk(root, [])
    assert ["run"] in paths and ["vm", "start"] in paths
    runner = CliRunner()
    for path in paths:
        result = runner.invoke(app, path + ["--help"])
        assert result.exit_code == 0 and "Usage" in result.output, (path, result.output, result.exception)
