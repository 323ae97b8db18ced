"""``runner login`` and ``runner logout``: registry credentials on the host, in Docker's config file.

Login checks the credentials against the registry before saving them (as ``docker login`` does), so a
typo is reported now rather than at the next pull. The password comes from ``--password-stdin``, a
hidden prompt or, discouraged, ``-p``; it is never echoed or put in an error. Errors are raised as
RunnerError and printed by ``runner.cli.app``. ``pull``/``push`` themselves go through the backend.
"""

from __future__ import annotations

import sys

import typer

from runner.errors import UsageError

# The registry client, credentials and reference modules are imported inside the commands: every `runner`
# call registers these commands, and only login/logout need them.


def _registry(server: str | None) -> str:
    """``SERVER`` as Docker accepts it (host, host:port, or a URL) → registry name."""
    from runner.images import credentials
    from runner.images.reference import DEFAULT_REGISTRY
    return credentials.registry_of(server) if server else DEFAULT_REGISTRY


def login(
    server: str = typer.Argument(None, help="Registry host[:port]; default Docker Hub."),
    username: str = typer.Option(None, "--username", "-u", help="Username."),
    password: str = typer.Option(None, "--password", "-p", help="Password (prefer --password-stdin)."),
    password_stdin: bool = typer.Option(False, "--password-stdin", help="Read the password from stdin."),
) -> None:
    """Log in to a registry and store the credentials in the Docker config file."""
    registry = _registry(server)
    if password and password_stdin:
        raise UsageError("--password and --password-stdin are mutually exclusive")
    if password_stdin:
        if not username:
            raise UsageError("--password-stdin needs --username")
        # Like docker: strip the line ending a pipe or here-string adds, nothing else.
        password = sys.stdin.read().rstrip("\r\n")
    elif password:
        typer.echo("WARNING! Using --password via the CLI is insecure. Use --password-stdin.", err=True)
    if not username:
        username = typer.prompt("Username")
    if not password:
        password = typer.prompt("Password", hide_input=True)
    if not password:
        raise UsageError("password is empty")
    from runner.images import credentials
    from runner.images.registry import RegistryClient
    RegistryClient(registry, credentials={"username": username, "password": password}).check_login()
    credentials.store(registry, username, password)
    typer.echo("Login Succeeded")


def logout(server: str = typer.Argument(None, help="Registry host[:port]; default Docker Hub.")) -> None:
    """Remove stored credentials for a registry."""
    from runner.images import credentials
    registry = _registry(server)
    if credentials.erase(registry):
        typer.echo(f"Removing login credentials for {registry}")
    else:
        typer.echo(f"Not logged in to {registry}")


def register(app: typer.Typer) -> None:
    """Add ``login`` and ``logout`` to the top-level app."""
    app.command("login")(login)
    app.command("logout")(logout)
