"""Thin ctypes wrappers for the Linux system calls the runtime needs and Python 3.11 lacks.

Python 3.11 has no ``os.unshare``/``os.setns`` (3.12 added them) and never had mount, pivot_root, prctl or
capset, so they are reached through libc with ``use_errno=True``. Every wrapper raises ``OSError`` with the real
errno and the call's name, so a failure in the container's child process can be reported exactly ("mount
/proc: Operation not permitted") instead of as a bare -1.

Why libc and not raw ``syscall(2)`` everywhere: glibc already exports unshare, setns, mount, umount2,
sethostname, prctl, capget, capset and close_range with stable ABIs on every architecture; only pivot_root has
no wrapper, so it goes through ``syscall()`` with a per-architecture number (the guest on Apple Silicon is
arm64). Nothing here allocates threads or takes Python-level locks, so the wrappers are safe to call in a child
forked from a multi-threaded process, between ``fork`` and ``execve``.

Standard library only: this module runs inside the VM guest.
"""

from __future__ import annotations

import ctypes
import os

# --- namespace flags (linux/sched.h) ---
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

NS_FLAGS = {
    "mount": CLONE_NEWNS, "uts": CLONE_NEWUTS, "ipc": CLONE_NEWIPC, "user": CLONE_NEWUSER,
    "pid": CLONE_NEWPID, "network": CLONE_NEWNET, "cgroup": CLONE_NEWCGROUP,
}
"""OCI namespace type -> clone flag."""

NS_PROC_NAMES = {
    "mount": "mnt", "uts": "uts", "ipc": "ipc", "user": "user", "pid": "pid", "network": "net",
    "cgroup": "cgroup",
}
"""OCI namespace type -> name of its link in /proc/<pid>/ns/."""

# --- mount flags (linux/mount.h) ---
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_SYNCHRONOUS = 16
MS_REMOUNT = 32
MS_MANDLOCK = 64
MS_DIRSYNC = 128
MS_NOSYMFOLLOW = 256
MS_NOATIME = 1024
MS_NODIRATIME = 2048
MS_BIND = 4096
MS_MOVE = 8192
MS_REC = 16384
MS_SILENT = 32768
MS_UNBINDABLE = 1 << 17
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MS_SHARED = 1 << 20
MS_RELATIME = 1 << 21
MS_STRICTATIME = 1 << 24
MS_LAZYTIME = 1 << 25

MNT_DETACH = 2
UMOUNT_NOFOLLOW = 8

# --- prctl (linux/prctl.h) ---
PR_SET_PDEATHSIG = 1
PR_SET_KEEPCAPS = 8
PR_CAPBSET_READ = 23
PR_CAPBSET_DROP = 24
PR_SET_CHILD_SUBREAPER = 36
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_RAISE = 2
PR_CAP_AMBIENT_CLEAR_ALL = 4

CLOSE_RANGE_CLOEXEC = 1 << 2

_LINUX_CAPABILITY_VERSION_3 = 0x20080522

_PIVOT_ROOT_NR = {"x86_64": 155, "amd64": 155, "aarch64": 41, "arm64": 41, "riscv64": 41}

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p)
_libc.umount2.argtypes = (ctypes.c_char_p, ctypes.c_int)
_libc.unshare.argtypes = (ctypes.c_int,)
_libc.setns.argtypes = (ctypes.c_int, ctypes.c_int)
_libc.sethostname.argtypes = (ctypes.c_char_p, ctypes.c_size_t)
_libc.prctl.argtypes = (ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong)
_libc.syscall.restype = ctypes.c_long


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


_libc.capget.argtypes = (ctypes.POINTER(_CapHeader), ctypes.POINTER(_CapData))
_libc.capset.argtypes = (ctypes.POINTER(_CapHeader), ctypes.POINTER(_CapData))


def _check(result: int, what: str) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return result


def _b(path: str | bytes | None) -> bytes | None:
    if path is None or isinstance(path, bytes):
        return path
    return os.fsencode(path)


def unshare(flags: int) -> None:
    _check(_libc.unshare(flags), "unshare")


def setns(fd: int, nstype: int = 0) -> None:
    _check(_libc.setns(fd, nstype), "setns")


def mount(source: str | None, target: str, fstype: str | None, flags: int = 0, data: str | None = None) -> None:
    if _libc.mount(_b(source), _b(target), _b(fstype), flags, _b(data)) < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount: {os.strerror(err)}")


def umount2(target: str, flags: int = 0) -> None:
    if _libc.umount2(_b(target), flags) < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"umount: {os.strerror(err)}")


def pivot_root(new_root: str, put_old: str) -> None:
    machine = os.uname().machine
    nr = _PIVOT_ROOT_NR.get(machine.lower())
    if nr is None:
        raise OSError(38, f"pivot_root: unsupported architecture {machine}")
    if _libc.syscall(ctypes.c_long(nr), ctypes.c_char_p(_b(new_root)), ctypes.c_char_p(_b(put_old))) < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"pivot_root: {os.strerror(err)}")


def sethostname(name: str) -> None:
    raw = name.encode()
    _check(_libc.sethostname(raw, len(raw)), "sethostname")


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    return _check(_libc.prctl(option, arg2, arg3, arg4, arg5), f"prctl({option})")


def close_range_cloexec(first: int) -> bool:
    """Mark every fd >= first close-on-exec in one call (kernel 5.11+); False when unsupported."""
    fn = getattr(_libc, "close_range", None)
    if fn is None:
        return False
    fn.argtypes = (ctypes.c_uint, ctypes.c_uint, ctypes.c_int)
    return fn(first, 0xFFFFFFFF, CLOSE_RANGE_CLOEXEC) == 0


def capget(pid: int = 0) -> tuple[int, int, int]:
    """Return (effective, permitted, inheritable) as 64-bit masks."""
    hdr = _CapHeader(_LINUX_CAPABILITY_VERSION_3, pid)
    data = (_CapData * 2)()
    _check(_libc.capget(ctypes.byref(hdr), data), "capget")
    return tuple(data[0].__getattribute__(f) | (data[1].__getattribute__(f) << 32)
                 for f in ("effective", "permitted", "inheritable"))  # type: ignore[return-value]


def capset(effective: int, permitted: int, inheritable: int) -> None:
    hdr = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    for i in (0, 1):
        shift = 32 * i
        data[i].effective = (effective >> shift) & 0xFFFFFFFF
        data[i].permitted = (permitted >> shift) & 0xFFFFFFFF
        data[i].inheritable = (inheritable >> shift) & 0xFFFFFFFF
    _check(_libc.capset(ctypes.byref(hdr), data), "capset")


# --- signals, network, terminal ---
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1
TIOCSCTTY = 0x540E

_libc.signal.restype = ctypes.c_void_p
_libc.signal.argtypes = (ctypes.c_int, ctypes.c_void_p)
_libc.socket.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int)
_libc.ioctl.argtypes = (ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p)


def reset_signal_dispositions() -> None:
    """Set every catchable signal to SIG_DFL at the C level.

    An ignored signal stays ignored across execve: Python ignores SIGPIPE and SIGXFSZ, so without this a
    container's ``yes | head`` would never see SIGPIPE. Done with libc's signal() rather than the signal module,
    which refuses to run outside the main thread.
    """
    for sig in range(1, 65):
        if sig in (9, 19, 32, 33):  # SIGKILL, SIGSTOP and glibc's two internal real-time signals
            continue
        _libc.signal(sig, None)


def interface_up(name: str = "lo") -> None:
    """ioctl(SIOCSIFFLAGS) the interface up; the container has no `ip` binary and we want no helper."""
    fd = _libc.socket(2, 2 | 0o2000000, 0)  # AF_INET, SOCK_DGRAM|SOCK_CLOEXEC
    if fd < 0:
        _check(fd, "socket")
    try:
        ifr = ctypes.create_string_buffer(40)  # struct ifreq: char name[16]; short flags; padding
        ifr[:len(name)] = name.encode()
        _check(_libc.ioctl(fd, SIOCGIFFLAGS, ifr), f"SIOCGIFFLAGS {name}")
        flags = int.from_bytes(ifr.raw[16:18], "little") | IFF_UP
        ifr[16:18] = flags.to_bytes(2, "little")
        _check(_libc.ioctl(fd, SIOCSIFFLAGS, ifr), f"SIOCSIFFLAGS {name}")
    finally:
        os.close(fd)


# <asm-generic/ioctls.h>, the same on x86_64 and arm64: _IOR('T', 0x30, unsigned int), _IOW('T', 0x31, int).
TIOCGPTN = 0x80045430
TIOCSPTLCK = 0x40045431


def open_pty() -> tuple[int, str]:
    """A new pty pair from ``/dev/ptmx`` as the caller sees it: (master fd, slave path).

    Called inside the container after pivot_root, so the pair belongs to the container's own devpts
    instance: the workload sees /dev/pts/0, not a number from the host's devpts.
    """
    import fcntl
    import struct
    master = os.open("/dev/ptmx", os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    try:
        fcntl.ioctl(master, TIOCSPTLCK, struct.pack("i", 0))  # unlockpt
        number = struct.unpack("I", fcntl.ioctl(master, TIOCGPTN, b"\0" * 4))[0]
    except BaseException:
        os.close(master)
        raise
    return master, f"/dev/pts/{number}"


def set_controlling_tty(fd: int = 0) -> None:
    _check(_libc.ioctl(fd, TIOCSCTTY, None), "TIOCSCTTY")
