"""Boot the real guest image under TCG and check the guest contract (vmimage/README.md).

Slow (each boot is ~5-15 s under TCG, a from-scratch image build ~1-3 min per arch), hence marked ``vm``.
The image comes from ``runner.vm.image.ensure`` (cache dir, or ``$RUNNER_VMIMAGE_DIR``), built on first use.
"""

from __future__ import annotations

import io
import platform
import shutil
import subprocess

import pytest

from runner.errors import PlatformError, VMError
from runner.vm import image, initrd, keys

from . import vmboot

pytestmark = pytest.mark.vm


def _artifacts(arch: str):
    if shutil.which(vmboot.QEMU[arch]) is None:
        pytest.skip(f"{vmboot.QEMU[arch]} not installed")
    try:
        return image.ensure(arch, build_if_missing=platform.system() == "Linux")
    except PlatformError as e:  # this host can neither build nor has the image; a broken build still fails
        pytest.skip(f"no {arch} guest image: {e}")
    except VMError as e:
        if platform.system() != "Linux":
            pytest.skip(f"no {arch} guest image: {e}")
        raise


@pytest.fixture(scope="module")
def x86():
    return _artifacts("x86_64")


@pytest.fixture(scope="module")
def guest(x86, tmp_path_factory):
    """One booted x86_64 guest with a data disk, shared by the read-only checks below."""
    work = tmp_path_factory.mktemp("guest")
    disk = vmboot.make_data_disk(work / "data.qcow2")
    with vmboot.booted(x86, work, disk) as (g, client):
        yield g, client


def sh(client, command: str) -> str:
    status, out, err = vmboot.run(client, command)
    assert status == 0, f"{command!r} exited {status}: {err or out}"
    return out


def test_ssh_with_pinned_host_key(guest):
    g, client = guest
    assert sh(client, "echo ok") == "ok\n"
    transport_key = client.get_transport().get_remote_server_key()
    assert keys.fingerprint(f"{transport_key.get_name()} {transport_key.get_base64()}") == g.host_key.fingerprint


def test_a_different_pinned_host_key_is_refused(guest, tmp_path):
    import paramiko

    g, _ = guest
    other = keys.generate(tmp_path / "other", "impostor")
    with pytest.raises(paramiko.SSHException):
        g.ssh(host_key_line=other.public).close()


def test_cgroup2_and_namespaces(guest):
    _, client = guest
    controllers = sh(client, "cat /sys/fs/cgroup/cgroup.controllers").split()
    assert {"memory", "pids", "cpu", "io", "cpuset"} <= set(controllers)
    assert {"memory", "pids", "cpu"} <= set(sh(client, "cat /sys/fs/cgroup/cgroup.subtree_control").split())
    assert sh(client, "stat -f -c %T /sys/fs/cgroup") == "cgroup2fs\n"
    sh(client, "unshare -m -u -i -n -p -f --mount-proc true")


def test_pivot_root_works(guest):
    _, client = guest
    out = sh(client, "unshare -m busybox sh -c '"
                     "mount --make-rprivate / && mkdir -p /tmp/pr && mount -t tmpfs t /tmp/pr && "
                     "mkdir /tmp/pr/old /tmp/pr/bin && cp /bin/busybox /tmp/pr/bin/ && cd /tmp/pr && "
                     "pivot_root . old && /bin/busybox umount -l /old && /bin/busybox ls /'")
    assert out.split() == ["bin", "old"]


def test_guest_layout(guest):
    _, client = guest
    assert sh(client, "stat -c '%a %U' /runner/config.json") == "600 root\n"
    assert sh(client, "findmnt -n -o FSTYPE /var/lib/runner || awk '$2==\"/var/lib/runner\"{print $3}' "
                      "/proc/mounts").strip() == "ext4"
    assert sh(client, "hostname") == "runner\n"
    assert "nameserver 10.0.2.3" in sh(client, "cat /etc/resolv.conf")
    sh(client, "python3 -c 'import json, shutil, asyncio, ctypes, ssl, sqlite3' 2>/dev/null || "
               "python3 -c 'import json, shutil, asyncio, ctypes'")
    sh(client, "command -v ip iptables mkfs.ext4 modprobe busybox")
    # on-demand modules autoload through kmod (container networking needs them)
    sh(client, "ip link add rtest type veth peer name rtest1 && ip link del rtest")
    # the clock is never behind the host time the config carried
    assert float(sh(client, "date +%s")) >= int(guest[0].config["time"])


def test_9p_share_mounts(x86, tmp_path):
    """The generic kernel's 9p lets the VM backend share host dirs (-v); drivers load only with the device."""
    share = tmp_path / "share"
    share.mkdir()
    (share / "hello.txt").write_text("from host\n")
    extra = ("-virtfs", f"local,path={share},mount_tag=share0,security_model=none,id=fs0")
    with vmboot.booted(x86, tmp_path / "vm", extra=extra) as (_, client):
        sh(client, "mkdir -p /mnt/s && mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 share0 /mnt/s")
        assert sh(client, "cat /mnt/s/hello.txt") == "from host\n"
        sh(client, "echo back > /mnt/s/from-guest.txt")
    assert (share / "from-guest.txt").read_text() == "back\n"


def test_data_disk_survives_power_button_and_reboot(x86, tmp_path):
    disk = vmboot.make_data_disk(tmp_path / "data.qcow2")
    keys_dir = tmp_path / "keys"
    with vmboot.booted(x86, tmp_path / "b1", disk, keys_dir=keys_dir) as (g, client):
        sh(client, "echo kept > /var/lib/runner/marker && sync")
        g.qmp("system_powerdown")
        # acpid -> poweroff action -> clean unmount -> QEMU exits by itself (-no-reboot)
        g.proc.wait(timeout=60)
        assert "power button" in g.serial_tail()
    with vmboot.booted(x86, tmp_path / "b2", disk, keys_dir=keys_dir) as (g, client):
        assert sh(client, "cat /var/lib/runner/marker") == "kept\n"
        assert "formatting" not in g.serial_tail()


def test_guest_refuses_to_boot_without_host_key(x86, tmp_path):
    """A config without ssh_host_key must stop the boot, never make dropbear generate a key."""
    work = tmp_path / "nokey"
    client_key, host_key = keys.ensure_keys(work / "keys", "t")
    cfg = vmboot.make_config(host_key, client_key)
    cfg["ssh_host_key"] = "not a key"
    boot = work / "initrd.img"
    buf = io.BytesIO()
    w = initrd.CpioWriter(buf)
    w.add_dir("runner", 0o700)
    w.add_file("runner/config.json", initrd.config_json(cfg), 0o600)
    w.close()
    boot.write_bytes(x86.initrd.read_bytes() + buf.getvalue())
    argv = vmboot.qemu_argv(x86, work, boot, None, vmboot.free_port())
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    serial = (work / "serial.log").read_text(errors="replace")
    assert "refusing to start dropbear" in serial
    assert not (work / "ready.log").exists() or b"READY" not in (work / "ready.log").read_bytes()


def test_aarch64_boots_to_ssh_and_powers_off(tmp_path):
    art = _artifacts("aarch64")
    with vmboot.booted(art, tmp_path, vmboot.make_data_disk(tmp_path / "data.qcow2"), timeout=300) as (g, client):
        assert sh(client, "uname -m") == "aarch64\n"
        assert {"memory", "pids", "cpu"} <= set(sh(client, "cat /sys/fs/cgroup/cgroup.controllers").split())
        sh(client, "unshare -m -u -i -n -p -f --mount-proc true")
        # the virt machine's power button is a gpio-keys device, handled by the same acpid action
        g.qmp("system_powerdown")
        g.proc.wait(timeout=60)
