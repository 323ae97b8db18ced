"""A program on a real pseudo-terminal that a test types into and reads from (``runner attach``, ``docker
attach``): what tests/helpers.py's run_in_pty does for a program that needs no input."""

from __future__ import annotations

import fcntl
import os
import pty
import select
import signal
import struct
import termios
import time


class PtySession:
    def __init__(self, argv: list[str], env: dict, rows: int = 33, cols: int = 111):
        self.pid, self.fd = pty.fork()
        if self.pid == 0:
            try:  # the size is set before the program starts and reads it
                fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
                os.execve(argv[0], argv, env)
            finally:
                os._exit(127)
        self.output = b""
        self.code: int | None = None

    def resize(self, rows: int, cols: int) -> None:
        """Change the terminal's size: the kernel sends the program SIGWINCH."""
        fcntl.ioctl(self.fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

    def send(self, data: bytes) -> None:
        os.write(self.fd, data)

    def _read(self, timeout: float) -> bool:
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if not ready:
            return True
        try:
            chunk = os.read(self.fd, 4096)
        except OSError:  # EIO: the program and everything on its terminal are gone
            return False
        self.output += chunk
        return bool(chunk)

    def expect(self, needle: bytes, timeout: float = 30) -> bytes:
        """Read until ``needle`` has appeared in the output (AssertionError with the output so far if not)."""
        deadline = time.monotonic() + timeout
        while needle not in self.output:
            left = deadline - time.monotonic()
            assert left > 0, f"{needle!r} not seen within {timeout}s; output: {self.output[-2000:]!r}"
            if not self._read(min(left, 0.5)) and needle not in self.output:
                raise AssertionError(f"the terminal closed before {needle!r}; output: {self.output[-2000:]!r}")
        return self.output

    def wait(self, timeout: float = 30) -> int:
        """The program's exit code, reading its output meanwhile (a full terminal would block it)."""
        deadline = time.monotonic() + timeout
        while self.code is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.code = os.waitstatus_to_exitcode(status)
                break
            assert time.monotonic() < deadline, f"still running after {timeout}s; output: {self.output[-2000:]!r}"
            self._read(0.1)
        while self._read(0):  # what it wrote last
            pass
        return self.code

    def close(self) -> None:
        """Kill the program if it still runs (a failed test), and close the terminal."""
        if self.code is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
                _, status = os.waitpid(self.pid, 0)
                self.code = os.waitstatus_to_exitcode(status)
            except (ProcessLookupError, ChildProcessError):
                pass
        os.close(self.fd)
