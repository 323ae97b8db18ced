"""Pause and unpause: the cgroup freezer, as runc's ``pause``/``resume``.

Why the freezer and not SIGSTOP: a stopped process can be seen stopped by its parent (waitpid WUNTRACED) and
SIGCONT is visible too; the freezer stops every task of the cgroup without the tasks noticing, and new forks
are frozen as well. cgroup v2: ``cgroup.freeze`` in the container's own cgroup, then wait for
``cgroup.events`` to say ``frozen 1``. cgroup v1: the freezer is its own hierarchy, which runner does not
otherwise use, so the container's tasks are moved into ``<freezer>/runner/<id>`` on first pause, then
``freezer.state`` goes to ``FROZEN`` (and is read back until the kernel finished freezing). Standard library only.
"""

from __future__ import annotations

import os
import time

from runner.engine.runtime import cgroups
from runner.errors import PlatformError

_SETTLE = 5.0  # seconds the kernel gets to freeze every task


def _freezer_mount() -> str | None:
    with open("/proc/self/mountinfo") as f:
        for h in cgroups.parse_mountinfo(f.read()):
            if h.version == 1 and "freezer" in h.controllers:
                return h.mountpoint
    return None


def _wait(check, what: str) -> None:
    deadline = time.monotonic() + _SETTLE
    while not check():
        if time.monotonic() > deadline:
            raise PlatformError(f"the cgroup freezer did not {what} in {_SETTLE:.0f} s")
        time.sleep(0.01)


def set_frozen(cgroups_path: str, frozen: bool) -> None:
    """Freeze (or thaw) every task of the container whose cgroup is ``cgroups_path``."""
    cg = cgroups.Cgroup(cgroups_path)
    if cg.layout.version == 2:
        d = cg.dirs[0]
        cgroups._write(os.path.join(d, "cgroup.freeze"), "1" if frozen else "0")
        want = f"frozen {1 if frozen else 0}"
        _wait(lambda: want in cgroups._read(os.path.join(d, "cgroup.events")).splitlines(),
              "freeze" if frozen else "thaw")
        return
    mount = _freezer_mount()
    if mount is None:
        raise PlatformError("pausing needs the cgroup freezer, which this host does not mount",
                            hint="mount the v1 freezer controller, or use cgroup v2")
    d = os.path.join(mount, cgroups_path.strip("/"))
    if frozen:
        os.makedirs(d, exist_ok=True)
        for pid in cg.pids():  # the tasks join the freezer cgroup (a fork meanwhile joins with its parent)
            try:
                cgroups._write(os.path.join(d, "cgroup.procs"), str(pid))
            except ProcessLookupError:
                pass
    state = os.path.join(d, "freezer.state")
    cgroups._write(state, "FROZEN" if frozen else "THAWED")
    want = "FROZEN" if frozen else "THAWED"
    _wait(lambda: cgroups._read(state).strip() == want, "freeze" if frozen else "thaw")


def forget(cgroups_path: str) -> None:
    """Remove the v1 freezer cgroup of a container that is gone (nothing to do on v2 or when never paused)."""
    mount = _freezer_mount() if cgroups.detect().version == 1 else None
    if mount is not None:
        try:
            os.rmdir(os.path.join(mount, cgroups_path.strip("/")))
        except OSError:
            pass
