"""Snapshot fast start against real QEMU (TCG): the first boot saves the VM state at the guest's snapshot
point, later starts resume it; the data disk is mounted only after the resume, the clock is current, every
boot gets its own agent token, and a state QEMU cannot load falls back to a normal boot."""

from __future__ import annotations

import json
import os
import signal
import stat
import time

import pytest

from runner.vm import ship
from runner.vm import snapshot
from runner.vm.machine import Machine
from tests.helpers import wait_for

pytestmark = pytest.mark.vm


@pytest.fixture(scope="module")
def state_dir(tmp_path_factory, guest_image):
    path = tmp_path_factory.mktemp("vmsnap")
    saved = {k: os.environ.get(k) for k in ("RUNNER_VM_STATE_DIR", snapshot.ENV)}
    os.environ["RUNNER_VM_STATE_DIR"] = str(path)
    os.environ.pop(snapshot.ENV, None)
    yield path
    for run in path.glob("machines/*/run.json"):
        try:
            pid = json.loads(run.read_text())["pid"]
            if str(run.parent).encode() in open(f"/proc/{pid}/cmdline", "rb").read():
                os.kill(pid, signal.SIGKILL)
        except (OSError, ValueError, KeyError):
            pass
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def _boot_kind(m: Machine) -> str:
    return json.loads(m.paths.run.read_text())["boot"]


def _default_bridge_comes_up(m: Machine, timeout: float = 60.0) -> bool:
    """Whether the default network's bridge device appears in the guest (its name is in the engine's state)."""
    def up() -> bool:
        code, out, _ = m.run("for f in /var/lib/runner/networks/*.json; do grep -o '\"Bridge\": *\"[^\"]*' $f; done "
                             "| sed 's/.*\"//' | while read b; do [ -d /sys/class/net/$b/bridge ] && echo $b; done")
        return code == 0 and bool(out.strip())
    try:
        return wait_for(up, timeout, "the default bridge in the guest", interval=0.5)
    except AssertionError:
        return False


def test_first_boot_saves_then_starts_resume_with_the_disk_intact(state_dir):
    m = Machine("snap")
    m.start(cpus=1, memory=1024, disk_size="1G")
    try:
        assert _boot_kind(m) == "cold"
        state = snapshot.state_path(m.paths.dir)
        assert state.exists() and stat.S_IMODE(state.stat().st_mode) == 0o600
        assert stat.S_IMODE(snapshot.meta_path(m.paths.dir).stat().st_mode) == 0o600
        code, _, err = m.run("echo one > /var/lib/runner/marker && sync")
        assert code == 0, err
        first_token = m.agent_token
        code, out, _ = m.run("grep agent_token /runner/config.json")
        assert first_token in out.decode()
    finally:
        m.stop(timeout=20)

    randoms = set()
    for round_ in (2, 3):
        began = time.time()
        m.start()
        try:
            assert _boot_kind(m) == "resume", m.paths.qemu_log.read_text()
            code, out, err = m.run("head -1 /var/lib/runner/marker; date +%s; grep agent_token /runner/config.json; "
                                   "head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n'; echo; "
                                   "cat /run/runner/agent.pid")
            assert code == 0, err
            lines = out.decode().splitlines()
            assert lines[0] == "one"
            assert abs(int(lines[1]) - began) < 120  # the clock was moved to now, not left at snapshot time
            assert m.agent_token in lines[2] and first_token not in lines[2]  # this boot's token
            randoms.add(lines[3])  # the kernel CRNG was reseeded after the resume (vmimage/init reseed_via_agent)
            # The agent was started before the snapshot point from the code in the initrd, not shipped now.
            assert json.loads(lines[4])["version"] == ship.local_version()
            code, out, _ = m.run("ls /runner/agent/")
            assert out.decode().split() == [ship.local_version()]
            assert _default_bridge_comes_up(m)  # brought up by the agent after the resume, as dockerd does
            code, _, err = m.run(f"echo {round_} >> /var/lib/runner/marker && sync")
            assert code == 0, err
        finally:
            m.stop(timeout=20)
    assert len(randoms) == 2, randoms
    m.start()
    try:
        code, out, _ = m.run("cat /var/lib/runner/marker")
        assert out == b"one\n2\n3\n"
    finally:
        m.stop(timeout=20)


def test_a_state_qemu_cannot_load_falls_back_to_a_normal_boot(state_dir):
    warnings = []
    m = Machine("snap", warn=warnings.append)
    state = snapshot.state_path(m.paths.dir)
    assert state.exists()
    with open(state, "r+b") as f:  # same size (so it is tried), garbage inside
        f.write(os.urandom(4096))
    m.start()
    try:
        assert _boot_kind(m) == "cold"
        assert "could not resume from its saved state" in " ".join(warnings)
        code, out, _ = m.run("cat /var/lib/runner/marker")
        assert code == 0 and out.startswith(b"one")
        assert snapshot.usable(m.paths.dir, json.loads(m.paths.run.read_text())["snapshot_key"])  # saved anew
    finally:
        m.stop(timeout=20)


def test_changed_memory_invalidates_the_state(state_dir):
    m = Machine("snap")
    old = json.loads(snapshot.meta_path(m.paths.dir).read_text())["key"]
    m.start(memory=1536)
    try:
        assert _boot_kind(m) == "cold"
        assert json.loads(snapshot.meta_path(m.paths.dir).read_text())["key"] != old
    finally:
        m.stop(timeout=20)


def test_without_snapshots_boots_straight_through(state_dir, monkeypatch):
    monkeypatch.setenv(snapshot.ENV, "0")
    m = Machine("plain")
    m.start(cpus=1, memory=1024, disk_size="1G")
    try:
        assert "boot" not in json.loads(m.paths.run.read_text())
        assert not snapshot.state_path(m.paths.dir).exists()
        assert m.run("true")[0] == 0
    finally:
        m.stop(timeout=20)
