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

from runner.errors import NeedsRoot, RunnerError

_fast_lane = False  # whether the last main() call was served by the fast `run` lane
_gc_paused = False  # entry() turned the cyclic garbage collector off for a fast-lane run



def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in args
    global _fast_lane
    try:
        from runner.cli.fastrun import try_run
        _fast_lane = True
        code = try_run(args)
        if code is None:
            _fast_lane = False
            if _gc_paused:
                import gc
                gc.enable()  # other commands may run long (pulls, VMs): normal collection for them
            from runner.cli.app import run_app
            code = run_app(args)
        return code
    except NeedsRoot as exc:
        _run_again_as_root(args, exc)  # returns only when it cannot
        from runner.cli.context import print_error
        print_error(exc)
        return exc.exit_code
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
        from runner.diskfull import is_full
        if is_full(exc):  # a write path without its own wording (e.g. a file the CLI writes): still clear
            if debug:
                import traceback
                traceback.print_exc()
            error = _disk_full(exc, args)
            from runner.cli.context import print_error
            print_error(error)
            return error.exit_code
        if debug:
            import traceback
            traceback.print_exc()
        sys.stderr.write(f"Error: internal error: {type(exc).__name__}: {exc}\n")
        sys.stderr.write("Hint: run again with --debug for the traceback, and report it\n")
        return 125


def _disk_full(exc: OSError, args: list[str]) -> RunnerError:
    """A full filesystem met outside any write path that words it: named by the failing file, else by a
    redirected stdout that is what filled (``runner logs c > file``), else by the working directory."""
    from runner.diskfull import HINT, disk_full_error
    words, skip = [], False
    for a in args:  # the command's name: not a global option nor its value (--backend vm)
        if not skip and not a.startswith("-"):
            words.append(a)
        skip = a in ("--backend", "--machine")
    doing = f"running 'runner {words[0]}'" if words else "running runner"
    if isinstance(exc.filename, str):
        return disk_full_error(exc.filename, doing)
    import stat
    try:
        out = os.fstat(1)
        full = stat.S_ISREG(out.st_mode) and os.fstatvfs(1).f_bavail == 0
    except OSError:
        full = False
    if full:
        return disk_full_error("/proc/self/fd/1", "writing standard output",
                               hint="free space there, or send the output elsewhere")
    return disk_full_error(os.getcwd(), doing, hint=HINT)


# The environment that chooses what runner does: kept across sudo, whose env_reset would drop it.
_KEPT_ENV = ("RUNNER_ROOT", "RUNNER_BACKEND", "RUNNER_CONFIG", "PYTHONPATH", "NO_COLOR")


def _run_again_as_root(args: list[str], exc: NeedsRoot) -> None:
    """Replace this process by the same command run through ``sudo`` (one line on stderr says so), as a
    user with sudo rights expects from ``runner run ...``; returns when there is no sudo (or it was tried)."""
    import shutil
    sudo = shutil.which("sudo")
    if sudo is None or os.environ.get("RUNNER_VIA_SUDO"):
        exc.hint = "run it as root (no sudo here: su -c 'runner ...'), or use the VM backend: runner --backend vm ..."
        return
    sys.stderr.write("runner: the native backend needs root; running the command again through sudo\n")
    sys.stderr.flush()
    env = [f"{k}={os.environ[k]}" for k in _KEPT_ENV if k in os.environ] + ["RUNNER_VIA_SUDO=1"]
    try:
        os.execv(sudo, [sudo, "--", "env", *env, sys.executable, "-m", "runner", *args])
    except OSError as err:
        exc.hint = f"cannot run sudo ({err.strerror}): run it as root"


def entry() -> None:
    """The process entry point (console script and ``python -m runner``): main(), then exit.

    After a fast-lane ``run`` the process ends with ``os._exit`` once stdout and stderr are flushed:
    tearing the interpreter down (freeing every module and object) costs 10-40 ms here, a sizeable part of a
    container's whole start. That is only done when nothing else could still need the normal shutdown:
    no atexit callbacks registered and no other thread alive. The fast lane writes its files under ``with``
    blocks, so no buffered file is left for finalization to flush.
    """
    # No cyclic garbage collection while a `run` starts: the collections its imports trigger cost ~10 ms, and
    # this process's little garbage is freed when it exits. main() turns it back on for the Typer commands;
    # the shim, forked from here and maybe living for days, turns it on for itself (runner.engine.shim).
    global _gc_paused
    import gc
    gc.disable()
    _gc_paused = True
    code = main()
    if _fast_lane:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except Exception:  # let the normal exit report it
            sys.exit(code)
        import atexit
        threading = sys.modules.get("threading")
        ncallbacks = getattr(atexit, "_ncallbacks", None)
        if ncallbacks is not None and ncallbacks() == 0 and (threading is None or threading.active_count() == 1):
            os._exit(code)
    sys.exit(code)
