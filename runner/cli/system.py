"""System commands: info and version."""

from __future__ import annotations

import typer

from runner.cli import render


def info(fmt: str = typer.Option(None, "--format", help="json for machine-readable output")):
    """Show which backend serves this host and why, and what it runs on."""
    from runner.cli.context import STATE
    choice = STATE.choice
    data = {"backend": choice.backend, "backend_reason": choice.reason}
    data.update(STATE.backend.info())
    if isinstance(data.get("machine"), dict):
        from runner.cli.vm import _warn_if_tcg
        _warn_if_tcg(data["machine"])
    if fmt == "json":
        render.print_json(data)
        return
    for key, value in data.items():
        if isinstance(value, dict):
            print(f"{key}:")
            for k, v in value.items():
                print(f"  {k}: {v}")
        else:
            print(f"{key}: {value}")


def version():
    """Print the version."""
    from runner import __version__
    print(f"runner {__version__}")


def register(app: typer.Typer) -> None:
    app.command("info")(info)
    app.command("version")(version)
