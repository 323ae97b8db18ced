"""The guest image artifacts on the host: where they are cached, and proof that they are intact.

A guest image is four files built by ``vmimage/`` (see vmimage/README.md for the guest contract)::

    kernel          ELF vmlinux (x86_64, PVH boot) or arm64 Image, for QEMU -kernel
    initrd.img      stage-1 initramfs (uncompressed newc); runner.vm.initrd appends the per-VM config to it
    rootfs.ext4     read-only root disk, attached as virtio-blk with serial ``runner-root`` (readonly=on)
    manifest.json   image_version, arch, kernel_version, cmdline, and file/size/sha256 of every artifact

They live in ``<platformdirs user cache>/runner/vmimage/<IMAGE_VERSION>/<arch>/``. Every artifact's sha256
is checked against the manifest before it is handed to QEMU, so a partial download or a flipped bit is
found here, with a clear message, instead of as a guest that hangs or panics under TCG. The images are
built on Linux only (mmdebstrap); macOS and Windows hosts pull them from a registry as an OCI artifact
(runner.vm.artifact), pinned by digest per runner release.
Stdlib only; platformdirs is imported lazily so importing this module stays cheap.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from runner.errors import PlatformError, VMError

from vmimage.version import IMAGE_VERSION  # the recipe owns its contract version (it ships beside runner/)

ARCHES = ("x86_64", "aarch64")
CACHE_ENV = "RUNNER_VMIMAGE_DIR"
ROLES = ("kernel", "initrd", "rootfs")


@dataclass(frozen=True)
class Artifacts:
    """Verified paths of one arch's guest image, plus what the manifest says about booting it."""

    arch: str
    kernel: Path
    initrd: Path
    rootfs: Path | None
    manifest: Path
    kernel_version: str
    cmdline: str


def cache_dir(arch: str) -> Path:
    """``$RUNNER_VMIMAGE_DIR/<version>/<arch>`` if set, else platformdirs' user cache dir for runner."""
    _check_arch(arch)
    override = os.environ.get(CACHE_ENV)
    if override:
        root = Path(override)
    else:
        import platformdirs  # lazy: only the VM backend needs it

        root = Path(platformdirs.user_cache_dir("runner")) / "vmimage"
    return root / IMAGE_VERSION / arch


def _check_arch(arch: str) -> None:
    if arch not in ARCHES:
        raise VMError(f"unknown guest arch {arch!r}", hint=f"use one of: {', '.join(ARCHES)}")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify(directory: str | os.PathLike, arch: str) -> Artifacts:
    """Check the manifest and every artifact's size and sha256; raise VMError naming the first bad file."""
    directory = Path(directory)
    manifest_path = directory / "manifest.json"
    try:
        manifest = json.loads(manifest_path.read_text())
    except FileNotFoundError as exc:
        raise VMError(f"no guest image in {directory} (manifest.json missing)") from exc
    except (OSError, ValueError) as e:
        raise VMError(f"unreadable guest image manifest {manifest_path}: {e}") from e
    if manifest.get("arch") != arch or str(manifest.get("image_version")) != IMAGE_VERSION:
        raise VMError(f"{manifest_path} is for {manifest.get('arch')} image version "
                      f"{manifest.get('image_version')}, expected {arch} version {IMAGE_VERSION}")
    arts = manifest.get("artifacts", {})
    paths: dict[str, Path | None] = {}
    stamps = _load_stamps(directory)
    for role in ROLES:
        entry = arts.get(role)
        if entry is None:
            if role == "rootfs":
                paths[role] = None
                continue
            raise VMError(f"{manifest_path} lists no {role} artifact")
        path = directory / entry["file"]
        if not path.is_file():
            raise VMError(f"guest image file {path} is missing")
        if path.stat().st_size != entry["size"]:
            raise VMError(f"guest image file {path} has {path.stat().st_size} bytes, manifest says "
                          f"{entry['size']} (partial download or build?)")
        if not _stamped(path, entry["sha256"], stamps) and _sha256(path) != entry["sha256"]:
            raise VMError(f"guest image file {path} is corrupt (sha256 does not match manifest.json)")
        paths[role] = path
    _save_stamps(directory, paths, arts)
    return Artifacts(arch=arch, kernel=paths["kernel"], initrd=paths["initrd"], rootfs=paths["rootfs"],
                     manifest=manifest_path, kernel_version=manifest.get("kernel_version", ""),
                     cmdline=manifest.get("cmdline", ""))


# Hashing the ~240 MB of artifacts costs ~0.5 s on every start, a large share of a snapshot fast start. So a
# file whose hash matched is remembered by (sha256, size, mtime, inode, ctime) in .verified.json beside the
# manifest, and hashed again only when any of those change (a re-download, a rebuild, a partial write: all
# change size or times). Without write access to the directory every start hashes, as before.
STAMPS = ".verified.json"


def _identity(path: Path, sha256: str) -> list:
    st = path.stat()
    return [sha256, st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns]


def _load_stamps(directory: Path) -> dict:
    try:
        data = json.loads((directory / STAMPS).read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _stamped(path: Path, sha256: str, stamps: dict) -> bool:
    try:
        return stamps.get(path.name) == _identity(path, sha256)
    except OSError:
        return False


def _save_stamps(directory: Path, paths: dict, arts: dict) -> None:
    try:
        new = {p.name: _identity(p, arts[role]["sha256"]) for role, p in paths.items() if p is not None}
        if new != _load_stamps(directory):
            from runner import procs

            procs.write_atomic(directory / STAMPS, json.dumps(new), 0o644, durable=False)
    except OSError:
        pass


def build(arch: str, out_dir: str | os.PathLike, force: bool = False) -> Artifacts:
    """Build the image for ``arch`` into ``out_dir`` (Linux, root) and return the verified artifacts."""
    _check_arch(arch)
    if platform.system() != "Linux":
        raise PlatformError("the guest image can only be built on Linux", hint=_download_hint(out_dir))
    from vmimage.build import BuildError, HostError, build as run_build  # the recipe ships beside runner/

    try:
        run_build(arch, out_dir, force=force)
    except HostError as e:
        raise PlatformError(f"cannot build the {arch} guest image here: {e}",
                            hint="apt-get install $(cat vmimage/requirements-apt.txt), run as root") from e
    except BuildError as e:
        raise VMError(f"guest image build failed: {e}", hint="see vmimage/README.md for build requirements") from e
    return verify(out_dir, arch)


def _download_hint(directory: Path | str) -> str:
    return ("pull a published guest with `runner vm image pull REF` (or set RUNNER_GUEST_IMAGE / the config's "
            "vm.image), "
            f"or build it on a Linux machine (`runner vm image build`, as root, needs mmdebstrap) and copy its "
            f"vmimage/{IMAGE_VERSION}/<arch> cache directory's files into {directory} (or set {CACHE_ENV})")


def ensure(arch: str | None = None, build_if_missing: bool = True,
           fetch: Callable[[str], bool] | None = None) -> Artifacts:
    """Return verified artifacts for ``arch``; if missing or broken, first ``fetch(arch)`` (the registry pull of
    runner.vm.artifact_pull.ensure, which returns False when no guest reference is configured), else on Linux
    (if allowed) rebuild a missing, corrupt or stale one.

    Verification happens on every call, before QEMU is started: it costs a few hundred ms of hashing
    (once: then a stamp remembers it), far less than debugging a guest booted from a truncated kernel.
    """
    if not arch:
        from runner.vm.accel import host_arch

        arch = host_arch()
    directory = cache_dir(arch)
    can_build = build_if_missing and platform.system() == "Linux"
    try:
        artifacts = verify(directory, arch)
    except VMError as problem:
        if fetch is not None and fetch(arch):
            return verify(directory, arch)
        if can_build:
            return build(arch, directory, force=True)
        raise VMError(problem.message, hint=_download_hint(directory)) from problem
    if can_build and not _pulled(directory) and _recipe_changed(artifacts):
        # A developer edited vmimage/ (init, package list): boot what the source says, not a stale image.
        try:
            return build(arch, directory)
        except PlatformError:
            return artifacts  # cannot build here (not root, tools missing): the intact old image still boots
    return artifacts


def _pulled(directory: Path) -> bool:
    """A pulled guest is what its publisher built: a changed local recipe does not rebuild over it."""
    return (directory / ".source.json").is_file()


def _recipe_changed(artifacts: Artifacts) -> bool:
    """True if the recipe beside this code differs from the one the image was built from (Linux only)."""
    try:
        from vmimage.build import recipe_hash
    except ImportError:  # an install without the recipe can only use the image as it is
        return False
    return json.loads(artifacts.manifest.read_text()).get("recipe") != recipe_hash(artifacts.arch)
