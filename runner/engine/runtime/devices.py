"""The cgroup v2 device filter: OCI ``linux.resources.devices`` rules -> an eBPF program on the cgroup.

cgroup v2 has no devices.allow/deny files; the kernel asks a BPF_PROG_TYPE_CGROUP_DEVICE program attached to
the cgroup (and its ancestors) on every open and mknod of a device node. Without one, a container with
CAP_MKNOD can make a node for the host's disk and read it. runc's libcontainer/cgroups/devicefilter is the
reference design, followed here:

* ``program(rules)`` (pure) emits eBPF instructions. The context is ``struct bpf_cgroup_dev_ctx``
  ``{u32 access_type; u32 major; u32 minor}`` with ``access_type = access << 16 | type``. The prologue loads
  type, access, major and minor into r2..r5; then one block per rule, *last rule first* (in OCI, as in the v1
  files, a later rule overrides an earlier one), each block jumping to the next on a mismatch and otherwise
  returning 1 (allow) or 0 (deny). A rule matching every device ends the program; if none does, the
  program denies.
* ``apply(cgroup_dir, rules)`` loads the program with ``bpf(BPF_PROG_LOAD)`` and attaches it to the cgroup
  with ``BPF_PROG_ATTACH`` (``BPF_CGROUP_DEVICE``, ``BPF_F_ALLOW_MULTI``), then detaches any program that was
  there before: on an update the new rules are in force before the old ones go, so there is no moment with
  no filter at all. The attachment holds the program; our fd is closed.

Natively on a host whose cgroup is v1 the v1 devices files keep doing this job (runner.engine.runtime.cgroups);
this module is for v2 (the VM guest, v2-only hosts). It needs no controller: a program attaches to any v2
cgroup. Standard library only (ctypes), so it runs in the guest.
"""

from __future__ import annotations

import ctypes
import os
import struct

from runner.errors import ContainerStartError

# bpf(2) commands, program and attach types, flags (linux/bpf.h).
BPF_PROG_LOAD, BPF_PROG_ATTACH, BPF_PROG_DETACH, BPF_PROG_GET_FD_BY_ID, BPF_PROG_QUERY = 5, 8, 9, 13, 16
BPF_PROG_TYPE_CGROUP_DEVICE = 15
BPF_CGROUP_DEVICE = 6
BPF_F_ALLOW_MULTI = 2
_NR_BPF = {"x86_64": 321, "aarch64": 280}

# bpf_cgroup_dev_ctx values (linux/bpf.h): device types and access bits.
DEV_BLOCK, DEV_CHAR = 1, 2
ACC_MKNOD, ACC_READ, ACC_WRITE = 1, 2, 4
_TYPES = {"b": DEV_BLOCK, "c": DEV_CHAR}
_ACCESS = {"m": ACC_MKNOD, "r": ACC_READ, "w": ACC_WRITE}

# eBPF opcodes used (class | op | source).
_LDXW = 0x61        # BPF_LDX | BPF_MEM | BPF_W: dst = *(u32 *)(src + off)
_AND32_K = 0x54     # BPF_ALU | BPF_AND | BPF_K
_RSH32_K = 0x74     # BPF_ALU | BPF_RSH | BPF_K
_MOV32_K = 0xb4     # BPF_ALU | BPF_MOV | BPF_K
_MOV32_X = 0xbc     # BPF_ALU | BPF_MOV | BPF_X
_JNE_K = 0x55       # BPF_JMP | BPF_JNE | BPF_K: if dst != imm goto pc + 1 + off
_JNE_X = 0x5d       # BPF_JMP | BPF_JNE | BPF_X
_EXIT = 0x95        # BPF_JMP | BPF_EXIT: return r0


def _insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    """One ``struct bpf_insn``: u8 code, u4 dst_reg | u4 src_reg << 4, s16 off, s32 imm (little endian)."""
    return struct.pack("<BBhi", code, (src << 4) | dst, off, imm)


_PROLOGUE = (
    _insn(_LDXW, dst=2, src=1, off=0), _insn(_AND32_K, dst=2, imm=0xFFFF),   # r2 = type
    _insn(_LDXW, dst=3, src=1, off=0), _insn(_RSH32_K, dst=3, imm=16),       # r3 = access
    _insn(_LDXW, dst=4, src=1, off=4),                                       # r4 = major
    _insn(_LDXW, dst=5, src=1, off=8),                                       # r5 = minor
)


def _wild(value) -> bool:
    return value is None or value == -1


def _block(rule: dict) -> tuple[list[bytes], bool]:
    """One rule as ``(instructions, matches_everything)``; every mismatch jumps past the block's end."""
    typ = rule.get("type") or "a"
    access = rule.get("access") or "rwm"
    bits = 0
    for ch in access:
        if ch not in _ACCESS:
            raise ContainerStartError(f"invalid device access {access!r}: use r, w and m")
        bits |= _ACCESS[ch]
    if typ not in ("a", "b", "c"):
        raise ContainerStartError(f"invalid device type {typ!r}: use a, b or c")
    checks: list[tuple] = []  # (code, dst, src, imm) of the jump-on-mismatch tests
    if typ != "a":
        checks.append((_JNE_K, 2, 0, _TYPES[typ]))
    pre: list[int] = []  # positions of checks preceded by the access masking
    if bits != ACC_MKNOD | ACC_READ | ACC_WRITE:
        pre.append(len(checks))
        checks.append((_JNE_X, 1, 3, 0))   # (access & allowed) != access -> mismatch
    if not _wild(rule.get("major")):
        checks.append((_JNE_K, 4, 0, int(rule["major"])))
    if not _wild(rule.get("minor")):
        checks.append((_JNE_K, 5, 0, int(rule["minor"])))
    tail = [_insn(_MOV32_K, dst=0, imm=1 if rule.get("allow") else 0), _insn(_EXIT)]
    size = sum(3 if i in pre else 1 for i in range(len(checks))) + len(tail)
    out: list[bytes] = []
    for i, (code, dst, src, imm) in enumerate(checks):
        if i in pre:
            out += [_insn(_MOV32_X, dst=1, src=3), _insn(_AND32_K, dst=1, imm=bits)]
        jump_from = len(out) + 1
        out.append(_insn(code, dst=dst, src=src, off=size - jump_from, imm=imm))
    return out + tail, not checks


def program(rules: list[dict]) -> bytes:
    """The eBPF program for OCI device rules (see the module docstring); deny when nothing matches."""
    out = list(_PROLOGUE)
    for rule in reversed(rules or []):
        block, catch_all = _block(rule)
        out += block
        if catch_all:
            return b"".join(out)  # earlier rules can never be reached
    out += [_insn(_MOV32_K, dst=0, imm=0), _insn(_EXIT)]
    return b"".join(out)


# ------------------------------------------------------------------------------------------- bpf(2)

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def _bpf(cmd: int, attr: ctypes.Array) -> int:
    nr = _NR_BPF.get(os.uname().machine)
    if nr is None:
        raise ContainerStartError(f"device filter: bpf(2) number unknown for {os.uname().machine}")
    ret = _libc.syscall(ctypes.c_long(nr), ctypes.c_int(cmd), attr, ctypes.c_uint(len(attr)))
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return ret


def load(prog: bytes) -> int:
    """BPF_PROG_LOAD a CGROUP_DEVICE program; returns its fd. The verifier log is returned in the error."""
    insns = ctypes.create_string_buffer(prog, len(prog))
    license_ = ctypes.create_string_buffer(b"Apache")
    log = ctypes.create_string_buffer(16384)
    # union bpf_attr, BPF_PROG_LOAD part: prog_type, insn_cnt, insns, license, log_level, log_size, log_buf,
    # kern_version, prog_flags, prog_name[16], prog_ifindex, expected_attach_type.
    def attr(log_level: int) -> ctypes.Array:
        return ctypes.create_string_buffer(struct.pack(
            "<IIQQIIQII16sII", BPF_PROG_TYPE_CGROUP_DEVICE, len(prog) // 8, ctypes.addressof(insns),
            ctypes.addressof(license_), log_level, len(log) if log_level else 0,
            ctypes.addressof(log) if log_level else 0, 0, 0, b"runner_devices", 0, BPF_CGROUP_DEVICE), 128)
    try:
        return _bpf(BPF_PROG_LOAD, attr(0))  # no verifier log: it costs a millisecond on every start
    except OSError:
        pass
    try:
        return _bpf(BPF_PROG_LOAD, attr(1))  # again, only to tell the user why
    except OSError as exc:
        detail = log.value.decode(errors="replace").strip().splitlines()[-1:] or [""]
        raise ContainerStartError(f"cannot load the device filter: {exc.strerror} {detail[0]}".strip(),
                                  hint="the kernel needs CONFIG_CGROUP_BPF and runner needs CAP_SYS_ADMIN") from exc


def attached(cgroup_fd: int) -> list[int]:
    """Ids of the device programs attached directly to a cgroup (BPF_PROG_QUERY)."""
    ids = (ctypes.c_uint32 * 64)()
    # query: target_fd, attach_type, query_flags, attach_flags, prog_ids (u64 pointer), prog_cnt.
    attr = ctypes.create_string_buffer(struct.pack("<IIIIQI", cgroup_fd, BPF_CGROUP_DEVICE, 0, 0,
                                                   ctypes.addressof(ids), 64), 128)
    _bpf(BPF_PROG_QUERY, attr)
    count = struct.unpack_from("<I", attr.raw, 24)[0]
    return list(ids[:count])


def apply(cgroup_dir: str, rules: list[dict]) -> None:
    """Attach the filter for ``rules`` to a v2 cgroup directory, replacing any earlier program of ours."""
    prog_fd = load(program(rules))
    cg_fd = os.open(cgroup_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        try:
            old = attached(cg_fd)
        except OSError:
            old = []
        try:
            _bpf(BPF_PROG_ATTACH, ctypes.create_string_buffer(
                struct.pack("<IIII", cg_fd, prog_fd, BPF_CGROUP_DEVICE, BPF_F_ALLOW_MULTI), 64))
        except OSError as exc:
            raise ContainerStartError(f"cannot attach the device filter to {cgroup_dir}: {exc.strerror}") from exc
        for prog_id in old:
            # Only after the new program is in force: there is never a moment without a filter.
            try:
                old_fd = _bpf(BPF_PROG_GET_FD_BY_ID, ctypes.create_string_buffer(struct.pack("<I", prog_id), 64))
            except OSError:
                continue  # gone meanwhile
            try:
                _bpf(BPF_PROG_DETACH, ctypes.create_string_buffer(
                    struct.pack("<IIII", cg_fd, old_fd, BPF_CGROUP_DEVICE, 0), 64))
            except OSError:
                pass
            finally:
                os.close(old_fd)
    finally:
        os.close(cg_fd)
        os.close(prog_fd)
