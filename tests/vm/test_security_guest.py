"""seccomp and the cgroup v2 device filter inside the real guests, both arches (the aarch64 one is the
arm64 guest of Apple silicon hosts): the engine's own modules, shipped into the guest as the agent's code is,
compile Docker's default profile with the guest's libseccomp for the guest's architecture, load it in a child,
and attach the device program to a cgroup of the guest's pure cgroup v2. (The x86_64 guest also runs the full
container scenarios in tests/contract/test_security.py.)"""

from __future__ import annotations

import io
import json
import tarfile

import pytest

from runner.agent.protocol import collect_sources
from runner.vm.ship import package_root

from . import vmboot
from .test_vmimage import _artifacts

pytestmark = pytest.mark.vm

GUEST_SCRIPT = r"""
import json, os, stat, sys
sys.path.insert(0, "/tmp/runner-src")
from runner.engine.runtime import caps, devices, linux, oci, seccomp
arch = seccomp.machine_arch()
prepared = seccomp.prepare(seccomp.to_oci(seccomp.load_default(), caps.DOCKER_DEFAULT_CAPS, arch))
cg = "/sys/fs/cgroup/runner-sectest"
os.mkdir(cg)
devices.apply(cg, oci.DEFAULT_DEVICE_RULES)
disk = sorted(os.listdir("/sys/class/block"))[0]
major, minor = map(int, open(f"/sys/class/block/{disk}/dev").read().split(":"))
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    out = {}
    try:
        with open(cg + "/cgroup.procs", "w") as f:
            f.write("0")
        linux.prctl(38, 1)  # PR_SET_NO_NEW_PRIVS, as the runtime does before installing
        prepared.install()
        out["seccomp"] = [l.split()[1] for l in open("/proc/self/status") if l.startswith("Seccomp:")][0]
        for name, call in (("unshare_user", lambda: linux.unshare(0x10000000)),
                           ("mount", lambda: linux.mount("none", "/mnt", "tmpfs", 0, None))):
            try:
                call()
                out[name] = 0
            except OSError as exc:
                out[name] = exc.errno
        # In /dev: the guest's /tmp is nodev, which would refuse the open for another reason (EACCES).
        os.mknod("/dev/runner-sectest-disk", stat.S_IFBLK | 0o600, os.makedev(major, minor))
        for p in ("/dev/null", "/dev/runner-sectest-disk"):
            try:
                os.close(os.open(p, os.O_RDONLY))
                out[p] = 0
            except OSError as exc:
                out[p] = exc.errno
    finally:
        os.write(w, json.dumps(out).encode())
        os._exit(0)
os.close(w)
data = os.read(r, 65536)
os.waitpid(pid, 0)
os.rmdir(cg)
os.unlink("/dev/runner-sectest-disk")
print(json.dumps({"arch": arch, **json.loads(data)}))
"""


def _ship(client) -> None:
    """The engine's sources into /tmp/runner-src, the same files the agent would run from."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for rel, data in collect_sources(package_root()).items():
            info = tarfile.TarInfo(rel)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    stdin, out, _ = client.exec_command("mkdir -p /tmp/runner-src && busybox tar -x -C /tmp/runner-src")
    stdin.write(buf.getvalue())
    stdin.channel.shutdown_write()
    assert out.channel.recv_exit_status() == 0


@pytest.mark.parametrize("arch, scmp", [("x86_64", "SCMP_ARCH_X86_64"), ("aarch64", "SCMP_ARCH_AARCH64")])
def test_default_profile_and_device_filter_in_the_guest(tmp_path, arch, scmp):
    art = _artifacts(arch)
    with vmboot.booted(art, tmp_path, vmboot.make_data_disk(tmp_path / "data.qcow2"), timeout=300) as (g, client):
        _ship(client)
        stdin, out, err = client.exec_command("python3 -", timeout=240)
        stdin.write(GUEST_SCRIPT)
        stdin.channel.shutdown_write()
        status = out.channel.recv_exit_status()
        output, errors = out.read().decode(), err.read().decode()
        assert status == 0, errors
        got = json.loads(output.strip().splitlines()[-1])
    assert got == {"arch": scmp, "seccomp": "2", "unshare_user": 1, "mount": 1, "/dev/null": 0,
                   "/dev/runner-sectest-disk": 1}
