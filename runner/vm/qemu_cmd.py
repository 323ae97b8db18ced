"""QEMU's command line, built as pure data.

Like lima's ``Cmdline()`` and podman's QEMU command builder, this module only turns settings into an
argument list: it reads no files, probes nothing and starts nothing, so every host OS × guest arch ×
accelerator combination is unit-tested on any machine by comparing lists (tests/unit/test_qemu_cmd.py).
``runner.vm.machine`` gathers the facts (paths, ports, the accelerator verdict) and runs the result.

Hosts: ``linux`` (kvm), ``darwin`` (hvf), ``windows`` (whpx; QMP over 127.0.0.1 TCP because QEMU for Windows
may lack AF_UNIX; no virtfs, so no shared directories there). Linux and macOS share host directories over 9p
(``-virtfs``, see :mod:`runner.vm.shares`); the generic Debian guest kernel has the 9p modules. ``tcg`` works
everywhere. Guests: ``x86_64`` on ``q35``, ``aarch64`` on ``virt``.
The guest is booted directly (``-kernel/-initrd``): no bootloader, no disk partition table; on x86_64 the
minimal ``qboot.rom`` firmware replaces SeaBIOS when QEMU ships it (``Boot.bios``: ~0.3-0.5 s sooner to the
kernel under TCG, vmimage/README.md).
"""

from __future__ import annotations

from dataclasses import dataclass

from runner.errors import PlatformError, UsageError

HOST_OSES = ("linux", "darwin", "windows")
ACCELS = ("kvm", "hvf", "whpx", "tcg")

# The accelerator each host OS offers natively (besides TCG, which every host has).
NATIVE_ACCEL = {"linux": "kvm", "darwin": "hvf", "windows": "whpx"}

SSH_GUEST_PORT = 22
READY_PORT_NAME = "org.runner.ready"
CONTROL_PORT_NAME = "org.runner.control"
WINDOWS_HINT = ("QEMU for Windows cannot share host folders with the VM: run runner inside WSL 2 (native "
                "Linux containers, where -v works), or use a volume-free workflow (COPY files into the image, "
                "or pipe them in with -i)")
DATA_DISK_SERIAL = "runner-data"
ROOT_DISK_SERIAL = "runner-root"
NETDEV_ID = "net0"


def normalize_arch(arch: str) -> str:
    """Map the spellings hosts use (``arm64``, ``AMD64``) onto QEMU's (``aarch64``, ``x86_64``)."""
    a = arch.lower()
    if a in ("x86_64", "amd64", "x64"):
        return "x86_64"
    if a in ("aarch64", "arm64"):
        return "aarch64"
    raise PlatformError(f"unsupported CPU architecture {arch!r}", hint="runner's VM supports x86_64 and arm64")


@dataclass(frozen=True)
class MachineConfig:
    """The user-chosen size and CPU architecture of a machine; stored in the machine's config.json and kept
    across restarts."""

    cpus: int = 2
    memory_mib: int = 2048
    disk_size: str = "20G"
    # Host directories shared over 9p (real absolute paths); None = the defaults (runner.vm.shares).
    shares: tuple[str, ...] | None = None
    # The guest's architecture (x86_64 / aarch64), fixed when the machine is created like its disk: the data
    # disk holds images of that architecture. None: a machine created before this was stored = the host's.
    arch: str | None = None

    def validate(self) -> "MachineConfig":
        problems = []
        if self.cpus < 1:
            problems.append(f"--cpus must be at least 1 (got {self.cpus})")
        if self.memory_mib < 256:
            problems.append(f"--memory must be at least 256 MiB (got {self.memory_mib})")
        if not parse_size(self.disk_size):
            problems.append(f"--disk-size {self.disk_size!r} is not a size like 20G or 512M")
        if self.arch is not None and self.arch not in ("x86_64", "aarch64"):
            problems.append(f"--arch {self.arch!r} is not x86_64 or aarch64")
        if problems:
            raise UsageError("; ".join(problems))
        return self

    def to_dict(self) -> dict:
        out: dict = {"cpus": self.cpus, "memory_mib": self.memory_mib, "disk_size": self.disk_size}
        if self.shares is not None:
            out["shares"] = list(self.shares)
        if self.arch is not None:
            out["arch"] = self.arch
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "MachineConfig":
        shares = data.get("shares")
        arch = data.get("arch")
        return cls(int(data["cpus"]), int(data["memory_mib"]), str(data["disk_size"]),
                   tuple(str(s) for s in shares) if isinstance(shares, list) else None,
                   normalize_arch(str(arch)) if arch else None)


def parse_size(text: str) -> int | None:
    """``20G`` / ``512M`` / ``1T`` / plain bytes -> bytes; None when it is not a size (no raise: callers report)."""
    units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    num, unit = (t[:-1], t[-1]) if t and t[-1] in units else (t, "")
    try:
        value = int(num) * units[unit]
    except ValueError:
        return None
    return value if value > 0 else None


def parse_memory_mib(text: str) -> int | None:
    """``2G`` / ``2048M`` / plain MiB (``2048``) -> MiB, as QEMU's ``-m`` reads it."""
    if text.strip().isdigit():
        return int(text)
    size = parse_size(text)
    return size // (1 << 20) if size else None


@dataclass(frozen=True)
class Share:
    """A host directory exported to the guest over 9p (``-v`` on Linux/macOS hosts)."""

    host_path: str
    tag: str
    readonly: bool = False


@dataclass(frozen=True)
class Boot:
    """Everything about one boot that is not the machine's size: artifacts, files, ports."""

    kernel: str
    initrd: str
    data_disk: str
    serial_log: str
    ready_log: str
    qmp: str | int  # Unix socket path, or a TCP port on 127.0.0.1 (Windows)
    ssh_port: int
    name: str = "default"
    rootfs: str | None = None  # a read-only root disk image when the guest does not run from the initrd
    shares: tuple[Share, ...] = ()
    kernel_args: tuple[str, ...] = ()
    host_is_root: bool = False
    # Snapshot fast start (runner.vm.snapshot): the Unix socket of the org.runner.control port, where the
    # host sends the guest its GO line (clock, entropy, agent token); and a saved state to resume from
    # (an -incoming URI) instead of booting.
    control: str | None = None
    incoming: str | None = None
    bios: str | None = None  # x86_64 firmware file (qboot.rom) for direct kernel boot; None = QEMU's default
    tsc_khz: int | None = None  # the host's TSC rate, which an x86_64 guest's TSC has under TCG (if known)


def qemu_binary(guest_arch: str, host_os: str) -> str:
    """``qemu-system-x86_64`` / ``qemu-system-aarch64`` (``.exe`` on Windows), looked up on PATH by the caller."""
    exe = f"qemu-system-{normalize_arch(guest_arch)}"
    return exe + ".exe" if host_os == "windows" else exe


def console_device(guest_arch: str) -> str:
    """The kernel console: the 16550 UART on x86 ``q35``, the PL011 on arm ``virt``."""
    return "ttyS0" if normalize_arch(guest_arch) == "x86_64" else "ttyAMA0"


def opt_value(value: str | int) -> str:
    """Escape a value inside a QEMU ``key=value,...`` option: a literal comma is written as two."""
    return str(value).replace(",", ",,")


def kernel_cmdline(guest_arch: str, extra: tuple[str, ...] = ()) -> str:
    """The kernel command line: the console this argv wires up, ``panic=-1`` (a panic exits QEMU because of
    ``-no-reboot`` instead of hanging), ``quiet`` (every console byte is slow under TCG), then the image's own
    arguments that are not already there."""
    args = [f"console={console_device(guest_arch)}", "panic=-1", "quiet"]
    return " ".join(args + [a for a in dict.fromkeys(extra) if a not in args])


def accel_args(accel: str, cpus: int) -> list[str]:
    """The ``-accel`` option; TCG is asked for one host thread per vCPU when there is more than one."""
    if accel == "tcg":
        return ["-accel", "tcg,thread=multi" if cpus > 1 else "tcg"]
    if accel == "whpx":
        # WHPX's in-kernel irqchip breaks guests on several Windows builds; QEMU's userspace APIC is reliable.
        return ["-accel", "whpx,kernel-irqchip=off"]
    return ["-accel", accel]


def cpu_model(accel: str, guest_arch: str) -> str:
    """``host`` under KVM/HVF (full speed, every feature); under emulation a model that is cheap to emulate.

    aarch64 TCG: ``cortex-a72``, because ``max`` turns on pointer authentication whose emulation made the
    kernel boot 5x slower (measurements.md). x86_64 TCG and WHPX (which has no ``host`` model): ``max``.
    """
    if accel in ("kvm", "hvf"):
        return "host"
    return "cortex-a72" if normalize_arch(guest_arch) == "aarch64" else "max"


def build_argv(config: MachineConfig, host_os: str, host_arch: str, guest_arch: str, accel: str,
               boot: Boot) -> list[str]:
    """The full QEMU argv for one boot of a machine. Raises PlatformError for combinations that cannot work."""
    if host_os not in HOST_OSES:
        raise PlatformError(f"unsupported host OS {host_os!r}")
    if accel not in ACCELS:
        raise PlatformError(f"unknown accelerator {accel!r}", hint=f"choose one of {', '.join(ACCELS)}")
    guest = normalize_arch(guest_arch)
    if accel != "tcg":
        if NATIVE_ACCEL[host_os] != accel:
            raise PlatformError(f"accelerator {accel} is not available on {host_os}")
        if normalize_arch(host_arch) != guest:
            raise PlatformError(f"{accel} cannot run a {guest} guest on a {normalize_arch(host_arch)} host",
                                hint="use RUNNER_ACCEL=tcg (slow) or a guest of the host's architecture")
    if boot.shares and host_os == "windows":
        raise PlatformError("sharing host directories with the VM is not supported on Windows hosts",
                            hint=WINDOWS_HINT)

    argv = [
        qemu_binary(guest, host_os),
        "-name", f"runner-{boot.name}",
        # No implicit NIC, VGA, serial, monitor or CD-ROM, and no /etc/qemu config: every device is listed here.
        "-nodefaults", "-no-user-config",
        # No display window; the console goes to a file below.
        "-nographic",
        "-machine", machine_type(accel, guest),
        *accel_args(accel, config.cpus),
        "-cpu", cpu_model(accel, guest),
        "-smp", str(config.cpus),
        "-m", str(config.memory_mib),
        # A guest reboot would only loop (e.g. on a panic with panic=-1): make it a QEMU exit we can see.
        "-no-reboot",
        *(["-bios", boot.bios] if boot.bios and guest == "x86_64" else []),
        # Direct kernel boot: no bootloader to emulate, which saves seconds under TCG.
        "-kernel", boot.kernel,
        "-initrd", boot.initrd,
        "-append", kernel_cmdline(guest, boot.kernel_args + _tcg_kernel_args(accel, guest, boot.tsc_khz)),
        # The guest console goes to a file: `runner vm logs` and every boot error message point at it.
        "-chardev", f"file,id=serial0,path={opt_value(boot.serial_log)}",
        "-serial", "chardev:serial0",
        *_qmp_args(boot.qmp),
        # User-mode networking needs no privileges or host setup. SSH is forwarded from 127.0.0.1 only, so
        # nobody else on the network can reach the guest; more forwards are added at runtime over QMP.
        "-netdev", f"user,id={NETDEV_ID},hostfwd=tcp:127.0.0.1:{boot.ssh_port}-:{SSH_GUEST_PORT}",
        # romfile= (empty): no iPXE option ROM. Direct kernel boot never network-boots, and under TCG the
        # firmware would spend time initialising it.
        "-device", f"virtio-net-pci,netdev={NETDEV_ID},romfile=",
        # Entropy from the host, so the guest's sshd and Python do not stall waiting for the RNG to seed.
        "-device", "virtio-rng-pci",
        # The guest writes READY to this named port once its SSH server listens. A file backend (not a
        # socket) keeps the line even when nobody is reading at that moment, and works on Windows too.
        "-device", "virtio-serial-pci,id=vser0",
        "-chardev", f"file,id=ready,path={opt_value(boot.ready_log)}",
        "-device", f"virtserialport,bus=vser0.0,chardev=ready,name={READY_PORT_NAME}",
        *_control_args(boot.control),
        # The persistent data disk; the guest finds it by serial, not by probing device order.
        # discard=unmap lets guest TRIMs shrink the qcow2 file on the host.
        "-drive", f"file={opt_value(boot.data_disk)},if=none,id=data,format=qcow2,discard=unmap",
        "-device", f"virtio-blk-pci,drive=data,serial={DATA_DISK_SERIAL}",
    ]
    if boot.rootfs:
        # The root image is a shared, checksummed cache artifact: read-only, so no machine can alter it.
        argv += ["-drive", f"file={opt_value(boot.rootfs)},if=none,id=root,format=raw,readonly=on",
                 "-device", f"virtio-blk-pci,drive=root,serial={ROOT_DISK_SERIAL}"]
    for i, share in enumerate(boot.shares):
        argv += ["-virtfs", _virtfs_value(share, i, boot.host_is_root)]
    if boot.incoming:
        argv += incoming_args(boot.incoming)
    return argv


def incoming_args(uri: str) -> list[str]:
    """Load the saved state instead of booting; QEMU runs the guest on as soon as it is loaded. Always last
    in the argv: the snapshot key is the hash of the argv without it (runner.vm.boot)."""
    return ["-incoming", uri]


def machine_type(accel: str, guest: str) -> str:
    """``q35`` (x86_64) or ``virt`` (arm). Under x86 TCG without the i8254 PIT: the kernel calibrates its TSC
    against the PIT when one exists and trusts it over the HPET when the two disagree, and under TCG on a
    busy host the emulated PIT is far off (measured: a guest clock running 12x fast, so every sleep and
    timeout in the guest was 12x short). Without it the kernel calibrates against the HPET."""
    if guest != "x86_64":
        return "virt"
    return "q35,pit=off" if accel == "tcg" else "q35"


def _tcg_kernel_args(accel: str, guest: str, tsc_khz: int | None = None) -> tuple[str, ...]:
    """Under x86 TCG the kernel finds the emulated TSCs "unsynchronized" and falls back to the HPET, whose
    every read is an emulated MMIO access: each clock_gettime became a syscall plus a trip through QEMU's
    device emulation, and thread wake-ups in the guest (Python's GIL, futexes) took ~10 ms instead of ~2 ms.
    QEMU's TCG TSC is one monotonic counter for all vCPUs, so telling the kernel it is reliable is true.
    It ticks at the host's TSC rate: when the host knows that rate (``tsc_khz``), the guest is told it rather
    than measuring it (a calibration on a busy host is off by several per cent even against the HPET, and
    the guest clock would drift by as much; the kernel keeps an early value it can refine within 1%)."""
    if accel != "tcg" or guest != "x86_64":
        return ()
    return ("tsc=reliable",) + ((f"tsc_early_khz={int(tsc_khz)}",) if tsc_khz else ())


def _control_args(control: str | None) -> list[str]:
    """The host-to-guest control port (a Unix socket QEMU listens on; ``wait=off``: boot without a client)."""
    if not control:
        return []
    return ["-chardev", f"socket,id=control,path={opt_value(control)},server=on,wait=off",
            "-device", f"virtserialport,bus=vser0.0,chardev=control,name={CONTROL_PORT_NAME}"]


def build_probe_argv(host_os: str, guest_arch: str, accel: str, kernel: str, serial_log: str) -> list[str]:
    """A throw-away boot that tells whether ``accel`` really runs a guest on this host.

    The guest kernel boots with no initrd and no disks: it runs all of its init, fails to find a root
    filesystem and panics; ``panic=-1`` plus ``-no-reboot`` turn that into QEMU exiting by itself. So
    "QEMU exited within the timeout and the console shows the kernel banner" proves the accelerator executes
    a whole kernel boot, where a device node that merely opens (/dev/kvm on a broken nested host) proves
    nothing. No ``quiet``: the banner is the marker.
    """
    guest = normalize_arch(guest_arch)
    return [
        qemu_binary(guest, host_os),
        "-nodefaults", "-no-user-config", "-nographic",
        "-machine", "q35" if guest == "x86_64" else "virt",
        *accel_args(accel, 1),
        "-cpu", cpu_model(accel, guest),
        "-smp", "1", "-m", "256",
        "-no-reboot",
        "-kernel", kernel,
        "-append", f"console={console_device(guest)} panic=-1",
        "-chardev", f"file,id=serial0,path={opt_value(serial_log)}",
        "-serial", "chardev:serial0",
    ]


def _qmp_args(qmp: str | int) -> list[str]:
    """QMP on a Unix socket (or 127.0.0.1 TCP); ``wait=off`` so QEMU boots without a client attached."""
    if isinstance(qmp, int):
        sock = f"socket,id=qmp,host=127.0.0.1,port={qmp},server=on,wait=off"
    else:
        sock = f"socket,id=qmp,path={opt_value(qmp)},server=on,wait=off"
    return ["-chardev", sock, "-mon", "chardev=qmp,mode=control"]


def _virtfs_value(share: Share, index: int, host_is_root: bool) -> str:
    """One 9p export.

    security_model: as an unprivileged user QEMU cannot chown host files, so ``mapped-xattr`` keeps the
    guest's owners and modes in xattrs while the host files stay the user's. As root, ``none`` applies the
    guest's chown/chmod to the real files, which is what a native bind mount does, and does not depend on
    the host filesystem supporting user xattrs (tmpfs on older kernels does not).
    """
    model = "none" if host_is_root else "mapped-xattr"
    value = (f"local,path={opt_value(share.host_path)},mount_tag={opt_value(share.tag)},"
             f"security_model={model},id=fs{index}")
    return value + ",readonly=on" if share.readonly else value
