"""The cgroup v2 device filter in the real kernel, natively: a BPF_PROG_TYPE_CGROUP_DEVICE program attaches
to any v2 cgroup, controllers or not, so the controller-less cgroup2 of a hybrid host is enough. The test
makes its own v2 cgroup, moves a forked child into it, and removes everything afterwards."""

from __future__ import annotations

import json
import os
import stat

import pytest

from runner.engine.runtime import devices, oci

pytestmark = pytest.mark.root


def cgroup2_mount() -> str | None:
    with open("/proc/self/mounts") as f:
        for line in f:
            fields = line.split()
            if fields[2] == "cgroup2":
                return fields[1]
    return None


@pytest.fixture
def v2_cgroup(tmp_path):
    mount = cgroup2_mount()
    if mount is None:
        pytest.skip("no cgroup2 mount on this host")
    path = os.path.join(mount, f"runner-devtest-{os.getpid()}")
    os.mkdir(path)
    try:
        yield path
    finally:
        os.rmdir(path)  # the child has exited: the cgroup is empty; its programs go with it


def opens_in(cgroup: str, paths: list[str]) -> dict[str, str]:
    """Fork a child into ``cgroup`` that opens each path; {path: "ok" or the error name}."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            os.close(r)
            with open(os.path.join(cgroup, "cgroup.procs"), "w") as f:
                f.write("0")
            out = {}
            for p in paths:
                try:
                    os.close(os.open(p, os.O_RDONLY))
                    out[p] = "ok"
                except OSError as exc:
                    out[p] = os.strerror(exc.errno)
            os.write(w, json.dumps(out).encode())
        finally:
            os._exit(0)
    os.close(w)
    data = b""
    while chunk := os.read(r, 65536):
        data += chunk
    os.close(r)
    os.waitpid(pid, 0)
    return json.loads(data)


def test_default_rules_block_a_block_device_but_not_dev_null(v2_cgroup, tmp_path):
    node = str(tmp_path / "loop")
    os.mknod(node, stat.S_IFBLK | 0o600, os.makedev(7, 0))  # a loop device node (opening it needs no backing)
    assert opens_in(v2_cgroup, [node])[node] == "ok"  # no filter yet: the node opens
    devices.apply(v2_cgroup, oci.DEFAULT_DEVICE_RULES)
    got = opens_in(v2_cgroup, ["/dev/null", "/dev/zero", node])
    assert got == {"/dev/null": "ok", "/dev/zero": "ok", node: "Operation not permitted"}


def test_update_replaces_the_program(v2_cgroup, tmp_path):
    node = str(tmp_path / "loop")
    os.mknod(node, stat.S_IFBLK | 0o600, os.makedev(7, 0))
    devices.apply(v2_cgroup, oci.DEFAULT_DEVICE_RULES)
    fd = os.open(v2_cgroup, os.O_RDONLY | os.O_DIRECTORY)
    try:
        first = devices.attached(fd)
        devices.apply(v2_cgroup, oci.DEFAULT_DEVICE_RULES + [
            {"allow": True, "type": "b", "major": 7, "minor": 0, "access": "r"}])
        second = devices.attached(fd)
    finally:
        os.close(fd)
    assert len(first) == 1 and len(second) == 1 and first != second
    assert opens_in(v2_cgroup, [node])[node] == "ok"


def test_device_flag_with_a_nested_path(tmp_path):
    """--device /dev/net/tun: the node lands in a directory the runtime makes inside the container's /dev."""
    if not os.path.exists("/dev/net/tun"):
        pytest.skip("this host has no /dev/net/tun")
    from tests.helpers import cli
    root = str(tmp_path / "root")
    try:
        p = cli(["run", "--rm", "--network", "none", "--device", "/dev/net/tun", "localhost/busybox", "sh", "-c",
                 "ls -l /dev/net/tun && cat /dev/net/tun 2>&1; true"], root=root)
        assert p.returncode == 0, p.stderr.decode()
        out = p.stdout.decode()
        assert out.startswith("crw") and "10, 200" in out
        # Opened (the tun driver answers a read without an attached interface with EBADFD), not refused.
        assert "Operation not permitted" not in out
    finally:
        cli(["network", "rm", "bridge"], root=root)
