"""`runner network create|ls|rm|inspect|connect|disconnect` and `runner port`: the user's view of runner.engine.network."""

from __future__ import annotations

from typing import List, Optional

import typer

from runner.cli import render

network_app = typer.Typer(rich_markup_mode=None,
                          help="Manage networks (bridge networks; containers on one reach each other by name)",
                          no_args_is_help=True)


def _backend():
    from runner.cli.context import STATE
    return STATE.backend


@network_app.command("create")
def create(name: str = typer.Argument(..., help="network name"),
           subnet: Optional[str] = typer.Option(None, "--subnet",
                                                help="IPv4 subnet in CIDR form (default: a free private one)"),
           label: List[str] = typer.Option([], "--label", help="set a label KEY=VALUE")):
    """Create a bridge network."""
    from runner.cli.runopts import parse_labels
    print(_backend().network_create(name, subnet, parse_labels(label) or None)["Id"])


@network_app.command("ls")
def ls(quiet: bool = typer.Option(False, "-q", "--quiet", help="only print names"),
       filter_: List[str] = typer.Option([], "-f", "--filter", help="label=k[=v], name=, id=, driver="),
       fmt: Optional[str] = typer.Option(None, "--format", help="json (one object a line, as docker), or a Go template")):
    """List networks (host and none always exist; bridge appears once first used)."""
    from runner.engine.filters import parse_cli
    filters = parse_cli(filter_)
    items = _backend().network_ls(filters or None)
    if quiet:
        for n in items:
            print(n["Name"])
        return
    if fmt:
        render.formatted(fmt, [render.network_row(n) for n in items], render.NETWORK_HEADERS)
        return
    render.networks(items, builtin=not filters)


@network_app.command("rm")
def rm(names: List[str] = typer.Argument(..., help="networks to remove")):
    """Remove networks (and their bridges); refused while containers use them."""
    from runner.cli.containers import _each
    _each(names, lambda name: _backend().network_rm(name))


@network_app.command("inspect")
def inspect(names: List[str] = typer.Argument(...)):
    """Show networks as JSON, with the containers attached to them."""
    render.print_json([_backend().network_inspect(n) for n in names])


@network_app.command("connect")
def connect(network: str = typer.Argument(..., help="network name"),
            container: str = typer.Argument(..., help="container name or id"),
            alias: List[str] = typer.Option([], "--alias", help="add a network-scoped alias for the container")):
    """Connect a container to a network: a running one at once (a new ethN), a stopped one from its next start."""
    _backend().network_connect(network, container, list(alias) or None)


@network_app.command("disconnect")
def disconnect(network: str = typer.Argument(..., help="network name"),
               container: str = typer.Argument(..., help="container name or id"),
               force: bool = typer.Option(False, "-f", "--force",
                                          help="also drop what a removed container left on the network")):
    """Disconnect a container from a network (a running one loses the interface at once)."""
    _backend().network_disconnect(network, container, force)


def port(container: str = typer.Argument(...),
         private: Optional[str] = typer.Argument(None, help="PORT[/PROTO] to show only one mapping")):
    """List a running container's published ports (docker port)."""
    from runner.errors import NotFound
    ports = _backend().port(container)
    if private is not None:
        key = private if "/" in private else private + "/tcp"
        if key not in ports:
            raise NotFound(f"no public port '{key}' published for {container}")
        for b in ports[key]:
            print(f'{b["HostIp"]}:{b["HostPort"]}')
        return
    for key, bindings in ports.items():
        for b in bindings:
            print(f'{key} -> {b["HostIp"]}:{b["HostPort"]}')


def register(app: typer.Typer) -> None:
    app.add_typer(network_app, name="network")
    app.command("port")(port)
