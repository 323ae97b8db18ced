"""Push an image from the content store to a registry.

Blobs go first (config and layers, in parallel), the manifest last, so a registry never holds a
manifest whose blobs are missing. For each blob, the cheapest way that works:

1. ``HEAD`` — the repository already has it: nothing to send ("Layer already exists"). This is also what
   resumes a killed push, as with docker: run again, it sends only the blobs that did not reach the registry
   (a blob cut off mid-upload is sent whole again; its unfinished upload session is the registry's to expire).
2. Cross-repository mount — the blob was pulled from or pushed to another repository of the same
   registry (remembered by :mod:`runner.images.pull`): one ``POST ?mount=&from=`` and the registry links it
   ("Mounted from ..."). A registry that declines opens a normal upload instead, which we then use.
3. Upload — ``POST`` then one monolithic ``PUT`` for blobs up to :data:`CHUNK_SIZE`, or ``PATCH``
   chunks then a closing ``PUT`` for bigger ones (some registries and proxies cap request bodies).

The manifest is sent as its exact stored bytes with its media type as ``Content-Type``, so the digest
the registry computes equals the local one and a push/pull round trip keeps the digest.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Iterable, Iterator, Mapping

from runner.errors import RegistryError
from runner.images.pull import (PROGRESS_INTERVAL, READ_CHUNK, WORKERS, Progress, check_image_manifest,
                                load_sources, record_sources, short_id)
from runner.images.reference import Reference
from runner.images.registry import RegistryClient, media_type_of, push_scope

CHUNK_SIZE = 64 << 20


def push(store, ref, *, credentials: Mapping[str, Mapping[str, str]] | None = None,
         insecure: Iterable[str] = (), progress: Progress | None = None,
         endpoints: Mapping[str, str] | None = None) -> str:
    """Push the local image named ``ref`` to its registry; return the manifest digest.

    ``credentials``, ``insecure`` and ``endpoints`` as for :func:`runner.images.pull.pull`. ``progress`` receives
    ``{"id", "status", "current", "total"}`` with statuses Preparing, Pushing, Pushed,
    Layer already exists, Mounted from <repo>; a final event without ``id`` gives the digest.
    """
    reference = ref if isinstance(ref, Reference) else Reference.parse(str(ref))
    emit = progress or (lambda event: None)
    image = store.resolve(reference.name)
    with store.open_blob(image.manifest_digest) as handle:
        data = handle.read()
    media_type = media_type_of(data, image.media_type)
    config_desc, layers = check_image_manifest(store.read_json(image.manifest_digest), reference.familiar)

    client = RegistryClient(reference.registry, credentials=(credentials or {}).get(reference.registry),
                            insecure=reference.registry in set(insecure), endpoints=endpoints)
    repo = reference.repository
    emit({"status": f"The push refers to repository [{reference.base}]"})
    sources = load_sources(store)
    blobs = [*layers, config_desc]
    for desc in layers:
        emit({"id": short_id(desc["digest"]), "status": "Preparing"})
    client.ping()
    cancel = threading.Event()
    pool = ThreadPoolExecutor(max_workers=max(1, min(WORKERS, len(blobs))), thread_name_prefix="push")
    try:
        futures = [pool.submit(_push_blob, client, store, repo, desc, sources.get(desc["digest"], []),
                               emit if desc is not config_desc else None, cancel) for desc in blobs]
        for future in as_completed(futures):
            future.result()
    except BaseException:
        cancel.set()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)

    digest = client.put_manifest(repo, reference.tag or image.manifest_digest, data, media_type)
    record_sources(store, reference.registry, repo, [d["digest"] for d in blobs])
    emit({"status": f"{reference.tag or 'digest'}: digest: {digest} size: {len(data)}"})
    return digest


def _push_blob(client: RegistryClient, store, repo: str, desc: dict, sources: list[str],
               emit: Progress | None, cancel: threading.Event) -> None:
    digest, size = desc["digest"], desc["size"]

    def say(event: dict) -> None:
        if emit is not None:
            emit({"id": short_id(digest), **event})

    if client.blob_exists(repo, digest, (push_scope(repo),)):
        say({"status": "Layer already exists"})
        return
    location = None
    prefix = client.registry + "/"
    for source in sources:
        if not source.startswith(prefix) or source == prefix + repo:
            continue
        source_repo = source[len(prefix):]
        try:
            location = client.mount_blob(repo, digest, source_repo)
        except RegistryError:
            continue  # no read access to the source, or it is gone: upload instead
        if location is None:
            say({"status": f"Mounted from {source_repo}"})
            return
        break
    location = location or client.start_upload(repo)
    last_report = [0.0]

    def read_range(offset: int, length: int) -> Iterator[bytes]:
        with store.open_blob(digest) as handle:
            handle.seek(offset)
            position, end = offset, offset + length
            while position < end:
                if cancel.is_set():
                    raise RegistryError(f"push of {digest} cancelled")
                chunk = handle.read(min(READ_CHUNK, end - position))
                if not chunk:
                    raise RegistryError(f"blob {digest} in the image store is shorter than {size} bytes")
                position += len(chunk)
                now = time.monotonic()
                if now - last_report[0] >= PROGRESS_INTERVAL or position == size:
                    last_report[0] = now
                    say({"status": "Pushing", "current": position, "total": size})
                yield chunk

    client.upload_blob(repo, location, digest, size, read_range, CHUNK_SIZE)
    say({"status": "Pushed"})
