"""The fast `run` lane must parse exactly like the Typer command, or step aside."""

import pytest

from runner.cli import runopts
from runner.cli.fastrun import _parse_globals, parse_run


def typer_params(command_name):
    import typer.main

    from runner.cli.app import app
    group = typer.main.get_command(app)
    return {p.name: p for p in group.commands[command_name].params}


@pytest.mark.parametrize("command, table", [("run", runopts.RUN_OPTIONS), ("create", runopts.CREATE_OPTIONS)])
def test_option_table_matches_the_typer_commands(command, table):
    params = typer_params(command)
    options = {name: p for name, p in params.items() if p.param_type_name == "option"}
    assert set(options) == {opt.dest for opt in table}
    for opt in table:
        p = options[opt.dest]
        assert sorted(p.opts + p.secondary_opts) == sorted(opt.flags), opt.dest
        assert p.is_flag == (opt.kind == runopts.FLAG), opt.dest
        assert p.multiple == (opt.kind == runopts.MULTI), opt.dest


def test_parse_run_like_docker():
    opts = parse_run(["-dit", "--rm", "-e", "A=1", "-eB=2", "--name=web", "-m", "64m", "--cpus", "0.5",
                      "img", "sh", "-c", "echo -e hi"])
    assert opts["detach"] and opts["interactive"] and opts["tty"] and opts["rm"]
    assert opts["env"] == ["A=1", "B=2"] and opts["name"] == "web" and opts["memory"] == "64m"
    assert opts["cpus"] == 0.5 and opts["network"] == "bridge" and opts["pull"] == "missing"
    assert (opts["image"], opts["command"]) == ("img", ["sh", "-c", "echo -e hi"])
    assert parse_run(["--", "img", "-x"])["command"] == ["-x"]


@pytest.mark.parametrize("args", [["--help", "img"], ["--bogus", "img"], ["-Z", "img"], ["--cpus", "lots", "img"],
                                  ["-e"], ["--rm"], ["--rm=yes", "img"], []])
def test_parse_run_steps_aside_for_anything_unusual(args):
    assert parse_run(args) is None


def test_global_options():
    assert _parse_globals(["--vm", "--backend", "native", "run"]) == ({"--vm": True, "backend_flag": "native"}, 3)
    assert _parse_globals(["--machine=dev", "run"]) == ({"machine": "dev"}, 1)
    assert _parse_globals(["--version"]) is None
