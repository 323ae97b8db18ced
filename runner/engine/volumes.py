"""Named volumes: directories of the engine that outlive containers (Docker's ``local`` volume driver).

Layout under the engine root (in the VM: the guest's data disk, so a volume survives ``vm stop``/``vm start``
and a killed QEMU as the containers' records do)::

    volumes/.lock              guards create/remove/prune against each other and against container creation
    volumes/<name>/volume.json Name, Labels, Options, CreatedAt (written atomically, fsynced)
    volumes/<name>/_data/      the content, bind-mounted into containers

Docker's rules kept here: names match ``[a-zA-Z0-9][a-zA-Z0-9_.-]+``; ``create`` of an existing name returns it;
a volume any container (running or not) mounts cannot be removed (409 Conflict); anonymous volumes carry the
label ``com.docker.volume.anonymous`` and are the ones ``rm -v``, ``run --rm`` and a plain ``volume prune``
remove (``prune --all``: every unused one); a new, empty volume is filled from the image's content at its mount
point when a container first mounts it (copy-up), unless ``nocopy``.

Standard library only (runs in the guest).
"""

from __future__ import annotations

import contextlib
import json
import os
import stat

from runner.errors import Conflict, NotFound, UsageError
from runner.spec import VOLUME_NAME_RE

ANONYMOUS_LABEL = "com.docker.volume.anonymous"


def volumes_dir(root: str) -> str:
    return os.path.join(root, "volumes")


def data_dir(root: str, name: str) -> str:
    return os.path.join(volumes_dir(root), name, "_data")


def check_name(name: str) -> str:
    if not isinstance(name, str) or not VOLUME_NAME_RE.match(name):
        raise UsageError(f"invalid volume name {name!r}: only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed, "
                         "at least two characters", hint="e.g. runner volume create my-data")
    return name


class Volumes:
    """The volumes of one engine (``engine`` gives the root and the container records)."""

    def __init__(self, engine):
        self.engine = engine
        self.dir = volumes_dir(engine.root)

    def lock(self):
        from runner.procs import FileLock
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        return FileLock(os.path.join(self.dir, ".lock"))

    def _meta_path(self, name: str) -> str:
        return os.path.join(self.dir, name, "volume.json")

    def names(self) -> list[str]:
        try:
            return sorted(n for n in os.listdir(self.dir)
                          if not n.startswith(".") and os.path.exists(self._meta_path(n)))
        except FileNotFoundError:
            return []

    def _load(self, name: str) -> dict:
        try:
            with open(self._meta_path(check_name(name))) as f:
                return json.load(f)
        except (FileNotFoundError, UsageError) as exc:
            raise NotFound(f"no such volume: {name}", hint="list volumes with 'runner volume ls'") from exc

    def create_locked(self, name: str | None, labels: dict | None = None, options: dict | None = None) -> dict:
        """Create (or return the existing) volume; the caller holds :meth:`lock`. ``name`` None: anonymous."""
        from runner.engine.state import now, write_json_atomic
        labels = dict(labels or {})
        if name is None:
            name = os.urandom(32).hex()
            labels[ANONYMOUS_LABEL] = ""
        check_name(name)
        if os.path.exists(self._meta_path(name)):
            return self._load(name)
        if options:
            raise UsageError(f"invalid volume options {sorted(options)}: the local driver here takes none",
                             hint="create the volume without -o/--opt")
        os.makedirs(os.path.join(self.dir, name, "_data"), mode=0o755, exist_ok=True)
        os.chmod(os.path.join(self.dir, name), 0o700)
        meta = {"Name": name, "Labels": labels, "Options": {}, "CreatedAt": now()}
        write_json_atomic(self._meta_path(name), meta, mode=0o600, sync_dir=True)
        return meta

    def create(self, name: str | None, labels: dict | None = None, options: dict | None = None) -> dict:
        if labels is not None and not (isinstance(labels, dict) and all(
                isinstance(k, str) and k and isinstance(v, str) for k, v in labels.items())):
            raise UsageError("volume labels must map non-empty strings to strings")
        with self.lock():
            meta = self.create_locked(name or None, labels, options)
        return self.view(meta)

    def view(self, meta: dict) -> dict:
        from runner.engine import views
        return views.volume(meta, data_dir(self.engine.root, meta["Name"]))

    def inspect(self, name: str) -> dict:
        return self.view(self._load(name))

    def users(self) -> dict[str, list[str]]:
        """Volume name -> names of the containers (running or not) that mount it."""
        out: dict[str, list[str]] = {}
        state = self.engine.state
        for cid in state.ids():
            with contextlib.suppress(NotFound, ValueError, OSError):
                rec = state.load(cid)
                for m in rec.spec.get("mounts") or []:
                    if m.get("type") == "volume" and m.get("source"):
                        out.setdefault(m["source"], []).append(rec.name)
        return out

    def ls(self, filters: dict | None = None) -> list[dict]:
        from runner.engine import filters as flt
        f = flt.normalize(filters, flt.VOLUME_KEYS)
        used = self.users() if "dangling" in f else {}
        out = []
        for name in self.names():
            with contextlib.suppress(NotFound, ValueError, OSError):
                entry = self.inspect(name)
                if not flt.named_match(entry, f):
                    continue
                if "dangling" in f and (name not in used) != (f["dangling"][-1] in ("true", "1")):
                    continue
                out.append(entry)
        return out

    def remove(self, name: str, force: bool = False) -> str:
        with self.lock():
            try:
                self._load(name)
            except NotFound:
                if force:
                    return name
                raise
            users = self.users().get(name)
            if users:
                raise Conflict(f"remove {name}: volume is in use - [{', '.join(sorted(users))}]",
                               hint="remove the containers that use it first (runner rm)")
            self._delete(name)
        return name

    def _delete(self, name: str) -> int:
        import shutil
        path = os.path.join(self.dir, name)
        size = _usage(path)
        os.unlink(self._meta_path(name))  # gone for everyone at once; the files follow
        shutil.rmtree(path, ignore_errors=True)
        return size

    def prune(self, all: bool = False, filters: dict | None = None) -> dict:
        """Remove unused volumes: anonymous ones, or every unused one with ``all`` (Docker 23+'s rules)."""
        from runner.engine import filters as flt
        f = flt.normalize(filters, ("label", "all"))
        if f.pop("all", None) and not all:
            all = True
        deleted, space = [], 0
        with self.lock():
            used = self.users()
            for name in self.names():
                with contextlib.suppress(NotFound, ValueError, OSError):
                    meta = self._load(name)
                    labels = meta.get("Labels") or {}
                    if name in used or (not all and ANONYMOUS_LABEL not in labels):
                        continue
                    if "label" in f and not flt.labels_match(labels, f["label"]):
                        continue
                    space += self._delete(name)
                    deleted.append(name)
        return {"VolumesDeleted": deleted, "SpaceReclaimed": space}

    def remove_anonymous(self, names: list[str]) -> list[str]:
        """``rm -v`` / ``run --rm``: remove these volumes if anonymous and no container mounts them any more."""
        gone = []
        with self.lock():
            used = self.users()
            for name in names:
                with contextlib.suppress(NotFound, OSError):
                    if ANONYMOUS_LABEL in (self._load(name).get("Labels") or {}) and name not in used:
                        self._delete(name)
                        gone.append(name)
        return gone


def _usage(path: str) -> int:
    total = 0
    for dirpath, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
    return total


def is_empty(path: str) -> bool:
    with os.scandir(path) as it:
        return next(it, None) is None


def copy_up(rootfs: str, target: str, dest: str) -> bool:
    """Fill the empty volume directory ``dest`` with what the container's ``rootfs`` holds at ``target``
    (Docker's copy-up of image content into a new volume); True if something was there to copy.

    The source is walked by file descriptors (``open_in_root``, ``os.fwalk``, ``O_NOFOLLOW``): a symlink in
    the image is copied as a symlink and never followed, so an image cannot make the engine read host files.
    Owners, modes and times are kept, as Docker keeps them; special files other than symlinks are skipped."""
    from runner.engine.runtime.oci import open_in_root
    try:
        src = open_in_root(rootfs, target, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return False  # nothing (or no directory) there: the volume starts empty
    try:
        st = os.fstat(src)
        os.chown(dest, st.st_uid, st.st_gid)
        os.chmod(dest, stat.S_IMODE(st.st_mode))
        for dirpath, dirnames, filenames, dfd in os.fwalk(".", dir_fd=src, follow_symlinks=False):
            out_dir = os.path.normpath(os.path.join(dest, dirpath))
            for name in dirnames + filenames:
                _copy_entry(dfd, name, os.path.join(out_dir, name))
        os.utime(dest, ns=(st.st_atime_ns, st.st_mtime_ns))
    finally:
        os.close(src)
    return True


def _copy_entry(dfd: int, name: str, out: str) -> None:
    st = os.lstat(name, dir_fd=dfd)
    mode = st.st_mode
    if stat.S_ISDIR(mode):
        os.mkdir(out, 0o700)
    elif stat.S_ISLNK(mode):
        os.symlink(os.readlink(name, dir_fd=dfd), out)
    elif stat.S_ISREG(mode):
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
        try:
            with open(out, "xb") as w:
                while True:
                    n = os.sendfile(w.fileno(), fd, None, 1 << 20)
                    if n == 0:
                        break
        finally:
            os.close(fd)
    else:
        return  # devices, fifos, sockets: not copied
    os.lchown(out, st.st_uid, st.st_gid)
    if not stat.S_ISLNK(mode):
        os.chmod(out, stat.S_IMODE(mode))
    os.utime(out, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)
