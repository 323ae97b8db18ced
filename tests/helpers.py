"""Shared test helpers: run the real `runner` CLI as a subprocess, as a user would."""

from __future__ import annotations

import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cli(args: list[str], *, root: str | None = None, backend: str = "native", input: bytes | None = None,
        timeout: float = 120, env: dict | None = None, check: bool = False, **kw) -> subprocess.CompletedProcess:
    """`python -m runner --backend B ARGS` with RUNNER_ROOT pointing at a test's own state directory."""
    full_env = dict(os.environ)
    full_env["PYTHONPATH"] = REPO + os.pathsep + full_env.get("PYTHONPATH", "")
    if root is not None:
        full_env["RUNNER_ROOT"] = root
    if env:
        full_env.update(env)
    proc = subprocess.run([sys.executable, "-m", "runner", "--backend", backend, *args], input=input,
                          capture_output=True, timeout=timeout, env=full_env, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"runner {' '.join(args)} failed ({proc.returncode}): {proc.stderr.decode()}")
    return proc


def out(proc: subprocess.CompletedProcess) -> str:
    return proc.stdout.decode()


def ok(proc: subprocess.CompletedProcess) -> str:
    """The command's stdout, after asserting that it succeeded (its stderr is the failure message)."""
    assert proc.returncode == 0, proc.stderr.decode()
    return proc.stdout.decode()


def err(proc: subprocess.CompletedProcess) -> str:
    return proc.stderr.decode()


def run_in_pty(args: list[str], root: str, rows: int = 33, cols: int = 111, timeout: float = 60) -> tuple[int, bytes]:
    """`python -m runner ARGS` on a new pseudo-terminal of ``rows`` x ``cols``, as from an interactive shell;
    returns (exit code, everything it wrote to the terminal)."""
    import fcntl
    import pty
    import select
    import struct
    import termios
    import time

    env = dict(os.environ, RUNNER_ROOT=root, PYTHONPATH=REPO)
    pid, fd = pty.fork()
    if pid == 0:
        os.execve(sys.executable, [sys.executable, "-m", "runner", *args], env)
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
    output = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 1)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # EIO: the terminal's last writer is gone
                break
            if not chunk:
                break
            output += chunk
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    return os.waitstatus_to_exitcode(status), output


def wait_for(condition, timeout: float = 30.0, what: str = "the condition", interval: float = 0.05):
    """Poll ``condition()`` until it returns something truthy (returned) or ``timeout`` seconds pass
    (AssertionError naming ``what``): tests synchronise on what they wait for, never on a fixed sleep."""
    import time
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


class Driver:
    """The real CLI bound to one backend (and, for a VM, one machine's state dir): ``rn("run", ...)``."""

    def __init__(self, backend: str, root: str | None, env: dict | None = None, name: str | None = None):
        self.backend = backend
        self.root = root
        self.env = env or {}
        self.name = name or backend  # tells the two VM drivers (host arch, aarch64) apart

    def __call__(self, *args: str, input: bytes | None = None, timeout: float = 180):
        return cli(list(args), root=self.root, backend=self.backend, input=input, timeout=timeout, env=self.env)

    def cleanup(self) -> None:
        proc = self("ps", "-a", "-q", "--no-trunc")
        for cid in proc.stdout.decode().split():
            self("rm", "-f", cid)
        self("network", "rm", "bridge")  # the default network's bridge and NAT table
