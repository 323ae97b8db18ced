"""Restart policies where only the native backend can reach: a workload SIGKILLed from the host comes back;
an engine coming up (restore) starts `always` containers whose shim died with them; an attached run with a
policy returns its first exit code while the container restarts on in the background."""

from __future__ import annotations

import json
import os
import signal

import pytest

from runner.procs import start_time
from tests.helpers import cli, wait_for

pytestmark = pytest.mark.root
IMG = "localhost/busybox"


def _inspect(root: str, ref: str) -> dict:
    p = cli(["inspect", ref], root=root)
    assert p.returncode == 0, p.stderr.decode()
    return json.loads(p.stdout)[0]


def test_always_brings_a_killed_container_back(native_root):
    p = cli(["run", "-d", "--name", "rs-kill", "--restart", "always", IMG, "sleep", "300"], root=native_root)
    assert p.returncode == 0, p.stderr.decode()
    try:
        first = _inspect(native_root, "rs-kill")["State"]["Pid"]
        os.kill(first, signal.SIGKILL)  # not `runner kill`: that is a stop by its user, which Docker honours
        info = wait_for(lambda: (lambda i: i if i["RestartCount"] == 1 and i["State"]["Running"]
                                 and i["State"]["Pid"] not in (0, first) else None)(_inspect(native_root, "rs-kill")),
                        30, "the container to run again")
        assert info["State"]["Status"] == "running"
        assert cli(["kill", "rs-kill"], root=native_root).returncode == 0
        wait_for(lambda: _inspect(native_root, "rs-kill")["State"]["Status"] == "exited", 30, "exited")
        assert _inspect(native_root, "rs-kill")["RestartCount"] == 1  # runner kill: not restarted
    finally:
        cli(["rm", "-f", "rs-kill"], root=native_root)


def test_restore_starts_always_and_unstopped_unless_stopped(native_root):
    from runner.engine.engine import Engine
    names = ("rs-always", "rs-unless", "rs-unless-stopped", "rs-no")
    try:
        for name, policy in zip(names, ("always", "unless-stopped", "unless-stopped", "no")):
            p = cli(["run", "-d", "--name", name, "--restart", policy, IMG, "sleep", "300"], root=native_root)
            assert p.returncode == 0, p.stderr.decode()
        assert cli(["stop", "-t", "0", "rs-unless-stopped"], root=native_root).returncode == 0
        engine = Engine(native_root)
        for name in ("rs-always", "rs-unless", "rs-no"):  # a crash: shims and workloads die together
            rec = engine.state.load(engine.state.resolve(name))
            for pid in (rec.shim_pid, rec.pid):
                os.kill(pid, signal.SIGKILL)
            wait_for(lambda: start_time(rec.pid) is None and start_time(rec.shim_pid) is None, 10, "the kill")
        for name in ("rs-always", "rs-unless", "rs-no"):
            assert _inspect(native_root, name)["State"]["Status"] == "exited"
        started = engine.restore()
        ids = {_inspect(native_root, n)["Id"]: n for n in names}
        assert sorted(ids[i] for i in started) == ["rs-always", "rs-unless"]
        for name in names:
            want = "running" if name in ("rs-always", "rs-unless") else "exited"
            assert _inspect(native_root, name)["State"]["Status"] == want, name
        assert engine.restore() == []  # running already: nothing twice
    finally:
        for name in names:
            cli(["rm", "-f", name], root=native_root)


def test_attached_run_with_a_policy_returns_the_first_exit(native_root):
    try:
        p = cli(["run", "--name", "rs-attached", "--restart", "on-failure:1", IMG, "sh", "-c", "echo once; exit 4"],
                root=native_root, timeout=60)
        assert (p.returncode, p.stdout) == (4, b"once\n")
        wait_for(lambda: (lambda i: i["RestartCount"] == 1 and i["State"]["Status"] == "exited")(
            _inspect(native_root, "rs-attached")), 30, "the one restart")
        assert cli(["logs", "rs-attached"], root=native_root).stdout == b"once\nonce\n"
    finally:
        cli(["rm", "-f", "rs-attached"], root=native_root)


def test_wait_returns_at_the_exit_of_a_restarting_container(native_root):
    try:
        p = cli(["run", "-d", "--name", "rs-wait", "--restart", "always", IMG, "sh", "-c", "sleep 0.5; exit 5"],
                root=native_root)
        assert p.returncode == 0, p.stderr.decode()
        p = cli(["wait", "rs-wait"], root=native_root, timeout=30)  # as docker wait: the next exit, not the last
        assert (p.returncode, p.stdout.strip()) == (0, b"5")
    finally:
        cli(["rm", "-f", "rs-wait"], root=native_root)
