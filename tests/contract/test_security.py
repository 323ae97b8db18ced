"""Security scenarios on every backend: seccomp, the device filter (v1 files natively here, eBPF on the VM's
cgroup v2), capabilities, --privileged, --device, and bad security input. Same assertions on both.

Those marked ``aarch64`` also run on an aarch64 guest (the arm64 syscall table: aarch64 has no ``mkdir``, only
``mkdirat``). Left out there: the scenarios of the syscall probe, a static x86_64 binary built by the host's gcc,
which on an arm64 guest would run under user-mode emulation and test qemu's syscall translation instead of
the filter (tests/vm/test_arm64_guest.py checks Seccomp: 2 and a refused unshare with busybox instead), and the
bad-input and inspect scenarios, which are arch-independent Python."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import tarfile

import pytest

IMG = "localhost/busybox"
PROBE = "localhost/secprobe:latest"
HERE = os.path.dirname(os.path.abspath(__file__))
_IMPORTED: set[str] = set()


def text(proc) -> str:
    return proc.stdout.decode()


def sh(rn, script: str, *flags: str):
    return rn("run", "--rm", "--network", "none", *flags, IMG, "sh", "-c", script)


@pytest.fixture(scope="session")
def probe_tar(tmp_path_factory):
    """A one-file image: the static syscall probe (tests/contract/syscall_probe.c) as /probe."""
    if not shutil.which("gcc"):
        pytest.fail("gcc is needed to build the syscall probe (scripts/apt-packages.txt lists it)")
    d = tmp_path_factory.mktemp("probe")
    binary = d / "probe"
    subprocess.run(["gcc", "-static", "-Os", "-o", str(binary), os.path.join(HERE, "syscall_probe.c")], check=True)
    tar = d / "probe.tar"
    with tarfile.open(tar, "w") as t:
        t.add(binary, arcname="probe")
        info = tarfile.TarInfo("tmp")
        info.type, info.mode = tarfile.DIRTYPE, 0o1777
        t.addfile(info, io.BytesIO())
    return str(tar)


@pytest.fixture
def probe(rn, probe_tar):
    if rn.name not in _IMPORTED:
        p = rn("import", probe_tar, PROBE)
        assert p.returncode == 0, p.stderr.decode()
        _IMPORTED.add(rn.name)

    def call(*flags_and_names: str) -> dict[str, int]:
        flags = [a for a in flags_and_names if a.startswith("-") or "=" in a]
        names = [a for a in flags_and_names if a not in flags]
        p = rn("run", "--rm", "--network", "none", *flags, PROBE, "/probe", *names)
        assert p.returncode == 0, p.stderr.decode()
        return {k: int(v) for k, v in (line.split("=") for line in text(p).split())}
    return call


def status_of(rn, *flags: str) -> dict[str, str]:
    p = rn("run", "--rm", "--network", "none", *flags, IMG, "cat", "/proc/self/status")
    assert p.returncode == 0, p.stderr.decode()
    return dict(line.split(":\t", 1) for line in text(p).splitlines() if ":\t" in line)


# ------------------------------------------------------------------------------------ seccomp

def test_default_container_is_filtered_and_ordinary_programs_work(rn, probe):
    assert status_of(rn)["Seccomp"] == "2"
    got = probe("keyctl", "add_key", "bpf", "unshare_user", "userfaultfd", "personality")
    assert got == {"keyctl": 1, "add_key": 1, "bpf": 1, "unshare_user": 1, "userfaultfd": 1, "personality": 0}
    p = sh(rn, "unshare -U true")
    assert p.returncode != 0 and "Operation not permitted" in p.stderr.decode()
    # Busybox applets, a pipeline, a fork, and ping (a raw socket with CAP_NET_RAW) still work.
    p = sh(rn, "ls / | grep -c bin && (sleep 0; echo sub) && ping -c 1 -W 2 127.0.0.1 >/dev/null && echo pinged")
    assert p.returncode == 0, p.stderr.decode()
    assert text(p).split() == ["1", "sub", "pinged"]


def test_syscalls_newer_than_the_profile_are_enosys_known_denied_ones_eperm(rn, probe):
    """runc's ENOSYS stub: a number above every syscall the profile names looks unimplemented (so libc falls
    back to an older call), while a known syscall the profile denies stays EPERM; 1000 is past every table."""
    got = probe("nr:1000", "nr:100000", "keyctl")
    assert got == {"nr:1000": 38, "nr:100000": 38, "keyctl": 1}
    assert probe("--security-opt", "seccomp=unconfined", "nr:1000") == {"nr:1000": 38}  # the kernel's own


def test_unconfined_lifts_the_filter(rn, probe):
    assert status_of(rn, "--security-opt", "seccomp=unconfined")["Seccomp"] == "0"
    got = probe("--security-opt", "seccomp=unconfined", "keyctl", "add_key")
    assert got["keyctl"] != 1 and got["add_key"] != 1
    assert sh(rn, "unshare -U true && echo ok", "--security-opt", "seccomp=unconfined").stdout.split() == [b"ok"]


@pytest.mark.aarch64
def test_custom_profile_denies_mkdir_with_its_errno(rn, tmp_path):
    profile = tmp_path / "nomkdir.json"
    profile.write_text(json.dumps({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
        {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 122}]}))
    p = sh(rn, "mkdir /x; echo rc=$?; touch /y && echo touched", "--security-opt", f"seccomp={profile}")
    assert "Disk quota exceeded" in p.stderr.decode()  # EDQUOT (122): the profile's errno, not EPERM
    assert text(p).split() == ["rc=1", "touched"]


@pytest.mark.aarch64
def test_no_new_privileges_false_still_filters(rn):
    status = status_of(rn, "--security-opt", "no-new-privileges=false")
    assert status["NoNewPrivs"] == "0" and status["Seccomp"] == "2"


# ------------------------------------------------------------------------------------ capabilities

@pytest.mark.aarch64
def test_cap_drop_all_and_cap_add(rn):
    assert status_of(rn, "--cap-drop", "ALL")["CapEff"] == "0000000000000000"
    status = status_of(rn, "--cap-drop", "all", "--cap-add", "chown")
    assert status["CapEff"] == "0000000000000001"
    p = sh(rn, "mkdir /m && mount -t tmpfs t /m && echo mounted")
    assert p.returncode != 0 and "mounted" not in text(p)
    p = sh(rn, "mkdir /m && mount -t tmpfs t /m && echo mounted", "--cap-add", "SYS_ADMIN")
    assert text(p).split() == ["mounted"], p.stderr.decode()


# ------------------------------------------------------------------------------------ devices

FIRST_BLOCK = "b=$(ls /sys/class/block | head -n 1); echo $b; cat /sys/class/block/$b/dev"


@pytest.mark.aarch64
def test_mknod_works_but_a_disk_can_not_be_opened(rn):
    script = FIRST_BLOCK + " | tr : ' ' > /tmp/dev; read maj min < /tmp/dev; mknod /tmp/d b $maj $min && " \
                           "echo made; head -c 1 /tmp/d > /dev/null && echo READ; " \
                           "echo x > /dev/null && head -c 4 /dev/zero | wc -c"
    p = sh(rn, script)
    out = text(p).split()
    assert "made" in out and "READ" not in out, (out, p.stderr.decode())
    assert "Operation not permitted" in p.stderr.decode()
    assert out[-1] == "4"  # /dev/null and /dev/zero still work
    p = rn("run", "--rm", "-t", "--network", "none", IMG, "sh", "-c", "tty")
    assert text(p).strip().startswith("/dev/pts/"), p.stderr.decode()


@pytest.mark.aarch64
def test_privileged_mounts_and_sees_host_devices(rn):
    status = status_of(rn, "--privileged")
    assert status["Seccomp"] == "0" and int(status["CapEff"], 16) & (1 << 21)  # CAP_SYS_ADMIN
    script = "b=$(ls /sys/class/block | head -n 1); ls /dev/$b && head -c 1 /dev/$b >/dev/null && echo opened; " \
             "mkdir /m && mount -t tmpfs t /m && echo mounted; ls /sys/firmware >/dev/null && echo unmasked"
    p = sh(rn, script, "--privileged")
    assert {"opened", "mounted"} <= set(text(p).split()), p.stderr.decode()


@pytest.mark.aarch64
def test_device_flag_makes_exactly_that_device_usable(rn):
    script = "echo runner-device-test > /dev/kmsg && echo wrote; mknod /tmp/mem c 1 1; " \
             "head -c 1 /tmp/mem >/dev/null && echo MEM"
    p = sh(rn, script, "--device", "/dev/kmsg:/dev/kmsg:w")
    assert text(p).split() == ["wrote"], p.stderr.decode()
    p = sh(rn, "ls /dev/kmsg")
    assert p.returncode != 0  # not there without --device


# ------------------------------------------------------------------------------------ bad input, inspect

@pytest.mark.parametrize("flags, needle", [
    (["--cap-add", "NOPE"], 'invalid CapAdd: unknown capability: "CAP_NOPE"'),
    (["--device", "/dev/does-not-exist"], 'adding custom device "/dev/does-not-exist": no such file'),
    (["--security-opt", "seccomp=/nonexistent/profile.json"], "opening seccomp profile (/nonexistent/profile.json)"),
    (["--security-opt", "bogus=1"], 'invalid --security-opt 2: "bogus=1"'),
])
def test_bad_security_input_is_one_clear_error_and_creates_nothing(rn, flags, needle):
    p = rn("run", "--rm", "--name", "sec-bad", *flags, IMG, "true")
    assert p.returncode == 125
    lines = p.stderr.decode().splitlines()
    assert lines[0].startswith("Error: ") and needle in lines[0], lines
    assert "Traceback" not in p.stderr.decode()
    assert "sec-bad" not in text(rn("ps", "-a"))


def test_invalid_profile_file_is_refused(rn, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"defaultAction": "SCMP_ACT_SOMETIMES"}')
    p = rn("run", "--rm", "--security-opt", f"seccomp={bad}", IMG, "true")
    assert p.returncode == 125 and "unknown defaultAction" in p.stderr.decode()


def test_inspect_shows_the_security_options(rn):
    p = rn("create", "--cap-add", "NET_ADMIN", "--cap-drop", "MKNOD", "--security-opt", "no-new-privileges",
           "--device", "/dev/null:/dev/mynull:rw", IMG, "true")
    assert p.returncode == 0, p.stderr.decode()
    cid = text(p).strip()
    try:
        host = json.loads(text(rn("inspect", cid)))[0]["HostConfig"]
        assert host["CapAdd"] == ["NET_ADMIN"] and host["CapDrop"] == ["MKNOD"] and host["Privileged"] is False
        assert host["SecurityOpt"] == ["no-new-privileges"]
        assert host["Devices"] == [{"PathOnHost": "/dev/null", "PathInContainer": "/dev/mynull",
                                    "CgroupPermissions": "rw"}]
    finally:
        rn("rm", "-f", cid)


@pytest.mark.aarch64
def test_exec_gets_the_containers_filter_and_exec_privileged_all_caps(rn):
    p = rn("run", "-d", "--network", "none", IMG, "sleep", "60")
    assert p.returncode == 0, p.stderr.decode()
    cid = text(p).strip()
    try:
        plain = dict(line.split(":\t", 1) for line in text(rn("exec", cid, "cat", "/proc/self/status")).splitlines()
                     if ":\t" in line)
        assert plain["Seccomp"] == "2" and plain["CapEff"] == "00000000a80425fb"
        p = rn("exec", "--privileged", cid, "grep", "CapEff", "/proc/self/status")
        assert int(text(p).split()[1], 16) & (1 << 21), p.stderr.decode()  # CAP_SYS_ADMIN
    finally:
        rn("rm", "-f", cid)
