"""What lets the agent start before the guest's snapshot point (vmimage/init) and live on in every resumed boot:
the token is read again per connection (a new one = a new boot: reseed, then the boot hook), the engine is built
only on first use, and the connection cache reports why it could not start as the error itself."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from runner.agent import mux, server
from runner.errors import NotFound, VMError


def _config(path, token: str) -> None:
    path.write_text(json.dumps({"hostname": "h", "agent_token": token}, indent=0) + "\n")


def test_boot_token_follows_the_config_and_signals_each_new_boot(tmp_path, monkeypatch):
    reseeds, boots = [], []
    monkeypatch.setattr(server, "_reseed_kernel_rng", lambda: reseeds.append(1))
    cfg = tmp_path / "config.json"
    _config(cfg, "ab" * 16)
    token = server.BootToken(str(cfg), lambda: boots.append(1))
    assert token() == "ab" * 16 and (reseeds, boots) == ([], [])
    _config(cfg, "cd" * 16)  # a resume: init wrote this boot's token
    assert token() == "cd" * 16 and (len(reseeds), len(boots)) == (1, 1)
    assert token() == "cd" * 16 and (len(reseeds), len(boots)) == (1, 1)  # same boot: nothing again
    cfg.unlink()  # being replaced right now: the agent keeps the token it has
    assert token() == "cd" * 16


def test_lazy_engine_builds_its_state_only_on_first_use(tmp_path):
    root = tmp_path / "root"
    engine = server.LazyEngine(str(root))
    assert not root.exists()  # a data disk mounted here later must not hide state made now
    with pytest.raises(NotFound):
        engine.inspect("nothing")
    assert (root / "containers").is_dir()


class _InlineThread:
    def __init__(self, target, name=None, daemon=None):
        self.target = target

    def start(self):
        self.target()


def test_default_network_waits_for_ready_and_needs_the_data_disk_mounted(tmp_path, monkeypatch):
    from runner.engine import network

    made = []
    monkeypatch.setattr(server.threading, "Thread", _InlineThread)
    monkeypatch.setattr(network, "Networks", lambda engine: made.append(engine) or pytest.fail("not mounted"))
    marker = tmp_path / "ready"
    marker.touch()
    server.bring_up_default_network(object(), str(tmp_path / "root"), str(marker))  # root is no mount point
    assert made == []

    class Recorder:
        def __init__(self, engine):
            made.append(engine)

        def ensure(self, name):
            made.append(name)

    monkeypatch.setattr(network, "Networks", Recorder)
    monkeypatch.setattr(server.os.path, "ismount", lambda path: path == "/data")
    server.bring_up_default_network("engine", "/data", str(marker))
    assert made == ["engine", network.DEFAULT_NETWORK]


def test_mux_start_failure_is_the_error_the_mux_reported(tmp_path):
    err = VMError("host key of machine 'x' does not match the pinned key", hint="recreate it")
    script = f"import sys; print('error ' + {json.dumps(json.dumps(err.to_dict()))!s}); sys.exit(1)"
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE)
    with pytest.raises(VMError) as info:
        mux.wait_started(proc, "x", tmp_path)
    assert info.value.message == err.message and info.value.hint == "recreate it"
    proc = subprocess.Popen([sys.executable, "-c", "import sys; sys.exit(3)"], stdout=subprocess.PIPE)
    with pytest.raises(VMError, match="did not start"):
        mux.wait_started(proc, "x", tmp_path)


class _FakeMachine:
    """What the mux's lock logic reads of a machine: its directory and the live boot's record."""

    def __init__(self, directory, boot):
        import types
        self.paths = types.SimpleNamespace(dir=directory)
        self._boot = boot

    def _live_record(self):
        return {"identity": self._boot} if self._boot else None


def _holder(tmp_path):
    """A process that holds the machine's mux lock, as a mux would (its argv names runner.agent.mux)."""
    code = ("import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
            "fcntl.flock(fd, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(600)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "agent-mux.lock"), "runner.agent.mux"],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "locked\n"
    return proc


@pytest.mark.skipif(not sys.platform.startswith(("linux", "darwin")), reason="POSIX flock and process identity")
@pytest.mark.parametrize("holder_boot,replaced", [("boot-1", True), ("boot-2", False)])
def test_a_mux_lock_held_for_a_dead_boot_is_taken_over_at_once(tmp_path, holder_boot, replaced):
    import fcntl
    import os

    from runner.vm.machine import _process_identity
    proc = _holder(tmp_path)
    try:
        (tmp_path / mux.HOLDER).write_text(json.dumps(
            {"pid": proc.pid, "identity": _process_identity(proc.pid), "boot": holder_boot}))
        fd = os.open(tmp_path / "agent-mux.lock", os.O_RDWR)
        with pytest.raises(BlockingIOError):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        # The machine now runs boot-2: a holder of boot-1 can never answer for it and is replaced, not
        # waited on; a live holder of boot-2 is a mux starting for this boot and is left alone.
        assert mux._replace_stale_holder(_FakeMachine(tmp_path, "boot-2"), fd) is replaced
        assert (proc.wait(10) == -9) if replaced else proc.poll() is None
        os.close(fd)
    finally:
        proc.kill()
        proc.wait()


def test_a_mux_holder_that_is_not_ours_is_never_signalled(tmp_path):
    """A pid from the holder file that now names another process (recycled): never killed."""
    import os
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        (tmp_path / mux.HOLDER).write_text(json.dumps({"pid": proc.pid, "identity": "linux:1", "boot": "old"}))
        (tmp_path / "agent-mux.lock").write_text("")
        fd = os.open(tmp_path / "agent-mux.lock", os.O_RDWR)
        assert mux._replace_stale_holder(_FakeMachine(tmp_path, "new"), fd) is True  # the lock was free
        assert proc.poll() is None
        os.close(fd)
    finally:
        proc.kill()
        proc.wait()
