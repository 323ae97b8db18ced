"""`runner vm image pull`, and the automatic pull on a machine's first start: the guest from a registry.

Steps, and what each one guards against (the format is in :mod:`runner.vm.artifact`):

1. Fetch the index by the pinned digest when the reference has one (the registry client hashes the bytes:
   a substituted index is refused), else by tag; choose this arch's manifest; refuse a foreign artifact, a
   guest of another image version or a missing arch *before* any large download.
2. Download the config (the guest's manifest.json) and the gzip layers with the image pull code
   (``runner.images.pull``): every blob is size-limited and sha256-verified while it streams into a
   download store under ``<cache>/<version>/.download-<arch>/``; a killed pull leaves its partial there and
   the next pull resumes it with HTTP Range.
3. Decompress into a fresh ``.unpack-*`` directory beside the cache (never more bytes than manifest.json
   declares), write manifest.json, check every sha256 (:func:`runner.vm.image.verify`), and only then rename
   it to ``<cache>/<version>/<arch>``. Until that rename nothing bootable exists; a kill at any point leaves
   at most a download to resume and an unpack directory the next pull removes.
4. A blob or file that fails its digest is content, not a network error: the download store goes too, so
   the cache is exactly as before the pull.

Pure Python (urllib, zlib, hashlib): runs unchanged on macOS and Windows hosts.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import threading
import time
import zlib
from pathlib import Path
from typing import Callable, Iterable, Mapping

from runner.errors import ImageError, NotFound, RegistryError, RunnerError, VMError
from runner.vm import artifact, image

Progress = Callable[[dict], None]
SOURCE = ".source.json"  # beside manifest.json: which reference and digests a pulled image came from
_CHUNK = 1 << 20
_LOCAL_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}


def ensure(arch: str | None = None, progress: Progress | None = None) -> "image.Artifacts":
    """:func:`runner.vm.image.ensure`, pulling a missing guest when a reference is configured (first start)."""

    def fetch(wanted: str) -> bool:
        configured = artifact.configured_ref()
        if configured is None:
            return False
        pull(configured[0], wanted, source=configured[1], progress=progress)
        return True

    return image.ensure(arch, fetch=fetch)


class status_lines:  # noqa: N801 (used like a function: a progress sink made from a ``say`` callback)
    """A progress sink for a machine's first start, which has only a one-line ``say`` (the CLI's warn): the
    whole-pull lines (reference and size, digest, total and speed) and, while a slow download runs, one line
    every ``interval`` seconds with the bytes so far, the total and the speed, summed over all layers."""

    def __init__(self, say: Callable[[str], None], interval: float = 3.0, clock: Callable[[], float] = time.monotonic):
        self.say, self.interval, self.clock = say, interval, clock
        self.current: dict[str, int] = {}
        self.total: dict[str, int] = {}
        self.started = self.last = None

    def __call__(self, event: dict) -> None:
        if not event.get("id"):
            self.say(str(event.get("status", "")))
            return
        if event.get("status") != "Downloading":
            return
        now = self.clock()
        if self.started is None:
            self.started = self.last = now
        self.current[event["id"]] = int(event.get("current") or 0)
        self.total[event["id"]] = int(event.get("total") or 0)
        if now - self.last >= self.interval:
            self.last = now
            done = sum(self.current.values())
            self.say(f"guest image: {done / 1e6:.1f}MB of {sum(self.total.values()) / 1e6:.1f}MB, "
                     f"{done / 1e6 / max(now - self.started, 1e-3):.1f}MB/s")


def build_hint(arch: str) -> str:
    return (f"check the network and the reference, or build the guest locally: `runner vm image build --arch "
            f"{arch}` on a Linux host (as root), or set {artifact.ENV} to a registry you can reach")


class _Rate:
    """Adds ``speed`` (bytes/s) to Downloading events and sums what was really downloaded."""

    def __init__(self, emit: Progress):
        self.emit, self.started, self.first, self.bytes = emit, time.monotonic(), {}, {}

    def __call__(self, event: dict) -> None:
        key = event.get("id")
        if event.get("status") == "Downloading" and key:
            start = self.first.setdefault(key, (time.monotonic(), int(event.get("current") or 0)))
            elapsed = time.monotonic() - start[0]
            fresh = int(event.get("current") or 0) - start[1]
            self.bytes[key] = fresh
            if elapsed > 0:
                event = {**event, "speed": fresh / elapsed}
        self.emit(event)

    @property
    def downloaded(self) -> int:
        return sum(self.bytes.values())


def pull(ref: str, arch: str, *, source: str = "", credentials: Mapping[str, Mapping[str, str]] | None = None,
         insecure: Iterable[str] = (), progress: Progress | None = None) -> dict:
    """Pull the guest ``ref`` for ``arch`` into the cache; a summary dict (digest, sizes, seconds, path)."""
    from runner import procs
    from runner.images.reference import Reference

    image.cache_dir(arch)  # refuses an unknown arch
    try:
        reference = Reference.parse(ref)
    except RunnerError as exc:
        raise VMError(f"invalid guest image reference {ref!r}{f' (from {source})' if source else ''}: "
                      f"{exc.message}") from exc
    root = image.cache_dir(arch).parent
    root.mkdir(parents=True, exist_ok=True)
    with procs.FileLock(root / f".pull-{arch}.lock"):  # two first starts at once: one pulls, one waits
        _clean_unpacks(root, arch)
        where = f"{ref}{f' (from {source})' if source else ''}"
        try:
            return _pull_locked(reference, ref, arch, root, credentials, insecure, progress)
        except (RegistryError, NotFound) as exc:
            raise VMError(f"cannot pull the guest image {where}: {exc.message}", hint=build_hint(arch)) from exc
        except ImageError as exc:  # a digest or size check failed: content, not the network
            raise VMError(f"refused the guest image {where}: {exc.message}",
                          hint="nothing of it was kept; the registry (or something between) serves other bytes "
                               "than the reference pins. " + build_hint(arch)) from exc
        except OSError as exc:
            if exc.errno in _LOCAL_ERRNOS:  # a full disk, a read-only cache: the download so far stays
                raise VMError(f"cannot store the guest image in {root}: {exc.strerror or exc}",
                              hint=f"free some space there, or set {image.CACHE_ENV} to another directory") from exc
            raise VMError(f"cannot pull the guest image {where}: {exc.strerror or exc}", hint=build_hint(arch)) \
                from exc


def _pull_locked(reference, ref: str, arch: str, root: Path, credentials, insecure, progress) -> dict:
    from runner.images.registry import RegistryClient

    emit = _Rate(progress or (lambda event: None))
    started = time.monotonic()
    client = RegistryClient(reference.registry, credentials=(credentials or {}).get(reference.registry),
                            insecure=reference.registry in set(insecure))
    repo = reference.repository
    top = client.get_manifest(repo, reference.digest or reference.tag, display=ref)
    entry = artifact.choose(top.json(), arch, ref) if top.is_index else None
    manifest = client.get_manifest(repo, entry["digest"], display=f"{reference.base}@{entry['digest']}") \
        if entry else top
    target = image.cache_dir(arch)
    if _source(target).get("manifest") == manifest.digest and _intact(target, arch):
        emit({"status": f"Guest image is up to date for {ref} ({arch})"})
        return {"ref": ref, "digest": top.digest, "arch": arch, "downloaded": 0, "path": str(target),
                "seconds": time.monotonic() - started, "compressed": 0}
    config_desc, layers = artifact.check_manifest(manifest.json(), ref)
    compressed = config_desc["size"] + sum(d["size"] for d in layers.values())
    emit({"status": f"Pulling guest image {ref} for {arch}: {compressed / 1e6:.1f}MB"})
    download = root / f".download-{arch}"
    try:
        guest_bytes, store = _download(client, repo, download, config_desc, layers, arch, ref, emit)
        staging = _unpack(store, root, arch, layers, guest_bytes, ref)
        _write_source(staging, ref, top.digest, manifest.digest)
        _swap(staging, target)
    except (ImageError, VMError):
        shutil.rmtree(download, ignore_errors=True)  # tampered or foreign content: nothing of it stays
        raise
    shutil.rmtree(download, ignore_errors=True)  # unpacked and verified: the compressed copies are done
    seconds = time.monotonic() - started
    emit({"status": f"Digest: {top.digest}"})
    emit({"status": f"Downloaded {emit.downloaded / 1e6:.1f}MB in {seconds:.1f}s "
                    f"({emit.downloaded / 1e6 / max(seconds, 1e-3):.1f}MB/s); guest image ready in {target}"})
    return {"ref": ref, "digest": top.digest, "arch": arch, "downloaded": emit.downloaded,
            "compressed": compressed, "seconds": seconds, "path": str(target)}


def _download(client, repo: str, download: Path, config_desc: dict, layers: dict, arch: str, ref: str,
              emit: Progress):
    """Config first (checked before the big layers), then the layers in parallel, all through the store."""
    from runner.images.pull import _fetch_blob, _fetch_layers
    from runner.images.store import Store

    store = Store(str(download))
    _fetch_blob(client, store, repo, config_desc, None, threading.Event())
    with store.open_blob(config_desc["digest"]) as handle:
        guest_bytes = handle.read()
    try:
        guest = json.loads(guest_bytes)
    except ValueError as exc:
        raise VMError(f"{ref}: the guest manifest.json is not JSON") from exc
    if not isinstance(guest, dict):
        raise VMError(f"{ref}: the guest manifest.json is not an object")
    artifact.check_config(guest, arch, layers, ref)
    _fetch_layers(client, store, repo, list(layers.values()), emit)
    return guest_bytes, store


def _unpack(store, root: Path, arch: str, layers: dict, guest_bytes: bytes, ref: str) -> Path:
    """Decompress every layer into a new directory beside the cache and verify it; return that directory."""
    import tempfile

    guest = json.loads(guest_bytes)
    staging = Path(tempfile.mkdtemp(prefix=f".unpack-{arch}-", dir=root))
    try:
        for role, desc in layers.items():
            entry = guest["artifacts"][role]
            with store.open_blob(desc["digest"]) as src, open(staging / entry["file"], "wb") as dst:
                _gunzip(src, dst, int(entry["size"]), f"{ref} {role}")
                dst.flush()
                os.fsync(dst.fileno())
        (staging / "manifest.json").write_bytes(guest_bytes)
        try:
            image.verify(staging, arch)
        except VMError as exc:
            raise VMError(f"the guest image {ref} does not match its own manifest: {exc.message}",
                          hint="the published image is broken; ask its publisher to push it again") from exc
        return staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _gunzip(src, dst, limit: int, what: str) -> None:
    """Stream-decompress gzip ``src`` into ``dst``, refusing more than ``limit`` bytes (a gzip bomb)."""
    decomp = zlib.decompressobj(31)
    written = 0
    try:
        while chunk := src.read(_CHUNK):
            while chunk:
                data = decomp.decompress(chunk, _CHUNK)
                written += len(data)
                if written > limit:
                    raise VMError(f"{what} unpacks to more than the {limit} bytes its manifest declares")
                dst.write(data)
                chunk = decomp.unconsumed_tail
        tail = decomp.flush()
    except zlib.error as exc:
        raise VMError(f"{what} is not valid gzip data: {exc}") from exc
    if written + len(tail) > limit or not decomp.eof:
        raise VMError(f"{what} is truncated or larger than its manifest declares")
    dst.write(tail)


def _write_source(directory: Path, ref: str, index_digest: str, manifest_digest: str) -> None:
    data = {"ref": ref, "index": index_digest, "manifest": manifest_digest, "pulled": time.time()}
    (directory / SOURCE).write_text(json.dumps(data, indent=2) + "\n")


def _source(directory: Path) -> dict:
    try:
        data = json.loads((directory / SOURCE).read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def pulled(directory: Path) -> bool:
    """Whether this cache directory came from a registry (then it is never rebuilt from a changed recipe)."""
    return bool(_source(directory))


def _intact(directory: Path, arch: str) -> bool:
    try:
        image.verify(directory, arch)
        return True
    except VMError:
        return False


def _swap(staging: Path, target: Path) -> None:
    """Put the verified ``staging`` in ``target``'s place; ``target`` is never a partial image meanwhile."""
    old = None
    if target.exists():
        old = target.with_name(f".old-{target.name}-{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)  # a directory rename: cannot replace a non-empty dir in one step (Windows)
    os.replace(staging, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _clean_unpacks(root: Path, arch: str) -> None:
    """Unpack and swap leftovers of a pull that was killed (we hold the pull lock: nobody is using them)."""
    for path in list(root.glob(f".unpack-{arch}-*")) + list(root.glob(f".old-{arch}-*")):
        shutil.rmtree(path, ignore_errors=True)
