"""The `runner` entry point and the one place where errors are printed.

Users see ``Error: <what>`` and ``Hint: <what to do>`` on stderr and the exit code Docker would use: 125 for
runner's own failures, 126/127 when the container's command cannot run or is not found, otherwise the
container's own code. Tracebacks only with ``--debug``.

Plain `runner run ...` lines take the fast lane (runner.cli.fastrun) and never import Typer; everything
else goes through the Typer app.
"""

from __future__ import annotations

import os
import sys

from runner.errors import RunnerError


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in args
    try:
        from runner.cli.fastrun import try_run
        code = try_run(args)
        if code is None:
            from runner.cli.app import run_app
            code = run_app(args)
        return code
    except RunnerError as exc:
        if debug:
            import traceback
            traceback.print_exc()
        from runner.cli.context import print_error
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
