"""Per-invocation CLI state: the global options and the backend they select, built on first use.

Typer-free, so the fast `run` path (runner.cli.fastrun) and the Typer commands share one instance.
"""

from __future__ import annotations


class Globals:
    def __init__(self):
        self.backend_flag: str | None = None
        self.machine = "default"
        self.debug = False
        self._backend = None
        self._choice = None

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
            self._backend = make_backend(self.choice, self.machine, warn)
        return self._backend


STATE = Globals()


def backend():
    return STATE.backend


def warn(message: str) -> None:
    """What lower layers report without failing (their ``warn`` callback): ``warning: <what>`` on stderr."""
    import sys
    sys.stderr.write(f"warning: {message}\n")


def print_error(exc) -> None:
    """The one format for errors: ``Error: <what>`` and, when known, ``Hint: <what to do>``."""
    import sys
    sys.stderr.write(f"Error: {exc.message}\n")
    if exc.hint:
        sys.stderr.write(f"Hint: {exc.hint}\n")
