"""`runner volume create|ls|inspect|rm|prune`: the user's view of runner.engine.volumes (docker volume ...)."""

from __future__ import annotations

from typing import List, Optional

import typer

from runner.cli import render

volume_app = typer.Typer(rich_markup_mode=None, no_args_is_help=True,
                         help="Manage volumes (named directories of the engine that outlive containers)")


def _backend():
    from runner.cli.context import STATE
    return STATE.backend


@volume_app.command("create")
def create(name: Optional[str] = typer.Argument(None, help="volume name (default: a random one)"),
           label: List[str] = typer.Option([], "--label", help="set a label KEY=VALUE"),
           driver: str = typer.Option("local", "-d", "--driver", help="volume driver (only local)"),
           opt: List[str] = typer.Option([], "-o", "--opt", help="driver options (the local driver here takes none)")):
    """Create a volume (or return the existing one of that name)."""
    from runner.cli.runopts import parse_labels
    from runner.errors import UsageError
    if driver != "local":
        raise UsageError(f"volume driver {driver!r} is not available", hint="runner has the local driver only")
    options = dict(o.partition("=")[::2] for o in opt) or None
    print(_backend().volume_create(name, parse_labels(label) or None, options)["Name"])


@volume_app.command("ls")
def ls(quiet: bool = typer.Option(False, "-q", "--quiet", help="only print names"),
       filter_: List[str] = typer.Option([], "-f", "--filter", help="label=k[=v], name=, dangling=true|false"),
       fmt: Optional[str] = typer.Option(None, "--format", help="json (one object a line, as docker), or a Go template")):
    """List volumes."""
    from runner.engine.filters import parse_cli
    items = _backend().volume_ls(parse_cli(filter_) or None)
    if quiet:
        for v in items:
            print(v["Name"])
        return
    render.formatted(fmt or "table {{.Driver}}\t{{.Name}}", [render.volume_row(v) for v in items],
                     render.VOLUME_HEADERS)


@volume_app.command("inspect")
def inspect(names: List[str] = typer.Argument(...),
            fmt: Optional[str] = typer.Option(None, "-f", "--format", help="a Go template: {{.Mountpoint}}")):
    """Show volumes as JSON, or through a Go template."""
    items = [_backend().volume_inspect(n) for n in names]
    if fmt:
        from runner.cli import gotemplate
        nodes = gotemplate.parse(fmt)
        for item in items:
            print(gotemplate.execute(nodes, item))
        return
    render.print_json(items)


@volume_app.command("rm")
def rm(names: List[str] = typer.Argument(..., help="volumes to remove"),
       force: bool = typer.Option(False, "-f", "--force", help="no error for volumes that do not exist")):
    """Remove volumes; refused while a container (running or not) uses them."""
    from runner.cli.containers import _each
    _each(names, lambda name: _backend().volume_rm(name, force))


@volume_app.command("prune")
def prune(all_: bool = typer.Option(False, "-a", "--all", help="remove every unused volume, not only anonymous ones"),
          filter_: List[str] = typer.Option([], "--filter", help="label=k[=v]"),
          force: bool = typer.Option(False, "-f", "--force", help="do not ask (runner never asks)")):
    """Remove unused anonymous volumes (all unused volumes with --all), as docker volume prune."""
    from runner.engine.filters import parse_cli
    result = _backend().volume_prune(all_, parse_cli(filter_) or None)
    if result["VolumesDeleted"]:
        print("Deleted Volumes:")
        for name in result["VolumesDeleted"]:
            print(name)
        print()
    print(f"Total reclaimed space: {render.human_size(result['SpaceReclaimed'])}")


def register(app: typer.Typer) -> None:
    app.add_typer(volume_app, name="volume")
