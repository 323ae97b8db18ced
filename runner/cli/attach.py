"""Attaching the user's terminal to a container process: raw mode, window size, Ctrl-C.

With ``-t`` the terminal goes into raw mode, so every key (Ctrl-C included) travels to the container's own
pty and its line discipline decides what it means, as with docker. Without ``-t`` the CLI forwards SIGINT,
SIGTERM and SIGHUP to the container instead (docker's ``--sig-proxy``). Window size changes (SIGWINCH) are
passed on while attached. Host side only; works for both backends through the ProcessHandle protocol.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys

from runner.stdio import ProcessHandle, Stdio, TermSize
from runner.errors import UsageError

TYPE_CHECKING = False  # annotations only: importing typing costs the start path ~6 ms
if TYPE_CHECKING:
    from typing import Callable


def terminal_size() -> TermSize | None:
    try:
        size = os.get_terminal_size(sys.stdout.fileno())
    except OSError:
        return None
    return TermSize(size.lines, size.columns)


@contextlib.contextmanager
def raw_mode(enabled: bool):
    if not enabled or os.name != "posix" or not os.isatty(0):
        yield
        return
    import termios
    import tty
    saved = termios.tcgetattr(0)
    try:
        tty.setraw(0, termios.TCSANOW)  # not TCSAFLUSH: keys typed while attaching are kept, as docker's CLI does
        yield
    finally:
        termios.tcsetattr(0, termios.TCSADRAIN, saved)


def stdio_for(interactive: bool) -> Stdio:
    return Stdio(0 if interactive else None, 1, 2)


def attach(start: Callable[[Stdio, TermSize | None], ProcessHandle | str], tty: bool, interactive: bool,
           sig_proxy: bool = True) -> int:
    """Start a process attached to this terminal (or attach to a running one) and return its exit code."""
    if tty and interactive and not os.isatty(0):
        # As docker: a pty fed from a file or pipe never sees EOF, so the container would wait forever.
        raise UsageError("the input device is not a TTY", hint="drop -t, or run the command from a terminal")
    size = terminal_size() if tty else None
    sys.stdout.flush()
    handle_box: list[ProcessHandle] = []
    previous = {}

    pending: list[int] = []

    def forward(signum, _frame):
        if handle_box:
            handle_box[0].signal(signum)
        else:  # the container may already print before start() returns: deliver it then
            pending.append(signum)

    def winch(_signum, _frame):
        new = terminal_size()
        if handle_box and new:
            handle_box[0].resize(new)

    forwarded = () if tty or not sig_proxy else (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    if os.name == "posix":
        for sig in forwarded:
            previous[sig] = signal.signal(sig, forward)
        if tty:
            previous[signal.SIGWINCH] = signal.signal(signal.SIGWINCH, winch)
    try:
        with raw_mode(tty and interactive):
            handle = start(stdio_for(interactive), size)
            handle_box.append(handle)
            for signum in pending:
                handle.signal(signum)
            return handle.wait()
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
