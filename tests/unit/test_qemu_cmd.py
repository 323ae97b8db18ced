"""The QEMU argv builder is pure: every host OS × guest arch × accelerator is checked by comparing lists."""

import pytest

from runner.errors import PlatformError, UsageError
from runner.vm.qemu_cmd import (Boot, MachineConfig, Share, build_argv, build_probe_argv, kernel_cmdline,
                                parse_memory_mib, parse_size)

CONFIG = MachineConfig(cpus=2, memory_mib=2048, disk_size="20G")


def boot(**kw):
    base = dict(kernel="/img/kernel", initrd="/m/initrd.img", data_disk="/m/data.qcow2",
                serial_log="/m/serial.log", ready_log="/m/ready.log", qmp="/m/qmp.sock", ssh_port=40022,
                name="default", rootfs="/img/rootfs.ext4", kernel_args=("console=ttyS0", "quiet", "panic=-1"))
    base.update(kw)
    return Boot(**base)


def common_tail(qmp_chardev, console="ttyS0", accel=None):
    """Everything after -m (x86 TCG adds tsc=reliable to the kernel command line)."""
    tsc = " tsc=reliable" if accel == "tcg" and console == "ttyS0" else ""
    return [
        "-no-reboot",
        "-kernel", "/img/kernel",
        "-initrd", "/m/initrd.img",
        "-append", f"console={console} panic=-1 quiet" + ("" if console == "ttyS0" else " console=ttyS0") + tsc,
        "-chardev", "file,id=serial0,path=/m/serial.log",
        "-serial", "chardev:serial0",
        "-chardev", qmp_chardev,
        "-mon", "chardev=qmp,mode=control",
        "-netdev", "user,id=net0,hostfwd=tcp:127.0.0.1:40022-:22",
        "-device", "virtio-net-pci,netdev=net0,romfile=",
        "-device", "virtio-rng-pci",
        "-device", "virtio-serial-pci,id=vser0",
        "-chardev", "file,id=ready,path=/m/ready.log",
        "-device", "virtserialport,bus=vser0.0,chardev=ready,name=org.runner.ready",
        "-drive", "file=/m/data.qcow2,if=none,id=data,format=qcow2,discard=unmap",
        "-device", "virtio-blk-pci,drive=data,serial=runner-data",
        "-drive", "file=/img/rootfs.ext4,if=none,id=root,format=raw,readonly=on",
        "-device", "virtio-blk-pci,drive=root,serial=runner-root",
    ]


UNIX_QMP = "socket,id=qmp,path=/m/qmp.sock,server=on,wait=off"


def head(binary, machine, accel, cpu):
    return [binary, "-name", "runner-default", "-nodefaults", "-no-user-config", "-nographic",
            "-machine", machine, "-accel", accel, "-cpu", cpu, "-smp", "2", "-m", "2048"]


@pytest.mark.parametrize("host_os,host_arch,guest,accel,expected_head", [
    ("linux", "x86_64", "x86_64", "kvm", head("qemu-system-x86_64", "q35", "kvm", "host")),
    ("linux", "x86_64", "x86_64", "tcg", head("qemu-system-x86_64", "q35,pit=off", "tcg,thread=multi", "max")),
    ("linux", "aarch64", "aarch64", "kvm", head("qemu-system-aarch64", "virt", "kvm", "host")),
    ("linux", "x86_64", "aarch64", "tcg", head("qemu-system-aarch64", "virt", "tcg,thread=multi", "cortex-a72")),
    ("darwin", "arm64", "aarch64", "hvf", head("qemu-system-aarch64", "virt", "hvf", "host")),
    ("darwin", "arm64", "aarch64", "tcg", head("qemu-system-aarch64", "virt", "tcg,thread=multi", "cortex-a72")),
    ("darwin", "x86_64", "x86_64", "hvf", head("qemu-system-x86_64", "q35", "hvf", "host")),
    ("darwin", "arm64", "x86_64", "tcg", head("qemu-system-x86_64", "q35,pit=off", "tcg,thread=multi", "max")),
    # runner vm start --arch: the other architecture's guest under TCG on a Linux host of either arch
    ("linux", "aarch64", "x86_64", "tcg", head("qemu-system-x86_64", "q35,pit=off", "tcg,thread=multi", "max")),
    ("linux", "aarch64", "aarch64", "tcg", head("qemu-system-aarch64", "virt", "tcg,thread=multi", "cortex-a72")),
])
def test_unix_hosts(host_os, host_arch, guest, accel, expected_head):
    console = "ttyS0" if guest == "x86_64" else "ttyAMA0"
    argv = build_argv(CONFIG, host_os, host_arch, guest, accel, boot())
    assert argv == expected_head + common_tail(UNIX_QMP, console, accel)


@pytest.mark.parametrize("host_arch,guest,accel,expected_head", [
    ("AMD64", "x86_64", "whpx",
     head("qemu-system-x86_64.exe", "q35", "whpx,kernel-irqchip=off", "max")),
    ("AMD64", "x86_64", "tcg", head("qemu-system-x86_64.exe", "q35,pit=off", "tcg,thread=multi", "max")),
    ("ARM64", "aarch64", "whpx", head("qemu-system-aarch64.exe", "virt", "whpx,kernel-irqchip=off",
                                      "cortex-a72")),
    ("AMD64", "aarch64", "tcg", head("qemu-system-aarch64.exe", "virt", "tcg,thread=multi", "cortex-a72")),
])
def test_windows_uses_tcp_qmp_on_loopback(host_arch, guest, accel, expected_head):
    console = "ttyS0" if guest == "x86_64" else "ttyAMA0"
    argv = build_argv(CONFIG, "windows", host_arch, guest, accel, boot(qmp=40100))
    assert argv == expected_head + common_tail(
        "socket,id=qmp,host=127.0.0.1,port=40100,server=on,wait=off", console, accel)


def test_single_cpu_tcg_has_no_thread_option():
    argv = build_argv(MachineConfig(cpus=1), "linux", "x86_64", "x86_64", "tcg", boot())
    assert argv[argv.index("-accel") + 1] == "tcg"
    assert argv[argv.index("-smp") + 1] == "1"


def test_no_rootfs_means_no_root_disk():
    argv = build_argv(CONFIG, "linux", "x86_64", "x86_64", "kvm", boot(rootfs=None))
    assert "serial=runner-root" not in " ".join(argv)


def test_commas_in_paths_are_escaped():
    argv = build_argv(CONFIG, "linux", "x86_64", "x86_64", "kvm",
                      boot(serial_log="/a,b/serial.log", qmp="/a,b/qmp.sock"))
    assert "file,id=serial0,path=/a,,b/serial.log" in argv
    assert "socket,id=qmp,path=/a,,b/qmp.sock,server=on,wait=off" in argv


@pytest.mark.parametrize("is_root,model", [(False, "mapped-xattr"), (True, "none")])
def test_virtfs_shares(is_root, model):
    shares = (Share("/home/u/src", "vol0"), Share("/data", "vol1", readonly=True))
    argv = build_argv(CONFIG, "linux", "x86_64", "x86_64", "kvm", boot(shares=shares, host_is_root=is_root))
    assert [argv[i + 1] for i, a in enumerate(argv) if a == "-virtfs"] == [
        f"local,path=/home/u/src,mount_tag=vol0,security_model={model},id=fs0",
        f"local,path=/data,mount_tag=vol1,security_model={model},id=fs1,readonly=on",
    ]


def test_windows_refuses_shares():
    with pytest.raises(PlatformError, match="not supported on Windows"):
        build_argv(CONFIG, "windows", "AMD64", "x86_64", "whpx", boot(qmp=1, shares=(Share("C:/x", "v"),)))


@pytest.mark.parametrize("host_os,host_arch,guest,accel", [
    ("linux", "x86_64", "x86_64", "hvf"),      # hvf is macOS only
    ("darwin", "arm64", "aarch64", "kvm"),     # kvm is Linux only
    ("darwin", "arm64", "x86_64", "hvf"),      # no hardware acceleration across architectures
    ("linux", "x86_64", "aarch64", "kvm"),
    ("linux", "aarch64", "x86_64", "kvm"),
    ("linux", "x86_64", "x86_64", "bogus"),
])
def test_impossible_combinations(host_os, host_arch, guest, accel):
    with pytest.raises(PlatformError):
        build_argv(CONFIG, host_os, host_arch, guest, accel, boot())


def test_probe_argv_has_no_initrd_and_no_quiet():
    argv = build_probe_argv("linux", "x86_64", "kvm", "/img/kernel", "/tmp/p/serial.log")
    assert argv == ["qemu-system-x86_64", "-nodefaults", "-no-user-config", "-nographic", "-machine", "q35",
                    "-accel", "kvm", "-cpu", "host", "-smp", "1", "-m", "256", "-no-reboot",
                    "-kernel", "/img/kernel", "-append", "console=ttyS0 panic=-1",
                    "-chardev", "file,id=serial0,path=/tmp/p/serial.log", "-serial", "chardev:serial0"]


def test_kernel_cmdline_keeps_image_args_without_duplicates():
    assert kernel_cmdline("aarch64", ("quiet", "rw", "rw")) == "console=ttyAMA0 panic=-1 quiet rw"


def test_sizes():
    assert parse_size("20G") == 20 << 30
    assert parse_size("512MiB") == 512 << 20
    assert parse_size("big") is None and parse_size("0") is None
    assert parse_memory_mib("2048") == 2048 and parse_memory_mib("4G") == 4096
    with pytest.raises(UsageError) as err:
        MachineConfig(cpus=0, memory_mib=10, disk_size="x").validate()
    assert "--cpus" in err.value.message and "--memory" in err.value.message and "--disk-size" in err.value.message


def test_qboot_firmware_only_for_x86_64_guests():
    argv = build_argv(CONFIG, "linux", "x86_64", "x86_64", "tcg", boot(bios="/usr/share/qemu/qboot.rom"))
    assert argv[argv.index("-bios") + 1] == "/usr/share/qemu/qboot.rom"
    assert argv.index("-bios") < argv.index("-kernel")
    assert "-bios" not in build_argv(CONFIG, "linux", "x86_64", "aarch64", "tcg", boot(bios="/q/qboot.rom"))
    assert "-bios" not in build_argv(CONFIG, "linux", "x86_64", "x86_64", "tcg", boot())


def test_shares_become_virtfs_and_are_refused_on_windows():
    from runner.errors import PlatformError
    from runner.vm.qemu_cmd import Share

    shares = (Share("/home/a", "rsabc"),)
    argv = build_argv(CONFIG, "darwin", "aarch64", "aarch64", "hvf", boot(shares=shares))
    assert argv[argv.index("-virtfs") + 1] == \
        "local,path=/home/a,mount_tag=rsabc,security_model=mapped-xattr,id=fs0"
    with pytest.raises(PlatformError, match="Windows") as info:
        build_argv(CONFIG, "windows", "x86_64", "x86_64", "whpx", boot(shares=shares, qmp=4444))
    assert "WSL" in info.value.hint


def test_snapshot_control_port_and_incoming():
    """Snapshot fast start: the control port the GO line goes through, and -incoming to resume a state."""
    argv = build_argv(CONFIG, "linux", "x86_64", "x86_64", "tcg",
                      boot(control="/m/control.sock", incoming="exec:cat /m/snapshot.state"))
    i = argv.index("virtserialport,bus=vser0.0,chardev=ready,name=org.runner.ready")
    assert argv[i + 1:i + 5] == ["-chardev", "socket,id=control,path=/m/control.sock,server=on,wait=off",
                                 "-device", "virtserialport,bus=vser0.0,chardev=control,name=org.runner.control"]
    assert argv[-2:] == ["-incoming", "exec:cat /m/snapshot.state"]
    assert "org.runner.control" not in " ".join(build_argv(CONFIG, "linux", "x86_64", "x86_64", "tcg", boot()))


def test_x86_tcg_guest_gets_no_pit_and_the_host_tsc_rate():
    """Under x86 TCG the kernel must not calibrate its TSC against the emulated PIT (12x off on a busy host):
    no PIT, and the host's TSC rate on the command line when known."""
    argv = build_argv(CONFIG, "linux", "x86_64", "x86_64", "tcg", boot(tsc_khz=2445000))
    assert argv[argv.index("-machine") + 1] == "q35,pit=off"
    assert "tsc=reliable tsc_early_khz=2445000" in argv[argv.index("-append") + 1]
    kvm = build_argv(CONFIG, "linux", "x86_64", "x86_64", "kvm", boot(tsc_khz=2445000))
    assert kvm[kvm.index("-machine") + 1] == "q35" and "tsc" not in kvm[kvm.index("-append") + 1]
    arm = build_argv(CONFIG, "linux", "x86_64", "aarch64", "tcg", boot(tsc_khz=2445000))
    assert arm[arm.index("-machine") + 1] == "virt" and "tsc" not in arm[arm.index("-append") + 1]


def test_host_tsc_rate_is_read_only_where_cpu_mhz_is_the_tsc():
    from runner.vm.accel import host_tsc_khz

    info = "processor\t: 0\nmodel name\t: AMD EPYC\ncpu MHz\t\t: 2445.406\n"
    assert host_tsc_khz(info, cpufreq=False) == 2445000
    assert host_tsc_khz(info, cpufreq=True) is None  # a varying clock, not the TSC's
    assert host_tsc_khz("cpu MHz : fast\n", cpufreq=False) is None
    assert host_tsc_khz("model name : x\n", cpufreq=False) is None
