"""Linux capabilities: names, Docker's default set, and applying an OCI ``process.capabilities`` object.

Names follow the OCI spec (``CAP_CHOWN``); numbers are the kernel's (linux/capability.h). The table is
complete up to CAP_CHECKPOINT_RESTORE (40); a name the running kernel does not know is skipped when applying
(runc does the same), so a config written on a newer host still starts on an older kernel.

The order of operations when applying mirrors runc's ``finalizeNamespace``:

1. drop everything not in ``bounding`` from the bounding set (needs CAP_SETPCAP, so first);
2. change uid/gid with PR_SET_KEEPCAPS, so switching to a non-root uid keeps the permitted set long enough
   for step 3 (without it the kernel empties permitted on setuid and capset would fail);
3. capset effective/permitted/inheritable to the configured sets, then clear and raise ambient.

For a non-root user the kernel's execve rules then leave CapEff/CapPrm empty (no file caps, no ambient), which is
exactly what Docker users see; the bounding set stays Docker's. Standard library only (runs in the guest).
"""

from __future__ import annotations

CAPS = [
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL",
    "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE", "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO", "CAP_SYS_CHROOT", "CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT",
    "CAP_SYS_NICE", "CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE",
    "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN", "CAP_SYSLOG",
    "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ", "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
]
CAP_NUMBERS = {name: i for i, name in enumerate(CAPS)}

DOCKER_DEFAULT_CAPS = [
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW", "CAP_SETGID",
    "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL",
    "CAP_AUDIT_WRITE",
]
"""Docker's default capability set (moby ``oci/caps/defaults.go``); its mask is 0xa80425fb."""


def mask(names) -> int:
    """Bit mask of capability names; unknown names are ignored (see module docstring)."""
    out = 0
    for name in names or ():
        n = CAP_NUMBERS.get(str(name).upper() if str(name).upper().startswith("CAP_") else "CAP_" + str(name).upper())
        if n is not None:
            out |= 1 << n
    return out


def names(bits: int) -> list[str]:
    return [name for i, name in enumerate(CAPS) if bits >> i & 1]


def last_cap() -> int:
    """Highest capability the running kernel knows (read before pivot_root; /proc is the host's then)."""
    try:
        with open("/proc/sys/kernel/cap_last_cap", "rb") as f:
            return int(f.read())
    except (OSError, ValueError):
        return len(CAPS) - 1


def drop_bounding(keep: int, last: int) -> None:
    """PR_CAPBSET_DROP every capability not in ``keep``; must run while CAP_SETPCAP is still effective."""
    from runner.engine.runtime import linux
    for cap in range(last + 1):
        if not keep >> cap & 1:
            try:
                linux.prctl(linux.PR_CAPBSET_DROP, cap)
            except OSError as exc:
                if exc.errno != 22:  # EINVAL: the kernel does not know this cap
                    raise


def apply(effective: int, permitted: int, inheritable: int, ambient: int) -> None:
    """capset the three sets, then reset ambient to exactly ``ambient`` (an ambient cap needs P and I)."""
    from runner.engine.runtime import linux
    linux.capset(effective, permitted, inheritable)
    linux.prctl(linux.PR_CAP_AMBIENT, linux.PR_CAP_AMBIENT_CLEAR_ALL)
    for cap in range(64):
        if ambient >> cap & 1:
            linux.prctl(linux.PR_CAP_AMBIENT, linux.PR_CAP_AMBIENT_RAISE, cap)
