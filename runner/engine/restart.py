"""Restart policies (``--restart no|on-failure[:N]|always|unless-stopped``): when a container starts again.

Who acts: the container's shim, which is there when the workload exits (runner.engine.shim), decides with
:func:`next_delay` and waits with :func:`wait`, then runs the workload again in the same bundle and network;
and :func:`restore`, called when an engine comes up (the VM agent at boot, ``runner serve``), starts what a
policy keeps running but a reboot or a killed machine stopped, as dockerd does at its start.

Docker's rules kept: a container its user stopped (``stop``, ``kill``, ``rm -f``) is not restarted (the
engine marks it ``manual_stop``); ``unless-stopped`` stays stopped across engine restarts too, ``always``
does not; ``on-failure`` restarts on a non-zero exit only, at most N times when N is given; the delay before a
restart starts at 100 ms and doubles up to a minute, back to 100 ms after a run of 10 seconds or more.
Standard library only (runs in the guest).
"""

from __future__ import annotations

import time

from runner.errors import NotFound, RunnerError
from runner.spec import restart_policy_name, restart_policy

FIRST_DELAY = 0.1
MAX_DELAY = 60.0
RESET_AFTER = 10.0


def next_delay(rec, code: int, ran_for: float, last_delay: float) -> float | None:
    """Seconds to wait before starting the container again after it exited with ``code``; None: do not."""
    name, max_count = restart_policy(rec.spec.get("restart") or "no")
    if name == "no" or rec.extra.get("manual_stop"):
        return None
    if name == "on-failure" and (code == 0 or (max_count and int(rec.extra.get("restart_count") or 0) >= max_count)):
        return None
    if ran_for >= RESET_AFTER or not last_delay:
        return FIRST_DELAY
    return min(MAX_DELAY, last_delay * 2)


def wait(store, cid: str, delay: float) -> bool:
    """Sleep ``delay`` seconds unless the user stops the container meanwhile; True: start it again."""
    deadline = time.monotonic() + delay
    while True:
        try:
            if store.load(cid).extra.get("manual_stop"):
                return False
        except (NotFound, ValueError, OSError):
            return False  # removed meanwhile
        left = deadline - time.monotonic()
        if left <= 0:
            return True
        time.sleep(min(0.05, left))


def wanted_at_start(rec) -> bool:
    """Whether an engine coming up starts this (not running) container again."""
    name = restart_policy_name(rec.spec.get("restart") or "no")
    return name == "always" or (name == "unless-stopped" and not rec.extra.get("manual_stop"))


def restore(engine) -> list[str]:
    """Start the stopped containers whose policy keeps them running; ids of those started."""
    import logging
    import os
    from runner.engine.state import LIVE
    from runner.procs import FileLock
    started = []
    # One restore at a time (two callers at once would both start a container: its veth exists twice).
    with FileLock(os.path.join(engine.root, "restore.lock")):
        for cid in engine.state.ids():
            _restore_one(engine, cid, started, logging.getLogger("runner.restart"), LIVE)
    return started


def _restore_one(engine, cid: str, started: list, log, live) -> None:
    try:
        rec = engine.state.reconcile(engine.state.load(cid))
        if rec.status in live or (rec.status == "created" and not rec.started_at) or not wanted_at_start(rec):
            return  # (a created one that ran before: a start that failed, e.g. a restore cut short)
        with engine.state.update(cid) as fresh:
            fresh.extra.pop("manual_stop", None)  # `always` after a stop: the engine's restart undoes it
        engine.start(cid, None)
        started.append(cid)
    except (NotFound, ValueError, OSError, RunnerError) as exc:  # the agent's log says why
        log.warning("restart policy: cannot start %s: %s", cid[:12], exc)
