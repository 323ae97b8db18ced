"""Write image layers: OCI layer tars made from a build container's overlay upper directory, or entry by entry.

A RUN step's changes are exactly its container's overlayfs upper directory: new and changed files as they
are, a deleted name as a 0:0 character device (written as the OCI whiteout ``.wh.<name>``), a directory
whose lower contents were replaced as one carrying the ``overlay.opaque`` xattr (written as the directory
plus ``.wh..wh..opq``). overlayfs' own bookkeeping xattrs (``trusted.*``, ``user.overlay.*``) never go into a
layer; ``security.*`` ones (file capabilities) do, as PAX ``SCHILY.xattr`` records as Docker writes them.
COPY/ADD and WORKDIR layers are written entry by entry with the same writer.

The tar is uncompressed (its digest is its diff_id, as runner's imported layers) and goes to a temporary
file in the store, then into the store by :meth:`LayerWriter.commit`. Standard library only (runs in the
guest).
"""

from __future__ import annotations

import contextlib
import os
import stat
import tarfile
import time

from runner.images.fsview import _OPAQUE, _is_whiteout
from runner.images.layers import OPAQUE_MARKER, WHITEOUT_PREFIX

_SKIP_XATTR = ("trusted.", "user.overlay.")


class LayerWriter:
    """One layer tar being written to a temp file of ``store``; ``commit`` stores it, ``discard`` drops it."""

    def __init__(self, store):
        self.store = store
        # Claimed (flock'ed) so a build killed mid-commit leaves a temp file the store's sweep removes.
        self.path, self._lock = store._claim_temp("layer-")
        self._file = open(self.path, "wb")
        self.tar = tarfile.open(fileobj=self._file, mode="w", format=tarfile.PAX_FORMAT)
        self.names: set[str] = set()
        self._links: dict[tuple[int, int], str] = {}
        self.count = 0

    # -- entries
    def add(self, info: tarfile.TarInfo, data=None) -> None:
        if info.name in self.names and not info.isdir():
            return
        if info.name in self.names and info.isdir():
            return  # a parent directory written already keeps its first metadata
        self.names.add(info.name)
        info.uname = info.gname = ""
        self.tar.addfile(info, data)
        self.count += 1

    def add_path(self, name: str, path: str, st: os.stat_result, uid: int | None = None, gid: int | None = None,
                 mode: int | None = None) -> None:
        """The file system object at ``path`` as entry ``name``; ``uid``/``gid``/``mode`` override its own."""
        info = tarfile.TarInfo(name)
        info.mode = stat.S_IMODE(st.st_mode) if mode is None else mode
        info.uid = st.st_uid if uid is None else uid
        info.gid = st.st_gid if gid is None else gid
        info.mtime = int(st.st_mtime)
        _xattrs(info, path)
        kind = stat.S_IFMT(st.st_mode)
        if kind == stat.S_IFREG and st.st_nlink > 1:
            first = self._links.setdefault((st.st_dev, st.st_ino), name)
            if first != name:
                info.type, info.linkname = tarfile.LNKTYPE, first
                self.add(info)
                return
        if kind == stat.S_IFREG:
            info.size = st.st_size
            with open(path, "rb") as f:
                self.add(info, f)
            return
        if kind == stat.S_IFDIR:
            info.type = tarfile.DIRTYPE
        elif kind == stat.S_IFLNK:
            info.type, info.linkname = tarfile.SYMTYPE, os.readlink(path)
        elif kind in (stat.S_IFCHR, stat.S_IFBLK):
            info.type = tarfile.CHRTYPE if kind == stat.S_IFCHR else tarfile.BLKTYPE
            info.devmajor, info.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
        elif kind == stat.S_IFIFO:
            info.type = tarfile.FIFOTYPE
        else:
            return  # sockets have no tar form
        self.add(info)

    def add_dir(self, name: str, mode: int = 0o755, uid: int = 0, gid: int = 0, mtime: float | None = None) -> None:
        info = tarfile.TarInfo(name)
        info.type, info.mode, info.uid, info.gid = tarfile.DIRTYPE, mode, uid, gid
        info.mtime = int(time.time() if mtime is None else mtime)
        self.add(info)

    def add_bytes(self, name: str, data: bytes, mode: int = 0o644, uid: int = 0, gid: int = 0,
                  mtime: float | None = None) -> None:
        import io
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.uid, info.gid = len(data), mode, uid, gid
        info.mtime = int(time.time() if mtime is None else mtime)
        self.add(info, io.BytesIO(data))

    def whiteout(self, name: str) -> None:
        head, _, base = name.rpartition("/")
        self.add_bytes(f"{head}/{WHITEOUT_PREFIX}{base}" if head else WHITEOUT_PREFIX + base, b"", mode=0)

    # -- the result
    def commit(self) -> tuple[str, int]:
        """Close the tar and store it: (diff_id = digest, size)."""
        self.tar.close()
        self._file.close()
        try:
            with open(self.path, "rb") as f:
                return self.store.ingest(f)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
            self._unlock()

    def discard(self) -> None:
        with contextlib.suppress(Exception):
            self.tar.close()
        with contextlib.suppress(Exception):
            self._file.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        self._unlock()

    def _unlock(self) -> None:
        """Drop the temp file's claim once (a discard after a failed commit must not close a reused fd)."""
        lock, self._lock = self._lock, -1
        if lock >= 0:
            os.close(lock)


def _xattrs(info: tarfile.TarInfo, path: str) -> None:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return
    for name in names:
        if name.startswith(_SKIP_XATTR):
            continue
        with contextlib.suppress(OSError):
            value = os.getxattr(path, name, follow_symlinks=False)
            info.pax_headers["SCHILY.xattr." + name] = value.decode("utf-8", "surrogateescape")


def write_upper(writer: LayerWriter, upper: str, skip: frozenset[str] = frozenset()) -> None:
    """Every change in the overlay ``upper`` directory as layer entries (whiteouts and opaque directories in
    OCI form); relative paths in ``skip`` (the bind-mounted /etc files' mount points) are left out."""
    stack = [""]
    while stack:
        rel_dir = stack.pop()
        full_dir = os.path.join(upper, rel_dir) if rel_dir else upper
        children = []
        for name in sorted(os.listdir(full_dir)):
            rel = f"{rel_dir}/{name}" if rel_dir else name
            if rel in skip:
                continue
            path = os.path.join(full_dir, name)
            st = os.lstat(path)
            if _is_whiteout(st):
                writer.whiteout(rel)
                continue
            writer.add_path(rel, path, st)
            if stat.S_ISDIR(st.st_mode):
                if any(_has_opaque(path, x) for x in _OPAQUE):
                    writer.add_bytes(f"{rel}/{OPAQUE_MARKER}", b"", mode=0)
                children.append(rel)
        stack.extend(reversed(children))


def _has_opaque(path: str, name: str) -> bool:
    try:
        return os.getxattr(path, name, follow_symlinks=False) == b"y"
    except OSError:
        return False
