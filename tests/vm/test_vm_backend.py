"""VMBackend through a real guest under TCG: the machine starts on first use, the agent is shipped and
started once per boot, and containers behave as natively. Slow (a boot, then the default image in the guest).

Uses its own machine state dir, so it never touches the user's machines; guest image artifacts come from
``$RUNNER_VMIMAGE_DIR`` or the normal cache (built by scripts/setup).
"""

from __future__ import annotations

import os
import threading
import time

import pytest

from runner.backends.base import Stdio
from runner.errors import CommandNotFound, NotFound

pytestmark = pytest.mark.vm

MACHINE = "agent-test"


@pytest.fixture(scope="module")
def vm(tmp_path_factory):
    from runner.vm import image

    try:
        image.verify(image.cache_dir(image.host_arch()), image.host_arch())
    except Exception as exc:
        pytest.skip(f"no guest image artifacts: {exc}")
    state = tmp_path_factory.mktemp("vmstate")
    old = os.environ.get("RUNNER_VM_STATE_DIR")
    os.environ["RUNNER_VM_STATE_DIR"] = str(state)
    from runner.agent import mux
    from runner.backends.vm import VMBackend
    from runner.vm.machine import Machine

    backend = VMBackend(MACHINE)
    try:
        yield backend
    finally:
        backend.close()
        machine = Machine(MACHINE)
        mux.stop(machine.paths.dir)
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
        deadline = time.monotonic() + 60
        while not vm.inspect(cid)["State"]["Running"]:
            assert time.monotonic() < deadline
            time.sleep(0.2)
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
