"""Healthchecks: the image's ``HEALTHCHECK`` or ``--health-*``, run by the container's shim as an exec.

Why in the shim: it is the one process that lives exactly as long as the container runs, on both backends, so
no daemon is needed to probe. A :class:`Monitor` thread runs the test every ``Interval`` (Docker's defaults:
30 s interval, 30 s timeout, 3 retries, no start period), each as ``runner exec`` would (the container's
namespaces, cgroup and user), and records ``State.Health`` in the container's record the way dockerd does:
``Status`` starting -> healthy on the first success, unhealthy after ``Retries`` failures in a row (failures
inside the start period do not count), ``FailingStreak``, and the last five results in ``Log``. A test that
overruns its timeout is killed and counts as a failure (exit -1), as Docker's does.
Standard library only (runs in the guest).
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import threading
import time

SECOND = 10 ** 9
DEFAULTS = {"Interval": 30 * SECOND, "Timeout": 30 * SECOND, "Retries": 3, "StartPeriod": 0}
MAX_OUTPUT = 4096  # Docker keeps this much of a probe's output
KEEP_LOG = 5


def command_of(test: list[str]) -> list[str]:
    """``["CMD", args...]`` -> args; ``["CMD-SHELL", cmd]`` -> ``/bin/sh -c cmd`` (Docker's forms)."""
    if test and test[0] == "CMD-SHELL":
        return ["/bin/sh", "-c", " ".join(test[1:])]
    return list(test[1:])


def settings(config: dict) -> tuple[float, float, int, float]:
    """(interval s, timeout s, retries, start period s) with Docker's defaults for 0/absent fields."""
    def get(key: str):
        return config.get(key) or DEFAULTS[key]
    return get("Interval") / SECOND, get("Timeout") / SECOND, int(get("Retries")), get("StartPeriod") / SECOND


def judge(health: dict, code: int, in_start_period: bool, retries: int) -> dict:
    """The next ``State.Health`` after a probe that exited with ``code`` (pure: unit-tested)."""
    health = dict(health)
    if code == 0:
        health["Status"], health["FailingStreak"] = "healthy", 0
    elif not in_start_period or health.get("Status") != "starting":
        health["FailingStreak"] = int(health.get("FailingStreak") or 0) + 1
        if health["FailingStreak"] >= retries:
            health["Status"] = "unhealthy"
    return health


class Monitor:
    """Probe container ``cid`` while it runs; :meth:`stop` when its workload has exited."""

    def __init__(self, engine, cid: str, config: dict):
        self.engine, self.cid, self.config = engine, cid, config
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="health", daemon=True)

    def start(self) -> "Monitor":
        self._save({"Status": "starting", "FailingStreak": 0, "Log": []})
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=settings(self.config)[1] + 1)

    def _save(self, health: dict) -> None:
        from runner.errors import NotFound
        with contextlib.suppress(NotFound, OSError), self.engine.state.update(self.cid, durable=False) as rec:
            rec.extra["health"] = health

    def _run(self) -> None:
        interval, timeout, retries, start_period = settings(self.config)
        began = time.monotonic()
        health = {"Status": "starting", "FailingStreak": 0, "Log": []}
        while not self._stop.wait(interval):
            from runner.engine.views import iso_time
            start = time.time()
            try:
                code, output = self.probe(timeout)
            except Exception as exc:  # the exec itself failed (the container is going away): a failed probe
                code, output = -1, f"cannot run the healthcheck: {exc}"
            if self._stop.is_set():
                return
            entry = {"Start": iso_time(start), "End": iso_time(time.time()), "ExitCode": code, "Output": output}
            health = judge(health, code, time.monotonic() - began < start_period, retries)
            health["Log"] = (list(health.get("Log") or []) + [entry])[-KEEP_LOG:]
            self._save(health)

    def probe(self, timeout: float) -> tuple[int, str]:
        """Run the test once as an exec; (exit code, output), -1 when it overran ``timeout`` and was killed."""
        from runner.engine import execution
        from runner.spec import ExecSpec
        from runner.stdio import Stdio
        rec = self.engine.state.load(self.cid)
        r, w = os.pipe2(os.O_CLOEXEC)
        try:
            proc = execution.start_exec(self.engine, rec, ExecSpec(command_of(self.config["Test"])),
                                        Stdio(None, w, w), None)
        except BaseException:
            os.close(r)
            raise
        finally:
            os.close(w)
        from runner.engine.process import exit_code_of
        out, status, eof = b"", None, False
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline and (status is None or not eof):
                if not eof:
                    ready, _, _ = select.select([r], [], [], max(0.0, min(0.1, deadline - time.monotonic())))
                    if ready:
                        chunk = os.read(r, 65536)
                        eof = not chunk
                        out = (out + chunk)[:MAX_OUTPUT]
                elif status is None:
                    time.sleep(0.01)
                if status is None:
                    pid, st = os.waitpid(proc.pid, os.WNOHANG)
                    if pid:
                        status = st
                        eof = eof or not select.select([r], [], [], 0.05)[0]  # a child left holding the pipe
        finally:
            os.close(r)
        if status is not None:
            return exit_code_of(status), out.decode(errors="replace")
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        os.waitpid(proc.pid, 0)
        return -1, "Health check exceeded timeout"
