"""`runner vm image push`: pack the cached guest images of each arch and push them as one OCI index.

Each arch's directory is verified first (a corrupt build is never published), its large files are
compressed once into ``<cache>/<version>/.packed/`` (keyed by the file's sha256, so a re-push compresses
nothing), and the blobs go up through the image push code (``runner.images.push``: HEAD, then upload,
monolithic or chunked, with its progress events). Manifests follow their blobs and the index comes last,
so a registry never serves an index whose parts are missing. Pure Python, like the pull.
"""

from __future__ import annotations

import json
import os
import threading
import zlib
from pathlib import Path
from typing import Callable, Iterable, Mapping

from runner.errors import VMError
from runner.vm import artifact, image

Progress = Callable[[dict], None]
LEVEL = 6
_CHUNK = 1 << 20


class _Files:
    """What ``runner.images.push`` needs of a store: blobs opened by digest (here: files on disk)."""

    def __init__(self) -> None:
        self.paths: dict[str, Path] = {}

    def add(self, path: Path, data: bytes | None = None) -> dict:
        import hashlib

        h, size = hashlib.sha256(), 0
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
                size += len(chunk)
        digest = "sha256:" + h.hexdigest()
        self.paths[digest] = path
        return {"digest": digest, "size": size}

    def open_blob(self, digest: str):
        return open(self.paths[digest], "rb")


def gzip_file(src: Path, dst: Path, level: int = LEVEL) -> None:
    """gzip ``src`` into ``dst`` (atomically); header mtime 0 and no name, so equal input gives equal bytes."""
    tmp = dst.with_name(dst.name + f".tmp.{os.getpid()}")
    try:
        comp = zlib.compressobj(level, zlib.DEFLATED, 31)  # wbits 31: gzip framing, zero mtime, no file name
        with open(src, "rb") as fin, open(tmp, "wb") as fout:
            while chunk := fin.read(_CHUNK):
                fout.write(comp.compress(chunk))
            fout.write(comp.flush())
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)


def _packed(arch: str, role: str, entry: dict, source: Path, emit: Progress) -> Path:
    packed_dir = image.cache_dir(arch).parent / ".packed"
    packed_dir.mkdir(parents=True, exist_ok=True)
    target = packed_dir / f"{entry['sha256']}.gz"
    if not target.exists():
        emit({"id": f"{arch}/{role}", "status": f"Compressing {entry['size'] / 1e6:.1f}MB"})
        gzip_file(source, target)
    return target


def pack(arch: str, files: _Files, emit: Progress) -> tuple[bytes, dict, list[dict]]:
    """(manifest bytes, guest manifest.json, blob descriptors) for one arch's verified cached image."""
    directory = image.cache_dir(arch)
    try:
        arts = image.verify(directory, arch)
    except VMError as exc:
        raise VMError(f"cannot push the {arch} guest image: {exc.message}",
                      hint=f"build it first: `runner vm image build --arch {arch}` (Linux, as root)") from exc
    guest_bytes = arts.manifest.read_bytes()
    guest = json.loads(guest_bytes)
    config = {"mediaType": artifact.CONFIG_TYPE, **files.add(arts.manifest)}
    layers = {}
    for role, entry in guest["artifacts"].items():
        if role not in artifact.LAYER_TYPES:
            continue
        blob = _packed(arch, role, entry, directory / entry["file"], emit)
        layers[role] = {"mediaType": artifact.LAYER_TYPES[role], **files.add(blob),
                        "annotations": {artifact.ANN_TITLE: entry["file"]}}
    manifest = artifact.build_manifest(guest, config, layers)
    return manifest, guest, [*layers.values(), config]


def push(ref: str, arches: Iterable[str] = image.ARCHES, *,
         credentials: Mapping[str, Mapping[str, str]] | None = None, insecure: Iterable[str] = (),
         progress: Progress | None = None) -> str:
    """Push the cached guest images of ``arches`` to ``ref`` (a tag) as one index; return the index digest."""
    from runner.images.digest import sha256_digest
    from runner.images.push import _push_blob
    from runner.images.reference import Reference
    from runner.images.registry import RegistryClient

    emit = progress or (lambda event: None)
    reference = Reference.parse(ref)
    if reference.digest:
        raise VMError(f"cannot push to {ref}: a push needs a tag, not a digest",
                      hint=f"push to a tag such as {reference.base}:{artifact.IMAGE_VERSION}; the digest is printed")
    client = RegistryClient(reference.registry, credentials=(credentials or {}).get(reference.registry),
                            insecure=reference.registry in set(insecure))
    repo = reference.repository
    client.ping()
    files, entries, cancel = _Files(), [], threading.Event()
    for arch in arches:
        manifest, guest, blobs = pack(arch, files, emit)
        for desc in blobs:
            _push_blob(client, files, repo, desc, [], emit, cancel)
        digest = client.put_manifest(repo, sha256_digest(manifest), manifest, artifact.OCI_MANIFEST)
        entries.append((arch, digest, len(manifest), guest))
        emit({"status": f"{arch}: manifest {digest}"})
    index = artifact.build_index(entries)
    digest = client.put_manifest(repo, reference.tag or "latest", index, artifact.OCI_INDEX)
    emit({"status": f"{reference.tag}: digest: {digest} size: {len(index)}"})
    return digest
