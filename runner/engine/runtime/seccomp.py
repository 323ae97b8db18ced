"""seccomp: Docker's profile format -> OCI ``linux.seccomp`` -> a BPF program (libseccomp) -> the kernel.

Three steps, as in Docker + runc, each usable alone:

1. ``to_oci(profile, caps, arch)`` (pure): a profile in Docker's JSON format (``archMap``, ``includes`` /
   ``excludes`` by capability, architecture and ``minKernel``) becomes the OCI ``linux.seccomp`` object for one
   container, its bounding capabilities and the machine's architecture. Docker does exactly this in the daemon,
   so ``config.json`` carries a plain OCI filter that runc applies the same way. The default profile is data
   (``seccomp_default.json``, from the facts of moby's profiles/seccomp/default.json): an allow-list with
   ERRNO(EPERM) for everything else; ``clone`` only without CLONE_NEW* flags and ``clone3`` -> ENOSYS unless
   CAP_SYS_ADMIN; ``personality`` only with the harmless personas; ``socket`` not for AF_VSOCK; mount, unshare,
   setns, bpf, keyctl-class calls ... only with the capability that makes them meaningful.
2. ``compile_bpf(oci, arch)``: libseccomp (the library runc links) through ctypes turns the OCI object into
   classic BPF (``seccomp_export_bpf``): it owns the syscall tables of every architecture and the
   multiplexed-syscall quirks (x86's socketcall/ipc), which are not worth re-deriving by hand. Results are
   cached by (filter hash, arch, libseccomp version), in memory and under ``/run/runner/seccomp``, because a
   CLI process starts one container and dies: compiling (~2-5 ms with the library load) is paid once per
   profile per boot, loading a cached program is one read.
3. ``Prepared(bpf).install()``: one ``prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER)`` in the container's init,
   the last step before execve (after no_new_privs, which is what lets an unprivileged task load a filter and
   what keeps setuid binaries from escaping it). The ctypes buffers are built before fork so the child only
   makes the system call.

A syscall name libseccomp does not know on an architecture is skipped (runc does the same), so one profile
serves kernels and architectures of different ages; and, as runc's patchbpf, a short stub before
libseccomp's program answers ENOSYS for syscall numbers above the highest the profile names (``enosys_stub``),
so a kernel newer than the profile does not turn its new calls into EPERM. Standard library only (runs in the guest, where
``libseccomp2`` is part of the image).
"""

from __future__ import annotations

import ctypes
import json
import os
import struct

from runner.errors import ContainerStartError, UsageError

DEFAULT_PROFILE_PATH = os.path.join(os.path.dirname(__file__), "seccomp_default.json")
CACHE_DIR = "/run/runner/seccomp"

# Go's GOARCH names (what Docker profiles use in includes/excludes "arches") and libseccomp's arch names.
_MACHINE_TO_SCMP = {"x86_64": "SCMP_ARCH_X86_64", "amd64": "SCMP_ARCH_X86_64", "aarch64": "SCMP_ARCH_AARCH64",
                    "arm64": "SCMP_ARCH_AARCH64", "i686": "SCMP_ARCH_X86", "armv7l": "SCMP_ARCH_ARM"}
_SCMP_TO_GOARCH = {"SCMP_ARCH_X86_64": "amd64", "SCMP_ARCH_X86": "x86", "SCMP_ARCH_X32": "x32",
                   "SCMP_ARCH_AARCH64": "arm64", "SCMP_ARCH_ARM": "arm", "SCMP_ARCH_S390X": "s390x",
                   "SCMP_ARCH_S390": "s390", "SCMP_ARCH_PPC64LE": "ppc64le", "SCMP_ARCH_RISCV64": "riscv64"}

ACTIONS = {"SCMP_ACT_KILL": 0x00000000, "SCMP_ACT_KILL_THREAD": 0x00000000, "SCMP_ACT_KILL_PROCESS": 0x80000000,
           "SCMP_ACT_TRAP": 0x00030000, "SCMP_ACT_ERRNO": 0x00050000, "SCMP_ACT_TRACE": 0x7ff00000,
           "SCMP_ACT_LOG": 0x7ffc0000, "SCMP_ACT_ALLOW": 0x7fff0000}
OPS = {"SCMP_CMP_NE": 1, "SCMP_CMP_LT": 2, "SCMP_CMP_LE": 3, "SCMP_CMP_EQ": 4, "SCMP_CMP_GE": 5,
       "SCMP_CMP_GT": 6, "SCMP_CMP_MASKED_EQ": 7}
_EPERM, _ENOSYS = 1, 38

PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 22, 2


def machine_arch(machine: str | None = None) -> str:
    """This machine's (or ``machine``'s, a uname -m value) native SCMP_ARCH_* name."""
    m = machine or os.uname().machine
    try:
        return _MACHINE_TO_SCMP[m]
    except KeyError as exc:
        raise ContainerStartError(f"seccomp: architecture {m} is not supported",
                                  hint="use --security-opt seccomp=unconfined") from exc


# ------------------------------------------------------------------------------------ profiles (pure)

def load_default() -> dict:
    with open(DEFAULT_PROFILE_PATH) as f:
        return json.load(f)


def parse_profile(text: str, source: str = "seccomp profile") -> dict:
    """A Docker (or OCI) seccomp profile from JSON text, checked; UsageError names what is wrong."""
    try:
        prof = json.loads(text)
    except ValueError as exc:
        raise UsageError(f"invalid {source}: {exc}", hint="the profile must be JSON in Docker's seccomp format") from exc
    problems = profile_problems(prof)
    if problems:
        raise UsageError(f"invalid {source}: {'; '.join(problems[:5])}",
                         hint="see Docker's seccomp profile format (defaultAction, syscalls[].names, action)")
    return prof


def profile_problems(prof) -> list[str]:
    """Everything wrong with a profile's structure (empty list: usable)."""
    if not isinstance(prof, dict):
        return ["the profile must be a JSON object"]
    out = []
    if prof.get("defaultAction") not in ACTIONS:
        out.append(f"unknown defaultAction {prof.get('defaultAction')!r}")
    for i, call in enumerate(prof.get("syscalls") or []):
        if not isinstance(call, dict):
            out.append(f"syscalls[{i}] is not an object")
            continue
        names = call.get("names") or ([call["name"]] if call.get("name") else [])
        if not names or not all(isinstance(n, str) for n in names):
            out.append(f"syscalls[{i}] has no names")
        if call.get("action") not in ACTIONS:
            out.append(f"syscalls[{i}]: unknown action {call.get('action')!r}")
        for a in call.get("args") or []:
            if not isinstance(a, dict) or a.get("op") not in OPS or not isinstance(a.get("index"), int) \
                    or not 0 <= a["index"] <= 5:
                out.append(f"syscalls[{i}]: bad argument rule {a!r}")
    for a in prof.get("architectures") or []:
        if a not in _SCMP_TO_GOARCH:
            out.append(f"unknown architecture {a!r}")
    return out


def _kernel_at_least(version: str, release: str | None = None) -> bool:
    def nums(text: str) -> tuple[int, ...]:
        out = []
        for part in text.split("-")[0].split(".")[:2]:
            digits = "".join(c for c in part if c.isdigit())
            out.append(int(digits or 0))
        return tuple(out)
    return nums(release or os.uname().release) >= nums(version)


def to_oci(profile: dict, caps: list[str], arch: str, kernel: str | None = None) -> dict:
    """Docker's profile -> OCI ``linux.seccomp`` for a container with bounding set ``caps`` on ``arch``.

    Docker's rules: the native arch plus its ``archMap`` sub-architectures (or the profile's flat
    ``architectures``); a rule is kept when every ``includes.caps`` is in the bounding set, ``includes.arches``
    names the arch, the kernel is at least ``includes.minKernel``, and no ``excludes`` cap/arch matches.
    """
    goarch = _SCMP_TO_GOARCH.get(arch, arch)
    arches = list(profile.get("architectures") or [])
    for entry in profile.get("archMap") or []:
        if entry.get("architecture") == arch:
            arches = [arch] + list(entry.get("subArchitectures") or [])
    capset = set(caps)
    syscalls = []
    for call in profile.get("syscalls") or []:
        inc, exc = call.get("includes") or {}, call.get("excludes") or {}
        if goarch in (exc.get("arches") or []) or capset & set(exc.get("caps") or []):
            continue
        if inc.get("arches") and goarch not in inc["arches"]:
            continue
        if not set(inc.get("caps") or []) <= capset:
            continue
        if inc.get("minKernel") and not _kernel_at_least(inc["minKernel"], kernel):
            continue
        rule = {"names": list(call.get("names") or [call.get("name")]), "action": call["action"]}
        if call.get("errnoRet") is not None:
            rule["errnoRet"] = int(call["errnoRet"])
        if call.get("args"):
            rule["args"] = [{"index": a["index"], "value": int(a.get("value") or 0),
                             "valueTwo": int(a.get("valueTwo") or 0), "op": a["op"]} for a in call["args"]]
        syscalls.append(rule)
    out = {"defaultAction": profile["defaultAction"], "architectures": arches, "syscalls": syscalls}
    if profile.get("defaultErrnoRet") is not None:
        out["defaultErrnoRet"] = int(profile["defaultErrnoRet"])
    return out


def _action(name: str, errno_ret) -> int:
    value = ACTIONS[name]
    if name == "SCMP_ACT_ERRNO":
        value |= int(_EPERM if errno_ret is None else errno_ret) & 0xffff
    return value


# ------------------------------------------------------------------------------------ libseccomp (ctypes)

class _ArgCmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("datum_a", ctypes.c_uint64),
                ("datum_b", ctypes.c_uint64)]


_LIB = None


def _lib():
    """libseccomp.so.2, loaded on first use (a cached program needs no library at all)."""
    global _LIB
    if _LIB is None:
        try:
            lib = ctypes.CDLL("libseccomp.so.2", use_errno=True)
        except OSError as exc:
            raise ContainerStartError("seccomp: libseccomp.so.2 is not installed",
                                      hint="install libseccomp2, or use --security-opt seccomp=unconfined") from exc
        lib.seccomp_init.restype = ctypes.c_void_p
        lib.seccomp_init.argtypes = (ctypes.c_uint32,)
        lib.seccomp_release.argtypes = (ctypes.c_void_p,)
        lib.seccomp_arch_resolve_name.restype = ctypes.c_uint32
        lib.seccomp_arch_resolve_name.argtypes = (ctypes.c_char_p,)
        lib.seccomp_arch_native.restype = ctypes.c_uint32
        for fn in ("seccomp_arch_add", "seccomp_arch_remove"):
            getattr(lib, fn).argtypes = (ctypes.c_void_p, ctypes.c_uint32)
        lib.seccomp_syscall_resolve_name.argtypes = (ctypes.c_char_p,)
        lib.seccomp_syscall_resolve_name_arch.argtypes = (ctypes.c_uint32, ctypes.c_char_p)
        lib.seccomp_rule_add_array.argtypes = (ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint,
                                               ctypes.POINTER(_ArgCmp))
        lib.seccomp_export_bpf.argtypes = (ctypes.c_void_p, ctypes.c_int)
        lib.seccomp_attr_set.argtypes = (ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32)
        _LIB = lib
    return _LIB


def library_version() -> str:
    try:
        lib = _lib()
        lib.seccomp_version.restype = ctypes.POINTER(ctypes.c_uint * 3)
        v = lib.seccomp_version().contents
        return f"{v[0]}.{v[1]}.{v[2]}"
    except (AttributeError, ContainerStartError):
        return "unknown"


def _arch_token(lib, name: str) -> int:
    tok = lib.seccomp_arch_resolve_name(name[len("SCMP_ARCH_"):].lower().encode())
    if not tok:
        raise ContainerStartError(f"seccomp: libseccomp does not know the architecture {name}")
    return tok


def _rules_for(call: dict) -> list[list[_ArgCmp]]:
    """Conditions of one OCI rule as libseccomp rules: one rule when every argument index differs, else one
    rule per condition (libseccomp can not AND two conditions on the same argument; runc does the same)."""
    args = call.get("args") or []
    conds = [_ArgCmp(int(a["index"]), OPS[a["op"]], int(a.get("value") or 0) & (2 ** 64 - 1),
                     int(a.get("valueTwo") or 0) & (2 ** 64 - 1)) for a in args]
    if len({a["index"] for a in args}) == len(args):
        return [conds]
    return [[c] for c in conds]


def compile_bpf(oci: dict, arch: str) -> bytes:
    """The OCI filter as the classic BPF program the kernel takes (struct sock_filter[]), for ``arch``."""
    lib = _lib()
    problems = profile_problems(oci)
    if problems:
        raise ContainerStartError(f"invalid seccomp filter: {'; '.join(problems[:5])}")
    default = _action(oci["defaultAction"], oci.get("defaultErrnoRet"))
    ctx = lib.seccomp_init(default)
    if not ctx:
        raise ContainerStartError("seccomp: seccomp_init failed")
    try:
        main = _arch_token(lib, arch)
        # A filter starts with the native arch; build for exactly the asked ones (cross-arch builds too).
        native = lib.seccomp_arch_native()
        if lib.seccomp_arch_add(ctx, main) not in (0, -17):  # -EEXIST: it is the native one
            raise ContainerStartError(f"seccomp: cannot add architecture {arch}")
        for extra in oci.get("architectures") or []:
            if extra != arch and lib.seccomp_arch_add(ctx, _arch_token(lib, extra)) not in (0, -17):
                raise ContainerStartError(f"seccomp: cannot add architecture {extra}")
        if native != main and native not in [_arch_token(lib, a) for a in oci.get("architectures") or []]:
            lib.seccomp_arch_remove(ctx, native)
        for call in oci.get("syscalls") or []:
            action = _action(call["action"], call.get("errnoRet"))
            if action == default:
                continue  # libseccomp refuses a rule that repeats the default action (runc skips it too)
            for name in call.get("names") or []:
                # The native arch's number (or libseccomp's pseudo number for a syscall it lacks): libseccomp
                # translates it by name to every arch of the filter, as it does for runc.
                nr = lib.seccomp_syscall_resolve_name(name.encode())
                if nr == -1:  # __NR_SCMP_ERROR: unknown to this libseccomp; skip, as runc does
                    continue
                for conds in _rules_for(call):
                    arr = (_ArgCmp * max(1, len(conds)))(*conds)
                    rc = lib.seccomp_rule_add_array(ctx, action, nr, len(conds), arr)
                    if rc < 0:
                        raise ContainerStartError(f"seccomp: cannot add a rule for {name}: {os.strerror(-rc)}")
        return enosys_stub(lib, oci, arch) + _export(lib, ctx)
    finally:
        lib.seccomp_release(ctx)


def _export(lib, ctx) -> bytes:
    fd = os.memfd_create("seccomp-bpf", os.MFD_CLOEXEC)
    try:
        rc = lib.seccomp_export_bpf(ctx, fd)
        if rc < 0:
            raise ContainerStartError(f"seccomp: exporting the filter failed: {os.strerror(-rc)}")
        os.lseek(fd, 0, os.SEEK_SET)
        chunks = []
        while b := os.read(fd, 1 << 16):
            chunks.append(b)
        return b"".join(chunks)
    finally:
        os.close(fd)


# ------------------------------------------------------------------------------------ the ENOSYS stub

_X32_BIT = 0x40000000
_ARM_PRIVATE = 0x0f0000  # __ARM_NR_BASE: 32-bit ARM's own calls live far above the table's end
_SOCK_FILTER = struct.Struct("=HBBI")  # struct sock_filter: code, jt, jf, k (host byte order, as the kernel)
_LD_ABS, _JEQ, _JGT, _JGE, _JSET, _RET = 0x20, 0x15, 0x25, 0x35, 0x45, 0x06  # BPF_LD|W|ABS, BPF_JMP|J*|K, RET|K


def last_syscalls(lib, oci: dict, arch: str) -> dict[str, int]:
    """The highest syscall number the filter names, per architecture of the filter (SCMP_ARCH_* -> nr);
    libseccomp's x32 numbers carry the x32 bit. Names an architecture lacks, and the negative pseudo numbers
    of multiplexed calls (x86's socketcall family), do not count."""
    out = {}
    for name in dict.fromkeys([arch] + list(oci.get("architectures") or [])):
        token = _arch_token(lib, name)
        nrs = [lib.seccomp_syscall_resolve_name_arch(token, n.encode())
               for call in oci.get("syscalls") or [] for n in call.get("names") or []]
        nrs = [nr for nr in nrs if nr >= 0 and not (name == "SCMP_ARCH_ARM" and nr >= _ARM_PRIVATE)]
        if nrs:
            out[name] = max(nrs)
    return out


def enosys_stub(lib, oci: dict, arch: str) -> bytes:
    """Classic BPF put before libseccomp's program: a syscall numbered above every one the profile names
    returns ENOSYS instead of the default action's EPERM. Why, as runc's patchbpf: a syscall newer than the
    profile (added to the kernel after the profile was written) must look *unimplemented*, so that libc and
    programs fall back to the older call (glibc's clone3 -> clone, statx -> fstatat, ...); EPERM would look
    like a refusal and break them. Syscalls the profile knows, and unknown ones below its highest, keep the
    default action. Not added when the default action lets calls through, or already returns ENOSYS.

    Layout, per architecture of the filter (jumps are relative, forward only)::

        ld  [4]                      ; seccomp_data.arch
        jeq AUDIT_ARCH, 0, <next arch>
        ld  [0]                      ; seccomp_data.nr
        (x86_64: jset X32_BIT, <x32 check or the program>, 0; arm: jge ARM_PRIVATE, <the program>, 0)
        jgt LAST, <ret ENOSYS>, <the program>
        ...
        ret ERRNO(ENOSYS)
        <libseccomp's program, unchanged: it loads what it needs itself>
    """
    if oci["defaultAction"] in ("SCMP_ACT_ALLOW", "SCMP_ACT_LOG") or \
            (oci["defaultAction"] == "SCMP_ACT_ERRNO" and oci.get("defaultErrnoRet") == _ENOSYS):
        return b""
    last = last_syscalls(lib, oci, arch)
    x32 = last.pop("SCMP_ARCH_X32", None)  # x32 calls arrive as AUDIT_ARCH_X86_64 with the x32 bit set
    blocks = []  # per arch: instructions with symbolic targets "prog" / "enosys" / "next"
    for name, top in last.items():
        block = [(_LD_ABS, "", "", 4), (_JEQ, 0, "next", _arch_token(lib, name)), (_LD_ABS, "", "", 0)]
        if name == "SCMP_ARCH_X86_64":
            # With x32 in the filter its calls get their own limit; without, libseccomp's program rules on them.
            block.append((_JSET, 1 if x32 is not None else "prog", 0, _X32_BIT))
            block.append((_JGT, "enosys", "prog", top))
            if x32 is not None:
                block.append((_JGT, "enosys", "prog", x32))
        else:
            if name == "SCMP_ARCH_ARM":  # ARM's private calls (set_tls, cacheflush ...): the program rules
                block.append((_JGE, "prog", 0, _ARM_PRIVATE))
            block.append((_JGT, "enosys", "prog", top))
        blocks.append(block)
    if not blocks:
        return b""
    size = sum(len(b) for b in blocks) + 1
    out, pos = [], 0
    for n, block in enumerate(blocks):
        nxt = pos + len(block) if n + 1 < len(blocks) else size  # after the last arch: the program
        for i, (code, jt, jf, k) in enumerate(block):
            here = pos + i + 1  # jumps count from the next instruction
            def target(t):
                if isinstance(t, int):
                    return t
                return {"prog": size, "enosys": size - 1, "next": nxt}[t] - here if t else 0
            out.append(_SOCK_FILTER.pack(code, target(jt), target(jf), k))
        pos = nxt
    out.append(_SOCK_FILTER.pack(_RET, 0, 0, ACTIONS["SCMP_ACT_ERRNO"] | _ENOSYS))
    return b"".join(out)


_MEMO: dict[str, bytes] = {}
# Part of the cache key: a program cached by an older runner (e.g. without the ENOSYS stub) is not reused.
_PROGRAM_FORMAT = b"enosys-stub-1"


def _sha256_hex(data: bytes) -> str:
    """SHA-256 without ``hashlib``, whose import loads OpenSSL: ~2.5 ms on every container start, measured
    (scripts/bench-start). CPython's own built-in SHA-256 module is the same function; hashlib only where an
    interpreter lacks it."""
    try:
        from _sha2 import sha256  # Python 3.12+
    except ImportError:
        try:
            from _sha256 import sha256  # Python 3.10, 3.11
        except ImportError:
            from hashlib import sha256
    return sha256(data).hexdigest()


def cached_bpf(oci: dict, arch: str | None = None, cache_dir: str | None = CACHE_DIR) -> bytes:
    """``compile_bpf`` through the memory and disk caches (see the module docstring)."""
    arch = arch or machine_arch()
    raw = json.dumps(oci, sort_keys=True, separators=(",", ":")).encode()
    key = _sha256_hex(raw + b"\0" + arch.encode() + b"\0" + _PROGRAM_FORMAT)
    if key in _MEMO:
        return _MEMO[key]
    path = os.path.join(cache_dir, key + ".bpf") if cache_dir else None
    if path:
        try:
            with open(path, "rb") as f:
                bpf = f.read()
            if bpf and len(bpf) % 8 == 0:
                _MEMO[key] = bpf
                return bpf
        except OSError:
            pass
    bpf = compile_bpf(oci, arch)
    _MEMO[key] = bpf
    if path:
        try:
            os.makedirs(cache_dir, 0o700, exist_ok=True)
            tmp = f"{path}.{os.getpid()}.tmp"
            with open(tmp, "wb") as f:
                f.write(bpf)
            os.rename(tmp, path)  # atomic: a reader sees a whole program or none
        except OSError:
            pass  # a read-only /run only costs the next start a compile
    return bpf


# ------------------------------------------------------------------------------------ installing

class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


class Prepared:
    """A compiled filter with its ctypes buffers made before fork: ``install`` is one system call."""

    def __init__(self, bpf: bytes):
        if not bpf or len(bpf) % 8:
            raise ContainerStartError("seccomp: empty or malformed BPF program")
        self._buf = ctypes.create_string_buffer(bpf, len(bpf))
        self._prog = _SockFprog(len(bpf) // 8, ctypes.addressof(self._buf))

    def install(self) -> None:
        from runner.engine.runtime import linux
        # prctl, not seccomp(2): same effect, and prctl is already wrapped; the filter applies to this
        # (single-threaded) task and everything it execs or forks, and can never be removed.
        linux.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(self._prog))


def prepare(oci: dict | None) -> Prepared | None:
    """The filter of a config's ``linux.seccomp`` ready to install, or None when there is none."""
    if not oci:
        return None
    return Prepared(cached_bpf(oci))
