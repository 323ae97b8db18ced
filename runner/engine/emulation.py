"""Images of another CPU architecture: whether this kernel can run them, and ``--platform`` on create.

Docker Desktop, Colima and OrbStack run ``linux/amd64`` images on arm64 machines (and the other way round)
through user-mode emulation: binfmt_misc hands every foreign ELF binary to a ``qemu-<arch>-static``
interpreter. That interpreter is registered with the ``F`` (fix-binary) flag, so the kernel opens it once at
registration and uses it from any mount namespace: a container's root need not contain it. runner's guest
image registers the other architecture's emulator at boot (vmimage/init); natively the host's own
registration is used (Debian: ``qemu-user-static``, flags ``OPF``).

Nothing here installs or registers anything. ``check`` only decides, before a container is created, that
its image will run, and otherwise says why in one line instead of letting the first ``execve`` fail with
"exec format error". Standard library only: it runs in the guest.
"""

from __future__ import annotations

import os

from runner.errors import ImageNotFound, PlatformError

BINFMT_DIR = "/proc/sys/fs/binfmt_misc"

# ELF e_machine of each OCI architecture (the two bytes at offset 18 of an ELF header, little-endian).
E_MACHINE = {"amd64": 0x3E, "arm64": 0xB7, "386": 0x03, "arm": 0x28, "riscv64": 0xF3, "ppc64le": 0x15,
             "s390x": 0x16, "mips64le": 0x08, "loong64": 0x102}
# What a CPU of the key's architecture runs without emulation besides its own (32-bit modes).
NATIVE_ALSO = {"amd64": ("386",), "arm64": ("arm",)}


# uname -m -> OCI architecture, for the fast path (the image is of this machine) that imports nothing more.
_UNAME_TO_OCI = {"x86_64": "amd64", "aarch64": "arm64"}


def image_platform(config: dict):
    """An image config's platform, or None when it names no architecture (nothing to check)."""
    from runner.images import platform as platforms

    arch = config.get("architecture")
    if not arch:
        return None
    return platforms.normalize(str(config.get("os") or "linux"), str(arch), str(config.get("variant") or ""))


def check(ref: str, config: dict, wanted: str | None, binfmt_dir: str = BINFMT_DIR, host=None) -> None:
    """Refuse, before anything is created, an image that is not the ``--platform`` asked for (ImageNotFound:
    the CLI then pulls that platform, as docker does) or whose architecture this kernel cannot execute."""
    if not wanted and host is None and config.get("architecture") in (None, "", _UNAME_TO_OCI.get(os.uname().machine)):
        return  # the common case, decided without importing the platform rules (a container start's hot path)
    from runner.images import platform as platforms

    actual = image_platform(config)
    if wanted:
        want = platforms.parse_platform(wanted)
        if actual is not None and not platforms.matches(actual, want):
            raise ImageNotFound(f"image {ref} is {actual}, not the requested platform {want}",
                                hint=f"pull that platform: runner pull --platform {want} {ref}")
    if actual is None:
        return
    host = host or platforms.host_platform()
    if actual.architecture == host.architecture or actual.architecture in NATIVE_ALSO.get(host.architecture, ()):
        return
    problem = emulator_problem(actual.architecture, binfmt_dir)
    if problem:
        raise PlatformError(f"image {ref} is {actual} and this machine ({host}) cannot run it: {problem}",
                            hint=f"use an image for {host}, or register a user-mode emulator for "
                                 f"{actual.architecture} (Debian/Ubuntu: apt-get install qemu-user-static)")


def emulator_problem(arch: str, binfmt_dir: str = BINFMT_DIR) -> str | None:
    """None when binfmt_misc has an enabled handler with the F flag for ``arch``'s 64- or 32-bit ELF binaries;
    otherwise what is missing, in a few words."""
    machine = E_MACHINE.get(arch)
    if machine is None:
        return f"runner does not know the ELF machine of {arch}"
    try:
        if _read(os.path.join(binfmt_dir, "status")) != "enabled":
            return "binfmt_misc is not mounted or disabled"
        names = [n for n in os.listdir(binfmt_dir) if n not in ("status", "register")]
    except OSError:
        return "binfmt_misc is not mounted"
    found_without_f = None
    for name in sorted(names):
        entry = parse_entry(_read(os.path.join(binfmt_dir, name)))
        if entry is None or not entry["enabled"] or entry["machine"] != machine:
            continue
        if "F" in entry["flags"]:
            return None
        found_without_f = name
    if found_without_f:
        return (f"its binfmt_misc handler {found_without_f!r} lacks the F flag (its interpreter would have to "
                f"exist inside the container)")
    return f"no emulator for {arch} is registered (binfmt_misc)"


def parse_entry(text: str) -> dict | None:
    """One ``/proc/sys/fs/binfmt_misc/<name>`` file -> enabled, flags and the ELF machine its magic matches
    (None for entries that do not match ELF headers by magic at offset 0)."""
    fields: dict[str, str] = {}
    lines = text.splitlines()
    for line in lines[1:]:
        key, _, value = line.partition(" ")
        fields[key.rstrip(":")] = value.strip()
    magic = fields.get("magic", "")
    if fields.get("offset", "0") != "0" or not magic.startswith("7f454c46") or len(magic) < 40:
        return None
    try:
        machine = int(magic[38:40] + magic[36:38], 16)
    except ValueError:
        return None
    return {"enabled": bool(lines) and lines[0] == "enabled", "flags": fields.get("flags", ""), "machine": machine}


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""
