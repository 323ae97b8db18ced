"""Machine lifecycle against real QEMU (TCG here): start, SSH, port forwards, crash recovery, pinning, stop.

Every test runs in a temporary state dir (RUNNER_VM_STATE_DIR). Whatever happens, the fixtures kill the QEMU
processes they started (by pid) and delete their directories. The guest image comes from runner.vm.image
(``RUNNER_VMIMAGE_DIR`` or the platformdirs cache), built first if missing (tests/conftest.py guest_image).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import time
import urllib.request

import pytest

from runner.errors import VMError
from runner.vm import accel, image, keys
from runner.vm.machine import Machine
from tests.helpers import wait_for

pytestmark = pytest.mark.vm


@pytest.fixture(scope="module")
def artifacts(guest_image):
    return guest_image  # built if missing; a failed build fails (tests/conftest.py)


@pytest.fixture(scope="module")
def state_dir(tmp_path_factory, artifacts):
    """A private state dir for the module; every QEMU recorded in it is killed at the end, by pid."""
    path = tmp_path_factory.mktemp("vmstate")
    saved = os.environ.get("RUNNER_VM_STATE_DIR")
    os.environ["RUNNER_VM_STATE_DIR"] = str(path)
    yield path
    for run in path.glob("machines/*/run.json"):
        _kill_recorded(run)
    if saved is None:
        os.environ.pop("RUNNER_VM_STATE_DIR", None)
    else:
        os.environ["RUNNER_VM_STATE_DIR"] = saved


def _kill_recorded(run_json):
    try:
        pid = json.loads(run_json.read_text())["pid"]
        cmdline = open(f"/proc/{pid}/cmdline", "rb").read()
    except (OSError, ValueError, KeyError):
        return
    if str(run_json.parent).encode() in cmdline:  # really that machine's QEMU, not a recycled pid
        os.kill(pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def machine(state_dir):
    m = Machine("t1")
    began = time.monotonic()
    m.start(cpus=1, memory=1024, disk_size="2G")
    m.boot_seconds = time.monotonic() - began
    yield m
    m.stop(timeout=10)


def test_start_status_ssh(machine):
    st = machine.status()
    assert st["state"] == "running" and st["accel"] in ("tcg", "kvm")
    assert st["pid"] > 0 and st["ssh_port"] > 0 and st["uptime"] >= 0
    code, out, err = machine.run("uname -a")
    assert code == 0, err
    assert out.startswith(b"Linux t1 ")
    assert machine.ssh() is machine.ssh()  # cached per process


def test_private_files(machine):
    assert stat.S_IMODE(machine.paths.qmp_socket.stat().st_mode) == 0o600
    for key in machine.paths.keys_dir.iterdir():
        if not key.name.endswith(".pub"):
            assert stat.S_IMODE(key.stat().st_mode) == 0o600, key
    for f in (machine.paths.run, machine.paths.initrd, machine.paths.data_disk, machine.paths.config):
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
    assert stat.S_IMODE(machine.paths.dir.stat().st_mode) == 0o700


def test_default_shares_are_mounted_at_the_same_path(machine, tmp_path_factory):
    import tempfile

    d = tempfile.mkdtemp(prefix="runner-share-")
    try:
        with open(os.path.join(d, "f"), "w") as f:
            f.write("host\n")
        code, out, err = machine.run(f"cat {d}/f && echo guest > {d}/g && grep ' 9p ' /proc/mounts")
        assert code == 0, err
        assert out.startswith(b"host\n") and b"msize=512000" in out
        with open(os.path.join(d, "g")) as f:
            assert f.read() == "guest\n"
    finally:
        import shutil

        shutil.rmtree(d, ignore_errors=True)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_hostfwd_add_and_remove(machine):
    # /run, not /tmp: the guest's /tmp is the host's, shared over 9p (runner.vm.shares)
    code, _, err = machine.run("mkdir -p /run/fwd && echo forwarded > /run/fwd/hello.txt && cd /run/fwd && "
                               "setsid python3 -m http.server 8080 </dev/null >/dev/null 2>&1 &")
    assert code == 0, err
    port = _free_port()
    machine.hostfwd_add(port, 8080)
    def get():
        try:
            return urllib.request.urlopen(f"http://127.0.0.1:{port}/hello.txt", timeout=5).read()
        except OSError:
            return None
    assert wait_for(get, 60, "the forwarded server", interval=0.3) == b"forwarded\n"
    machine.hostfwd_remove(port)
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/hello.txt", timeout=5).read()
    with pytest.raises(VMError, match="cannot remove"):
        machine.hostfwd_remove(port)  # HMP's text reply ("host forwarding rule ... not found") is an error


def test_hostfwd_busy_port_is_an_error(machine):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        with pytest.raises(VMError, match="cannot forward"):
            machine.hostfwd_add(busy.getsockname()[1], 8080)


def test_wrong_pinned_host_key_is_refused(machine, tmp_path):
    host_key = machine.paths.keys_dir / keys.HOST_KEY
    saved = {p: p.read_bytes() for p in (host_key, host_key.with_name(host_key.name + ".pub"))}
    try:
        keys.generate(host_key, "impostor")  # the host now pins a key the guest does not have
        machine._forget_ssh()
        with pytest.raises(VMError, match="does not match the pinned key") as err:
            machine.ssh()
        assert err.value.hint
    finally:
        for path, data in saved.items():
            path.write_bytes(data)
        machine._forget_ssh()
    assert machine.run("true")[0] == 0


def test_concurrent_starts_boot_once_then_stop(state_dir):
    import threading

    machines = [Machine("t2"), Machine("t2")]  # two CLI calls: separate objects, separate lock fds
    errors = []

    def start(m):
        try:
            m.start(cpus=1, memory=1024, disk_size="1G")
        except Exception as exc:  # noqa: BLE001 - reported by the assert below
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(m,)) for m in machines]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert errors == []
    assert sum(m._proc is not None for m in machines) == 1  # exactly one of them launched QEMU
    m = next(m for m in machines if m._proc is not None)
    pid = m.status()["pid"]
    assert machines[0].status()["pid"] == machines[1].status()["pid"] == pid
    began = time.monotonic()
    assert m.stop(timeout=20) is True
    stop_seconds = time.monotonic() - began
    st = m.status()
    assert st["state"] == "stopped" and st["pid"] is None
    assert not m.paths.run.exists() and not m.paths.qmp_socket.exists()
    assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split(") ")[1][0] == "Z"
    assert m.stop() is False
    print(f"stop took {stop_seconds:.1f} s")


def test_sigkill_recovery_and_data_disk_survives(state_dir):
    m = Machine("t3")
    m.start(cpus=1, memory=1024, disk_size="1G")
    code, _, err = m.run("echo survives > /var/lib/runner/marker && sync")
    assert code == 0, err
    pid = m.status()["pid"]
    os.kill(pid, signal.SIGKILL)
    m._proc.wait(10)

    fresh = Machine("t3")  # another CLI call: it never saw this QEMU and must not trust its files
    st = fresh.status()
    assert st["state"] == "stopped"
    assert not m.paths.run.exists() and not m.paths.qmp_socket.exists() and not m.paths.ready_log.exists()

    fresh.start()
    try:
        assert fresh.status()["pid"] != pid
        code, out, err = fresh.run("cat /var/lib/runner/marker")
        assert (code, out) == (0, b"survives\n"), err
    finally:
        fresh.stop(timeout=10)


def test_boot_failure_names_the_failed_requirement(state_dir, artifacts, tmp_path, monkeypatch):
    """A guest that cannot boot (no /init: the kernel panics) is reported as a named requirement, with the
    kernel's last words and the serial log path, and leaves no QEMU or runtime files behind."""
    empty = tmp_path / "empty.img"
    empty.write_bytes(b"")
    broken = image.Artifacts(arch=artifacts.arch, kernel=artifacts.kernel, initrd=empty, rootfs=None,
                             manifest=artifacts.manifest, kernel_version="", cmdline="")
    monkeypatch.setattr(image, "ensure", lambda arch, **_: broken)
    m = Machine("t5")
    with pytest.raises(VMError) as err:
        m.start(cpus=1, memory=512, disk_size="1G", timeout=120)
    msg = err.value.message
    assert "requirement 1 of 6 failed: qemu process" in msg and "panic" in msg.lower()  # 6: incl. "guest go"
    assert str(m.paths.serial_log) in msg
    assert m.status()["state"] == "stopped" and not m.paths.run.exists()


def test_recycled_pid_is_not_trusted(state_dir):
    m = Machine("t4")
    m.paths.dir.mkdir(parents=True)
    m.paths.run.write_text(json.dumps({"pid": os.getpid(), "identity": "linux:1", "ssh_port": 1, "qmp": "x",
                                       "accel": "tcg", "started_at": 0}))
    assert m.status()["state"] == "stopped"
    assert not m.paths.run.exists()


def test_kvm_probe_fails_fast_and_falls_back_to_tcg(artifacts, tmp_path):
    if accel.precheck("kvm") is not None:
        pytest.skip(f"KVM cannot even be tried here: {accel.precheck('kvm')}")
    qemu = accel.find_qemu(artifacts.arch)
    began = time.monotonic()
    verdict = accel.probe_boot("kvm", qemu=qemu, guest_arch=artifacts.arch, kernel=str(artifacts.kernel),
                               timeout=6.0)
    elapsed = time.monotonic() - began
    if verdict.ok:
        pytest.skip("KVM works on this host; the fallback cannot be shown here")
    assert elapsed < 6.0 + 3.0, verdict
    warnings = []
    choice = accel.choose(artifacts.arch, lambda a: verdict, qemu_version=accel.qemu_version(qemu),
                          cache_path=tmp_path / "accel.json", env={}, warn=warnings.append)
    assert choice.accel == "tcg" and verdict.reason in choice.why
    assert len(warnings) == 1 and "slow" in warnings[0]


def test_tcg_probe_succeeds(artifacts):
    """The probe's success path: the kernel boots to its root-mount panic and QEMU exits by itself."""
    qemu = accel.find_qemu(artifacts.arch)
    verdict = accel.probe_boot("tcg", qemu=qemu, guest_arch=artifacts.arch, kernel=str(artifacts.kernel),
                               timeout=60.0)
    assert verdict.ok, verdict.reason
