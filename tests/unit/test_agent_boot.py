"""What lets the agent start before the guest's snapshot point (vmimage/init) and live on in every resumed boot:
the token is read again per connection (a new one = a new boot: reseed, then the boot hook), the engine is built
only on first use, and the connection cache reports why it could not start as the error itself."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from runner.agent import server
from runner.errors import NotFound, VMError
from runner.vm import muxctl
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
