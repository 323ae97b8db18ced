"""The host-side connection cache, as its callers see it: find, start, connect to and stop the cache process.

The cache itself (the process holding the SSH connection) is :mod:`runner.vm.muxd`.

Why: under TCG a new SSH connection costs ~0.25 s (key exchange and auth in a slow guest), and importing
paramiko another ~0.15 s, against a budget of ~0.15 s for a whole ``runner run``. So the first CLI call that
needs the VM starts this small process (``python -m runner.vm.muxd --machine NAME``); it holds the paramiko
transport and listens on a Unix socket in the machine's directory (0600, in a 0700 directory). ``runner vm
start`` (any boot, :meth:`runner.vm.machine.Machine.start`) starts it as its SSH login step, and it makes sure
this runner's agent serves (:func:`runner.vm.ship.ensure_agent`) before it says ready. Each later
call connects there and the mux opens a ``direct-tcpip`` channel to the agent for it, then just copies bytes
both ways. The mux never reads the agent protocol: the handshake (token proof, version) stays end to end
between the CLI and the agent, so the socket grants nothing a caller could not already do with the token.

Lifetime: it exits when its SSH transport dies (the VM stopped or crashed: so ``runner vm stop`` ends it
within a second, and a new boot gets a new mux), after ``runner.vm.muxd.IDLE_TIMEOUT`` without any connection, or on
SIGTERM (:func:`stop`). It removes its socket and pid file on the way out. A mux that cannot serve the
current boot (started for a QEMU since killed) or that serves but does not answer a probe (hung) is killed
and replaced by the next starter (:func:`runner.vm.muxd.serve`): recovery never waits on it.

Hosts without Unix sockets (Windows) skip it: there each CLI call opens its own SSH connection.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sys
from pathlib import Path

from runner.errors import RunnerError, VMError

START_TIMEOUT = 60.0
PROBE_TIMEOUT = 10.0  # the agent's CHALLENGE through a serving mux: one SSH channel open, ~0.3 s under TCG

TYPE_CHECKING = False
if TYPE_CHECKING:  # annotations only: subprocess is imported where a mux is started, not by every VM call
    import subprocess

    from runner.vm.layout import MachinePaths

SUPPORTED = hasattr(socket, "AF_UNIX") and os.name == "posix"


def connect(paths: MachinePaths, timeout: float = 5.0) -> socket.socket:
    """A connection through the mux to the agent (raises OSError if no mux listens)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(str(paths.agent_socket))
        sock.settimeout(None)
    except OSError:
        sock.close()
        raise
    return sock


def start(paths: MachinePaths) -> None:
    """Start the mux for the machine of ``paths`` detached from this CLI call; return once it listens (or raise why not).

    It opens its own SSH connection (the caller's paramiko client cannot cross a process boundary) once the
    guest says READY, and makes sure our agent serves before it listens.
    """
    wait_started(spawn(paths), paths)


def spawn(paths: MachinePaths) -> subprocess.Popen:
    """Launch the mux without waiting: a booting machine's start launches it early, so that the mux's Python
    start and imports overlap the guest's boot instead of following it (then :func:`wait_started`)."""
    import subprocess  # not at the top: every VM CLI call imports this module, for connect()

    log_fd = os.open(paths.agent_mux_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    with open(log_fd, "ab") as log:
        return subprocess.Popen([sys.executable, "-m", "runner.vm.muxd", "--machine", paths.name],
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log,
                                start_new_session=True, cwd=str(Path(__file__).resolve().parents[2]))


def wait_started(proc: subprocess.Popen, paths: MachinePaths) -> None:
    line = b""
    with contextlib.suppress(OSError):
        line = proc.stdout.readline()  # "ready" once it listens, "error <json>" or EOF if it failed
    proc.stdout.close()
    if not line.startswith(b"ready"):
        proc.wait(START_TIMEOUT)
        error = None
        if line.startswith(b"error "):
            with contextlib.suppress(ValueError):
                error = json.loads(line[6:])
        if isinstance(error, dict):
            raise RunnerError.from_dict(error)
        raise VMError(f"the SSH connection cache for machine {paths.name!r} did not start",
                      hint=f"see {paths.agent_mux_log}")


def stop(paths: MachinePaths) -> bool:
    """Stop the machine's mux if one runs (for ``runner vm stop``; it would also notice by itself)."""
    try:
        pid = int(paths.agent_mux_pid.read_text())
    except (OSError, ValueError):
        return False
    from runner import procs

    if "runner.vm.muxd" not in (procs.cmdline(pid) or ""):
        return False  # a recycled pid: never signal a process we cannot prove is ours
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
        return True
    return False
