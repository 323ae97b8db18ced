"""What lets the agent start before the guest's snapshot point (vmimage/init) and live on in every resumed boot:
the token is read again per connection (a new one = a new boot: reseed, then the boot hook), the engine is built
only on first use, and the connection cache reports why it could not start as the error itself."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys

import pytest

from runner.agent import server
from runner.errors import NotFound, VMError
from runner.vm import muxctl, muxd
from runner.vm.layout import MachinePaths


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
        muxctl.wait_started(proc, MachinePaths("x", tmp_path))
    assert info.value.message == err.message and info.value.hint == "recreate it"
    proc = subprocess.Popen([sys.executable, "-c", "import sys; sys.exit(3)"], stdout=subprocess.PIPE)
    with pytest.raises(VMError, match="did not start"):
        muxctl.wait_started(proc, MachinePaths("x", tmp_path))


class _FakeMachine:
    """What the mux's lock logic reads of a machine: its directory and the live boot's record."""

    def __init__(self, directory, boot):
        self.paths = MachinePaths("t", directory)
        self._boot = boot

    def _live_record(self):
        return {"identity": self._boot} if self._boot else None


def _holder(tmp_path, listen: str = ""):
    """A process that holds the machine's mux lock, as a mux would (its argv names runner.vm.muxd).
    ``listen``: "" no socket, "answers" it sends a byte to each connection, "hung" it never accepts."""
    code = ("import fcntl, os, socket, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
            "fcntl.flock(fd, fcntl.LOCK_EX)\n"
            "if sys.argv[3]:\n"
            "    s = socket.socket(socket.AF_UNIX); s.bind(sys.argv[2]); s.listen(8)\n"
            "print('locked', flush=True)\n"
            "while sys.argv[3] == 'answers':\n"
            "    c, _ = s.accept(); c.sendall(b'x'); c.close()\n"
            "time.sleep(600)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "agent-mux.lock"),
                             str(MachinePaths("t", tmp_path).agent_socket), listen, "runner.vm.muxd"],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "locked\n"
    return proc


@pytest.mark.skipif(not sys.platform.startswith(("linux", "darwin")), reason="POSIX flock and process identity")
@pytest.mark.parametrize("holder_boot,listen,serving,verdict", [
    ("boot-1", "", False, "taken"),  # started for a QEMU that is dead now: replaced at once
    ("boot-2", "", False, "starting"),  # a mux of this boot waiting for the guest: waited for
    ("boot-2", "answers", True, "answers"),  # a mux of this boot that serves: used
    ("boot-2", "hung", True, "taken"),  # serves but never answers (stopped, wedged): replaced
])
def test_the_mux_lock_holder_is_used_waited_for_or_replaced(tmp_path, monkeypatch, holder_boot, listen,
                                                            serving, verdict):
    import os

    from runner import procs
    monkeypatch.setattr(muxd, "PROBE_TIMEOUT", 1.0)
    proc = _holder(tmp_path, listen)
    try:
        machine = _FakeMachine(tmp_path, "boot-2")  # the machine runs boot-2
        machine.paths.agent_mux_holder.write_text(json.dumps(
            {"pid": proc.pid, "identity": procs.identity(proc.pid), "boot": holder_boot, "serving": serving}))
        lock = procs.FileLock(machine.paths.agent_mux_lock, timeout=0)
        assert muxd._contend(machine, lock) == verdict
        assert (proc.wait(10) == -9) if verdict == "taken" else proc.poll() is None
        lock.release()
    finally:
        proc.kill()
        proc.wait()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(MachinePaths("t", tmp_path).agent_socket)


def test_a_mux_holder_that_is_not_ours_is_never_signalled(tmp_path):
    """A pid from the holder file that now names another process (recycled): never killed."""
    import os
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        from runner import procs
        machine = _FakeMachine(tmp_path, "new")
        machine.paths.agent_mux_holder.write_text(json.dumps({"pid": proc.pid, "identity": "linux:1", "boot": "old"}))
        lock = procs.FileLock(machine.paths.agent_mux_lock, timeout=0)
        assert muxd._contend(machine, lock) == "taken"  # the lock was free
        assert proc.poll() is None
        lock.release()
    finally:
        proc.kill()
        proc.wait()
