"""VMBackend through a real guest under TCG: the machine starts on first use, the agent is shipped and
started once per boot, and containers behave as natively. Slow (a boot, then the default image in the guest).

Uses its own machine state dir, so it never touches the user's machines; guest image artifacts come from
``$RUNNER_VMIMAGE_DIR`` or the normal cache (built by scripts/setup).
"""

from __future__ import annotations

import contextlib
import os
import threading

import pytest

from runner.errors import CommandNotFound, NotFound
from runner.stdio import Stdio
from tests.helpers import wait_for

pytestmark = pytest.mark.vm

MACHINE = "agent-test"


@pytest.fixture(scope="module")
def vm(tmp_path_factory, guest_image):
    state = tmp_path_factory.mktemp("vmstate")
    old = os.environ.get("RUNNER_VM_STATE_DIR")
    os.environ["RUNNER_VM_STATE_DIR"] = str(state)
    from runner.backends.vm import VMBackend
    from runner.vm import muxctl
    from runner.vm.machine import Machine

    backend = VMBackend(MACHINE)
    try:
        yield backend
    finally:
        backend.close()
        machine = Machine(MACHINE)
        muxctl.stop(machine.paths)
        machine.stop()
        if old is None:
            os.environ.pop("RUNNER_VM_STATE_DIR")
        else:
            os.environ["RUNNER_VM_STATE_DIR"] = old


def run(backend, *command: str, **extra) -> tuple[int, bytes, bytes]:
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    got = {out_r: b"", err_r: b""}

    def drain(fd):
        while data := os.read(fd, 65536):
            got[fd] += data
        os.close(fd)
    threads = [threading.Thread(target=drain, args=(fd,)) for fd in got]
    for t in threads:
        t.start()
    try:
        handle = backend.run({"image": "localhost/busybox", "command": list(command), "auto_remove": True,
                              **extra}, Stdio(None, out_w, err_w))
        code = handle.wait()
    finally:
        os.close(out_w)
        os.close(err_w)
        for t in threads:
            t.join(30)
    return code, got[out_r], got[err_r]


def test_hello_and_exit_codes(vm):
    assert run(vm, "echo", "hello") == (0, b"hello\n", b"")
    assert run(vm, "sh", "-c", "echo err >&2; exit 7") == (7, b"", b"err\n")
    with pytest.raises(CommandNotFound) as info:
        run(vm, "no-such-command")
    assert info.value.exit_code == 127
    with pytest.raises(NotFound):
        vm.inspect("no-such-container")


def test_detached_logs_and_exec(vm):
    cid = vm.run({"image": "localhost/busybox", "command": ["sh", "-c", "echo up; sleep 60"]}, None)
    try:
        wait_for(lambda: vm.inspect(cid)["State"]["Running"], 60, "the container to run", interval=0.2)
        out_r, out_w = os.pipe()
        handle = vm.exec(cid, {"command": ["sh", "-c", "echo inside; exit 3"]}, Stdio(None, out_w, out_w))
        assert handle.wait() == 3
        os.close(out_w)
        assert os.read(out_r, 100) == b"inside\n"
        os.close(out_r)
        o_r, o_w = os.pipe()
        vm.logs(cid, Stdio(None, o_w, o_w))
        os.close(o_w)
        assert os.read(o_r, 100) == b"up\n"
    finally:
        vm.rm(cid, force=True)


def test_images_survive_a_vm_restart(vm):
    from runner.vm.machine import Machine

    before = {i["Id"] for i in vm.images()}
    assert before
    vm.close()
    Machine(MACHINE).stop()
    # The next call starts the machine again, ships (or reuses) the agent, and finds the data disk intact.
    assert {i["Id"] for i in vm.images()} == before
    assert run(vm, "true")[0] == 0
    info = vm.info()
    assert info["backend"] == "vm" and info["machine"]["state"] == "running"


def test_the_tcg_warning_is_said_by_start_info_and_status_not_by_every_command(vm):
    from runner.vm.machine import Machine
    from tests.helpers import cli

    vm.images()  # the machine runs (started by the fixture's first use)
    env = {"RUNNER_VM_STATE_DIR": os.environ["RUNNER_VM_STATE_DIR"]}
    tcg = Machine(MACHINE).status()["accel"] == "tcg"
    warning = "warning: no hardware acceleration ("
    for args in (["images"], ["ps", "-a"], ["run", "--rm", "localhost/busybox", "true"]):
        p = cli(["--machine", MACHINE, *args], backend="vm", env=env)
        assert p.returncode == 0 and warning not in p.stderr.decode(), (args, p.stderr)
    for args in (["vm", "status", "--name", MACHINE], ["--machine", MACHINE, "info"]):
        p = cli(args, backend="vm", env=env)
        assert p.returncode == 0 and (warning in p.stderr.decode()) == tcg, (args, p.stderr)


@pytest.mark.parametrize("how", ["SIGKILL", "SIGSTOP"])
def test_a_killed_or_hung_connection_cache_is_replaced_not_waited_on(vm, how):
    """The mux (runner.vm.muxd) dies or hangs: the next CLI call replaces it and works, within the probe
    deadline (a hung one still holds its lock and accepts connections, but never answers)."""
    import signal
    import time

    from runner.vm import muxctl
    from runner.engine.state import proc_start_time
    from runner.vm.machine import Machine
    from tests.helpers import cli

    vm.images()
    vm.close()
    env = {"RUNNER_VM_STATE_DIR": os.environ["RUNNER_VM_STATE_DIR"]}
    pid_file = Machine(MACHINE).paths.agent_mux_pid
    old = int(pid_file.read_text())
    os.kill(old, getattr(signal, how))
    try:
        began = time.monotonic()
        p = cli(["--machine", MACHINE, "run", "--rm", "localhost/busybox", "echo", "through a new cache"],
                backend="vm", env=env, timeout=120)
        took = time.monotonic() - began
        assert (p.returncode, p.stdout) == (0, b"through a new cache\n"), p.stderr
        assert took < muxctl.PROBE_TIMEOUT * 2 + 20, took  # replaced after one probe, never START_TIMEOUT
        new = int(pid_file.read_text())
        assert new != old and proc_start_time(new) is not None
        wait_for(lambda: proc_start_time(old) is None, 10, "the old cache to be gone")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(old, signal.SIGKILL)


def test_qemu_sigkilled_mid_run_recovers_with_images_and_no_stale_forwards(vm):
    """QEMU dies (SIGKILL) while a container with a published port runs: `vm status` says stopped, the next
    start works, images are still on the data disk, and the dead boot's port forwards are forgotten."""
    import json
    import signal
    import stat

    from runner.engine.state import proc_start_time
    from runner.vm.machine import Machine
    from tests.helpers import cli

    env = {"RUNNER_VM_STATE_DIR": os.environ["RUNNER_VM_STATE_DIR"]}
    cid = vm.run({"image": "localhost/busybox", "command": ["sleep", "300"], "network": "bridge",
                  "ports": [{"container_port": 80, "host_port": 0, "host_ip": "127.0.0.1", "protocol": "tcp"}]},
                 None)
    before = {i["Id"] for i in vm.images()}  # after run: a fresh machine makes the default image on first use
    assert before
    machine = Machine(MACHINE)
    forwards = machine.paths.forwards
    assert json.loads(forwards.read_text())["forwards"][0]["container"] == cid
    assert stat.S_IMODE(forwards.stat().st_mode) == 0o600
    for path in (machine.paths.qmp_socket, machine.paths.agent_socket):
        assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, path
    vm.close()
    pid = machine.status()["pid"]
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: proc_start_time(pid) is None, 10, "QEMU to die")
    p = cli(["vm", "status", "--name", MACHINE, "--json"], backend="vm", env=env)
    assert p.returncode == 0 and json.loads(p.stdout)["state"] == "stopped", p.stderr
    p = cli(["vm", "start", "--name", MACHINE], backend="vm", env=env, timeout=300)
    assert p.returncode == 0, p.stderr
    if machine.status()["accel"] == "tcg":  # said when the machine starts
        assert b"warning: no hardware acceleration (" in p.stderr
    assert not forwards.exists()  # cleaned with the dead boot's files
    assert {i["Id"] for i in vm.images()} == before
    # The container was running when its machine died: Exited (255) and why, as Docker says after its
    # daemon died under a container; never Created, never running.
    p = cli(["--machine", MACHINE, "ps", "-a", "--no-trunc"], backend="vm", env=env)
    line = next(x for x in p.stdout.decode().splitlines() if x.startswith(cid))
    assert "Exited (255)" in line, line
    state = vm.inspect(cid)["State"]
    assert (state["Status"], state["Running"], state["ExitCode"]) == ("exited", False, 255)
    assert state["Error"] == "the machine stopped while the container was running; exit status unknown"
    assert vm.port(cid) in ({}, {"80/tcp": []})
    vm.rm(cid, force=True)
