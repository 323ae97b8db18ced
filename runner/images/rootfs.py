"""Turn a root filesystem tar into a one-layer OCI image (``runner import rootfs.tar NAME[:TAG]``).

The result is a proper image, indistinguishable from a pulled one: an OCI config (host architecture in
Go's naming, ``os`` linux, ``rootfs.diff_ids``, history) and an OCI manifest, stored through the same
content-addressed :class:`~runner.images.store.Store`. The layer is stored uncompressed, so its digest
is its diff_id and a ``save`` writes exactly the bytes that were imported. ``changes`` takes Docker's
``--change`` instructions (CMD, ENTRYPOINT, ENV, WORKDIR, USER, EXPOSE, VOLUME, LABEL, STOPSIGNAL), read and
applied by runner.images.dockerfile (ENV merges into the default ``PATH``, as Docker's).
The default image is built through here too, with a fixed ``created`` time so it is reproducible.
Standard library only.
"""

from __future__ import annotations

import json
import platform
import tarfile
import time
from typing import BinaryIO, Iterable

from runner.errors import ImageError
from runner.images import dockerfile
from runner.images.layers import decompressed
from runner.images.store import (MEDIA_OCI_CONFIG, MEDIA_OCI_LAYER, MEDIA_OCI_MANIFEST, Image, Store)

DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_GOARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64", "armv7l": "arm",
           "armv6l": "arm", "i386": "386", "i686": "386", "ppc64le": "ppc64le", "s390x": "s390x",
           "riscv64": "riscv64"}


def host_platform() -> dict:
    """This host's platform in OCI terms: ``{"architecture": "amd64", "os": "linux"}``."""
    machine = platform.machine().lower()
    result = {"architecture": _GOARCH.get(machine, machine), "os": "linux"}
    if machine.startswith("armv"):
        result["variant"] = machine[3:5]  # armv7l -> v7
    return result


def rfc3339(timestamp: float) -> str:
    """``2024-05-01T12:00:00Z`` for a Unix time, the form image configs use."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(timestamp))


def canonical_json(value: object) -> bytes:
    """Deterministic JSON bytes (sorted keys, no spaces), so equal content gets equal digests."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def import_rootfs(store: Store, fileobj: BinaryIO, name: str | None, config: dict | None = None,
                  changes: Iterable[str] = (), *, created: float | None = None,
                  created_by: str = "runner import", comment: str | None = None,
                  platform: dict | None = None) -> Image:
    """Store the (possibly compressed) rootfs tar ``fileobj`` as a one-layer image named ``name``.

    ``config`` is the initial ``config`` section (Cmd, Env, ...); ``changes`` are applied on top;
    ``created`` defaults to now; ``platform`` (``{"architecture": "arm64", "os": "linux"}``, as
    ``docker import --platform``) defaults to this machine's.
    """
    image_config = dockerfile.apply_changes({"Env": [DEFAULT_PATH], "Cmd": ["/bin/sh"], **(config or {})}, changes)
    diff_id, size = store.ingest(decompressed(fileobj))
    if not _looks_like_tar(store, diff_id, size):
        store.discard_unreferenced([diff_id])
        raise ImageError("the imported file is not a tar archive", hint="give a tar of a root filesystem")
    stamp = rfc3339(time.time() if created is None else created)
    history = {"created": stamp, "created_by": created_by}
    if comment:
        history["comment"] = comment
    config_doc = {**(platform or host_platform()), "created": stamp, "config": image_config,
                  "rootfs": {"type": "layers", "diff_ids": [diff_id]}, "history": [history]}
    config_bytes = canonical_json(config_doc)
    manifest = {"schemaVersion": 2, "mediaType": MEDIA_OCI_MANIFEST,
                "config": {"mediaType": MEDIA_OCI_CONFIG, "digest": store.put_bytes(config_bytes),
                           "size": len(config_bytes)},
                "layers": [{"mediaType": MEDIA_OCI_LAYER, "digest": diff_id, "size": size}]}
    return store.add(name, store.put_bytes(canonical_json(manifest)))


def _looks_like_tar(store: Store, digest: str, size: int) -> bool:
    """Whether the blob starts with a valid tar header (or is an empty archive)."""
    with store.open_blob(digest) as f:
        block = f.read(tarfile.BLOCKSIZE)
    if size == 0 or block == bytes(tarfile.BLOCKSIZE):
        return True
    try:
        tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
    except tarfile.HeaderError:
        return False
    return True
