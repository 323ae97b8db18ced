"""The guest pull (issue 17) in a process shaped like Windows' Python (tests/winsim.py), against the real registry.

Windows cannot run here; what can be proved on Linux is that the pull needs none of what Windows lacks (fcntl,
pread/pwrite/fchmod, O_CLOEXEC/O_NOFOLLOW/O_DIRECTORY) and never renames or removes a file it still has open
(Windows refuses that). Each pull runs ``runner vm image pull`` under the simulation, which also reports how
many renames/removals it checked and which it refused, so a simulation that was not active fails the test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from runner.vm import image
from test_guest_artifact import FILES, bootable, cache_entries, caches, kill_pull_halfway, pushed  # noqa: F401
from tests.helpers import REPO

pytestmark = pytest.mark.registry

WINSIM = os.path.join(REPO, "tests", "winsim.py")


def winsim_pull(ref: str, cache: Path, arch: str, report: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=REPO, WINSIM_REPORT=str(report), **{image.CACHE_ENV: str(cache)})
    return subprocess.Popen([sys.executable, WINSIM, "vm", "image", "pull", "-q", "--arch", arch, ref],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_the_guest_pulls_verifies_and_unpacks_without_what_windows_lacks(pushed, caches, tmp_path):
    ref, digest = pushed
    publisher, user = caches
    report = tmp_path / "winsim.json"
    proc = winsim_pull(ref, user, "aarch64", report)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err.decode()
    for name in [*FILES.values(), "manifest.json"]:
        assert (user / image.IMAGE_VERSION / "aarch64" / name).read_bytes() == \
            (publisher / image.IMAGE_VERSION / "aarch64" / name).read_bytes()
    assert bootable("aarch64")
    assert cache_entries(user) == [".pull-aarch64.lock", "aarch64"]  # download store and unpack dir gone
    stats = json.loads(report.read_text())
    # 3 layers + config renamed into the store, the staging dir swapped in, the download store removed
    assert stats["checked"] >= 5 and stats["refused"] == [], stats


def test_a_killed_windows_pull_resumes_with_seek_io_and_leaves_nothing_bootable(registry, pushed, caches, tmp_path):
    publisher, user = caches
    proxy, via, rootfs, cut = kill_pull_halfway(
        registry, pushed, user, lambda ref: winsim_pull(ref, user, "x86_64", tmp_path / "first.json"))
    try:
        second = winsim_pull(via, user, "x86_64", tmp_path / "second.json")
        out, err = second.communicate(timeout=120)
        assert second.returncode == 0, err.decode()
        assert (rootfs["digest"], f"bytes={cut}-") in proxy.ranges
        assert proxy.served[rootfs["digest"]] == rootfs["size"] - cut  # resumed, not downloaded twice
        assert bootable("x86_64")
        assert cache_entries(user) == [".pull-x86_64.lock", "x86_64"]
        assert json.loads((tmp_path / "second.json").read_text())["refused"] == []
    finally:
        proxy.close()
