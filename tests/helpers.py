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


def err(proc: subprocess.CompletedProcess) -> str:
    return proc.stderr.decode()


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
