"""Build the runner guest image from Debian packages: ``python3 -m vmimage.build --arch x86_64 --out DIR``.

Runs on a Debian/Ubuntu Linux host as root (mmdebstrap, apt, mkfs.ext4, depmod; see requirements-apt.txt).
macOS and Windows users never run this: they download the published artifacts (see README.md).

Produces in ``DIR``::

    kernel          x86_64: the generic Debian kernel's ELF ``vmlinux`` (PVH direct boot; skipping the XZ
                    decompressor saves ~5 s under TCG); aarch64: the generic kernel's uncompressed ``Image``
    initrd.img      small uncompressed newc initramfs: busybox, the modules needed to mount the root, /init
    rootfs.ext4     read-only ext4 root: Debian essential + python3, dropbear, iproute2, iptables, kmod, ...
    manifest.json   image version, arch, kernel version, cache key, package versions, sha256 of each artifact

Stdlib only, and the output is keyed: a rebuild with the same recipe files and the same resolved Debian
package versions is a no-op after checking the manifest's sha256 sums.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import lzma
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from runner.vm.initrd import CpioWriter
from vmimage.version import IMAGE_VERSION

HERE = Path(__file__).resolve().parent
RECIPE_FILES = ("build.py", "init", "poweroff")
SUITE = "bookworm"

# Only what the guest needs: full python3 (the agent uses json, shutil, asyncio, ctypes), dropbear
# (an SSH server that is fast under TCG; -bin has dropbearconvert for OpenSSH keys), networking tools for
# container networks, e2fsprogs to format the data disk, kmod so the kernel can autoload modules, and
# util-linux's mount (not Essential) so the host can mount 9p shares over SSH, libseccomp2 for the containers'
# seccomp filters (the engine compiles them with it through ctypes).
PACKAGES = ("python3", "dropbear-bin", "iproute2", "iptables", "busybox-static", "e2fsprogs",
            "ca-certificates", "kmod", "mount", "libseccomp2", "qemu-user-static")
PATH_EXCLUDES = ("/usr/share/man/*", "/usr/share/doc/*", "/usr/share/locale/*", "/usr/share/info/*",
                 "/usr/share/lintian/*", "/usr/share/bash-completion/*")

# Foreign-architecture images (run --platform): the other architecture's user-mode emulator from
# qemu-user-static, and only that one (the whole package is ~380 MB unpacked, one emulator 11-13 MB), with the
# package's binfmt.d entry, which registers it with flags OPF: F opens the emulator at registration, so
# containers (another root) run foreign binaries without it in their rootfs. The init registers it at boot.
EMULATOR = {"x86_64": "aarch64", "aarch64": "x86_64"}
EMULATOR_EXCLUDES = ("/usr/bin/qemu-*", "/usr/libexec/qemu-binfmt/*", "/usr/lib/binfmt.d/*", "/usr/share/binfmts/*")


def emulator_includes(arch: str) -> tuple[str, ...]:
    emu = EMULATOR[arch]
    return (f"/usr/bin/qemu-{emu}-static", f"/usr/libexec/qemu-binfmt/{emu}-binfmt-P",
            f"/usr/lib/binfmt.d/qemu-{emu}.conf")


ARCHES = {
    # arch: (Debian arch, kernel metapackage, extra boot modules for the power button)
    "x86_64": ("amd64", "linux-image-amd64", (("always", "button"),)),
    "aarch64": ("arm64", "linux-image-arm64", (("always", "gpio_keys"),)),
}

# Modules loaded by stage 1 (from the initramfs) to mount the root disk. ext4 needs crc32c through the
# crypto API, which cannot be autoloaded before the root (and modprobe) exist.
STAGE1_MODULES = ("virtio_pci", "virtio_blk", "crc32c_generic", "ext4", "overlay")
# Loaded by stage 2 only if QEMU offers the device (virtio device id as /sys/bus/virtio/devices/*/device
# shows it), or "always". There is no udev: a driver not loaded here never binds its device.
STAGE2_MODULES = (
    ("0x0001", "virtio_net"), ("0x0003", "virtio_console"), ("0x0004", "virtio_rng"),
    ("0x0009", "9pnet_virtio"), ("0x0009", "9p"), ("0x0013", "vmw_vsock_virtio_transport"),
    ("always", "evdev"),
)
# Shipped but loaded on demand by the kernel (through kmod's modprobe) when containers need them.
ON_DEMAND_MODULES = ("veth", "bridge", "br_netfilter", "nf_tables", "nft_chain_nat", "nft_nat", "nft_masq",
                     "nft_ct", "nft_compat", "nft_reject_inet", "nft_fib_inet", "xt_MASQUERADE",
                     "xt_conntrack", "xt_addrtype", "xt_tcpudp", "xt_comment", "xt_mark", "xt_nat",
                     "xt_multiport", "nf_conntrack_netlink", "tun", "loop", "squashfs", "vsock_loopback",
                     "binfmt_misc")

CMDLINE = {"x86_64": "console=ttyS0 quiet panic=-1", "aarch64": "console=ttyAMA0 quiet panic=-1"}


class BuildError(RuntimeError):
    """A build step failed; the message says which and why."""


class HostError(BuildError):
    """This host cannot build the image at all (not Linux, not root, tools or binfmt missing)."""


def log(msg: str) -> None:
    print(f"vmimage: {msg}", file=sys.stderr, flush=True)


def run(*argv: str, capture: bool = False, **kw) -> str:
    """Run a command; on failure raise BuildError with its last output lines."""
    proc = subprocess.run(argv, text=True, stdout=subprocess.PIPE if capture else subprocess.DEVNULL,
                          stderr=subprocess.PIPE, **kw)
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
        raise BuildError(f"{argv[0]} failed (exit {proc.returncode}):\n{tail}")
    return proc.stdout if capture else ""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ---------------------------------------------------------------- preflight and cache key

def preflight(arch: str) -> None:
    """Fail early with one clear line per missing tool; enable the foreign apt arch / binfmt if needed."""
    if platform.system() != "Linux":
        raise HostError("the guest image builds on Linux only; download the release artifacts instead")
    if os.geteuid() != 0:
        raise HostError("building the guest image needs root (mmdebstrap and mkfs.ext4 -d keep ownership)")
    missing = [t for t in ("mmdebstrap", "apt-get", "apt-cache", "dpkg-deb", "dpkg-query", "mkfs.ext4",
                           "depmod") if shutil.which(t) is None]
    if ARCHES[arch][0] != _native_debarch() and shutil.which("arch-test") is None:
        missing.append("arch-test")
    if missing:
        raise HostError(f"missing tools: {', '.join(missing)} (apt-get install $(cat vmimage/requirements-apt.txt))")
    debarch = ARCHES[arch][0]
    if debarch != _native_debarch():
        foreign = run("dpkg", "--print-foreign-architectures", capture=True).split()
        if debarch not in foreign:
            log(f"adding apt architecture {debarch} and updating package lists")
            run("dpkg", "--add-architecture", debarch)
            run("apt-get", "update")
        _ensure_binfmt(arch)


def _native_debarch() -> str:
    return run("dpkg", "--print-architecture", capture=True).strip()


def _ensure_binfmt(arch: str) -> None:
    """mmdebstrap runs the foreign rootfs' maintainer scripts through qemu-user via binfmt_misc."""
    binfmt = Path("/proc/sys/fs/binfmt_misc")
    if not (binfmt / "status").exists():
        subprocess.run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(binfmt)], capture_output=True)
    entry = binfmt / f"qemu-{arch}"
    if not entry.exists() and shutil.which("update-binfmts"):
        subprocess.run(["update-binfmts", "--enable", f"qemu-{arch}"], capture_output=True)
    if not entry.exists() or "enabled" not in entry.read_text():
        raise HostError(f"no binfmt_misc handler for {arch}: apt-get install qemu-user-static binfmt-support, "
                         "and mount binfmt_misc (mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc)")


def apt_sources() -> list[str]:
    """The host's apt source files, handed to mmdebstrap so the build uses this machine's mirrors."""
    files = [Path("/etc/apt/sources.list")] + sorted(Path("/etc/apt/sources.list.d").glob("*.sources")) \
        + sorted(Path("/etc/apt/sources.list.d").glob("*.list"))
    return [str(f) for f in files if f.is_file() and f.read_text().strip()]


def apt_cache(out: Path, *args: str) -> str:
    """apt-cache with a binary cache kept in the output dir. Hosts (CI images, containers) often disable
    apt's own pkgcache, and then every apt-cache call re-parses all package lists: ~4 s each. apt
    revalidates this cache against the lists, so it is never stale."""
    out.mkdir(parents=True, exist_ok=True)
    return run("apt-cache", "-o", f"Dir::Cache::pkgcache={out / '.apt-pkgcache.bin'}",
               "-o", "Dir::Cache::srcpkgcache=", *args, capture=True)


def candidate_versions(out: Path, packages: list[str]) -> dict[str, str]:
    """Current apt candidate version of each "name:arch" (arch as dpkg records it, "all" included)."""
    text = apt_cache(out, "show", "--no-all-versions", *packages)
    versions: dict[str, str] = {}
    for stanza in text.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in stanza.splitlines() if ": " in line and line[0] != " ")
        if {"Package", "Version", "Architecture"} <= fields.keys():
            versions[f"{fields['Package']}:{fields['Architecture']}"] = fields["Version"]
    return versions


def kernel_package(out: Path, arch: str) -> str:
    """The versioned linux-image package the metapackage currently points at."""
    debarch, meta, _ = ARCHES[arch]
    for line in apt_cache(out, "depends", f"{meta}:{debarch}").splitlines():
        m = re.match(r"\s*Depends: (linux-image-[0-9][^:\s]*)", line)
        if m:
            return m.group(1)
    raise BuildError(f"cannot resolve {meta} for {debarch}; run apt-get update")


def recipe_hash(arch: str) -> str:
    h = hashlib.sha256(f"{IMAGE_VERSION}\0{arch}\0{SUITE}\0{PACKAGES}\0{PATH_EXCLUDES}\0"
                       f"{EMULATOR_EXCLUDES}\0{emulator_includes(arch)}".encode())
    for name in RECIPE_FILES:
        h.update((HERE / name).read_bytes())
    h.update((HERE.parent / "runner" / "vm" / "initrd.py").read_bytes())
    return h.hexdigest()


def up_to_date(out: Path, arch: str) -> bool:
    """True if ``out`` holds a verified build of this recipe whose packages are still apt's candidates."""
    try:
        manifest = json.loads((out / "manifest.json").read_text())
    except (OSError, ValueError):
        return False
    if manifest.get("recipe") != recipe_hash(arch) or manifest.get("arch") != arch:
        return False
    packages = manifest.get("packages", {})
    if f"{kernel_package(out, arch)}:{ARCHES[arch][0]}" not in packages:
        return False
    if candidate_versions(out, sorted(packages)) != packages:
        return False
    for art in manifest.get("artifacts", {}).values():
        path = out / art["file"]
        if not path.is_file() or path.stat().st_size != art["size"] or sha256_file(path) != art["sha256"]:
            return False
    return True


# ---------------------------------------------------------------- kernel and modules

def fetch_kernel(out: Path, arch: str, work: Path) -> tuple[str, str, Path]:
    """Download and unpack the generic kernel package; return (package, version, unpacked dir)."""
    debarch = ARCHES[arch][0]
    pkg = kernel_package(out, arch)
    dl = work / "deb"
    dl.mkdir()
    # apt-get download runs as _apt when it can; a root-only temp dir just makes it warn.
    run("apt-get", "download", f"{pkg}:{debarch}", cwd=dl)
    deb = next(dl.glob("*.deb"))
    version = run("dpkg-deb", "-f", str(deb), "Version", capture=True).strip()
    unpacked = work / "kernel-pkg"
    run("dpkg-deb", "-x", str(deb), str(unpacked))
    deb.unlink()
    return pkg, version, unpacked


def extract_kernel(arch: str, unpacked: Path, dest: Path) -> str:
    """Write the bootable kernel to ``dest`` and return the kernel release (``uname -r``)."""
    vmlinuz = next((unpacked / "boot").glob("vmlinuz-*"))
    release = vmlinuz.name[len("vmlinuz-"):]
    data = vmlinuz.read_bytes()
    if arch == "x86_64":
        # The bzImage wraps an XZ-compressed ELF vmlinux. Decompressing it here instead of in the guest saves
        # seconds under TCG, and QEMU boots the ELF through its PVH entry point (Debian sets CONFIG_PVH=y).
        start = data.find(b"\xfd7zXZ\x00")
        if start < 0:
            raise BuildError(f"{vmlinuz.name}: no XZ payload found; cannot extract vmlinux")
        elf = lzma.LZMADecompressor().decompress(data[start:])
        if elf[:4] != b"\x7fELF":
            raise BuildError(f"{vmlinuz.name}: XZ payload is not an ELF vmlinux")
        dest.write_bytes(elf)
    else:
        # Debian's arm64 vmlinuz is already the uncompressed Image (magic "ARM\x64" at offset 56).
        if data[56:60] != b"ARM\x64":
            raise BuildError(f"{vmlinuz.name}: not an uncompressed arm64 Image")
        dest.write_bytes(data)
    return release


def _module_index(moddir: Path) -> dict[str, Path]:
    return {p.name[:-3].replace("-", "_"): p for p in moddir.rglob("*.ko")}


def _module_deps(path: Path) -> list[str]:
    m = re.search(rb"(?:^|\0)depends=([^\0]*)\0", path.read_bytes())
    return [d.replace("-", "_") for d in m.group(1).decode().split(",") if d] if m else []


def module_closure(index: dict[str, Path], roots, exclude=()) -> list[str]:
    """Modules ``roots`` need, dependencies first (insmod order), minus those already in ``exclude``."""
    order: list[str] = []
    seen = set(exclude)

    def visit(name: str) -> None:
        if name in seen:
            return
        seen.add(name)
        if name not in index:
            raise BuildError(f"kernel module {name} not found in the kernel package")
        for dep in _module_deps(index[name]):
            visit(dep)
        order.append(name)

    for root in roots:
        visit(root)
    return order


def strip_signature(data: bytes) -> bytes:
    """Drop a module's appended signature: checking it costs tens of ms per module under TCG, and the
    modules come from the verified Debian package inside a checksummed image (the kernel does not enforce
    signatures; an unsigned module only sets the harmless "E" taint flag)."""
    magic = b"~Module signature appended~\n"
    if not data.endswith(magic):
        return data
    # struct module_signature (12 bytes) precedes the magic; its last field is the big-endian sig length.
    info = data[-len(magic) - 12:-len(magic)]
    sig_len = int.from_bytes(info[8:12], "big")
    return data[:-len(magic) - 12 - sig_len]


def install_modules(arch: str, unpacked: Path, release: str, rootfs: Path) -> list[str]:
    """Copy the selected modules into the rootfs and run depmod; write stage2.list; return stage 1's paths.

    stage2.list lines are "<virtio device id or always> <path>", dependencies first.
    """
    src = unpacked / "lib" / "modules" / release
    index = _module_index(src)
    stage1 = module_closure(index, STAGE1_MODULES)
    stage2: list[tuple[str, str]] = []
    loaded = list(stage1)
    for when, name in STAGE2_MODULES + ARCHES[arch][2]:
        for mod in module_closure(index, [name], exclude=loaded):
            stage2.append((when, mod))
            loaded.append(mod)
    rest = module_closure(index, ON_DEMAND_MODULES, exclude=loaded)
    dst = rootfs / "usr" / "lib" / "modules" / release
    for name in loaded + rest:
        rel = index[name].relative_to(src)
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        (dst / rel).write_bytes(strip_signature(index[name].read_bytes()))
    for meta in ("modules.order", "modules.builtin", "modules.builtin.modinfo"):
        if (src / meta).exists():
            shutil.copy2(src / meta, dst / meta)
    # modules.dep/alias let the kernel autoload the on-demand modules (veth, nf_tables, ...) via modprobe.
    run("depmod", "-b", str(rootfs), release)
    (rootfs / "usr/lib/modules/stage2.list").write_text(
        "".join(f"{when} {index[mod].relative_to(src)}\n" for when, mod in stage2))
    return [str(index[n].relative_to(src)) for n in stage1]


# ---------------------------------------------------------------- rootfs

def build_rootfs(arch: str, rootfs: Path) -> None:
    debarch = ARCHES[arch][0]
    argv = ["mmdebstrap", "--variant=essential", f"--architectures={debarch}",
            "--include=" + ",".join(PACKAGES),
            # merged-usr via the hook: without it perl is pulled in (+50 MB)
            "--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr"]
    argv += [f"--dpkgopt=path-exclude={p}" for p in PATH_EXCLUDES + EMULATOR_EXCLUDES]
    # dpkg applies the filters in order, the last match deciding: these bring back what the guest uses.
    argv += [f"--dpkgopt=path-include={p}" for p in emulator_includes(arch)]
    argv += ["--dpkgopt=path-include=/usr/share/doc/*/copyright", SUITE, str(rootfs)] + apt_sources()
    log(f"mmdebstrap {debarch} rootfs")
    run(*argv)


def customize_rootfs(rootfs: Path) -> None:
    """Install init, the power-button action and an empty inittab; drop what a read-only guest never uses."""
    lib = rootfs / "usr/lib/runner"
    lib.mkdir(parents=True, exist_ok=True)
    shutil.copy2(HERE / "init", lib / "init")
    (lib / "init").chmod(0o755)
    acpi = rootfs / "etc/acpi/PWRF"
    acpi.mkdir(parents=True, exist_ok=True)
    shutil.copy2(HERE / "poweroff", acpi / "00000080")
    (acpi / "00000080").chmod(0o755)
    # busybox init with an existing but empty inittab runs nothing: it only reaps orphans as PID 1.
    (rootfs / "etc/inittab").write_text("# runner: busybox init only reaps; /usr/lib/runner/init did the work\n")
    for d in ("runner", "var/lib/runner"):
        (rootfs / d).mkdir(parents=True, exist_ok=True)
    (rootfs / "runner").chmod(0o700)
    for junk in ("var/cache/apt", "var/lib/apt/lists", "var/log/apt", "etc/machine-id"):
        p = rootfs / junk
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()


def installed_packages(rootfs: Path) -> dict[str, str]:
    """{"name:arch": version} of everything installed in the rootfs (the cache key's package half)."""
    out = run("dpkg-query", f"--admindir={rootfs}/var/lib/dpkg", "-W", "-f",
              "${Package}:${Architecture} ${Version}\n", capture=True)
    return dict(line.split(" ", 1) for line in out.splitlines() if line)


def make_ext4(rootfs: Path, dest: Path) -> None:
    """A read-only root: no journal, no reserved blocks, fixed UUID, sized to content plus slack."""
    used = int(run("du", "-sxk", str(rootfs), capture=True).split()[0])
    size_kb = int(used * 1.15) + 16 * 1024
    run("mkfs.ext4", "-q", "-F", "-L", "runner-root", "-U", "6e75c0de-0000-4000-8000-72756e6e6572",
        "-O", "^has_journal", "-m", "0", "-E", "root_owner=0:0", "-d", str(rootfs), str(dest), f"{size_kb}k",
        env={**os.environ, "E2FSPROGS_FAKE_TIME": "0"})


def make_initrd(rootfs: Path, release: str, stage1: list[str], dest: Path) -> None:
    """The stage-1 initramfs: busybox, the root-disk modules, /init. Uncompressed: at ~3 MB, copying it is
    cheaper than any decompressor under TCG, and the per-VM config cpio can simply be appended."""
    with open(dest, "wb") as out:
        cpio = CpioWriter(out)
        for d in ("bin", "dev", "proc", "sys", "lib", "lib/modules", f"lib/modules/{release}"):
            cpio.add_dir(d)
        cpio.add_file("bin/busybox", (rootfs / "usr/bin/busybox").read_bytes(), 0o755)
        cpio.add_file("init", (HERE / "init").read_bytes(), 0o755)
        made = {f"lib/modules/{release}"}
        for rel in stage1:
            parts = rel.split("/")[:-1]
            for i in range(1, len(parts) + 1):
                d = f"lib/modules/{release}/" + "/".join(parts[:i])
                if d not in made:
                    cpio.add_dir(d)
                    made.add(d)
            cpio.add_file(f"lib/modules/{release}/{rel}",
                          (rootfs / "usr/lib/modules" / release / rel).read_bytes())
        cpio.add_file("lib/modules/stage1.list", "".join(f"always {p}\n" for p in stage1).encode())
        cpio.close()


# ---------------------------------------------------------------- main

def _remove_stale_work_dirs(out: Path) -> None:
    """Delete work dirs a killed build left behind, unless something is still mounted inside one
    (mmdebstrap mounts /proc, /sys and /dev/pts in the rootfs while it runs): never rmtree across a mount."""
    mounts = Path("/proc/self/mounts").read_text().split("\n")
    for stale in out.glob(".build-*"):
        if not any(f" {stale}/" in line for line in mounts):
            shutil.rmtree(stale, ignore_errors=True)


def build(arch: str, out_dir: str | os.PathLike, force: bool = False) -> Path:
    """Build (or reuse) the image for ``arch`` in ``out_dir``; return the manifest path."""
    if arch not in ARCHES:
        raise BuildError(f"unknown arch {arch!r}; expected one of {', '.join(ARCHES)}")
    out = Path(out_dir)
    preflight(arch)
    if not force and up_to_date(out, arch):
        log(f"{arch}: up to date in {out}")
        return out / "manifest.json"
    started = time.monotonic()
    out.mkdir(parents=True, exist_ok=True)
    _remove_stale_work_dirs(out)
    work = Path(tempfile.mkdtemp(prefix=".build-", dir=out))
    try:
        kpkg, kversion, unpacked = fetch_kernel(out, arch, work)
        stage = work / "out"
        stage.mkdir()
        release = extract_kernel(arch, unpacked, stage / "kernel")
        rootfs = work / "rootfs"
        build_rootfs(arch, rootfs)
        customize_rootfs(rootfs)
        stage1 = install_modules(arch, unpacked, release, rootfs)
        shutil.rmtree(unpacked)
        packages = installed_packages(rootfs)
        packages[f"{kpkg}:{ARCHES[arch][0]}"] = kversion
        make_initrd(rootfs, release, stage1, stage / "initrd.img")
        make_ext4(rootfs, stage / "rootfs.ext4")
        artifacts = {}
        for role, name in (("kernel", "kernel"), ("initrd", "initrd.img"), ("rootfs", "rootfs.ext4")):
            p = stage / name
            artifacts[role] = {"file": name, "size": p.stat().st_size, "sha256": sha256_file(p)}
        manifest = {
            "image_version": IMAGE_VERSION, "arch": arch, "kernel_version": release,
            "kernel_package": f"{kpkg} {kversion}", "cmdline": CMDLINE[arch],
            "layout": "initramfs stage 1 + read-only ext4 root (virtio serial runner-root) under a tmpfs overlay",
            "recipe": recipe_hash(arch), "suite": SUITE, "packages": dict(sorted(packages.items())),
            "artifacts": artifacts, "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        (stage / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        # Manifest last: a build interrupted while replacing files leaves a manifest that fails verification.
        (out / "manifest.json").unlink(missing_ok=True)
        for name in ("kernel", "initrd.img", "rootfs.ext4", "manifest.json"):
            os.replace(stage / name, out / name)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log(f"{arch}: built in {time.monotonic() - started:.0f} s -> {out}")
    return out / "manifest.json"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python3 -m vmimage.build", description=__doc__.splitlines()[0])
    ap.add_argument("--arch", choices=sorted(ARCHES), default=platform.machine().replace("arm64", "aarch64"))
    ap.add_argument("--out", required=True, help="output directory")
    ap.add_argument("--force", action="store_true", help="rebuild even if up to date")
    args = ap.parse_args(argv)
    try:
        build(args.arch, args.out, args.force)
    except BuildError as e:
        print(f"vmimage: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
