"""Faults in the real guest (issue 19), through the real CLI: a machine with a small data disk (`vm start
--disk-size 128M`) filled from a container, then written by a load and a pull, gives the same one-line error + hint as natively
(tests/native/test_diskfull.py), `vm status` shows the disk line while it runs, and `ps`, `rm -f`, `rmi`,
`system prune` get the space back without a traceback. A `load` SIGKILLed mid-stream leaves no temp blob in
the guest: the agent drops it as soon as the stream breaks. A `build` SIGKILLed during a long RUN step is
cancelled in the guest within seconds (its step container killed and removed, no image), as dockerd's classic
builder cancels a build whose client left.

Its own machine in a private state dir (RUNNER_VM_STATE_DIR); stopped and deleted at the end, even on failure.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import time

import pytest

from tests.helpers import REPO, cli, wait_for
from tests.native.test_interrupted import start_killable_load

# The registry fixture of tests/registry (a real docker-registry on 127.0.0.1; the guest reaches it as 10.0.2.2).
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "registry"))
from tests.registry.conftest import registry, tmp_root  # noqa: E402,F401

pytestmark = pytest.mark.vm
IMG = "localhost/busybox"
DATA = "/var/lib/runner"  # where the guest mounts its data disk (vmimage/init)
FULL = re.compile(r"^Error: no space left on (\S+) \((\w+), \S+ free\) while (.+)$")


@pytest.fixture(scope="module")
def rv(guest_image):
    """The CLI on the VM backend of a machine with a 128 MB data disk."""
    state = tempfile.mkdtemp(prefix="runner-vm-faults-")
    env = {"RUNNER_VM_STATE_DIR": state}

    def rn(*args: str, timeout: float = 180):
        return cli(list(args), backend="vm", env=env, timeout=timeout)
    rn.env = env
    try:
        started = rn("vm", "start", "--disk-size", "128M", timeout=600)
        assert started.returncode == 0, started.stderr.decode()
        yield rn
    finally:
        for cid in rn("ps", "-aq", "--no-trunc").stdout.decode().split():
            rn("rm", "-f", cid)
        rn("vm", "stop", timeout=120)
        rn("vm", "rm", "-f", timeout=60)
        shutil.rmtree(state, ignore_errors=True)


def no_traceback(*procs) -> None:
    for p in procs:
        assert b"Traceback" not in p.stderr, p.stderr.decode()


def assert_full_error(proc, what: str) -> None:
    """Exit 125, exactly two lines: the filesystem (the guest's data disk), what needed the space, the hint."""
    lines = proc.stderr.decode().splitlines()
    assert proc.returncode == 125, proc.stderr.decode()
    assert len(lines) == 2 and FULL.match(lines[0]), lines
    point, fstype, doing = FULL.match(lines[0]).groups()
    assert (point, fstype) == (DATA, "ext4") and what in doing, lines
    assert lines[1].startswith("Hint:") and "runner system prune" in lines[1], lines


def disk(rn) -> dict:
    p = rn("vm", "status", "--json")
    assert p.returncode == 0, p.stderr.decode()
    return json.loads(p.stdout)


def df(rn) -> dict:
    p = rn("system", "df", "--format", "json")
    assert p.returncode == 0, p.stderr.decode()
    return json.loads(p.stdout)


def temp_entries(rn) -> int:
    return df(rn)["Partial downloads"]["Total"]


def test_vm_status_shows_the_data_disk_of_the_running_machine(rv):
    p = rv("vm", "status")
    assert p.returncode == 0, p.stderr.decode()
    line = [ln for ln in p.stdout.decode().splitlines() if ln.startswith("data_disk")]
    assert len(line) == 1 and re.search(r"\S+ used of 1\d\d(\.\d)?MB, \S+ free \(/var/lib/runner, ext4\)$",
                                        line[0]), line


def test_a_load_killed_mid_stream_leaves_no_temp_blob_in_the_guest(rv):
    load = start_killable_load(None, backend="vm", env=rv.env)
    try:
        wait_for(lambda: temp_entries(rv) >= 1, timeout=60, what="the load's temp blob in the guest")
        load.send_signal(signal.SIGKILL)
        assert load.wait(timeout=30) == -signal.SIGKILL
    finally:
        if load.poll() is None:
            load.kill()
            load.wait()
        for f in (load.stdin, load.stdout, load.stderr):
            f.close()
    # The guest's engine was not killed: the broken stream ends its load, which removes what it wrote.
    wait_for(lambda: temp_entries(rv) == 0, timeout=60, what="the agent to drop the killed load's temp blob")


def test_a_build_killed_mid_run_is_cancelled_in_the_guest(rv, tmp_path):
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(f"FROM {IMG}\nRUN echo step-started; sleep 1000\n")
    images = rv("images", "-a", "-q", "--no-trunc").stdout.split()
    steps = ("ps", "-aq", "--no-trunc", "--filter", "label=io.runner.build.step")
    build = subprocess.Popen([sys.executable, "-m", "runner", "--backend", "vm", "build", "--progress", "plain",
                              "--network", "none", "-t", "cancelled:vm", str(ctx)], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONPATH=REPO, **rv.env))
    guard = threading.Timer(180, build.kill)  # a build that never prints the line fails the test, never hangs it
    guard.start()
    try:
        seen = b""
        while not seen.rstrip().endswith(b"step-started") or seen.rstrip().endswith(b"echo step-started"):
            line = build.stdout.readline()
            assert line, seen.decode()
            seen += line
        assert len(rv(*steps).stdout.split()) == 1, seen.decode()  # the step runs in the guest
        build.send_signal(signal.SIGKILL)
        assert build.wait(timeout=30) == -signal.SIGKILL
        killed = time.monotonic()
    finally:
        guard.cancel()
        if build.poll() is None:
            build.kill()
            build.wait()
        build.stdout.close()
    wait_for(lambda: rv(*steps).stdout == b"", 60, "the guest to cancel the build and remove its step container")
    took = time.monotonic() - killed
    assert took < 20, took  # seconds (the CLI calls of the wait included), not the step's 1000 s
    assert rv("images", "-a", "-q", "--no-trunc").stdout.split() == images
    assert rv("inspect", "cancelled:vm").returncode != 0
    assert temp_entries(rv) == 0
    print(f"guest build cancelled {took:.1f} s after the CLI was killed")


@pytest.mark.registry
def test_a_full_data_disk_is_one_clear_error_and_the_user_gets_the_space_back(rv, tmp_path, registry):
    archive = str(tmp_path / "busybox.tar")
    assert rv("save", "-o", archive, IMG).returncode == 0
    # An image the guest will have to download whole: 2 MB of its own bytes, in the registry only.
    rootfs = tmp_path / "rootfs.tar"
    with tarfile.open(rootfs, "w") as tar:
        data = tmp_path / "blob"
        data.write_bytes(os.urandom(2 << 20))
        tar.add(data, arcname="blob")
    ref = f"{registry.host}/faults/big:1"
    for step in (("import", str(rootfs), ref), ("push", ref), ("rmi", ref)):
        p = rv(*step)
        assert p.returncode == 0, (step, p.stderr.decode())
    # A --rm container that fills the disk: its own dd error and exit code, and it is gone afterwards.
    p = rv("run", "--rm", "--network", "none", IMG, "dd", "if=/dev/zero", "of=/fill", "bs=1M", "count=400")
    assert p.returncode == 1 and b"No space left on device" in p.stderr, p.stderr.decode()
    assert rv("ps", "-aq").stdout.strip() == b""
    # A kept one fills it to the last block (1 KiB writes after the 1 MiB ones).
    p = rv("run", "--name", "filler", "--network", "none", IMG, "sh", "-c",
           "dd if=/dev/zero of=/fill bs=1M; dd if=/dev/zero of=/fill2 bs=1k; echo filled")
    assert p.returncode == 0 and p.stdout.split() == [b"filled"], p.stderr.decode()
    assert df(rv)["Disk"]["Free"] < (64 << 10)
    assert "free (/var/lib/runner, ext4)" in disk(rv)["data_disk"]  # vm status works on the full disk
    # Writing commands fail in one line naming the guest's filesystem, through the agent as natively.
    p = rv("run", "--rm", "--network", "none", IMG, "true")
    assert_full_error(p, "container")  # creating or starting it, whichever needed the block first
    p = rv("load", "-i", archive)
    assert_full_error(p, "loading images")
    pull = rv("pull", ref)
    assert_full_error(pull, "pulling")
    assert temp_entries(rv) == 0  # the failed load and pull kept nothing (no partial on a full disk)
    # Read-only and space-freeing commands work on the full disk.
    ps = rv("ps", "-a", "--format", "json")
    assert ps.returncode == 0 and [json.loads(row)["Names"] for row in ps.stdout.splitlines()] == ["filler"], \
        ps.stdout
    for args in (["inspect", "filler"], ["images"], ["logs", "filler"], ["info"], ["system", "df"]):
        p = rv(*args)
        assert p.returncode == 0 and b"Traceback" not in p.stderr, (args, p.stderr.decode())
    rm = rv("rm", "-f", "filler")
    assert rm.returncode == 0, rm.stderr.decode()
    assert df(rv)["Disk"]["Free"] > (64 << 20)  # the filler's upper dir went with it
    rmi = rv("rmi", IMG)
    prune = rv("system", "prune", "-a", "-f")
    assert rmi.returncode == 0 and prune.returncode == 0, (rmi.stderr.decode(), prune.stderr.decode())
    no_traceback(p, pull, ps, rm, rmi, prune)
    assert df(rv)["Disk"]["Free"] > (80 << 20) and re.search(r", \d+(\.\d)?MB free", disk(rv)["data_disk"])
    # ... and the machine is usable again.
    ok = rv("run", "--rm", "--network", "none", IMG, "echo", "ok")
    assert ok.returncode == 0 and ok.stdout == b"ok\n", ok.stderr.decode()


def test_save_onto_a_full_host_filesystem_names_the_hosts_not_the_guests(rv, tmp_path):
    """The archive comes out of the guest and is written on the host: a full host filesystem is named as
    such (not the guest's data disk), and no partial archive stays."""
    out = str(tmp_path / "out")
    os.mkdir(out)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", out], check=True)
    try:
        p = rv("save", "-o", f"{out}/busybox.tar", IMG)
        lines = p.stderr.decode().splitlines()
        assert p.returncode == 125 and len(lines) == 2, lines
        assert lines[0].startswith(f"Error: no space left on {out} (tmpfs, ") and \
            lines[0].endswith(f"while writing {out}/busybox.tar"), lines
        assert os.listdir(out) == []
        ok = rv("run", "--rm", "--network", "none", IMG, "echo", "still fine")  # the machine is unharmed
        assert ok.returncode == 0 and ok.stdout == b"still fine\n", ok.stderr.decode()
    finally:
        subprocess.run(["umount", "-l", out], check=False)
