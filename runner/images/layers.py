"""Safe unpacking of image layer tars: the part of runner that touches untrusted bytes as root.

A layer is a tar written by whoever built the image, and it is unpacked as root on the host, so every
entry is treated as hostile:

- names are made relative (leading ``/`` stripped) and any ``..`` component is refused;
- every parent directory is opened one component at a time relative to the target with
  ``O_NOFOLLOW`` (openat-style, via ``dir_fd``), so an entry can never be written *through* a symlink,
  whether the symlink came in the same tar (``link -> /etc`` then ``link/passwd``) or already existed;
- the final component is created with ``O_EXCL | O_NOFOLLOW`` after removing what was there, so an
  existing symlink is replaced, never followed;
- hard links must name a file inside the tree, resolved the same way;
- device nodes and fifos are created only when ``allow_devices`` (root); otherwise skipped;
- ``trusted.*`` and ``user.overlay.*`` xattrs are never copied from a tar, because overlayfs reads its
  own control data (redirects, metacopy, opaque) from them.

OCI whiteouts come in two flavours of output. ``WHITEOUT_OVERLAY`` turns ``.wh.<name>`` into the 0:0
character device and ``.wh..wh..opq`` into the ``opaque`` xattr that overlayfs understands, so each layer
directory can be stacked directly as a ``lowerdir`` (this needs root, or for the ``user.overlay.*``
flavour a kernel that allows unprivileged whiteouts). ``WHITEOUT_FLAT`` applies them to a directory into
which several layers are unpacked one after the other (export, tests): the named file or the lower
layers' directory contents are deleted.

A malicious entry raises ImageError naming the entry. What was written before that stays inside the
target; callers unpack into a temporary directory and throw it away. The diff_id (sha256 of the
uncompressed tar) is computed while reading and checked when expected. Standard library only.
"""

from __future__ import annotations

import bz2
import errno
import gzip
import hashlib
import lzma
import os
import shutil
import stat
import tarfile
import zlib
from typing import BinaryIO

from runner.errors import ImageError

WHITEOUT_OVERLAY = "overlay"
WHITEOUT_FLAT = "flat"
WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"

_CHUNK = 1 << 20
# Linux flags (unpacking is Linux-only); 0 where missing, so that hashing blobs imports on Windows too.
_DIR_PATH_FLAGS = sum(getattr(os, f, 0) for f in ("O_PATH", "O_DIRECTORY", "O_NOFOLLOW", "O_CLOEXEC"))
_DIR_READ_FLAGS = os.O_RDONLY | sum(getattr(os, f, 0) for f in ("O_DIRECTORY", "O_NOFOLLOW", "O_CLOEXEC"))
_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_XZ_MAGIC = b"\xfd7zXZ\x00"
_BZIP2_MAGIC = b"BZh"


class _Prefixed:
    """A read-only stream that lets the first bytes be sniffed without seeking (pipes, sockets)."""

    def __init__(self, raw: BinaryIO, size: int = 8):
        self._raw = raw
        self.head = b""
        while len(self.head) < size:
            chunk = raw.read(size - len(self.head))
            if not chunk:
                break
            self.head += chunk
        self._pending = self.head

    def read(self, n: int = -1) -> bytes:
        if self._pending:
            if n is None or n < 0:
                data, self._pending = self._pending + self._raw.read(), b""
                return data
            data, self._pending = self._pending[:n], self._pending[n:]
            return data
        return self._raw.read(n)

    def readable(self) -> bool:
        return True


class HashingReader:
    """Wraps a stream and hashes (sha256) and counts every byte read through it."""

    def __init__(self, raw: BinaryIO):
        self._raw = raw
        self._hash = hashlib.sha256()
        self.size = 0

    def read(self, n: int = -1) -> bytes:
        data = self._raw.read(n)
        self._hash.update(data)
        self.size += len(data)
        return data

    def readable(self) -> bool:
        return True

    def drain(self) -> None:
        """Read to the end, so the digest covers the whole stream (tar readers stop at the end marker)."""
        while self.read(_CHUNK):
            pass

    @property
    def digest(self) -> str:
        return "sha256:" + self._hash.hexdigest()


def decompressed(fileobj: BinaryIO) -> BinaryIO:
    """The uncompressed view of a (possibly gzip, bzip2 or xz compressed) stream, detected by magic bytes."""
    head = _Prefixed(fileobj)
    if head.head.startswith(_GZIP_MAGIC):
        return gzip.GzipFile(fileobj=head, mode="rb")  # type: ignore[arg-type]
    if head.head.startswith(_XZ_MAGIC):
        return lzma.LZMAFile(head)  # type: ignore[arg-type]
    if head.head.startswith(_BZIP2_MAGIC):
        return bz2.BZ2File(head)  # type: ignore[arg-type]
    if head.head.startswith(_ZSTD_MAGIC):
        try:
            from compression import zstd  # type: ignore[import-not-found]  # Python 3.14+
        except ImportError as exc:
            raise ImageError("zstd-compressed layers are not supported by this Python",
                             hint="use an image with gzip or uncompressed layers, or Python 3.14+") from exc
        return zstd.ZstdFile(head)
    return head  # type: ignore[return-value]


def clean_name(name: str) -> tuple[str, ...]:
    """Split a tar member name into safe relative components; refuse ``..``. ``()`` is the root itself."""
    parts = tuple(p for p in name.split("/") if p not in ("", "."))
    if ".." in parts:
        raise ImageError(f"unsafe layer entry {name!r}: '..' in path")
    return parts


def unpack(fileobj: BinaryIO, target: str, *, whiteouts: str = WHITEOUT_OVERLAY,
           allow_devices: bool | None = None, same_owner: bool | None = None,
           expected_diff_id: str | None = None) -> str:
    """Unpack a layer stream (compressed or not) into the existing directory ``target``; return its diff_id.

    ``allow_devices`` and ``same_owner`` default to whether we run as root. A diff_id different from
    ``expected_diff_id`` raises ImageError after unpacking (the caller discards ``target``).
    """
    if whiteouts not in (WHITEOUT_OVERLAY, WHITEOUT_FLAT):
        raise ValueError(f"unknown whiteout mode {whiteouts!r}")
    root = os.geteuid() == 0
    hasher = HashingReader(decompressed(fileobj))
    extractor = _Extractor(target, whiteouts, root if allow_devices is None else allow_devices,
                           root if same_owner is None else same_owner, root)
    try:
        try:
            tar = tarfile.open(fileobj=hasher, mode="r|")  # type: ignore[call-overload]
        except tarfile.ReadError as exc:
            if hasher.size:
                raise ImageError(f"layer is not a valid tar archive: {exc}") from exc
            tar = None  # an empty stream is an empty layer
        for member in tar or ():
            extractor.entry(member, tar)
        extractor.finish()
        hasher.drain()
    except (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, gzip.BadGzipFile) as exc:
        raise ImageError(f"layer is corrupt: {exc}") from exc
    finally:
        extractor.close()
    if expected_diff_id is not None and hasher.digest != expected_diff_id:
        raise ImageError(f"layer content does not match its diff_id: expected {expected_diff_id}, "
                         f"got {hasher.digest}")
    return hasher.digest


class _Extractor:
    """Writes tar members below one directory, opened once; all paths are resolved relative to it."""

    def __init__(self, target: str, whiteouts: str, allow_devices: bool, same_owner: bool, root: bool):
        self.root_fd = os.open(target, _DIR_READ_FLAGS)
        self.whiteouts = whiteouts
        self.allow_devices = allow_devices
        self.same_owner = same_owner
        self.opaque_xattr = "trusted.overlay.opaque" if root else "user.overlay.opaque"
        self.written: set[tuple[str, ...]] = set()
        self.dirs: dict[tuple[str, ...], tuple[int, float]] = {}

    def close(self) -> None:
        os.close(self.root_fd)

    # -- path resolution -------------------------------------------------------------------------
    def _walk(self, parts: tuple[str, ...], entry: str, create: bool, missing_ok: bool = False) -> int | None:
        """An O_PATH fd of the directory ``parts`` below the target, never following a symlink.

        A missing directory is created (``create``), reported as None (``missing_ok``) or refused.
        """
        fd = os.dup(self.root_fd)
        try:
            for i, part in enumerate(parts):
                try:
                    st = os.stat(part, dir_fd=fd, follow_symlinks=False)
                except FileNotFoundError:
                    if missing_ok:
                        os.close(fd)
                        return None
                    if not create:
                        raise ImageError(f"unsafe layer entry {entry!r}: {'/'.join(parts[:i + 1])} does not exist")
                    os.mkdir(part, 0o755, dir_fd=fd)
                    self.written.add(parts[:i + 1])
                    st = os.stat(part, dir_fd=fd, follow_symlinks=False)
                if stat.S_ISLNK(st.st_mode):
                    raise ImageError(f"unsafe layer entry {entry!r}: path goes through symlink "
                                     f"{'/'.join(parts[:i + 1])}")
                if not stat.S_ISDIR(st.st_mode):
                    raise ImageError(f"invalid layer entry {entry!r}: {'/'.join(parts[:i + 1])} is not a directory")
                nfd = os.open(part, _DIR_PATH_FLAGS, dir_fd=fd)  # O_NOFOLLOW: no race to a symlink
                os.close(fd)
                fd = nfd
            return fd
        except BaseException:
            os.close(fd)
            raise

    @staticmethod
    def _remove(pfd: int, name: str) -> None:
        """Remove whatever ``name`` is in the directory ``pfd`` (a tree is removed fd-relative, safely)."""
        try:
            st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            with _opened(".", _DIR_READ_FLAGS, pfd) as dfd:
                shutil.rmtree(name, dir_fd=dfd)
        else:
            os.unlink(name, dir_fd=pfd)

    # -- entries ---------------------------------------------------------------------------------
    def entry(self, member: tarfile.TarInfo, tar: tarfile.TarFile) -> None:
        parts = clean_name(member.name)
        if not parts:
            if member.isdir():
                self.dirs[()] = (member.mode & 0o7777, member.mtime)
                return
            raise ImageError(f"invalid layer entry {member.name!r}: the root must be a directory")
        base = parts[-1]
        if base.startswith(WHITEOUT_PREFIX):
            self._whiteout(parts, member.name)
            return
        try:
            pfd = self._walk(parts[:-1], member.name, create=True)
            try:
                self._create(pfd, parts, member, tar)
            finally:
                os.close(pfd)
        except OSError as exc:
            _full_is_not_bad_data(exc)
            raise ImageError(f"cannot unpack layer entry {member.name!r}: {exc.strerror or exc}") from exc

    def _create(self, pfd: int, parts: tuple[str, ...], member: tarfile.TarInfo, tar: tarfile.TarFile) -> None:
        base = parts[-1]
        if member.isdir():
            try:
                st = os.stat(base, dir_fd=pfd, follow_symlinks=False)
                if not stat.S_ISDIR(st.st_mode):
                    os.unlink(base, dir_fd=pfd)
                    raise FileNotFoundError
            except FileNotFoundError:
                os.mkdir(base, 0o700, dir_fd=pfd)  # the real mode is set at the end, once children exist
            with _opened(base, _DIR_READ_FLAGS, pfd) as dfd:
                if self.same_owner:
                    os.fchown(dfd, member.uid, member.gid)
                _set_xattrs(dfd, member)
            self.dirs[parts] = (member.mode & 0o7777, member.mtime)
            self.written.add(parts)
            return
        if member.ischr() or member.isblk() or member.isfifo():
            if not self.allow_devices:
                return
            self._remove(pfd, base)
            kind = stat.S_IFCHR if member.ischr() else stat.S_IFBLK if member.isblk() else stat.S_IFIFO
            os.mknod(base, kind | 0o600, os.makedev(member.devmajor, member.devminor), dir_fd=pfd)
            if self.same_owner:
                os.chown(base, member.uid, member.gid, dir_fd=pfd, follow_symlinks=False)
            os.chmod(base, member.mode & 0o7777, dir_fd=pfd)
            os.utime(base, (member.mtime, member.mtime), dir_fd=pfd, follow_symlinks=False)
        elif member.issym():
            self._remove(pfd, base)
            os.symlink(member.linkname, base, dir_fd=pfd)
            if self.same_owner:
                os.chown(base, member.uid, member.gid, dir_fd=pfd, follow_symlinks=False)
            os.utime(base, (member.mtime, member.mtime), dir_fd=pfd, follow_symlinks=False)
        elif member.islnk():
            self._link(pfd, parts, member)
        elif member.isreg():
            self._remove(pfd, base)
            fd = os.open(base, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                         dir_fd=pfd)
            with os.fdopen(fd, "wb") as out:
                src = tar.extractfile(member)
                assert src is not None
                shutil.copyfileobj(src, out, _CHUNK)
                out.flush()
                if self.same_owner:
                    os.fchown(fd, member.uid, member.gid)  # before chmod: chown clears setuid bits
                os.fchmod(fd, member.mode & 0o7777)
                _set_xattrs(fd, member)
                os.utime(fd, (member.mtime, member.mtime))
        else:
            return  # other types (GNU volume headers, ...) carry no file
        self.written.add(parts)

    def _link(self, pfd: int, parts: tuple[str, ...], member: tarfile.TarInfo) -> None:
        target = clean_name(member.linkname)
        if not target:
            raise ImageError(f"unsafe layer entry {member.name!r}: hard link to the root directory")
        if target == parts:
            raise ImageError(f"invalid layer entry {member.name!r}: hard link to itself")
        missing = ImageError(f"invalid layer entry {member.name!r}: hard link target {member.linkname!r} "
                             f"is not in the layer")
        tfd = self._walk(target[:-1], member.name, create=False, missing_ok=True)
        if tfd is None:
            raise missing
        try:
            try:
                st = os.stat(target[-1], dir_fd=tfd, follow_symlinks=False)
            except FileNotFoundError as exc:
                raise missing from exc
            if stat.S_ISDIR(st.st_mode):
                raise ImageError(f"invalid layer entry {member.name!r}: hard link to a directory")
            self._remove(pfd, parts[-1])
            os.link(target[-1], parts[-1], src_dir_fd=tfd, dst_dir_fd=pfd, follow_symlinks=False)
        finally:
            os.close(tfd)

    def _whiteout(self, parts: tuple[str, ...], entry: str) -> None:
        base = parts[-1]
        try:
            if base == OPAQUE_MARKER:
                self._opaque(parts[:-1], entry)
                return
            if base.startswith(WHITEOUT_PREFIX + WHITEOUT_PREFIX):
                return  # other AUFS metadata (.wh..wh.plnk, ...) has no meaning here
            hidden = base[len(WHITEOUT_PREFIX):]
            if hidden in ("", ".", ".."):
                raise ImageError(f"invalid layer entry {entry!r}: whiteout of nothing")
            overlay = self.whiteouts == WHITEOUT_OVERLAY
            pfd = self._walk(parts[:-1], entry, create=overlay, missing_ok=not overlay)
            if pfd is None:
                return  # flat: no lower layer has the directory, so nothing to delete
            try:
                if self.whiteouts == WHITEOUT_OVERLAY:
                    self._remove(pfd, hidden)
                    os.mknod(hidden, stat.S_IFCHR | 0o600, os.makedev(0, 0), dir_fd=pfd)
                elif parts[:-1] + (hidden,) not in self.written:
                    self._remove(pfd, hidden)
            finally:
                os.close(pfd)
        except OSError as exc:
            _full_is_not_bad_data(exc)
            raise ImageError(f"cannot apply whiteout {entry!r}: {exc.strerror or exc}") from exc

    def _opaque(self, dir_parts: tuple[str, ...], entry: str) -> None:
        pfd = self._walk(dir_parts, entry, create=True)
        try:
            with _opened(".", _DIR_READ_FLAGS, pfd) as dfd:
                if self.whiteouts == WHITEOUT_OVERLAY:
                    os.setxattr(dfd, self.opaque_xattr, b"y")
                    return
                for child in os.listdir(dfd):
                    if dir_parts + (child,) not in self.written:
                        self._remove(dfd, child)
        finally:
            os.close(pfd)

    def finish(self) -> None:
        """Set directory modes and mtimes last (children change mtimes; a read-only dir blocks writes)."""
        for parts in sorted(self.dirs, key=len, reverse=True):
            mode, mtime = self.dirs[parts]
            try:
                pfd = self._walk(parts[:-1], "/".join(parts), create=False, missing_ok=True)
                if pfd is None:
                    continue  # removed again by a later whiteout in the same layer
                try:
                    dfd = os.open(parts[-1] if parts else ".", _DIR_READ_FLAGS, dir_fd=pfd)
                finally:
                    os.close(pfd)
                try:
                    os.fchmod(dfd, mode)
                    os.utime(dfd, (mtime, mtime))
                finally:
                    os.close(dfd)
            except FileNotFoundError:
                continue
            except OSError as exc:
                _full_is_not_bad_data(exc)
                raise ImageError(f"cannot set mode of layer directory {'/'.join(parts) or '/'!r}: "
                                 f"{exc.strerror or exc}") from exc


def _full_is_not_bad_data(exc: OSError) -> None:
    """Re-raise a full disk as it is (runner.diskfull words it): the layer is not at fault."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        raise exc


class _opened:
    """``with _opened(name, flags, dir_fd) as fd``: an fd closed on exit."""

    def __init__(self, name: str, flags: int, dir_fd: int):
        self.fd = os.open(name, flags, dir_fd=dir_fd)

    def __enter__(self) -> int:
        return self.fd

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)


def _set_xattrs(fd: int, member: tarfile.TarInfo) -> None:
    """Copy PAX ``SCHILY.xattr.*`` headers, except namespaces overlayfs trusts; best effort."""
    for key, value in member.pax_headers.items():
        if not key.startswith("SCHILY.xattr."):
            continue
        name = key[len("SCHILY.xattr."):]
        if name.startswith(("trusted.", "user.overlay.")):
            continue
        try:
            os.setxattr(fd, name, value.encode("utf-8", "surrogateescape"))
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EACCES, errno.EINVAL):
                raise
