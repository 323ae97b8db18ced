"""The vocabulary of attached processes that every layer shares: stdio fds, terminal sizes, process handles,
and the cancellation of a long call whose caller went away.

Why its own module: the engine and the guest agent need these types as much as the CLI and the backends do,
and they are shipped into the VM guest, which must not carry the host-side seam (``runner.backends``).
Standard library only.
"""

from __future__ import annotations

import os
import threading

from runner.records import FrozenRecord, Record

# typing is imported for type checkers only: at run time it costs every CLI call ~6 ms. The protocol below is
# then a plain class (nothing instantiates it or checks isinstance against it).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Callable, Protocol

    ProgressFn = Callable[[dict], None]
else:
    Protocol = object
    ProgressFn = "Callable[[dict], None]"  # only ever used in annotations


class Stdio(FrozenRecord):
    """File descriptors a container process is wired to, seen from the caller's side.

    ``stdin`` None means the process reads /dev/null. With a terminal, output arrives on ``stdout`` only.
    """

    _fields = ("stdin", "stdout", "stderr")

    def __init__(self, stdin: int | None, stdout: int, stderr: int):
        self._init(stdin=stdin, stdout=stdout, stderr=stderr)


class TermSize(Record):
    _fields = ("rows", "cols")

    def __init__(self, rows: int, cols: int):
        self.rows, self.cols = rows, cols


class ProcessHandle(Protocol):
    """A running, attached container process (``run`` without ``-d``, ``start -a``, ``exec``)."""

    container_id: str

    def wait(self) -> int:
        """Block until the process ends; return its exit code (128+signal when killed, like Docker)."""

    def resize(self, size: TermSize) -> None:
        """Tell the process's terminal its new window size (no-op without a terminal)."""

    def signal(self, signum: int) -> None:
        """Deliver a signal to the process (Ctrl-C forwarding without a terminal)."""


def write_all(fd: int, data: bytes) -> None:
    """Write all of ``data`` to ``fd``: ``os.write`` may take only part of it (a pipe, a terminal)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


class Cancel:
    """A long call's "stop now", set once by whoever serves its caller and finds the caller gone (the agent when
    the host's channel drops, the API server when the client hangs up), as dockerd cancels a classic build whose
    client left. The work checks :meth:`is_set` between its steps and registers with :meth:`on_set` what ends
    the step it is blocked in (a build kills its running RUN container): no polling, and the stop comes within
    moments, not when the step would have ended anyway."""

    def __init__(self):
        self._lock = threading.Lock()
        self._set = False
        self._hooks: list = []

    def set(self) -> None:
        with self._lock:
            if self._set:
                return
            self._set = True
            hooks, self._hooks = self._hooks, []
        for hook in hooks:
            hook()

    def is_set(self) -> bool:
        return self._set

    def on_set(self, hook) -> "Callable[[], None]":
        """Call ``hook()`` once when (or, if already, as soon as) this is set; returns what unregisters it."""
        with self._lock:
            if not self._set:
                self._hooks.append(hook)
                return lambda: self._forget(hook)
        hook()
        return lambda: None

    def _forget(self, hook) -> None:
        with self._lock:
            if hook in self._hooks:
                self._hooks.remove(hook)
