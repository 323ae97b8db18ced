"""Pull an image from a registry into the content store.

Order of work, and why:

1. Fetch the manifest by tag or digest (verified when by digest). If it is an index, choose the entry
   for the wanted platform and fetch that, descending through nested indexes.
2. Check every descriptor *before* any download: digests must be well-formed (they become file names),
   sizes must be integers, layer types must be ones we can unpack (zstd is refused clearly).
3. Fetch the config first (small, and with an explicit ``--platform`` it must describe that platform),
   then the layers in parallel. Each blob streams through a reader that enforces the descriptor's
   size and into ``store.ingest_resumable``, which writes the blob's partial file, hashes the whole of it
   and renames only a verified blob into place, so an interrupted, oversized, truncated or tampered
   download never leaves a blob behind. A dropped connection is retried once; a retry, and the next pull
   after a kill, resume the partial with HTTP Range; blobs already in the store are skipped.
4. Only then record the manifest (and any index, by their exact bytes) and the name.

Progress is reported as small JSON-able dicts (see :func:`pull`), because the engine may run in the VM
and the events travel to the host's terminal over the agent protocol.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Callable, Iterable, Mapping

from runner.diskfull import is_full
from runner.errors import ImageError, RegistryError
from runner.procs import write_atomic
from runner.images import platform as platforms
from runner.images.digest import validate_digest
from runner.images.reference import Reference
from runner.images.registry import IMAGE_TYPES, RegistryClient
from runner.images.store import (MEDIA_DOCKER_LAYER, MEDIA_DOCKER_LAYER_GZIP, MEDIA_OCI_LAYER,
                                 MEDIA_OCI_LAYER_GZIP, MEDIA_OCI_LAYER_ZSTD)

Progress = Callable[[dict], None]

WORKERS = 4
READ_CHUNK = 1 << 20
# At most this many progress events per layer per second: they may cross the VM boundary.
PROGRESS_INTERVAL = 0.1
MAX_INDEX_DEPTH = 4

# What the layer unpacker reads; foreign/non-distributable layers live outside the registry.
LAYER_TYPES = frozenset({MEDIA_OCI_LAYER, MEDIA_OCI_LAYER_GZIP, MEDIA_DOCKER_LAYER, MEDIA_DOCKER_LAYER_GZIP})
SOURCES_FILE = "registry-sources.json"
_SOURCES_PER_BLOB = 5


class _Interrupted(Exception):
    """The body ended before the size the manifest promised: a network failure, worth one retry."""


class _Cancelled(Exception):
    """Another download failed or the pull was interrupted: stop reading now."""


def short_id(digest: str) -> str:
    """The 12-hex-digit id Docker shows for a layer."""
    return digest.split(":", 1)[-1][:12]


class _BlobReader:
    """Streams a blob body while enforcing its declared size and reporting progress.

    More bytes than declared is an attack or a broken registry (ImageError, never retried); fewer is
    a dropped connection (``_Interrupted``, retried once). The digest itself is checked by the store.
    """

    def __init__(self, reply, digest: str, size: int, emit: Callable[[dict], None], cancel: threading.Event,
                 start: int = 0):
        self._reply, self._digest, self._size = reply, digest, size
        self._emit, self._cancel = emit, cancel
        self.count = start  # a resumed download: the bytes before ``start`` are in the partial file
        self._last = 0.0

    def read(self, n: int = -1) -> bytes:
        if self._cancel.is_set():
            raise _Cancelled()
        remaining = self._size - self.count
        # Read one byte past the declared size so an oversized blob is noticed, never stored.
        want = remaining + 1 if n is None or n < 0 else min(n, remaining + 1)
        try:
            # read1: what has arrived, not a whole megabyte, so the partial file holds every byte received
            # when the pull is killed (the next pull resumes from there)
            data = getattr(self._reply, "read1", self._reply.read)(max(want, 1))
        except (OSError, http.client.HTTPException) as exc:  # reset, timeout, TLS failure mid-body
            raise _Interrupted(str(exc) or type(exc).__name__) from exc
        self.count += len(data)
        if self.count > self._size:
            raise ImageError(f"blob {self._digest} is larger than the {self._size} bytes its manifest declares")
        if not data and self.count < self._size:
            raise _Interrupted(f"connection closed after {self.count} of {self._size} bytes")
        now = time.monotonic()
        if data and (now - self._last >= PROGRESS_INTERVAL or self.count == self._size):
            self._last = now
            self._emit({"status": "Downloading", "current": self.count, "total": self._size})
        return data


def _check_descriptor(desc: object, what: str) -> dict:
    if not isinstance(desc, dict):
        raise ImageError(f"{what} descriptor is not an object")
    validate_digest(desc.get("digest"))
    size = desc.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ImageError(f"{what} {desc.get('digest')} has an invalid size {size!r}")
    return desc


def check_image_manifest(manifest: dict, name: str) -> tuple[dict, list[dict]]:
    """The config and layer descriptors of an image manifest, all validated before any download."""
    config = _check_descriptor(manifest.get("config"), "config")
    layers = manifest.get("layers")
    if not isinstance(layers, list):
        raise ImageError(f"manifest of {name} has no layer list")
    checked = []
    for layer in layers:
        layer = _check_descriptor(layer, "layer")
        media_type = layer.get("mediaType", "")
        if media_type == MEDIA_OCI_LAYER_ZSTD:
            raise ImageError(f"image {name} has zstd-compressed layers, which runner cannot unpack yet",
                             hint="use a variant of the image with gzip layers")
        if media_type not in LAYER_TYPES:
            raise ImageError(f"image {name} has a layer of unsupported type {media_type!r}")
        checked.append(layer)
    return config, checked


def _resolve_platform(value) -> tuple[platforms.Platform, bool]:
    """The wanted platform and whether the user asked for it explicitly."""
    if value is None or value == "":
        return platforms.host_platform(), False
    if isinstance(value, platforms.Platform):
        return value, True
    return platforms.parse_platform(str(value)), True


def pull(store, ref, *, platform=None, credentials: Mapping[str, Mapping[str, str]] | None = None,
         insecure: Iterable[str] = (), progress: Progress | None = None,
         endpoints: Mapping[str, str] | None = None):
    """Pull ``ref`` into ``store`` and return the stored Image.

    ``platform``: None (host's Linux platform), text like ``linux/arm64``, or a Platform.
    ``credentials``: registry → ``{"username","password"}`` or ``{"identitytoken"}``, as read on the
    host by :mod:`runner.images.credentials`. ``insecure``: registries allowed over plain HTTP.
    ``endpoints``: where connections really go (see :class:`RegistryClient`; the VM backend maps the
    host's loopback registries to 10.0.2.2); the image keeps its name.
    ``progress`` receives dicts such as ``{"id": "<12 hex>", "status": "Downloading", "current": n,
    "total": n}``; statuses: Pulling fs layer, Already exists, Downloading, Retrying, Download complete,
    Pull complete; events without ``id`` are whole-image messages (``{"status": "Digest: sha256:..."}``).
    """
    reference = ref if isinstance(ref, Reference) else Reference.parse(str(ref))
    wanted, explicit = _resolve_platform(platform)
    emit = progress or (lambda event: None)
    store.sweep_tmp()  # a killed writer's leftovers, and partials nobody resumed for a day (see Store.sweep_tmp)
    client = RegistryClient(reference.registry, credentials=(credentials or {}).get(reference.registry),
                            insecure=reference.registry in set(insecure), endpoints=endpoints)
    repo = reference.repository
    display = reference.familiar

    top = client.get_manifest(repo, reference.digest or reference.tag, display=display)
    fetched = [top]
    manifest = top
    for _ in range(MAX_INDEX_DEPTH + 1):
        if not manifest.is_index:
            break
        entry = platforms.choose(manifest.json(), wanted, name=display)
        digest = validate_digest(entry.get("digest"))
        manifest = client.get_manifest(repo, digest, display=f"{reference.base}@{digest}")
        fetched.append(manifest)
    else:
        raise ImageError(f"image {display} nests indexes more than {MAX_INDEX_DEPTH} deep")
    if manifest.media_type not in IMAGE_TYPES:
        raise ImageError(f"image {display} has unsupported manifest type {manifest.media_type!r}")

    config_desc, layers = check_image_manifest(manifest.json(), display)
    emit({"id": reference.tag or short_id(top.digest), "status": f"Pulling from {repo}"})
    downloaded = _fetch_blob(client, store, repo, config_desc, None, threading.Event())
    if explicit:
        _check_config_platform(store, config_desc["digest"], wanted, display)
    downloaded |= _fetch_layers(client, store, repo, layers, emit)

    # The manifest (and index) are recorded last: until now nothing names the new blobs.
    for item in fetched:
        store.put_bytes(item.data)
    image = store.add(reference.name, manifest.digest)
    record_sources(store, reference.registry, repo, [config_desc["digest"], *[l["digest"] for l in layers]])
    emit({"status": f"Digest: {top.digest}"})
    emit({"status": (f"Downloaded newer image for {display}" if downloaded
                     else f"Image is up to date for {display}")})
    return image


def _check_config_platform(store, digest: str, wanted: platforms.Platform, name: str) -> None:
    """With an explicit ``--platform``, a single-platform image must be built for it (as Docker checks)."""
    config = store.read_json(digest)
    if not config.get("architecture"):
        return  # nothing to compare against
    actual = platforms.normalize(str(config.get("os") or "linux"), str(config["architecture"]),
                                 str(config.get("variant") or ""))
    if not platforms.matches(actual, wanted):
        raise ImageError(f"image {name} was found but does not match the specified platform: "
                         f"wanted {wanted}, actual {actual}")


def _fetch_layers(client: RegistryClient, store, repo: str, layers: list[dict], emit: Progress) -> bool:
    """Download the layers in parallel; True when at least one was not already present."""
    cancel = threading.Event()
    for layer in layers:
        emit({"id": short_id(layer["digest"]), "status": "Pulling fs layer"})
    pool = ThreadPoolExecutor(max_workers=max(1, min(WORKERS, len(layers))), thread_name_prefix="pull")
    downloaded = False
    try:
        futures = [pool.submit(_fetch_blob, client, store, repo, layer, emit, cancel) for layer in layers]
        for future in as_completed(futures):
            downloaded |= future.result()
    except BaseException as exc:
        # Stop the other downloads at their next read; each one's temp file is removed by the store.
        cancel.set()
        if is_full(exc):
            pool.shutdown(wait=True, cancel_futures=True)
            # A full disk: the others' partials (kept for resuming after any other failure) would only hold
            # on to space the user needs back; they go too.
            for layer in layers:
                store.drop_partial(layer["digest"])
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return downloaded


def _fetch_blob(client: RegistryClient, store, repo: str, desc: dict, emit: Progress | None,
                cancel: threading.Event) -> bool:
    """Fetch one blob into the store unless present; True when it was downloaded."""
    digest, size = desc["digest"], desc["size"]
    layer_id = short_id(digest)

    def say(event: dict) -> None:
        if emit is not None:
            emit({"id": layer_id, **event})

    if store.has_blob(digest):
        say({"status": "Already exists"})
        return False
    replies = []

    def fetch(offset: int):
        reply = client.open_blob(repo, digest, offset)
        replies.append(reply)
        start = offset if reply.status == 206 and _range_start(reply) == offset else 0
        say({"status": "Downloading", "current": start, "total": size})
        return _BlobReader(reply, digest, size, say, cancel, start), start

    for attempt in (1, 2):
        if cancel.is_set():
            raise _Cancelled()
        try:
            try:  # through the blob's partial file: a retry, or the next pull after a kill, resumes it
                new = store.ingest_resumable(digest, size, fetch)
            finally:
                for reply in replies:
                    reply.close()
                replies.clear()
            if not new:
                say({"status": "Already exists"})
                return False
            break
        except _Interrupted as exc:
            if attempt == 2:
                raise RegistryError(f"download of {digest} from {client.registry} was interrupted: "
                                    f"{exc}", hint="try the pull again") from exc
            say({"status": "Retrying"})
    say({"status": "Download complete"})
    say({"status": "Pull complete"})
    return True


def _range_start(reply) -> int | None:
    """The first byte a 206 reply carries (``Content-Range: bytes START-END/TOTAL``), or None."""
    value = reply.headers.get("Content-Range") or ""
    unit, _, rest = value.partition(" ")
    start = rest.partition("-")[0]
    return int(start) if unit == "bytes" and start.isdigit() else None


def load_sources(store) -> dict:
    """Where each blob was last seen: digest → ["registry/repository", ...] (newest first)."""
    try:
        with open(Path(store.root) / SOURCES_FILE, encoding="utf-8") as handle:
            data = json.load(handle)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def record_sources(store, registry: str, repo: str, digests: list[str]) -> None:
    """Remember that these blobs exist in ``registry/repo``, so a push elsewhere can mount them.

    Only an optimisation: concurrent writers may lose each other's update (the file is replaced
    atomically, never torn), which costs a later push an upload instead of a mount.
    """
    sources = load_sources(store)
    where = f"{registry}/{repo}"
    for digest in digests:
        seen = [s for s in sources.get(digest, []) if isinstance(s, str) and s != where]
        sources[digest] = [where, *seen][:_SOURCES_PER_BLOB]
    write_atomic(str(Path(store.root) / SOURCES_FILE), json.dumps(sources).encode(), 0o600, durable=False)
