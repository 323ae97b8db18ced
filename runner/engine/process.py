"""What the caller's handles on a container's processes share: exit codes by Docker's rule, signals, resizes.

Apart from the shim so that ``runner exec`` (runner.engine.execution) and the healthcheck monitor, which the
shim itself runs (runner.engine.health), can use them without an import loop. Standard library only.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import struct
import termios

from runner.stdio import TermSize


def set_winsize(fd: int, size: TermSize | None) -> None:
    if size is not None:
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", size.rows, size.cols, 0, 0))


def exit_code_of(status: int) -> int:
    """Docker's convention: the exit code, or 128 + signal number when killed by a signal."""
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.waitstatus_to_exitcode(status)


class AttachedProcess:
    """What every attached handle shares: a workload pid to signal and maybe a pty master to resize."""

    def __init__(self, container_id: str, pid: int, master: int | None):
        self.container_id = container_id
        self.pid = pid
        self._master = master  # only for window-size changes; someone else does the reading and writing
        self._code: int | None = None

    def resize(self, size: TermSize) -> None:
        if self._master is not None:
            with contextlib.suppress(OSError):
                set_winsize(self._master, size)

    def signal(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signum)

    def _close_master(self) -> None:
        if self._master is not None:
            os.close(self._master)
            self._master = None
