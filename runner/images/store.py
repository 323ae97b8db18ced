"""The local image store: content-addressed blobs, a name index and unpacked layer directories.

Layout below the root the engine gives (``<state_root>/images``)::

    blobs/sha256/<hex>    manifests, configs and layers, each file named by the sha256 of its bytes
    index.json            {"names": {full name: manifest digest}, "digests": {repo@digest: manifest digest},
                           "images": {manifest digest: {"id": config digest, "added": time}}}
    index.lock            flock'ed around every read-modify-write of index.json
    l/<hex12>/d           a layer unpacked for overlayfs (``l/<hex12>/diff_id`` says which one)
    tmp/                  downloads and unpacks in progress (same filesystem, so renames are atomic), each
                          flock'ed by its writer so a killed writer's leftovers are told apart and swept

Why this shape: a blob becomes visible only by an atomic rename after its digest and size were checked,
so an interrupted or tampered download can never look like valid content; the index is replaced
atomically (temp, fsync, rename) under a lock, so concurrent CLI calls and killed processes never leave a
half-written index; unpacked layers are shared between images by diff_id and kept under short paths
because overlayfs takes all its lowerdirs in one page of mount options. An image is a manifest digest;
its ID is the config digest, as in Docker. Standard library only: this runs in the VM guest too.

Portable blob path: the host pulls the VM guest through this store on macOS and Windows too, so pulling,
verifying and sweeping blobs need no ``fcntl`` (locks come from runner.procs), no ``pread``/``pwrite``/
``fchmod`` (seek + read/write, chmod by path) and, where open files cannot be renamed or removed
(``CLOSE_BEFORE_RENAME``: Windows), close them first. Where flock exists the behaviour is unchanged:
renames happen while the lock is held. Unpacking layers (overlayfs) and removing images stay Linux-only.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import re
import stat
import time

from runner.errors import Conflict, ImageError, ImageNotFound, NotFound, UsageError
from runner.procs import CLOSE_BEFORE_RENAME, FileLock, lock_fd, write_atomic
from runner.images.digest import sha256_digest, validate_digest
from runner.images.reference import Reference
from runner.records import FrozenRecord, Record

TYPE_CHECKING = False  # annotations only: importing typing costs the start path ~6 ms
if TYPE_CHECKING:
    from typing import BinaryIO, Callable, Iterator

__all__ = ["Store", "Image", "Layer", "validate_digest"]

MEDIA_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
MEDIA_OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
MEDIA_OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
MEDIA_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MEDIA_DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MEDIA_DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
MEDIA_DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"
MEDIA_DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
MANIFEST_TYPES = (MEDIA_OCI_MANIFEST, MEDIA_DOCKER_MANIFEST)
INDEX_TYPES = (MEDIA_OCI_INDEX, MEDIA_DOCKER_LIST)
LAYER_TYPES = (MEDIA_OCI_LAYER, MEDIA_OCI_LAYER_GZIP, MEDIA_OCI_LAYER_ZSTD, MEDIA_DOCKER_LAYER,
               MEDIA_DOCKER_LAYER_GZIP, "application/vnd.oci.image.layer.nondistributable.v1.tar",
               "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
               "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip")

MAX_METADATA = 8 << 20  # manifests and configs are small; refuse to parse anything bigger
_CHUNK = 1 << 20
_SHORT_LEN = 12
_ID_PREFIX_RE = re.compile(r"(?:sha256:)?([0-9a-f]{12,64})")
PARTIAL_PREFIX = "partial-"
PARTIAL_MAX_AGE = 24 * 3600  # a partial download nobody resumed within a day is removed by the next pull
_FULL = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))
# Flags Windows lacks are 0 there; O_BINARY exists only there (without it os.open'ed files translate newlines).
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_BINARY = getattr(os, "O_BINARY", 0)
_NOT_FOUND_HINT = "pull it with 'runner pull NAME' or load it with 'runner load -i FILE'"


class Layer(FrozenRecord):
    """One layer of an image: its blob (as stored, maybe compressed) and the digest of its plain tar."""

    _fields = ("digest", "size", "media_type", "diff_id")

    def __init__(self, digest: str, size: int, media_type: str, diff_id: str):
        self._init(digest=digest, size=size, media_type=media_type, diff_id=diff_id)


_NEW: list = []  # marks "not given": a fresh dict/list per image, as a dataclass default_factory does


class Image(Record):
    """An image in the store. ``id`` is the config digest (Docker's image ID); ``names`` are full names."""

    _fields = ("id", "names", "manifest_digest", "media_type", "config", "layers", "size", "created",
               "annotations", "repo_digests")

    def __init__(self, id: str, names: list[str], manifest_digest: str, media_type: str, config: dict,
                 layers: list[Layer], size: int, created: str | None, annotations: dict = _NEW,
                 repo_digests: list[str] = _NEW):
        self.id, self.names, self.manifest_digest, self.media_type = id, names, manifest_digest, media_type
        self.config, self.layers, self.size, self.created = config, layers, size, created
        self.annotations = {} if annotations is _NEW else annotations
        self.repo_digests = [] if repo_digests is _NEW else repo_digests

    @property
    def short_id(self) -> str:
        """The 12 hex digits Docker shows."""
        return self.id.split(":", 1)[1][:_SHORT_LEN]

    @property
    def repo_tags(self) -> list[str]:
        """Names in the short form Docker shows (``busybox:latest``)."""
        return [Reference.parse(n).familiar for n in self.names]


class Store:
    """A content-addressed image store below ``root``; ``in_use(image_id)`` says a container needs it."""

    validate_digest = staticmethod(validate_digest)

    def __init__(self, root: str, in_use: Callable[[str], bool] | None = None):
        self.root = os.path.abspath(root)
        self.in_use = in_use
        self.layers_root = os.path.join(self.root, "l")
        self._blobs = os.path.join(self.root, "blobs", "sha256")
        self._tmp = os.path.join(self.root, "tmp")
        self._index = os.path.join(self.root, "index.json")
        for path in (self._blobs, self._tmp, self.layers_root):
            os.makedirs(path, exist_ok=True)

    # -- blobs -----------------------------------------------------------------------------------
    def blob_path(self, digest: str) -> str:
        """Where the blob ``digest`` lives (validated first, so the path stays inside the store)."""
        return os.path.join(self._blobs, validate_digest(digest)[len("sha256:"):])

    def has_blob(self, digest: str) -> bool:
        return os.path.isfile(self.blob_path(digest))

    def open_blob(self, digest: str) -> BinaryIO:
        """Open a blob for reading; NotFound when the store lacks it."""
        try:
            return open(self.blob_path(digest), "rb")
        except FileNotFoundError as exc:
            raise NotFound(f"blob {digest} is not in the image store") from exc

    def ingest(self, fileobj: BinaryIO, expected_digest: str | None = None,
               expected_size: int | None = None) -> tuple[str, int]:
        """Stream ``fileobj`` into the store; return (digest, size).

        The bytes go to a temp file in the store while being hashed; a size or digest different from the
        expected one raises ImageError and leaves the store unchanged. Only then is the file fsynced and
        renamed into place.
        """
        digest, size, _ = self.ingest_new(fileobj, expected_digest, expected_size)
        return digest, size

    def ingest_new(self, fileobj: BinaryIO, expected_digest: str | None,
                expected_size: int | None) -> tuple[str, int, bool]:
        """:meth:`ingest`, also telling whether the blob is new (so a caller can discard what it brought in)."""
        if expected_digest is not None:
            validate_digest(expected_digest)

        from runner.images import layers as layers_mod  # tarfile & co.: only writing the store needs them
        reader = layers_mod.HashingReader(fileobj)
        tmp, lock = self._claim_temp("blob-")
        try:
            with os.fdopen(os.dup(lock), "wb") as out:
                while True:
                    chunk = reader.read(_CHUNK)
                    if not chunk:
                        break
                    if expected_size is not None and reader.size > expected_size:
                        raise ImageError(f"blob {expected_digest or 'download'} is larger than the expected "
                                         f"{expected_size} bytes")
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            digest, size = reader.digest, reader.size
            if expected_size is not None and size != expected_size:
                raise ImageError(f"blob {digest} has {size} bytes, expected {expected_size}")
            if expected_digest is not None and digest != expected_digest:
                raise ImageError(f"blob content does not match its digest: expected {expected_digest}, got {digest}")
            path = self.blob_path(digest)
            if os.path.isfile(path):
                lock = _close_first(lock)
                os.unlink(tmp)
                return digest, size, False
            os.chmod(tmp, 0o644)
            lock = _close_first(lock)
            os.replace(tmp, path)
            _fsync_dir(self._blobs)
            return digest, size, True
        except BaseException:
            lock = _close_first(lock)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        finally:
            if lock is not None:
                os.close(lock)

    def _claim_temp(self, prefix: str, directory: bool = False) -> tuple[str, int]:
        """A new entry in ``tmp/`` (a file, or a directory) and a descriptor holding its flock until closed.

        Why a lock: a writer SIGKILLed mid-way (a killed ``load``, ``pull`` or ``rmi``) leaves its temp entry
        behind, and only a lock the kernel drops with the process tells such an orphan from one still being
        written; ``sweep_tmp`` then removes orphans at once instead of after an hour. The sweeper removes an
        entry only while it holds the entry's lock, so a writer that finds its new entry gone after taking the
        lock (swept in between) simply makes another: no window where a live writer loses its file.
        """
        import tempfile
        while True:
            if directory:
                path = tempfile.mkdtemp(prefix=prefix, dir=self._tmp)
                fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)  # Linux only (unpack, rmi)
            else:
                fd, path = tempfile.mkstemp(prefix=prefix, dir=self._tmp)
            lock_fd(fd)
            if _same_file(fd, path):
                return path, fd
            os.close(fd)

    # -- resumable downloads (partials) ---------------------------------------------------------------
    # A download goes to ``tmp/partial-<hex>``, named by the blob's digest and flock'ed by its one writer, so
    # a pull killed half-way leaves bytes the next pull of the same blob continues from (HTTP Range), as
    # containerd's ingest does. The digest is still checked over the whole file before the rename. Partials
    # nobody holds are removed by ``system prune`` and, older than a day, by the next pull (sweep_tmp).

    def partial_path(self, digest: str) -> str:
        return os.path.join(self._tmp, PARTIAL_PREFIX + validate_digest(digest)[len("sha256:"):])

    def ingest_resumable(self, digest: str, size: int, fetch: Callable[[int], tuple[BinaryIO, int]]) -> bool:
        """Download blob ``digest`` of ``size`` bytes through its partial file; True when it is new.

        ``fetch(offset)`` opens the source at ``offset`` and returns (stream, offset it really starts at:
        0 when the server ignored the range). A full disk or bad content removes the partial; any other
        failure (a dropped connection, a kill) keeps it for the next attempt.
        """
        while True:
            path = self.partial_path(digest)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | _CLOEXEC | _BINARY, 0o600)
            try:
                lock_fd(fd)  # a concurrent pull of the same blob waits here
                if not _same_file(fd, path):  # removed by the writer we waited for
                    continue
                if self.has_blob(digest):
                    fd = _close_first(fd)
                    with contextlib.suppress(FileNotFoundError, PermissionError):  # Windows: reopened meanwhile
                        os.unlink(path)
                    return False
                try:
                    self._resume(fd, digest, size, fetch)
                except BaseException as exc:
                    if isinstance(exc, ImageError) or (isinstance(exc, OSError) and exc.errno in _FULL):
                        fd = _close_first(fd)
                        with contextlib.suppress(FileNotFoundError):
                            os.unlink(path)
                    raise
                _fchmod(fd, path, 0o644)
                fd = _close_first(fd)
                try:
                    os.replace(path, self.blob_path(digest))
                except PermissionError:
                    if fd is not None:
                        raise
                    continue  # Windows: another pull opened the partial meanwhile; it finishes it, we wait
                _fsync_dir(self._blobs)
                return True
            finally:
                if fd is not None:
                    os.close(fd)

    def _resume(self, fd: int, digest: str, size: int, fetch) -> None:
        """Complete the partial open as ``fd`` (its lock held) to ``size`` bytes of ``digest``, fsynced."""
        import hashlib
        have = os.fstat(fd).st_size
        hasher = hashlib.sha256()
        if have > size:
            os.ftruncate(fd, 0)
            have = 0
        done = 0
        while done < have and (prefix := _pread(fd, min(_CHUNK, have - done), done)):
            hasher.update(prefix)  # the bytes a killed pull left: hashed again, not downloaded again
            done += len(prefix)
        if done < size:
            stream, start = fetch(done)
            if start != done:  # the source starts over: so do we
                os.ftruncate(fd, 0)
                hasher, done = hashlib.sha256(), 0
            while chunk := stream.read(_CHUNK):
                if done + len(chunk) > size:
                    raise ImageError(f"blob {digest} is larger than the expected {size} bytes")
                _pwrite_all(fd, chunk, done)
                hasher.update(chunk)
                done += len(chunk)
        if done != size:
            raise ImageError(f"blob {digest} has {done} bytes, expected {size}")
        if "sha256:" + hasher.hexdigest() != digest and have:
            os.ftruncate(fd, 0)  # the kept bytes were not this blob's: download it whole, once
            return self._resume(fd, digest, size, fetch)
        if "sha256:" + hasher.hexdigest() != digest:
            raise ImageError(f"blob content does not match its digest: expected {digest}, "
                             f"got sha256:{hasher.hexdigest()}")
        os.fsync(fd)

    def drop_partial(self, digest: str) -> None:
        """Remove the partial download of ``digest`` unless a pull is writing it (its lock is held)."""
        path = self.partial_path(digest)
        with contextlib.suppress(OSError):
            fd = os.open(path, os.O_RDONLY | _CLOEXEC | _NOFOLLOW | _BINARY)
            try:
                if lock_fd(fd, wait=False) and _same_file(fd, path):
                    fd = _close_first(fd)
                    os.unlink(path)  # Windows: refused if a pull opened it meanwhile, which keeps it
            finally:
                if fd is not None:
                    os.close(fd)

    def sweep_tmp(self, max_age: float = PARTIAL_MAX_AGE) -> int:
        """Remove what killed writers left in ``tmp/``; the bytes freed.

        Partial downloads nobody holds go when older than ``max_age`` seconds (they are worth resuming until
        then; ``system prune`` passes 0); every other entry (a killed load's or pull's blob, a killed unpack
        or rmi) goes as soon as no live process holds its lock (see ``_claim_temp``).
        """
        freed = 0
        now = time.time()
        for name in _listdir(self._tmp):
            path = os.path.join(self._tmp, name)
            partial = name.startswith(PARTIAL_PREFIX)
            with contextlib.suppress(OSError):
                st = os.lstat(path)
                if partial and now - st.st_mtime < max_age:
                    continue
                if stat.S_ISLNK(st.st_mode):
                    os.unlink(path)  # never written by runner: nothing to follow it for
                    continue
                flags = os.O_RDONLY | _CLOEXEC | _NOFOLLOW | _BINARY
                fd = os.open(path, flags | (os.O_DIRECTORY if stat.S_ISDIR(st.st_mode) else 0))
                try:
                    if not lock_fd(fd, wait=False) or not _same_file(fd, path):  # locked: its writer is alive
                        continue
                    size = _disk_usage(path)
                    if stat.S_ISDIR(st.st_mode):
                        _rmtree(path)
                    else:
                        fd = _close_first(fd)
                        os.unlink(path)  # Windows: refused if a writer opened it meanwhile, which keeps it
                    freed += size
                finally:
                    if fd is not None:
                        os.close(fd)
        return freed

    def tmp_usage(self) -> tuple[int, int]:
        """(number of partial downloads and other temp entries, their bytes on disk)."""
        names = _listdir(self._tmp)
        return len(names), sum(_disk_usage(os.path.join(self._tmp, n)) for n in names)

    def put_bytes(self, data: bytes) -> str:
        """Store ``data`` as a blob; return its digest."""
        return self.ingest(io.BytesIO(data), sha256_digest(data), len(data))[0]

    def read_json(self, digest: str) -> dict:
        """A small JSON blob (manifest, config, index) parsed into a dict; ImageError if it is not one."""
        with self.open_blob(digest) as f:
            data = f.read(MAX_METADATA + 1)
        if len(data) > MAX_METADATA:
            raise ImageError(f"blob {digest} is too large to be a manifest or config")
        try:
            value = json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ImageError(f"blob {digest} is not valid JSON: {exc}") from exc
        if not isinstance(value, dict):
            raise ImageError(f"blob {digest} is not a JSON object")
        return value

    # -- the index -------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict]:
        """Hold the index lock and yield the index; it is written back atomically on a normal exit."""
        with FileLock(os.path.join(self.root, "index.lock"), mode=0o644):
            index = self._read_index()
            before = json.dumps(index, sort_keys=True)
            yield index
            if json.dumps(index, sort_keys=True) != before:
                _write_atomic(self._index, json.dumps(index, indent=1, sort_keys=True).encode() + b"\n")

    def _read_index(self) -> dict:
        """The index as last written (readers need no lock: it is only ever replaced by rename)."""
        try:
            with open(self._index, "rb") as f:
                index = json.load(f)
        except FileNotFoundError:
            index = {}
        except ValueError as exc:
            raise ImageError(f"image index {self._index} is corrupt: {exc}") from exc
        for key in ("names", "digests", "images"):
            index.setdefault(key, {})
        return index

    # -- images ----------------------------------------------------------------------------------
    def add(self, name: str | None, manifest_digest: str, intermediate: bool | None = None) -> Image:
        """Record the image whose manifest (and all its blobs) is in the store, under ``name`` if given.

        ``intermediate``: True for a build's step image (kept for the build cache, hidden from ``list``), False
        to make such an image an ordinary one (the build's result), None to leave it as it is.

        A name with a digest (``repo@sha256:...``, e.g. pulled by the digest of a multi-platform index)
        is remembered as a repo digest, so that name resolves to this image later; a name moved to another
        image leaves the old one untagged, as Docker does.
        """
        ref = Reference.parse(name) if name else None
        with self._locked() as index:  # checked under the lock, so a concurrent remove cannot delete a blob
            image = self._build(manifest_digest, [])
            for layer in image.layers:
                if not self.has_blob(layer.digest):
                    raise ImageError(f"layer {layer.digest} of image {manifest_digest} is missing from the store")
            new = manifest_digest not in index["images"]
            entry = index["images"].setdefault(manifest_digest, {"id": image.id, "added": time.time()})
            if intermediate and new:  # an image the user has already is never hidden again
                entry["intermediate"] = True
            elif intermediate is False and entry.pop("intermediate", None):
                entry["added"] = time.time()  # a build's result is new to the user: listed first
            if ref is not None and ref.tag is not None:
                index["names"][ref.with_tag(ref.tag).name] = manifest_digest
            if ref is not None and ref.digest is not None:
                index["digests"][f"{ref.base}@{ref.digest}"] = manifest_digest
            return self._named(index, manifest_digest, image)

    def tag(self, src: str, dst: str) -> Image:
        """Give the image ``src`` resolves to the additional name ``dst``."""
        ref = Reference.parse(dst)
        if ref.digest:
            raise UsageError(f"cannot tag with a digest: {dst}", hint="use NAME[:TAG]")
        return self.add(ref.name, self.resolve(src).manifest_digest)

    def resolve(self, ref: str) -> Image:
        """The image a user means by ``ref``: a name, ``name@sha256:...`` or an image ID (prefix ≥ 12 hex)."""
        index = self._read_index()
        return self._named(index, _find(index, ref))

    def list(self, all: bool = False) -> list[Image]:
        """All images, newest first; a build's intermediate step images only with ``all`` (or once named)."""
        index = self._read_index()
        order = sorted(index["images"].items(), key=lambda kv: kv[1].get("added", 0), reverse=True)
        named = set(index["names"].values())
        return [self._named(index, digest) for digest, entry in order
                if all or not entry.get("intermediate") or digest in named]

    def intermediates(self) -> list[str]:
        """The manifest digests of build step images nobody named (what ``builder prune`` removes)."""
        index = self._read_index()
        named = set(index["names"].values())
        return [d for d, e in index["images"].items() if e.get("intermediate") and d not in named]

    def remove(self, ref: str, force: bool = False) -> list[str]:
        """Untag ``ref`` and delete the image once no name is left; return Docker-style report lines.

        Removing by ID an image with several names, or an image a container uses, raises Conflict unless
        ``force``; forced removal of an image in use only untags it (its layers stay for the container).
        Blobs and unpacked layers that no remaining image references are deleted.
        """
        with self._locked() as index:
            digest = _find(index, ref)
            entry = index["images"][digest]
            names = _names_of(index, digest)
            by_name = _name_in(ref, names)
            if by_name and len(names) > 1:
                del index["names"][by_name]
                return [f"Untagged: {Reference.parse(by_name).familiar}"]
            short = entry["id"].split(":", 1)[1][:_SHORT_LEN]
            if not by_name and len(names) > 1 and not force:
                raise Conflict(f"image {short} has several names: "
                               f"{', '.join(Reference.parse(n).familiar for n in names)}",
                               hint="remove the names one by one, or use --force")
            used = self.in_use is not None and self.in_use(entry["id"])
            if used and not force:
                raise Conflict(f"image {ref} is used by a container", hint="remove the container first, or use --force")
            report = []
            for name in names:
                del index["names"][name]
                report.append(f"Untagged: {Reference.parse(name).familiar}")
            if used:
                return report
            image = self._build(digest, [], entry)
            del index["images"][digest]
            index["digests"] = {k: v for k, v in index["digests"].items() if v != digest}
            report.append(f"Deleted: {image.id}")
        with self._locked() as index:  # once the index no longer names the image, delete what it alone used
            self._collect(index, [digest, image.id] + [layer.digest for layer in image.layers],
                          [layer.diff_id for layer in image.layers])
        return report

    def discard_unreferenced(self, digests: list[str]) -> None:
        """Delete those of ``digests`` that no image references (leftovers of a load that was refused)."""
        with self._locked() as index:
            self._collect(index, digests, [])

    def _collect(self, index: dict, digests: list[str], diff_ids: list[str]) -> None:
        """Delete candidate blobs and layer dirs that no image in ``index`` references; lock held."""
        blobs, unpacked = set(), set()
        for digest, entry in index["images"].items():
            with contextlib.suppress(ImageError, NotFound):
                image = self._build(digest, [], entry)
                blobs.update([digest, image.id], (layer.digest for layer in image.layers))
                unpacked.update(layer.diff_id for layer in image.layers)
        for digest in set(digests) - blobs:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.blob_path(digest))
        for diff_id in set(diff_ids) - unpacked:
            path = self._find_layer_dir(diff_id)
            if path is not None:
                try:
                    gone, lock = self._claim_temp("rm-", directory=True)
                except OSError:  # a full disk has no block for a new directory: delete in place
                    _rmtree(path)
                    continue
                try:
                    os.rename(path, os.path.join(gone, "x"))  # vanish atomically, then delete at leisure
                    _rmtree(gone)
                finally:
                    os.close(lock)

    def _named(self, index: dict, digest: str, image: Image | None = None) -> Image:
        """The image ``digest`` with its names and repo digests from ``index``."""
        image = image or self._build(digest, [], index["images"][digest])
        image.names = _names_of(index, digest)
        image.repo_digests = sorted(k for k, v in index["digests"].items() if v == digest)
        return image

    def _build(self, digest: str, names: list[str], entry: dict | None = None) -> Image:
        """Read and check the manifest ``digest`` and its config into an :class:`Image`."""
        manifest = self.read_json(validate_digest(digest))
        media_type = manifest.get("mediaType") or MEDIA_OCI_MANIFEST
        if media_type in INDEX_TYPES or "manifests" in manifest:
            raise ImageError(f"{digest} is an image index, not an image manifest",
                             hint="pick the manifest for one platform")
        if media_type not in MANIFEST_TYPES or manifest.get("schemaVersion") != 2:
            raise ImageError(f"manifest {digest} has unsupported media type {media_type!r}")
        try:
            config_digest = validate_digest(manifest["config"]["digest"])
            descriptors = list(manifest["layers"])
        except (KeyError, TypeError) as exc:
            raise ImageError(f"manifest {digest} lacks a config or layers") from exc
        config = self.read_json(config_digest)
        diff_ids = (config.get("rootfs") or {}).get("diff_ids")
        if not isinstance(diff_ids, list) or len(diff_ids) != len(descriptors):
            raise ImageError(f"image config {config_digest} lists {len(diff_ids or [])} diff_ids for "
                             f"{len(descriptors)} layers")
        image_layers = []
        for desc, diff_id in zip(descriptors, diff_ids):
            layer_type = desc.get("mediaType") if isinstance(desc, dict) else None
            if layer_type not in LAYER_TYPES:
                raise ImageError(f"manifest {digest} has a layer of unsupported media type {layer_type!r}")
            size = desc.get("size")
            if not isinstance(size, int) or size < 0:
                raise ImageError(f"manifest {digest} has a layer without a valid size")
            image_layers.append(Layer(validate_digest(desc.get("digest")), size, layer_type,
                                      validate_digest(diff_id)))
        if entry is not None and entry.get("id") not in (None, config_digest):
            raise ImageError(f"image index entry for {digest} does not match its manifest")
        return Image(id=config_digest, names=names, manifest_digest=digest, media_type=media_type, config=config,
                     layers=image_layers, size=sum(layer.size for layer in image_layers),
                     created=config.get("created"), annotations=dict(manifest.get("annotations") or {}))

    def image_files(self, image: Image) -> list[str]:
        """The files and directories the image takes: its blobs and its unpacked layers (``system df``)."""
        paths = [self.blob_path(d) for d in [image.manifest_digest, image.id] + [l.digest for l in image.layers]]
        return paths + [p for p in (self._find_layer_dir(l.diff_id) for l in image.layers) if p is not None]

    # -- unpacked layers -------------------------------------------------------------------------
    def layer_dirs(self, image: Image) -> list[str]:
        """The image's layers unpacked for overlayfs, TOP-MOST FIRST (the order ``lowerdir=`` wants).

        Each layer is unpacked once (shared by diff_id between images) into a temp dir, its diff_id
        verified, and renamed into ``l/<first 12 hex>/d``; a prefix already used by another diff_id
        moves to a longer prefix.
        """
        return [self._layer_dir(layer) for layer in reversed(image.layers)]

    def _find_layer_dir(self, diff_id: str) -> str | None:
        """The ``l/<prefix>`` directory holding ``diff_id``, or None."""
        for path in self._layer_candidates(diff_id):
            owner = _read_text(os.path.join(path, "diff_id"))
            if owner == diff_id:
                return path
            if owner is None:
                return None
        return None

    def _layer_candidates(self, diff_id: str) -> list[str]:
        hex_ = validate_digest(diff_id)[len("sha256:"):]
        return [os.path.join(self.layers_root, hex_[:n]) for n in (_SHORT_LEN, 16, 24, 32, 64)]

    def _layer_dir(self, layer: Layer) -> str:
        for _ in range(3):  # another process may be unpacking the same layer right now
            for path in self._layer_candidates(layer.diff_id):
                owner = _read_text(os.path.join(path, "diff_id"))
                if owner == layer.diff_id:
                    return os.path.join(path, "d")
                if owner is None:
                    if self._unpack_into(layer, path):
                        return os.path.join(path, "d")
                    break
        raise ImageError(f"cannot unpack layer {layer.diff_id}: its directory keeps changing")

    def _unpack_into(self, layer: Layer, path: str) -> bool:
        """Unpack ``layer`` and rename it to ``path``; False if another process got there first."""
        from runner.images import layers as layers_mod
        tmp, lock = self._claim_temp("unpack-", directory=True)
        try:
            os.mkdir(os.path.join(tmp, "d"), 0o755)
            with self.open_blob(layer.digest) as blob:
                layers_mod.unpack(blob, os.path.join(tmp, "d"), expected_diff_id=layer.diff_id)
            with open(os.path.join(tmp, "diff_id"), "w") as f:
                f.write(layer.diff_id)
            os.chmod(tmp, 0o755)
            try:
                os.rename(tmp, path)
            except OSError as exc:
                if exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
                    return False
                raise
            return True
        finally:
            if os.path.exists(tmp):
                _rmtree(tmp)
            os.close(lock)


def _find(index: dict, ref: str) -> str:
    """The manifest digest ``ref`` designates in ``index``: by name, by name@digest, then by image ID."""
    text = ref.strip() if isinstance(ref, str) else ""
    id_match = _ID_PREFIX_RE.fullmatch(text)
    try:
        parsed = Reference.parse(text)
    except UsageError:
        if not id_match:
            raise
        parsed = None
    if parsed is not None:
        if parsed.digest:
            if parsed.digest in index["images"]:
                return parsed.digest
            if f"{parsed.base}@{parsed.digest}" in index["digests"]:
                return index["digests"][f"{parsed.base}@{parsed.digest}"]
        elif parsed.name in index["names"]:
            return index["names"][parsed.name]
    if id_match:
        prefix = "sha256:" + id_match.group(1)
        hits = {d: e for d, e in index["images"].items() if str(e.get("id", "")).startswith(prefix)}
        if len({e["id"] for e in hits.values()}) > 1:
            raise UsageError(f"image ID prefix {text} is ambiguous", hint="give more digits")
        if hits:
            return max(hits, key=lambda d: hits[d].get("added", 0))
    raise ImageNotFound(f"image {text} not found", hint=_NOT_FOUND_HINT)


def _names_of(index: dict, digest: str) -> list[str]:
    return sorted(n for n, d in index["names"].items() if d == digest)


def _name_in(ref: str, names: list[str]) -> str | None:
    """The full name ``ref`` spells if it is one of ``names`` (removal by name rather than by ID)."""
    try:
        parsed = Reference.parse(ref.strip())
    except UsageError:
        return None
    return parsed.name if not parsed.digest and parsed.name in names else None


def _read_text(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except FileNotFoundError:
        return None


def _write_atomic(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` so a reader sees the old or the new content, never a mix, even after a crash.

    On a full disk the index is written through its spare file (runner.diskfull), so ``rmi`` and ``system
    prune`` can still untag images and so free their blobs.
    """
    from runner.diskfull import write_or_reserve
    write_or_reserve(path, data, lambda: write_atomic(path, data, 0o644, durable=True, sync_dir=True),
                     spare_size=64 << 10, mode=0o644)


def _same_file(fd: int, path: str) -> bool:
    """Whether ``path`` still names the file open as ``fd`` (not removed or replaced meanwhile)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    own = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino)


def _close_first(fd: int | None) -> int | None:
    """Close ``fd`` now where an open file cannot be renamed or removed (Windows) and return None; else keep
    it open (its lock held across the rename) and return it. Either way the caller closes what it gets back."""
    if fd is not None and CLOSE_BEFORE_RENAME:
        os.close(fd)
        return None
    return fd


def _seek_read(fd: int, size: int, offset: int) -> bytes:
    os.lseek(fd, offset, os.SEEK_SET)
    return os.read(fd, size)


def _seek_write(fd: int, data: memoryview, offset: int) -> int:
    os.lseek(fd, offset, os.SEEK_SET)
    return os.write(fd, data)


# Positioned I/O where the OS has it; seek + read/write on Windows (each partial's fd has a single user).
_pread = getattr(os, "pread", _seek_read)
_pwrite = getattr(os, "pwrite", _seek_write)


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = _pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


def _fchmod(fd: int | None, path: str, mode: int) -> None:
    """Set ``mode`` through the open ``fd`` where the OS can (no path race), else by path (Windows)."""
    if fd is not None and hasattr(os, "fchmod"):
        os.fchmod(fd, mode)
    else:
        os.chmod(path, mode)


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except FileNotFoundError:
        return []


def _disk_usage(path: str) -> int:
    """Bytes ``path`` takes on disk (allocated blocks; hard links counted once)."""
    seen, total = set(), 0
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return 0
    if not stat.S_ISDIR(st.st_mode):
        return _allocated(st)
    total += _allocated(st)
    for top, dirs, files in os.walk(path):
        for name in dirs + files:
            with contextlib.suppress(OSError):
                st = os.lstat(os.path.join(top, name))
                if st.st_nlink > 1 and not stat.S_ISDIR(st.st_mode):
                    if (st.st_dev, st.st_ino) in seen:
                        continue
                    seen.add((st.st_dev, st.st_ino))
                total += _allocated(st)
    return total


def _allocated(st: os.stat_result) -> int:
    """Bytes allocated on disk; Windows reports no blocks, so the size stands in."""
    blocks = getattr(st, "st_blocks", None)
    return st.st_size if blocks is None else blocks * 512


def _fsync_dir(path: str) -> None:
    """Make a rename in ``path`` durable; Windows cannot open a directory (NTFS journals the rename itself)."""
    if not hasattr(os, "O_DIRECTORY"):
        return
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _rmtree(path: str) -> None:
    """Remove a tree; without root, first make its directories writable (unpacked layers have read-only ones)."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        os.chmod(path, stat.S_IRWXU)
        for top, dirs, _ in os.walk(path):
            for name in dirs:
                sub = os.path.join(top, name)
                if not os.path.islink(sub):
                    os.chmod(sub, stat.S_IRWXU)
    import shutil  # here: shutil imports zlib, bz2 and lzma, which reading the store never needs
    shutil.rmtree(path)
