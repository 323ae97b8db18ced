"""The `runner` command: global options, command groups, and the one place errors are printed.

Users see ``Error: <what>`` and ``Hint: <what to do>`` on stderr and the exit code Docker would use: 125 for
runner's own failures, 126/127 when the container's command cannot run or is not found, otherwise the
container's own code. Tracebacks only with ``--debug``. Heavy modules (the engine, paramiko, qemu.qmp) are
imported only by the commands that need them, so ``runner --help`` and the native hot path stay fast.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import typer

from runner import __version__
from runner.errors import RunnerError

app = typer.Typer(
    name="runner",
    help="Run Linux containers: natively on Linux, through a lightweight QEMU VM on macOS and Windows.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@dataclass
class Globals:
    backend_flag: str | None = None
    machine: str = "default"
    debug: bool = False
    _backend: object = None
    _choice: object = None

    @property
    def choice(self):
        if self._choice is None:
            from runner.backends.select import choose
            self._choice = choose(self.backend_flag)
        return self._choice

    @property
    def backend(self):
        if self._backend is None:
            from runner.backends.select import make_backend
            self._backend = make_backend(self.choice, self.machine)
        return self._backend


STATE = Globals()


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
    from runner.cli import containers, images, network, system
    containers.register(app)
    network.register(app)
    images.register(app)
    system.register(app)
    try:
        from runner.cli import registry
    except ImportError:
        registry = None
    if registry is not None and hasattr(registry, "register"):
        registry.register(app)
    try:
        from runner.cli.vm import vm_app
    except ImportError:
        vm_app = None
    if vm_app is not None:
        app.add_typer(vm_app, name="vm", help="Manage the Linux VM that runs containers on macOS and Windows")


def print_error(exc: RunnerError) -> None:
    sys.stderr.write(f"Error: {exc.message}\n")
    if exc.hint:
        sys.stderr.write(f"Hint: {exc.hint}\n")


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point: run the app and turn every failure into one message and an exit code."""
    try:  # typer >= 0.16 vendors click; older releases use click itself
        from typer._click.exceptions import ClickException
    except ImportError:
        from click.exceptions import ClickException
    _register()
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args
    try:
        result = app(args=args, prog_name="runner", standalone_mode=False)
        return result if isinstance(result, int) else 0
    except typer.Exit as exc:
        return exc.exit_code
    except typer.Abort:
        sys.stderr.write("Aborted.\n")
        return 130
    except ClickException as exc:
        sys.stderr.write(f"Error: {exc.format_message()}\n")
        sys.stderr.write("Hint: see 'runner --help' or 'runner COMMAND --help'\n")
        return 125
    except RunnerError as exc:
        if debug:
            import traceback
            traceback.print_exc()
        print_error(exc)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (e.g. `runner ps | head`); exit quietly as other tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except Exception as exc:  # an internal failure: still one line, the traceback only with --debug
        if debug:
            import traceback
            traceback.print_exc()
        sys.stderr.write(f"Error: internal error: {type(exc).__name__}: {exc}\n")
        sys.stderr.write("Hint: run again with --debug for the traceback, and report it\n")
        return 125
