"""Security options without root: the seccomp profile's resolution and compilation, the device filter's
eBPF code (run in a small interpreter here; tests/native/test_security.py runs it in the kernel), Docker's
capability rules, flag parsing and validation."""

from __future__ import annotations

import ctypes.util
import json
import os
import struct

import pytest

from runner.cli import fastrun, runopts
from runner.engine import views
from runner.engine.runtime import caps, devices, oci, security, seccomp
from runner.errors import ContainerStartError, UsageError
from runner.spec import ContainerSpec, parse_device

X86, ARM = "SCMP_ARCH_X86_64", "SCMP_ARCH_AARCH64"
HAVE_LIBSECCOMP = ctypes.util.find_library("seccomp") is not None
needs_libseccomp = pytest.mark.skipif(not HAVE_LIBSECCOMP, reason="libseccomp2 is not installed")


def names_with(oci_filter: dict, action: str = "SCMP_ACT_ALLOW", args: bool = False) -> set[str]:
    return {n for r in oci_filter["syscalls"] if r["action"] == action and bool(r.get("args")) == args
            for n in r["names"]}


# ------------------------------------------------------------------------------------ seccomp: profile

def test_default_profile_resolves_for_docker_default_caps():
    f = seccomp.to_oci(seccomp.load_default(), caps.DOCKER_DEFAULT_CAPS, X86)
    assert f["defaultAction"] == "SCMP_ACT_ERRNO" and f["defaultErrnoRet"] == 1
    assert f["architectures"] == [X86, "SCMP_ARCH_X86", "SCMP_ARCH_X32"]
    allowed = names_with(f)
    assert {"read", "execve", "mkdir", "chroot", "arch_prctl"} <= allowed
    forbidden = {"mount", "umount2", "unshare", "setns", "bpf", "keyctl", "add_key", "perf_event_open",
                 "kexec_load", "userfaultfd", "reboot", "init_module", "kcmp"}
    assert not forbidden & allowed
    clone = [r for r in f["syscalls"] if r["names"] == ["clone"]]
    assert clone == [{"names": ["clone"], "action": "SCMP_ACT_ALLOW",
                      "args": [{"index": 0, "value": 0x7E020000, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}]}]
    clone3 = [r for r in f["syscalls"] if r["names"] == ["clone3"]]
    assert clone3[0]["action"] == "SCMP_ACT_ERRNO" and clone3[0]["errnoRet"] == 38
    assert {a["args"][0]["value"] for a in f["syscalls"] if a["names"] == ["personality"]} == \
        {0, 8, 0x20000, 0x20008, 0xFFFFFFFF}
    assert [r["args"] for r in f["syscalls"] if r["names"] == ["socket"]] == \
        [[{"index": 0, "value": 40, "valueTwo": 0, "op": "SCMP_CMP_NE"}]]


def test_capability_groups_follow_the_bounding_set():
    profile = seccomp.load_default()
    f = seccomp.to_oci(profile, caps.DOCKER_DEFAULT_CAPS + ["CAP_SYS_ADMIN", "CAP_SYS_PTRACE"], X86)
    allowed = names_with(f)
    assert {"mount", "unshare", "setns", "clone", "clone3", "kcmp", "pidfd_getfd"} <= allowed
    assert not [r for r in f["syscalls"] if r["names"] == ["clone"] and r.get("args")]  # no clone mask then
    assert "chroot" not in names_with(seccomp.to_oci(profile, ["CAP_CHOWN"], X86))


def test_arch_groups_follow_the_architecture():
    f = seccomp.to_oci(seccomp.load_default(), caps.DOCKER_DEFAULT_CAPS, ARM)
    assert f["architectures"] == [ARM, "SCMP_ARCH_ARM"]
    allowed = names_with(f)
    assert "arch_prctl" not in allowed and "modify_ldt" not in allowed
    assert {"set_tls", "cacheflush"} <= allowed


def test_min_kernel_is_compared_numerically():
    assert seccomp._kernel_at_least("4.8", "4.10.0-1-amd64")
    assert not seccomp._kernel_at_least("4.8", "4.7.9")
    profile = seccomp.load_default()
    old = seccomp.to_oci(profile, caps.DOCKER_DEFAULT_CAPS, X86, kernel="4.4.0")
    assert "ptrace" not in names_with(old)
    assert "ptrace" in names_with(seccomp.to_oci(profile, caps.DOCKER_DEFAULT_CAPS, X86, kernel="6.1.0"))


@pytest.mark.parametrize("text, needle", [
    ("{nope", "invalid seccomp profile"),
    ('{"defaultAction": "SCMP_ACT_MAYBE"}', "unknown defaultAction"),
    ('{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["mkdir"], "action": "X"}]}', "unknown action"),
    ('{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_ERRNO", '
     '"args": [{"index": 9, "value": 1, "op": "SCMP_CMP_EQ"}]}]}', "bad argument rule"),
    ("[]", "must be a JSON object"),
])
def test_invalid_profiles_are_usage_errors(text, needle):
    with pytest.raises(UsageError) as info:
        seccomp.parse_profile(text)
    assert needle in info.value.message


# ------------------------------------------------------------------------------------ seccomp: libseccomp

@needs_libseccomp
@pytest.mark.parametrize("arch", [X86, ARM])
def test_default_profile_compiles_for_both_guest_arches(arch):
    f = seccomp.to_oci(seccomp.load_default(), caps.DOCKER_DEFAULT_CAPS, arch)
    bpf = seccomp.compile_bpf(f, arch)
    assert len(bpf) % 8 == 0 and len(bpf) // 8 > 300
    # Classic BPF's first instruction loads seccomp_data.arch (offset 4); the program checks the arch tokens.
    code, _, _, k = struct.unpack_from("<HBBI", bpf, 0)
    assert (code, k) == (0x20, 4)  # BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)
    tokens = {struct.unpack_from("<HBBI", bpf, i)[3] for i in range(0, len(bpf), 8)}
    want = {X86: 0xC000003E, ARM: 0xC00000B7}[arch]
    assert want in tokens
    other = {X86: 0xC00000B7, ARM: 0xC000003E}[arch]
    assert other not in tokens


@needs_libseccomp
def test_cache_reuses_a_compiled_program(tmp_path, monkeypatch):
    f = seccomp.to_oci(seccomp.load_default(), caps.DOCKER_DEFAULT_CAPS, X86)
    first = seccomp.cached_bpf(f, X86, cache_dir=str(tmp_path))
    files = list(tmp_path.iterdir())
    assert len(files) == 1 and files[0].read_bytes() == first
    seccomp._MEMO.clear()
    monkeypatch.setattr(seccomp, "compile_bpf", lambda *a: pytest.fail("compiled again despite the cache"))
    assert seccomp.cached_bpf(f, X86, cache_dir=str(tmp_path)) == first


# ------------------------------------------------------------------------------------ device filter

def run_ebpf(prog: bytes, dev_type: int, access: int, major: int, minor: int) -> int:
    """Interpret the handful of eBPF instructions devices.program emits (the kernel runs it natively)."""
    ctx = struct.pack("<III", access << 16 | dev_type, major, minor)
    regs = [0] * 11
    pc = 0
    insns = [struct.unpack_from("<BBhi", prog, i) for i in range(0, len(prog), 8)]
    while True:
        code, regs_byte, off, imm = insns[pc]
        dst, src = regs_byte & 0xF, regs_byte >> 4
        pc += 1
        if code == 0x61:
            assert src == 1
            regs[dst] = struct.unpack_from("<I", ctx, off)[0]
        elif code == 0x54:
            regs[dst] &= imm & 0xFFFFFFFF
        elif code == 0x74:
            regs[dst] >>= imm
        elif code == 0xB4:
            regs[dst] = imm & 0xFFFFFFFF
        elif code == 0xBC:
            regs[dst] = regs[src]
        elif code == 0x55:
            pc += off if regs[dst] != imm & 0xFFFFFFFF else 0
        elif code == 0x5D:
            pc += off if regs[dst] != regs[src] else 0
        elif code == 0x95:
            return regs[0]
        else:
            raise AssertionError(f"unexpected opcode {code:#x}")


B, C = devices.DEV_BLOCK, devices.DEV_CHAR
R, W, M = devices.ACC_READ, devices.ACC_WRITE, devices.ACC_MKNOD


def test_default_rules_allow_only_the_standard_nodes_and_mknod():
    prog = devices.program(oci.DEFAULT_DEVICE_RULES)
    assert run_ebpf(prog, C, R | W, 1, 3) == 1        # /dev/null
    assert run_ebpf(prog, C, R | W, 136, 4) == 1      # a pty
    assert run_ebpf(prog, B, M, 254, 0) == 1          # mknod of anything, as Docker
    assert run_ebpf(prog, B, R, 254, 0) == 0          # but not opening a disk
    assert run_ebpf(prog, C, R, 1, 1) == 0            # nor /dev/mem
    assert run_ebpf(prog, C, R | M, 1, 1) == 0        # access must be a subset of the rule's


def test_later_rules_win_and_partial_access_is_enforced():
    rules = [{"allow": False, "access": "rwm"}, {"allow": True, "type": "b", "major": 7, "minor": None, "access": "r"},
             {"allow": False, "type": "b", "major": 7, "minor": 1, "access": "rwm"}]
    prog = devices.program(rules)
    assert run_ebpf(prog, B, R, 7, 0) == 1
    assert run_ebpf(prog, B, W, 7, 0) == 0
    assert run_ebpf(prog, B, R, 7, 1) == 0
    assert run_ebpf(prog, C, R, 7, 0) == 0


def test_allow_all_is_a_two_instruction_tail():
    prog = devices.program([{"allow": True, "access": "rwm"}])
    assert len(prog) // 8 == len(devices._PROLOGUE) + 2
    assert run_ebpf(prog, B, R | W | M, 8, 0) == 1


def test_bad_device_rules_are_refused():
    with pytest.raises(ContainerStartError):
        devices.program([{"allow": True, "type": "x", "access": "r"}])
    with pytest.raises(ContainerStartError):
        devices.program([{"allow": True, "type": "c", "access": "q"}])


# ------------------------------------------------------------------------------------ caps and options

DEFAULT = caps.DOCKER_DEFAULT_CAPS
EVERY = (1 << 41) - 1


@pytest.mark.parametrize("add, drop, privileged, expect", [
    ([], [], False, DEFAULT),
    (["sys_admin"], ["CAP_NET_RAW"], False, [c for c in DEFAULT if c != "CAP_NET_RAW"] + ["CAP_SYS_ADMIN"]),
    ([], ["ALL"], False, []),
    (["chown"], ["all"], False, ["CAP_CHOWN"]),
    (["NET_RAW"], ["NET_RAW"], False, DEFAULT),  # an add wins over a drop
    (["ALL"], ["SYS_ADMIN"], False, [c for c in caps.CAPS if c != "CAP_SYS_ADMIN"]),
    ([], [], True, caps.CAPS),
])
def test_tweak_caps_follows_docker(add, drop, privileged, expect):
    assert sorted(security.tweak_caps(add, drop, privileged, last_cap=40, bounding=EVERY)) == sorted(expect)


def test_all_caps_are_limited_to_our_own_bounding_set():
    without_resource = EVERY & ~(1 << caps.CAP_NUMBERS["CAP_SYS_RESOURCE"])
    assert "CAP_SYS_RESOURCE" not in security.tweak_caps([], [], True, last_cap=40, bounding=without_resource)


def base_config(spec) -> dict:
    return oci.make_config(spec, {"config": {"Cmd": ["true"]}}, rootfs="/r", container_id="c" * 64,
                           hostname="h", cgroups_path="runner/c", nofile=1024)


def test_apply_default_writes_seccomp_and_keeps_masks():
    spec = ContainerSpec(image="x")
    config = security.apply(base_config(spec), spec, arch=X86)
    assert config["linux"]["seccomp"]["defaultAction"] == "SCMP_ACT_ERRNO"
    assert config["process"]["noNewPrivileges"] is True
    assert config["linux"]["maskedPaths"] and config["linux"]["readonlyPaths"]
    assert config["process"]["capabilities"]["bounding"] == DEFAULT


def test_apply_privileged_unmasks_and_drops_seccomp(monkeypatch):
    monkeypatch.setattr(security, "host_devices", lambda: [{"path": "/dev/sda", "type": "b", "major": 8,
                                                            "minor": 0, "fileMode": 0o660, "uid": 0, "gid": 6}])
    spec = ContainerSpec(image="x", privileged=True)
    config = security.apply(base_config(spec), spec, arch=X86)
    lin = config["linux"]
    assert "seccomp" not in lin and lin["maskedPaths"] == [] and lin["readonlyPaths"] == []
    assert lin["resources"]["devices"] == [{"allow": True, "access": "rwm"}]
    assert lin["devices"][0]["path"] == "/dev/sda"
    sysfs = next(m for m in config["mounts"] if m["destination"] == "/sys")
    assert "ro" not in sysfs["options"]


def test_apply_unconfined_nnp_false_and_custom_profile():
    spec = ContainerSpec(image="x", security_opt=["seccomp=unconfined", "no-new-privileges=false"])
    config = security.apply(base_config(spec), spec, arch=X86)
    assert "seccomp" not in config["linux"] and config["process"]["noNewPrivileges"] is False
    profile = {"defaultAction": "SCMP_ACT_ALLOW",
               "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13}]}
    spec = ContainerSpec(image="x", security_opt=["seccomp=" + json.dumps(profile)])
    f = security.apply(base_config(spec), spec, arch=X86)["linux"]["seccomp"]
    assert f["defaultAction"] == "SCMP_ACT_ALLOW" and f["syscalls"][0]["errnoRet"] == 13


def test_apply_device_adds_the_node_and_exactly_its_rule():
    spec = ContainerSpec(image="x", devices=["/dev/null:/dev/mynull:r"])
    config = security.apply(base_config(spec), spec, arch=X86)
    assert config["linux"]["devices"][-1] == {"path": "/dev/mynull", "type": "c", "major": 1, "minor": 3,
                                              "fileMode": config["linux"]["devices"][-1]["fileMode"],
                                              "uid": 0, "gid": 0}
    assert config["linux"]["resources"]["devices"][-1] == {"allow": True, "type": "c", "major": 1, "minor": 3,
                                                           "access": "r"}


def test_missing_or_non_device_paths_are_refused_with_dockers_text(tmp_path):
    with pytest.raises(ContainerStartError) as info:
        security.check(ContainerSpec(image="x", devices=[str(tmp_path / "nope")]))
    assert "error gathering device information while adding custom device" in info.value.message
    assert "no such file or directory" in info.value.message
    with pytest.raises(ContainerStartError):
        security.host_device(str(tmp_path))


@pytest.mark.parametrize("text, expect", [
    ("/dev/sda", ("/dev/sda", "/dev/sda", "rwm")),
    ("/dev/sda:/dev/xvda", ("/dev/sda", "/dev/xvda", "rwm")),
    ("/dev/sda:/dev/xvda:r", ("/dev/sda", "/dev/xvda", "r")),
    ("/dev/sda:rw", ("/dev/sda", "/dev/sda", "rw")),
])
def test_parse_device(text, expect):
    assert parse_device(text) == expect


def test_validate_lists_every_security_problem():
    spec = ContainerSpec(image="x", cap_add=["FOO", "ALL"], cap_drop=["chown"],
                         security_opt=["bogus", "no-new-privileges=maybe", "seccomp={x"], devices=["dev/x"])
    with pytest.raises(UsageError) as info:
        spec.validate()
    msg = info.value.message
    assert 'invalid CapAdd: unknown capability: "CAP_FOO"' in msg
    assert 'invalid --security-opt 2: "bogus"' in msg and "no-new-privileges=maybe" in msg
    assert "invalid seccomp profile" in msg and "paths must be absolute" in msg
    ok = ContainerSpec(image="x", cap_add=["sys_admin"], security_opt=["no-new-privileges", "seccomp=unconfined",
                                                                       "apparmor=unconfined"])
    assert ok.validate() is ok
    assert ContainerSpec.from_dict(ok.to_dict()).to_dict() == ok.to_dict()


def test_cli_reads_the_profile_file_and_fastrun_knows_the_flags(tmp_path):
    prof = tmp_path / "p.json"
    prof.write_text('{"defaultAction": "SCMP_ACT_ALLOW"}')
    opts = fastrun.parse_run(["--cap-add", "NET_ADMIN", "--cap-drop=ALL", "--privileged", "--device",
                              "/dev/null", "--security-opt", f"seccomp={prof}", "img", "true"])
    assert opts["cap_add"] == ["NET_ADMIN"] and opts["cap_drop"] == ["ALL"] and opts["privileged"]
    spec = runopts.build_spec(**opts)
    assert spec["security_opt"] == ['seccomp={"defaultAction": "SCMP_ACT_ALLOW"}']
    assert spec["devices"] == ["/dev/null"]
    opts["security_opt"] = [f"seccomp={tmp_path / 'missing.json'}"]
    with pytest.raises(UsageError) as info:
        runopts.build_spec(**opts)
    assert info.value.message.startswith("opening seccomp profile (") and "failed" in info.value.message


def test_inspect_host_config_shape():
    spec = ContainerSpec(image="x", cap_add=["NET_ADMIN"], devices=["/dev/null:/dev/n:r"])
    assert views.security_host_config(spec) == {
        "CapAdd": ["NET_ADMIN"], "CapDrop": None, "Privileged": False, "SecurityOpt": None,
        "Devices": [{"PathOnHost": "/dev/null", "PathInContainer": "/dev/n", "CgroupPermissions": "r"}]}


def _errno_under_filter(bpf: bytes, numbers: list[int]) -> list[int]:
    """Install ``bpf`` in a forked child (no_new_privs lets an unprivileged task do it) and return the errno
    each raw system call number gives there: the kernel's verdict on the program, without root."""
    import ctypes
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS
            prepared = seccomp.Prepared(bpf)
            prepared.install()
            libc.syscall.restype = ctypes.c_long
            out = []
            for nr in numbers:
                ctypes.set_errno(0)
                rc = libc.syscall(ctypes.c_long(nr), 0, 0, 0, 0, 0, 0)
                out.append(str(ctypes.get_errno() if rc < 0 else 0))
            os.write(w, " ".join(out).encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    os.waitpid(pid, 0)
    return [int(x) for x in data.split()]


@needs_libseccomp
def test_enosys_stub_makes_syscalls_above_the_profile_enosys_against_the_kernel():
    arch = seccomp.machine_arch()  # this machine's: the filter is installed here, in a child
    f = seccomp.to_oci(seccomp.load_default(), caps.DOCKER_DEFAULT_CAPS, arch)
    lib = seccomp._lib()
    last = seccomp.last_syscalls(lib, f, arch)[arch]
    assert 435 <= last < 1000  # clone3 (435 on x86_64 and arm64) is in the profile; nothing is numbered near 1000
    keyctl, getpid = (lib.seccomp_syscall_resolve_name(n) for n in (b"keyctl", b"getpid"))
    bpf = seccomp.compile_bpf(f, arch)
    # Above the profile's highest: ENOSYS; a known one the profile denies: EPERM; an allowed one works.
    assert _errno_under_filter(bpf, [last + 1, 1000, keyctl, getpid]) == [38, 38, 1, 0]
    # The stub is what makes the difference: libseccomp's program alone says EPERM for 1000.
    stub = seccomp.enosys_stub(lib, f, arch)
    assert bpf.startswith(stub) and _errno_under_filter(bpf[len(stub):], [1000]) == [1]


@needs_libseccomp
def test_no_enosys_stub_when_the_default_lets_calls_through_or_is_enosys_already():
    lib = seccomp._lib()
    allow = {"defaultAction": "SCMP_ACT_ALLOW", "architectures": [],
             "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_ERRNO"}]}
    assert seccomp.enosys_stub(lib, allow, X86) == b""
    enosys = {"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 38, "architectures": [],
              "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW"}]}
    assert seccomp.enosys_stub(lib, enosys, X86) == b""
    arm = seccomp.to_oci(seccomp.load_default(), caps.DOCKER_DEFAULT_CAPS, ARM)
    # 32-bit ARM's private calls (set_tls, 0xf0005) do not raise its limit: the program rules on them.
    assert seccomp.last_syscalls(lib, arm, ARM)["SCMP_ARCH_ARM"] < 0xf0000
