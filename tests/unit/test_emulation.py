"""Whether a foreign-architecture image can run (runner.engine.emulation), decided from binfmt_misc entries.

The entries are written as the kernel shows them in /proc/sys/fs/binfmt_misc (copied from Debian's
qemu-user-static registration); the real registrations are exercised by tests/native/test_platform.py and
the aarch64 guest's tests (tests/vm/test_arm64_guest.py)."""

import pytest

from runner.engine import emulation
from runner.errors import ImageNotFound, PlatformError
from runner.images.platform import normalize

X86_64 = """enabled
interpreter /usr/libexec/qemu-binfmt/x86_64-binfmt-P
flags: {flags}
offset 0
magic 7f454c4602010100000000000000000002003e00
mask fffffffffffefe00fffffffffffffffffeffffff
"""
AARCH64 = """enabled
interpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P
flags: OPF
offset 0
magic 7f454c460201010000000000000000000200b700
mask ffffffffffffff00fffffffffffffffffeffffff
"""
ARM64_HOST = normalize("linux", "arm64")
AMD64_CONFIG = {"architecture": "amd64", "os": "linux"}


def binfmt(tmp_path, status="enabled", dirname="binfmt_misc", **entries):
    d = tmp_path / dirname
    d.mkdir()
    (d / "status").write_text(status + "\n")
    (d / "register").write_text("")
    for name, text in entries.items():
        (d / name.replace("_", "-")).write_text(text)
    return str(d)


def test_parse_entry_reads_the_elf_machine_from_the_magic():
    assert emulation.parse_entry(X86_64.format(flags="OPF")) == {"enabled": True, "flags": "OPF", "machine": 0x3E}
    assert emulation.parse_entry(AARCH64)["machine"] == 0xB7
    assert emulation.parse_entry("enabled\ninterpreter /usr/bin/wine\nflags: \nextension .exe\n") is None


def test_registered_emulator_with_f_flag_lets_the_image_run(tmp_path):
    d = binfmt(tmp_path, qemu_x86_64=X86_64.format(flags="OPF"), qemu_aarch64=AARCH64)
    emulation.check("img", AMD64_CONFIG, None, d, ARM64_HOST)  # no exception
    emulation.check("img", AMD64_CONFIG, "linux/amd64", d, ARM64_HOST)


def test_no_emulator_is_one_clear_error(tmp_path):
    d = binfmt(tmp_path, qemu_aarch64=AARCH64)
    with pytest.raises(PlatformError) as info:
        emulation.check("img", AMD64_CONFIG, None, d, ARM64_HOST)
    assert info.value.message == ("image img is linux/amd64 and this machine (linux/arm64/v8) cannot run it: "
                                  "no emulator for amd64 is registered (binfmt_misc)")
    assert "qemu-user-static" in info.value.hint and info.value.exit_code == 125


def test_handler_without_f_flag_or_disabled_binfmt_is_refused(tmp_path):
    d = binfmt(tmp_path, qemu_x86_64=X86_64.format(flags="P"))
    with pytest.raises(PlatformError, match="lacks the F flag"):
        emulation.check("img", AMD64_CONFIG, None, d, ARM64_HOST)
    off = binfmt(tmp_path, status="disabled", dirname="off", qemu_x86_64=X86_64.format(flags="F"))
    with pytest.raises(PlatformError, match="binfmt_misc is not mounted or disabled"):
        emulation.check("img", AMD64_CONFIG, None, off, ARM64_HOST)
    with pytest.raises(PlatformError, match="binfmt_misc is not mounted"):
        emulation.check("img", AMD64_CONFIG, None, str(tmp_path / "absent"), ARM64_HOST)


def test_native_and_32_bit_images_need_no_emulator(tmp_path):
    empty = binfmt(tmp_path)
    emulation.check("img", {"architecture": "arm64", "os": "linux"}, None, empty, ARM64_HOST)
    emulation.check("img", {"architecture": "arm", "variant": "v7", "os": "linux"}, None, empty, ARM64_HOST)
    emulation.check("img", {}, None, empty, ARM64_HOST)  # an image that names no architecture


def test_requested_platform_must_be_the_images(tmp_path):
    d = binfmt(tmp_path, qemu_x86_64=X86_64.format(flags="OPF"))
    with pytest.raises(ImageNotFound) as info:  # the CLI pulls the requested platform then (--pull missing)
        emulation.check("img", {"architecture": "arm64", "os": "linux"}, "linux/amd64", d, ARM64_HOST)
    assert info.value.message == "image img is linux/arm64/v8, not the requested platform linux/amd64"
    assert info.value.hint == "pull that platform: runner pull --platform linux/amd64 img"
