"""Disk space: ``system df`` (what runner's files take, what could go) and ``system prune`` (let it go).

Why here and not in the CLI: the engine may run in the VM, where the files are on the guest's data disk, so
both are engine operations that reach the host as plain JSON (the CLI only formats them). Prune must work on
a full disk, since it is how a user gets space back: it only deletes, and the writes it makes (the image
index, container records) have spare files (runner.diskfull). Standard library only.
"""

from __future__ import annotations

import contextlib
import os

from runner.diskfull import free_bytes, mount_of
from runner.engine.state import RUNNING
from runner.errors import Conflict, NotFound, RunnerError


def _usage(path: str) -> int:
    from runner.images.store import _disk_usage
    return _disk_usage(path)


def _row(total: int, active: int, size: int, reclaimable: int) -> dict:
    return {"Total": total, "Active": active, "Size": size, "Reclaimable": reclaimable}


def df(engine) -> dict:
    """Docker's ``system df`` rows in bytes (Images, Containers, Local Volumes, Build Cache, Partial
    downloads), the volumes and the build cache records one by one (the API's ``Volumes`` and ``BuildCache``
    lists), plus the filesystem."""
    records = []
    for cid in engine.state.ids():
        with contextlib.suppress(NotFound, ValueError):
            records.append(engine.state.reconcile(engine.state.load(cid)))
    sizes = {rec.id: _usage(engine.state.dir(rec.id)) for rec in records}
    running = [rec for rec in records if rec.status == RUNNING]
    used_ids = {rec.image_id for rec in records}
    store = engine.images_store
    images = store.list()
    files = {img.id: store.image_files(img) for img in images}
    every = {p for paths in files.values() for p in paths}
    kept = {p for img in images if img.id in used_ids for p in files[img.id]}
    size_of = {p: _usage(p) for p in every}
    partials, partial_size = store.tmp_usage()
    vols = _volumes(engine)
    cache = build_cache(engine, size_of, every, used_ids)
    point, fstype = mount_of(engine.root)
    st = os.statvfs(engine.root)
    return {
        "Images": _row(len(images), sum(1 for img in images if img.id in used_ids), sum(size_of.values()),
                       sum(size_of[p] for p in every - kept)),
        "Containers": _row(len(records), len(running), sum(sizes.values()),
                           sum(sizes[rec.id] for rec in records if rec.status != RUNNING)),
        "Local Volumes": _row(len(vols), sum(1 for v in vols if v["UsageData"]["RefCount"]),
                              sum(v["UsageData"]["Size"] for v in vols),
                              sum(v["UsageData"]["Size"] for v in vols if not v["UsageData"]["RefCount"])),
        "Build Cache": _row(len(cache), sum(1 for c in cache if c["InUse"]), sum(c["Size"] for c in cache),
                            sum(c["Size"] for c in cache if not c["InUse"])),
        "Partial downloads": _row(partials, 0, partial_size, partial_size),
        "VolumesList": vols,
        "BuildCacheList": cache,
        "Disk": {"Root": engine.root, "Mount": point, "Type": fstype, "Size": st.f_blocks * st.f_frsize,
                 "Used": (st.f_blocks - st.f_bfree) * st.f_frsize, "Free": free_bytes(engine.root) or 0},
    }


def _volumes(engine) -> list[dict]:
    """Every volume as ``volume inspect`` shows it, with Docker's ``UsageData`` (bytes, containers using it)."""
    from runner.engine.volumes import Volumes, _usage, data_dir
    vols = Volumes(engine)
    used = vols.users()
    out = []
    for name in vols.names():
        with contextlib.suppress(NotFound, ValueError, OSError):
            view = vols.inspect(name)
            view["UsageData"] = {"Size": _usage(data_dir(engine.root, name)), "RefCount": len(used.get(name, []))}
            out.append(view)
    return out


def build_cache(engine, size_of: dict, named: set, used_ids: set) -> list[dict]:
    """Docker's build cache records (the API's ``BuildCache``: ID, Type, Description, InUse, Shared, Size,
    CreatedAt, LastUsedAt, UsageCount, Parents): the build's intermediate step images nobody named
    ("regular", described by their step) and the unpacked contexts kept for rebuilds ("source.local"); all of
    it is what ``builder prune`` removes. A step image's Size is what only it takes: files of the images
    ``images`` lists (``named``, counted in the Images row) are not counted, and a file several step images
    share is counted once, for the first step that has it (its layer's maker). In use: a step image a
    container runs (a build's step), a context a running build holds."""
    from runner.engine.filters import built_on
    from runner.images.rootfs import rfc3339
    store = engine.images_store
    uses = _cache_uses(store)
    steps = []
    for digest in store.intermediates():
        with contextlib.suppress(NotFound, KeyError, ValueError, OSError):
            steps.append(store.resolve(store.read_json(digest)["config"]["digest"]))
    steps.sort(key=lambda img: (len(img.config.get("history") or []), img.created or ""))
    counted, out = set(named), []
    for image in steps:
        own = [p for p in store.image_files(image) if p not in counted]
        counted.update(own)
        history = image.config.get("history") or [{}]
        parents = [p.id for p in steps if p is not image and built_on(image.config, p.config)]
        out.append(_cache_record(image.id.split(":", 1)[1], "regular", history[-1].get("created_by", ""),
                                 image.id in used_ids, sum(size_of.get(p, 0) or _usage(p) for p in own),
                                 image.created, uses.get(image.id, (None, 1)), parents[-1:]))
    root = os.path.join(store.root, "build-contexts")
    for name in _listdir(root):
        path = os.path.join(root, name)
        if name.endswith(".gone"):  # being removed by a prune
            continue
        with contextlib.suppress(OSError):
            made = os.stat(os.path.join(path, "dockerfile")).st_mtime
            out.append(_cache_record(name, "source.local", "local source for context", _held(path), _usage(path),
                                     rfc3339(made), (os.stat(path).st_mtime, 1), []))
    return out


def _cache_record(ident: str, kind: str, description: str, in_use: bool, size: int, created: str | None,
                  used: tuple, parents: list[str]) -> dict:
    from runner.images.rootfs import rfc3339
    last, count = used
    return {"ID": ident, "Parent": parents[0] if parents else "", "Parents": parents, "Type": kind,
            "Description": description, "InUse": in_use, "Shared": False, "Size": size, "CreatedAt": created,
            "LastUsedAt": rfc3339(last) if last is not None else created, "UsageCount": count}


def _cache_uses(store) -> dict:
    """Step image ID -> (when a build last made or used it, how many times): from the cache entries."""
    from runner.images.builder import read_cache_entry
    root = os.path.join(store.root, "build-cache")
    out: dict = {}
    for name in _listdir(root):
        with contextlib.suppress(OSError, ValueError):
            path = os.path.join(root, name)
            image_id, count = read_cache_entry(path)
            last, before = out.get(image_id, (0.0, 0))
            out[image_id] = (max(last, os.stat(path).st_mtime), before + count)
    return out


def _held(path: str) -> bool:
    """Whether a running build holds the unpacked context ``path`` (its shared flock, runner.images.build)."""
    import fcntl
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except OSError:
        return True
    finally:
        os.close(fd)


def prune(engine, all_images: bool = False, volumes: bool = False) -> dict:
    """Remove stopped containers, unused networks, dangling (``all_images``: unused) images, partial
    downloads, the build cache and (``volumes``) unused anonymous volumes, as ``docker system prune [-a] [--volumes]`` does;
    what went and the space won back."""
    from runner.engine.build import sweep_steps
    before = _free(engine.root)
    containers = sweep_steps(engine)  # a killed build's step containers, running ones too
    for cid in engine.state.ids():
        with contextlib.suppress(NotFound, Conflict, ValueError):
            rec = engine.state.reconcile(engine.state.load(cid))
            if rec.status != RUNNING:
                engine._remove(rec.id)
                containers.append(rec.id)
    networks = []
    if os.geteuid() == 0:
        from runner.engine import network
        for name in network.Networks(engine).names():
            if name != network.DEFAULT_NETWORK:
                with contextlib.suppress(RunnerError, OSError):
                    engine.network_rm(name)
                    networks.append(name)
    deleted_volumes = []
    if volumes:  # after the containers: the volumes of the ones just removed are unused now
        from runner.engine.volumes import Volumes
        deleted_volumes = Volumes(engine).prune(all=False)["VolumesDeleted"]
    images = []
    store = engine.images_store
    for img in store.list(all=True):
        if all_images or not img.names:
            with contextlib.suppress(Conflict, NotFound):
                if not engine._image_in_use(img.id):
                    images += store.remove(img.id, force=True)
    caches = build_prune(engine)["CachesDeleted"]  # docker's system prune takes the build cache too
    store.sweep_tmp(0)
    import shutil
    for name in _listdir(engine.state.trash):  # --rm leftovers whose background deletion was killed
        shutil.rmtree(os.path.join(engine.state.trash, name), ignore_errors=True)
    return {"ContainersDeleted": containers, "NetworksDeleted": networks, "ImagesDeleted": images,
            "VolumesDeleted": deleted_volumes, "CachesDeleted": caches, "SpaceReclaimed": max(0, _free(engine.root) - before)}


def build_prune(engine) -> dict:
    """Remove the build cache: intermediate step images nobody named, and the cache keys naming them."""
    import shutil
    from runner.engine.build import sweep_steps
    before = _free(engine.root)
    sweep_steps(engine)  # a killed build's step containers hold its step images
    store = engine.images_store
    deleted = []
    for digest in store.intermediates():
        with contextlib.suppress(Conflict, NotFound):
            image = store.resolve(store.read_json(digest)["config"]["digest"])
            if not engine._image_in_use(image.id):
                store.remove(image.id, force=True)
                deleted.append(image.id)
    shutil.rmtree(os.path.join(store.root, "build-cache"), ignore_errors=True)  # the keys naming those images
    from runner.images.build import prune_contexts
    prune_contexts(store)  # the unpacked contexts kept for rebuilds, except those a running build holds
    return {"CachesDeleted": deleted, "SpaceReclaimed": max(0, _free(engine.root) - before)}


def _free(path: str) -> int:
    st = os.statvfs(path)
    return st.f_bfree * st.f_frsize


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except FileNotFoundError:
        return []


def _labels_match(labels: dict, wanted: list[str]) -> bool:
    """Docker's ``label`` filter: every ``key`` or ``key=value`` given must be on the object."""
    for want in wanted:
        key, eq, value = want.partition("=")
        if key not in labels or (eq and labels[key] != value):
            return False
    return True


def prune_containers(engine, labels: list[str] | None = None, until: float | None = None) -> dict:
    """``POST /containers/prune``: remove stopped containers (created before ``until``, carrying ``labels``)."""
    before = _free(engine.root)
    deleted = []
    for cid in engine.state.ids():
        with contextlib.suppress(NotFound, Conflict, ValueError):
            rec = engine.state.reconcile(engine.state.load(cid))
            if rec.status == RUNNING or (until is not None and rec.created >= until):
                continue
            if not _labels_match(rec.spec.get("labels") or {}, labels or []):
                continue
            engine._remove(rec.id, rec.runtime)
            deleted.append(rec.id)
            engine.journal("container", "destroy", rec.id, _container_attrs(rec))
    return {"ContainersDeleted": deleted, "SpaceReclaimed": max(0, _free(engine.root) - before)}


def _container_attrs(rec) -> dict:
    return {"name": rec.name, "image": rec.image_ref, **(rec.spec.get("labels") or {})}


def prune_images(engine, all_images: bool = False, labels: list[str] | None = None,
                 until: float | None = None) -> dict:
    """``POST /images/prune``: remove dangling images (``all_images``: every image no container uses)."""
    from runner.engine.views import unix_seconds
    before = _free(engine.root)
    deleted: list[dict] = []
    store = engine.images_store
    for img in store.list():
        if img.names and not all_images:
            continue
        if until is not None and unix_seconds(img.created) >= until:
            continue
        if not _labels_match((img.config.get("config") or {}).get("Labels") or {}, labels or []):
            continue
        with contextlib.suppress(Conflict, NotFound):
            if not engine._image_in_use(img.id):
                for line in store.remove(img.id, force=True):
                    kind, _, what = line.partition(": ")
                    deleted.append({kind: what})
                engine.journal("image", "delete", img.id, {"name": img.id})
    return {"ImagesDeleted": deleted or None, "SpaceReclaimed": max(0, _free(engine.root) - before)}
