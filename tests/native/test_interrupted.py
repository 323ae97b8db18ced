"""Interrupted transfers (issue 19): a `runner load` SIGKILLed mid-stream leaves its temp blob, which the next
command that writes the store (the next load, import, pull, rmi or system prune) removes at once: nothing grows without bound. (A killed
pull is resumed: tests/registry/test_resume.py; the VM's agent cleans up at once: tests/vm/test_faults_guest.py.)"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tarfile

import pytest

from tests.helpers import REPO, cli, wait_for

pytestmark = pytest.mark.root
IMG = "localhost/busybox"
BIG = 64 << 20


def temp_entries(root: str) -> dict[str, int]:
    tmp = os.path.join(root, "images", "tmp")
    out = {}
    for name in os.listdir(tmp):
        try:
            out[name] = os.lstat(os.path.join(tmp, name)).st_size
        except FileNotFoundError:
            pass
    return out


def start_killable_load(root: str | None, backend: str = "native", env: dict | None = None):
    """`runner load` reading a tar from a pipe that announces a 64 MB member and sends its first 4 MB only."""
    full_env = dict(os.environ, PYTHONPATH=REPO, **(env or {}))
    if root is not None:
        full_env["RUNNER_ROOT"] = root
    load = subprocess.Popen([sys.executable, "-m", "runner", "--backend", backend, "load"], env=full_env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    info = tarfile.TarInfo("blobs/sha256/" + "ab" * 32)
    info.size = BIG
    load.stdin.write(info.tobuf(format=tarfile.USTAR_FORMAT))
    chunk = os.urandom(1 << 20)
    for _ in range(4):
        load.stdin.write(chunk)
    load.stdin.flush()
    return load


def test_a_killed_load_leaves_no_temp_file_after_the_next_load(native_root, tmp_path):
    root = native_root
    archive = str(tmp_path / "busybox.tar")
    assert cli(["save", "-o", archive, IMG], root=root).returncode == 0
    load = start_killable_load(root)
    try:
        # The member is being written into the store's temp directory ...
        wait_for(lambda: any(n.startswith("blob-") and size >= (1 << 20) for n, size in temp_entries(root).items()),
                 what="the load's temp blob")
        load.send_signal(signal.SIGKILL)  # ... when the load dies: no handler runs
        assert load.wait(timeout=30) == -signal.SIGKILL
    finally:
        if load.poll() is None:
            load.kill()
            load.wait()
        load.stdin.close()
        load.stdout.close()
        load.stderr.close()
    orphan = [n for n in temp_entries(root) if n.startswith("blob-")]
    assert orphan  # SIGKILL left it behind
    proc = cli(["load", "-i", archive], root=root)
    assert proc.returncode == 0, proc.stderr.decode()
    assert temp_entries(root) == {}  # the next load removed it (its own temp files were renamed into place)


def test_rmi_also_sweeps_what_a_killed_load_left(native_root):
    root = native_root
    load = start_killable_load(root)
    try:
        wait_for(lambda: any(n.startswith("blob-") for n in temp_entries(root)), what="the load's temp blob")
        load.send_signal(signal.SIGKILL)
        load.wait(timeout=30)
    finally:
        if load.poll() is None:
            load.kill()
            load.wait()
        for f in (load.stdin, load.stdout, load.stderr):
            f.close()
    assert temp_entries(root)
    assert cli(["tag", IMG, "localhost/swept:1"], root=root).returncode == 0
    proc = cli(["rmi", "localhost/swept:1"], root=root)
    assert proc.returncode == 0, proc.stderr.decode()
    assert temp_entries(root) == {}
