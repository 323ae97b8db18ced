"""The Typer application: global options and every command group.

Heavy modules (the engine, paramiko, qemu.qmp) are imported only by the commands that need them, so
`runner --help` stays fast. Errors are not printed here: runner.cli.main is the one place that does.
"""

from __future__ import annotations

import typer

from runner import __version__
from runner.cli.context import STATE

app = typer.Typer(
    rich_markup_mode=None,  # help texts are Docker's, with literal [brackets]: never rich markup
    name="runner",
    help="Run Linux containers: natively on Linux, through a lightweight QEMU VM on macOS and Windows.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool):
    if value:
        print(f"runner {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    backend: str = typer.Option(None, "--backend", help="native or vm (default: native on Linux, vm elsewhere)",
                                metavar="NAME"),
    machine: str = typer.Option("default", "--machine", help="the VM machine to use with the vm backend"),
    vm: bool = typer.Option(False, "--vm", help="shorthand for --backend vm"),
    debug: bool = typer.Option(False, "--debug", help="show tracebacks for errors"),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="print the version"),
):
    STATE.backend_flag = "vm" if vm else backend
    STATE.machine = machine
    STATE.debug = debug


def _register() -> None:
    from runner.cli import containers, cp, images, inspection, network, registry, system, volume
    from runner.cli.vm import vm_app
    containers.register(app)
    inspection.register(app)
    network.register(app)
    volume.register(app)
    cp.register(app)
    images.register(app)
    system.register(app)
    registry.register(app)
    from runner.cli import bench, serve
    bench.register(app)
    serve.register(app)
    app.add_typer(vm_app, name="vm", help="Manage the Linux VM that runs containers on macOS and Windows")


_register()


def run_app(args: list[str]) -> int:
    """Run the Typer app; Typer's own usage errors become one line and exit 125, like docker's."""
    try:  # typer >= 0.16 vendors click; older releases use click itself
        from typer._click.exceptions import ClickException
    except ImportError:
        from click.exceptions import ClickException
    try:
        result = app(args=args, prog_name="runner", standalone_mode=False)
        return result if isinstance(result, int) else 0
    except typer.Exit as exc:
        return exc.exit_code
    except typer.Abort:
        import sys
        sys.stderr.write("Aborted.\n")
        return 130
    except ClickException as exc:
        import sys
        sys.stderr.write(f"Error: {exc.format_message()}\n")
        sys.stderr.write("Hint: see 'runner --help' or 'runner COMMAND --help'\n")
        return 125
