"""The offline default image ``localhost/busybox:latest``, built from Debian's ``busybox-static``.

Why: the first command in the README must work without a registry, on the host and inside the VM guest
(which ships busybox-static too). The rootfs is generated as a tar with sorted entries, fixed owners and
every mtime set to the busybox binary's own mtime (its build time, fixed per package version), and the
image config uses that time as ``created``: the same busybox binary always gives the same image ID,
here, in the guest and in CI.

Contents: ``bin/busybox``, a symlink in ``bin/`` per applet (``busybox --list``), ``usr/bin/env`` for
``#!/usr/bin/env`` scripts, ``/etc/passwd`` and ``/etc/group`` (root, nobody, ``user`` 1000),
``/tmp`` (1777), ``/root``, ``/home/user`` and empty mount points ``/dev``, ``/proc``, ``/sys``.

``scripts/build-default-image`` (runner.cli.default_image, which owns the output) builds it into a store
(``--root DIR``) or writes it as a docker/OCI archive (``--output FILE``). Standard library only; this module
prints nothing.
"""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
import tempfile
from typing import BinaryIO

from runner.errors import ImageError, NotFound
from runner.images.layers import decompressed
from runner.images.rootfs import DEFAULT_PATH, import_rootfs
from runner.images.store import Image, Store

DEFAULT_IMAGE = "localhost/busybox:latest"
BUSYBOX = "/bin/busybox"

PASSWD = ("root:x:0:0:root:/root:/bin/sh\n"
          "user:x:1000:1000:user:/home/user:/bin/sh\n"
          "nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n")
GROUP = "root:x:0:\nuser:x:1000:\nnogroup:x:65534:\n"


def ensure_default_image(store: Store, busybox: str = BUSYBOX) -> Image:
    """The default image, built from ``busybox`` first if the store lacks it."""
    try:
        return store.resolve(DEFAULT_IMAGE)
    except NotFound:
        return build_default_image(store, busybox)


def build_default_image(store: Store, busybox: str = BUSYBOX) -> Image:
    """Build ``localhost/busybox:latest`` from the static busybox binary at ``busybox``."""
    try:
        mtime = int(os.stat(busybox).st_mtime)
    except OSError as exc:
        raise ImageError(f"cannot build the default image: {busybox}: {exc.strerror}",
                         hint="install Debian's busybox-static package (apt-get install busybox-static)") from exc
    with tempfile.TemporaryFile() as tar:
        write_rootfs(tar, busybox, applets(busybox), mtime)
        tar.seek(0)
        return import_rootfs(store, tar, DEFAULT_IMAGE, {"Env": [DEFAULT_PATH], "Cmd": ["sh"], "WorkingDir": "/"},
                             created=mtime, created_by="runner: default image from busybox-static",
                             comment="built offline by runner.images.default")


def applets(busybox: str) -> list[str]:
    """The applet names the binary provides (``busybox --list``)."""
    try:
        out = subprocess.run([busybox, "--list"], capture_output=True, check=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise ImageError(f"cannot run {busybox} --list: {exc}",
                         hint="is it a busybox binary for this machine?") from exc
    names = sorted({n for n in out.decode().split() if n and "/" not in n and n != "busybox"})
    if not names:
        raise ImageError(f"{busybox} --list printed no applets")
    return names


def write_rootfs(out: BinaryIO, busybox: str, applet_names: list[str], mtime: int) -> None:
    """Write the rootfs tar: sorted entries, owners and mtimes fixed, so equal inputs give equal bytes."""
    entries: dict[str, tarfile.TarInfo] = {}
    payload: dict[str, bytes] = {}

    def add(name: str, kind: bytes, mode: int, uid: int = 0, data: bytes = b"", link: str = "") -> None:
        info = tarfile.TarInfo(name)
        info.type, info.mode, info.mtime, info.uid, info.gid = kind, mode, mtime, uid, uid
        info.uname = info.gname = ""
        info.linkname = link
        info.size = len(data)
        entries[name] = info
        payload[name] = data

    for directory, mode in (("bin", 0o755), ("dev", 0o755), ("etc", 0o755), ("home", 0o755), ("proc", 0o555),
                            ("root", 0o700), ("sys", 0o555), ("tmp", 0o1777), ("usr", 0o755), ("usr/bin", 0o755)):
        add(directory, tarfile.DIRTYPE, mode)
    add("home/user", tarfile.DIRTYPE, 0o755, uid=1000)
    with open(busybox, "rb") as f:
        add("bin/busybox", tarfile.REGTYPE, 0o755, data=f.read())
    for applet in applet_names:
        add(f"bin/{applet}", tarfile.SYMTYPE, 0o777, link="busybox")
    add("usr/bin/env", tarfile.SYMTYPE, 0o777, link="/bin/env")
    add("etc/passwd", tarfile.REGTYPE, 0o644, data=PASSWD.encode())
    add("etc/group", tarfile.REGTYPE, 0o644, data=GROUP.encode())
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(entries):
            tar.addfile(entries[name], io.BytesIO(payload[name]) if entries[name].isreg() else None)


def busybox_from_deb(deb: str, directory: str) -> str:
    """Extract ``bin/busybox`` from a busybox-static ``.deb`` into ``directory`` (mtime kept); return its path."""
    with open(deb, "rb") as f:
        if f.read(8) != b"!<arch>\n":
            raise ImageError(f"{deb} is not a Debian package")
        while True:
            header = f.read(60)
            if len(header) < 60:
                raise ImageError(f"{deb} has no data.tar member")
            member, size = header[:16].decode().strip().rstrip("/"), int(header[48:58])
            if member.startswith("data.tar"):
                data = io.BytesIO(f.read(size))
                break
            f.seek(size + (size & 1), os.SEEK_CUR)
    with tarfile.open(fileobj=decompressed(data), mode="r|") as tar:  # type: ignore[call-overload]
        for info in tar:
            if info.isreg() and info.name.lstrip("./") in ("bin/busybox", "usr/bin/busybox"):
                path = os.path.join(directory, "busybox")
                with open(path, "wb") as out:
                    out.write(tar.extractfile(info).read())  # type: ignore[union-attr]
                os.chmod(path, 0o755)
                os.utime(path, (info.mtime, info.mtime))
                return path
    raise ImageError(f"{deb} does not contain bin/busybox", hint="use the busybox-static package")
