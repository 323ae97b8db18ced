"""``runner load`` and ``runner save``: image archives in the formats Docker and OCI tools exchange.

``load`` accepts, as a tar stream that may be gzip/xz/bzip2-compressed:

- ``docker save`` archives, legacy (``manifest.json``, ``repositories``, ``<id>.json``,
  ``<id>/layer.tar`` with symlinks for repeated layers) and Docker 25+ (``blobs/sha256/...``);
- OCI image layouts (``oci-layout``, ``index.json``, ``blobs/``), e.g. ``skopeo copy ... oci:`` tarred,
  named by the ``io.containerd.image.name`` annotation or a full ``org.opencontainers.image.ref.name``.

Nothing from the archive is ever written to a path built from a member name: regular members are
streamed into the content-addressed store (hashed on the way) and looked up through a name→digest
map, and member names with ``..`` or a leading ``/`` are refused before anything is stored. Every
digest, size and diff_id is checked; docker-archive layers (plain tars) are stored as they are, so the
image ID (config digest) and diff_ids survive a load/save round trip. Blobs the load brought in but no
image references (``repositories``, legacy ``json`` files, a refused image's layers) are removed.

``save`` writes what Docker 25+ writes: one tar that is both a ``docker save`` archive
(``manifest.json``, ``repositories``) and an OCI layout (``oci-layout``, ``index.json``,
``blobs/sha256``), with sorted members, zero mtimes and owners, so saving twice gives identical bytes.
Standard library only.
"""

from __future__ import annotations

import errno
import io
import json
import os
import posixpath
import tarfile
from typing import BinaryIO, Iterable

from runner.errors import ImageError, UsageError
from runner.images.digest import validate_digest
from runner.images.layers import HashingReader, decompressed
from runner.images.reference import Reference
from runner.images.rootfs import canonical_json, host_platform
from runner.images.store import (INDEX_TYPES, MEDIA_DOCKER_CONFIG, MEDIA_DOCKER_LAYER, MEDIA_DOCKER_LAYER_GZIP,
                                 MEDIA_DOCKER_MANIFEST, MEDIA_OCI_INDEX, Image, Store)

NAME_ANNOTATION = "io.containerd.image.name"
REF_ANNOTATION = "org.opencontainers.image.ref.name"
_MAX_LINKS = 16


class _Members:
    """What a loaded archive held: member path -> (digest, size) of its content in the store."""

    def __init__(self, store: Store):
        self.store = store
        self.files: dict[str, tuple[str, int]] = {}
        self.links: dict[str, str] = {}
        self.new_blobs: list[str] = []

    def get(self, path: str) -> tuple[str, int]:
        path = _member_path(path)
        for _ in range(_MAX_LINKS):
            if path in self.files:
                return self.files[path]
            if path not in self.links:
                raise ImageError(f"archive lacks {path!r}")
            path = self.links[path]
        raise ImageError(f"archive member {path!r} is a link loop")

    def json(self, path: str) -> object:
        digest, _ = self.get(path)
        with self.store.open_blob(digest) as f:
            try:
                return json.loads(f.read(8 << 20))
            except (ValueError, UnicodeDecodeError) as exc:
                raise ImageError(f"archive member {path!r} is not valid JSON: {exc}") from exc

    def blob(self, descriptor: object) -> str:
        """The digest of an OCI layout blob named by ``descriptor``, checked against its content and size."""
        if not isinstance(descriptor, dict):
            raise ImageError("OCI layout has an invalid descriptor")
        digest = validate_digest(descriptor.get("digest"))
        actual, size = self.get("blobs/sha256/" + digest[len("sha256:"):])
        if actual != digest:
            raise ImageError(f"OCI layout blob {digest} does not match its content ({actual})")
        if descriptor.get("size") != size:
            raise ImageError(f"OCI layout blob {digest} has {size} bytes, its descriptor says {descriptor.get('size')}")
        return digest


def load(store: Store, fileobj: BinaryIO) -> list[str]:
    """Load every image in a docker-save archive or OCI layout tar; return the names (or IDs) loaded."""
    members = _Members(store)
    try:
        _read_members(members, fileobj)
        if "oci-layout" in members.files and "index.json" in members.files:
            loaded = _load_oci(members)
        elif "manifest.json" in members.files:
            loaded = _load_docker(members)
        else:
            raise ImageError("archive is neither a docker save archive nor an OCI image layout",
                             hint="expected manifest.json, or oci-layout with index.json")
    finally:
        if members.new_blobs:
            store.discard_unreferenced(members.new_blobs)
    return loaded


def _read_members(members: _Members, fileobj: BinaryIO) -> None:
    stream = HashingReader(decompressed(fileobj))
    try:
        tar = tarfile.open(fileobj=stream, mode="r|")  # type: ignore[call-overload]
        for member in tar:
            path = _member_path(member.name)
            if member.isdir() or not path:
                continue
            if member.issym():
                if member.linkname.startswith("/"):
                    raise ImageError(f"unsafe archive member {member.name!r}: absolute symlink")
                members.links[path] = _member_path(posixpath.join(posixpath.dirname(path), member.linkname),
                                                   normalize=True)
            elif member.islnk():
                members.links[path] = _member_path(member.linkname)
            elif member.isreg():
                digest, size, new = members.store.ingest_new(tar.extractfile(member), None, member.size)
                members.files[path] = (digest, size)
                if new:
                    members.new_blobs.append(digest)
            else:
                raise ImageError(f"unexpected archive member {member.name!r}: not a file, directory or link")
        stream.drain()
    except (tarfile.TarError, EOFError, OSError) as exc:
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise  # the store's disk is full, the archive may be fine (runner.diskfull says so)
        raise ImageError(f"image archive is not a valid tar: {exc}") from exc


def _member_path(name: str, normalize: bool = False) -> str:
    """A member name as a relative path; ``..`` (or, with ``normalize``, ``..`` leaving the archive) refused."""
    if name.startswith("/"):
        raise ImageError(f"unsafe archive member {name!r}: absolute path")
    parts: list[str] = []
    for part in name.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not normalize or not parts:
                raise ImageError(f"unsafe archive member {name!r}: '..' in path")
            parts.pop()
            continue
        parts.append(part)
    return "/".join(parts)


def _load_docker(members: _Members) -> list[str]:
    entries = members.json("manifest.json")
    if not isinstance(entries, list):
        raise ImageError("manifest.json of the archive is not a list")
    store, loaded = members.store, []
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("Config"), str) \
                or not isinstance(entry.get("Layers"), list):
            raise ImageError("manifest.json entry lacks Config or Layers")
        config_digest, config_size = members.get(entry["Config"])
        config = store.read_json(config_digest)
        diff_ids = (config.get("rootfs") or {}).get("diff_ids")
        if not isinstance(diff_ids, list) or len(diff_ids) != len(entry["Layers"]):
            raise ImageError(f"image config {entry['Config']} does not list one diff_id per layer")
        descriptors = [_docker_layer(members, path, validate_digest(diff_id))
                       for path, diff_id in zip(entry["Layers"], diff_ids)]
        manifest = {"schemaVersion": 2, "mediaType": MEDIA_DOCKER_MANIFEST,
                    "config": {"mediaType": MEDIA_DOCKER_CONFIG, "digest": config_digest, "size": config_size},
                    "layers": descriptors}
        manifest_digest = store.put_bytes(canonical_json(manifest))
        tags = entry.get("RepoTags") or []
        if not isinstance(tags, list):
            raise ImageError("manifest.json RepoTags is not a list")
        loaded.extend(_add(store, [str(t) for t in tags], manifest_digest))
    return loaded


def _docker_layer(members: _Members, path: str, diff_id: str) -> dict:
    """The descriptor of a docker-archive layer after checking its uncompressed content is ``diff_id``."""
    digest, size = members.get(path)
    if digest != diff_id:
        with members.store.open_blob(digest) as blob:
            head = blob.read(2)
            blob.seek(0)
            if head != b"\x1f\x8b":
                raise ImageError(f"layer {path!r} does not match its diff_id {diff_id}")
            plain = HashingReader(decompressed(blob))
            plain.drain()
        if plain.digest != diff_id:
            raise ImageError(f"layer {path!r} does not match its diff_id {diff_id}")
    media_type = MEDIA_DOCKER_LAYER if digest == diff_id else MEDIA_DOCKER_LAYER_GZIP
    return {"mediaType": media_type, "digest": digest, "size": size}


def _load_oci(members: _Members) -> list[str]:
    layout = members.json("oci-layout")
    if not isinstance(layout, dict) or "imageLayoutVersion" not in layout:
        raise ImageError("oci-layout file of the archive is invalid")
    index = members.json("index.json")
    if not isinstance(index, dict) or not isinstance(index.get("manifests"), list):
        raise ImageError("index.json of the OCI layout lacks manifests")
    loaded = []
    for descriptor in index["manifests"]:
        manifest_digest = _platform_manifest(members, descriptor, depth=0)
        manifest = members.store.read_json(manifest_digest)
        members.blob(manifest.get("config"))
        for layer in manifest.get("layers") or []:
            members.blob(layer)
        loaded.extend(_add(members.store, _layout_names(descriptor), manifest_digest))
    return loaded


def _platform_manifest(members: _Members, descriptor: dict, depth: int) -> str:
    """The image manifest a layout descriptor designates; an index is narrowed to this host's platform."""
    digest = members.blob(descriptor)
    document = members.store.read_json(digest)
    if document.get("mediaType") not in INDEX_TYPES and "manifests" not in document:
        return digest
    children = document.get("manifests") or []
    if depth > 2 or not isinstance(children, list):
        raise ImageError(f"OCI layout index {digest} is nested too deeply or invalid")
    want = host_platform()
    present = [c for c in children if isinstance(c, dict) and _has_blob(members, c)]
    matching = [c for c in present if all((c.get("platform") or {}).get(k) == v for k, v in want.items())]
    if not matching and len(present) == 1:
        matching = present
    if not matching:
        raise ImageError(f"the archive has no image for {want['os']}/{want['architecture']}")
    return _platform_manifest(members, matching[0], depth + 1)


def _has_blob(members: _Members, descriptor: dict) -> bool:
    try:
        members.blob(descriptor)
    except ImageError:
        return False
    return True


def _layout_names(descriptor: dict) -> list[str]:
    """Image names from a layout descriptor's annotations (a bare tag names no repository: none)."""
    annotations = descriptor.get("annotations") or {}
    full = annotations.get(NAME_ANNOTATION)
    if full:
        return [str(full)]
    ref = str(annotations.get(REF_ANNOTATION) or "")
    return [ref] if ("/" in ref or ":" in ref) else []


def _add(store: Store, names: list[str], manifest_digest: str) -> list[str]:
    """Record the image under ``names`` and report them (familiar form), or its ID when unnamed."""
    if not names:
        return [store.add(None, manifest_digest).id]
    loaded = []
    for name in names:
        ref = Reference.parse(name)
        store.add(ref.name, manifest_digest)
        loaded.append(ref.familiar)
    return loaded


def save(store: Store, refs: Iterable[str], fileobj: BinaryIO) -> None:
    """Write the images ``refs`` name to ``fileobj`` as a docker-save archive that is also an OCI layout."""
    chosen: dict[str, tuple[Image, list[str]]] = {}
    for ref in refs:
        image = store.resolve(ref)
        _, names = chosen.setdefault(image.manifest_digest, (image, []))
        name = _given_name(ref, image)
        if name and name not in names:
            names.append(name)
    if not chosen:
        raise UsageError("no image to save", hint="name at least one image")
    blobs: set[str] = set()
    descriptors, docker_manifest, repositories = [], [], {}
    for image, names in chosen.values():
        blobs.update([image.manifest_digest, image.id], (layer.digest for layer in image.layers))
        base = {"mediaType": image.media_type, "digest": image.manifest_digest,
                "size": _blob_size(store, image.manifest_digest)}
        for name in names or [None]:
            descriptor = dict(base)
            if name:
                ref = Reference.parse(name)
                descriptor["annotations"] = {NAME_ANNOTATION: ref.name, REF_ANNOTATION: ref.tag}
                top = image.layers[-1].digest.split(":", 1)[1] if image.layers else ""
                repositories.setdefault(ref.familiar_base, {})[ref.tag] = top
            descriptors.append(descriptor)
        docker_manifest.append({"Config": _blob_name(image.id),
                                "RepoTags": [Reference.parse(n).familiar for n in names],
                                "Layers": [_blob_name(layer.digest) for layer in image.layers]})
    index = {"schemaVersion": 2, "mediaType": MEDIA_OCI_INDEX, "manifests": descriptors}
    with tarfile.open(fileobj=fileobj, mode="w|", format=tarfile.PAX_FORMAT) as tar:  # type: ignore[call-overload]
        _add_dir(tar, "blobs")
        _add_dir(tar, "blobs/sha256")
        for digest in sorted(blobs):
            with store.open_blob(digest) as blob:
                _add_file(tar, _blob_name(digest), blob, _blob_size(store, digest))
        for name, data in (("index.json", canonical_json(index)), ("manifest.json", canonical_json(docker_manifest)),
                           ("oci-layout", canonical_json({"imageLayoutVersion": "1.0.0"})),
                           ("repositories", canonical_json(repositories))):
            _add_file(tar, name, io.BytesIO(data), len(data))


def _given_name(ref: str, image: Image) -> str | None:
    """The full name the user gave for ``image`` (a name, not an ID or digest), if any."""
    try:
        parsed = Reference.parse(ref)
    except UsageError:
        return None
    return parsed.name if not parsed.digest and parsed.name in image.names else None


def _blob_name(digest: str) -> str:
    return "blobs/sha256/" + digest.split(":", 1)[1]


def _blob_size(store: Store, digest: str) -> int:
    return os.path.getsize(store.blob_path(digest))


def _add_dir(tar: tarfile.TarFile, name: str) -> None:
    info = _info(name, 0o755)
    info.type = tarfile.DIRTYPE
    tar.addfile(info)


def _add_file(tar: tarfile.TarFile, name: str, data: BinaryIO, size: int) -> None:
    info = _info(name, 0o644)
    info.size = size
    tar.addfile(info, data)


def _info(name: str, mode: int) -> tarfile.TarInfo:
    """A member header with nothing that varies between runs (mtime 0, root owner, no user names)."""
    info = tarfile.TarInfo(name)
    info.mode, info.mtime, info.uid, info.gid, info.uname, info.gname = mode, 0, 0, 0, "", ""
    return info
