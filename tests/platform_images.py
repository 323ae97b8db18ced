"""Busybox images of a chosen CPU architecture, for the --platform tests (natively and in the VMs).

The binary comes from Debian's busybox-static of that architecture (``apt-get download`` from this machine's
apt sources: the arm64 lists are there once the aarch64 guest image was built, see vmimage/build.py), the
image is built as runner's default image is (runner.images.default) with the config naming that
architecture, and is written as a docker-save archive that ``runner load`` reads on any backend."""

from __future__ import annotations

import glob
import json
import os
import subprocess
import tempfile

from runner.images import archive, default
from runner.images.rootfs import import_rootfs
from runner.images.store import Store

DEBARCH = {"amd64": "amd64", "arm64": "arm64"}
UNAME = {"amd64": "x86_64", "arm64": "aarch64"}
VARIANT = {"amd64": "", "arm64": "v8"}


def busybox_binary(arch: str, directory: str) -> str:
    """A static busybox for ``arch`` ("amd64" / "arm64") extracted into ``directory``."""
    from vmimage.build import preflight

    preflight(UNAME[arch])  # a foreign arch: its apt lists and the host's binfmt emulator, as an image build
    subprocess.run(["apt-get", "download", f"busybox-static:{DEBARCH[arch]}"], cwd=directory, check=True,
                   capture_output=True, timeout=300)
    deb = glob.glob(os.path.join(directory, f"busybox-static_*_{DEBARCH[arch]}.deb"))[0]
    return default.busybox_from_deb(deb, directory)


def build_busybox(store: Store, arch: str, name: str | None, directory: str, label: str | None = None):
    """Store a busybox image for ``arch`` named ``name``; returns the Image. The applet list is read from the
    binary itself (``busybox --list``): a foreign one runs through the host's binfmt_misc emulator. ``label``:
    the architecture the config claims instead (an image no emulator of the machine can run)."""
    busybox = busybox_binary(arch, directory)
    with tempfile.TemporaryFile() as tar:
        default.write_rootfs(tar, busybox, default.applets(busybox), int(os.stat(busybox).st_mtime))
        tar.seek(0)
        return import_rootfs(store, tar, name, {"Env": [default.DEFAULT_PATH], "Cmd": ["sh"]},
                             platform={"architecture": label or arch, "os": "linux",
                                       **({"variant": VARIANT[arch]} if VARIANT[arch] and not label else {})})


def busybox_archive(arch: str, name: str, out_path: str, label: str | None = None) -> str:
    """Write a docker-save archive of a busybox image for ``arch`` named ``name`` to ``out_path``."""
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(os.path.join(tmp, "store"))
        build_busybox(store, arch, name, tmp, label)
        with open(out_path, "wb") as out:
            archive.save(store, [name], out)
    return out_path


def layout_entry(store: Store, image, arch: str) -> dict:
    """An image of ``store`` in the shape tests/registry/regtest_images.oci_layout takes (to push an index)."""
    with open(store.blob_path(image.manifest_digest), "rb") as f:
        manifest = f.read()
    doc = json.loads(manifest)
    return {"manifest": manifest, "digest": image.manifest_digest, "config": doc["config"]["digest"],
            "layers": [layer["digest"] for layer in doc["layers"]], "arch": arch, "variant": VARIANT[arch]}
