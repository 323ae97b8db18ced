"""A full disk as one clear error: which filesystem, how much is free, and what needed the space.

Why: ``OSError: [Errno 28] No space left on device`` names neither the filesystem nor what runner was doing,
and surfaced as an internal error. Every write path of the engine (image store, layer unpack, container
create, state records, network leases) runs under :func:`needs_space` (or the :func:`space_for` context
manager), which turns ENOSPC and EDQUOT into :class:`runner.errors.DiskFullError`::

    Error: no space left on /var/lib/runner (ext4, 1.2MB free) while pulling busybox
    Hint: free space with 'runner system prune', or remove containers ('runner rm') and images ('runner rmi')

The error crosses the agent protocol as its own type, so a full VM data disk reads the same. Standard library
only: this runs in the VM guest too.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os

from runner.errors import DiskFullError

FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
HINT = "free space with 'runner system prune', or remove containers ('runner rm') and images ('runner rmi')"


def is_full(exc: BaseException) -> bool:
    """True for the OSErrors a full filesystem (or an exhausted quota) raises."""
    return isinstance(exc, OSError) and exc.errno in FULL_ERRNOS


def human_size(n: float) -> str:
    """Docker's decimal units (``docker system df`` shows ``1.2MB``, ``45kB``, ``0B``)."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.3g}{unit}"
        n /= 1000
    return f"{n}B"  # not reached


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal (``\\040``)."""
    return field.encode().decode("unicode_escape") if "\\" in field else field


def mount_of(path: str) -> tuple[str, str]:
    """(mount point, filesystem type) of the filesystem holding ``path``: the longest mount point above it.

    Read from /proc/self/mountinfo, so it is the mount as this process sees it (inside the guest: the data
    disk). ``path`` need not exist; its nearest existing parent counts. ("?", "?") when nothing is known.
    """
    path = os.path.realpath(path)
    while not os.path.exists(path) and path != os.path.dirname(path):
        path = os.path.dirname(path)
    best, fstype = "", "?"
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                fields = line.split()
                if " - " not in line or len(fields) < 5:
                    continue
                point = _unescape(fields[4])
                inside = path == point or path.startswith(point.rstrip("/") + "/")
                if inside and len(point) >= len(best):  # a later, equal mount point shadows an earlier one
                    best, fstype = point, line.split(" - ", 1)[1].split()[0]
    except OSError:
        pass
    return best or "?", fstype


def free_bytes(path: str) -> int | None:
    """Bytes an unprivileged writer may still use there (``f_bavail``), or None if unknown."""
    while not os.path.exists(path) and path != os.path.dirname(path):
        path = os.path.dirname(path)
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def disk_full_error(path: str, what: str, hint: str = HINT) -> DiskFullError:
    """The one error for a full filesystem at ``path`` while doing ``what`` (an -ing phrase)."""
    point, fstype = mount_of(path)
    free = free_bytes(path)
    space = f"{human_size(free)} free" if free is not None else "free space unknown"
    return DiskFullError(f"no space left on {point} ({fstype}, {space}) while {what}", hint=hint)


@contextlib.contextmanager
def space_for(what: str, path: str):
    """Run the block; a full filesystem below becomes :class:`DiskFullError` (the OSError as its cause).

    The filesystem named is the one of the failing file when the OSError carries its name, else ``path``'s.
    """
    try:
        yield
    except OSError as exc:
        if not is_full(exc):
            raise
        raise disk_full_error(exc.filename if isinstance(exc.filename, str) else path, what) from exc


def needs_space(what: str):
    """Method decorator: :func:`space_for` around the call, at the object's ``root`` (the engine's state root).

    ``what`` may name the call's arguments, e.g. ``"pulling {ref}"``.
    """
    def wrap(method):
        @functools.wraps(method)
        def guarded(self, *args, **kwargs):
            try:
                return method(self, *args, **kwargs)
            except OSError as exc:
                if not is_full(exc):
                    raise
                code = method.__code__
                named = dict(zip(code.co_varnames[1:code.co_argcount], args), **kwargs)
                try:
                    doing = what.format(**named)
                except (IndexError, KeyError):
                    doing = what.split(" {", 1)[0]
                where = exc.filename if isinstance(exc.filename, str) else getattr(self, "root", "/")
                raise disk_full_error(where, doing) from exc
        return guarded
    return wrap


# -- a spare file for the records that must be written even on a full disk ----------------------------------
# Why: an atomic write (temp file, rename) needs new blocks, so on a full disk the very writes that let a user
# recover (the exit of a container that filled the disk, rmi's index update) would fail. A zero-filled spare
# file beside the record, made while there was space, is overwritten in place (no new blocks: its pages or
# blocks are allocated already), cut to length, synced and renamed over the record: still atomic for readers.

RESERVE_MIN = 16 << 10


def reserve_path(path: str) -> str:
    return os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.reserve")


def keep_reserve(path: str, size: int, mode: int = 0o600) -> None:
    """Best effort: make sure a spare of at least ``size`` bytes exists beside ``path`` (no error if no space)."""
    spare = reserve_path(path)
    with contextlib.suppress(FileNotFoundError):
        if os.stat(spare).st_size >= size:
            return
    tmp = f"{spare}.{os.getpid()}"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0), mode)
        try:
            # Real zeros, not ftruncate: a sparse file would need new blocks when written later.
            _write_all(fd, bytes(size))
        finally:
            os.close(fd)
        os.rename(tmp, spare)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def write_via_reserve(path: str, data: bytes) -> bool:
    """Replace ``path`` with ``data`` through its spare; False if there is no spare big enough."""
    spare = reserve_path(path)
    try:
        fd = os.open(spare, os.O_WRONLY | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        return False
    try:
        if os.fstat(fd).st_size < len(data):
            return False
        _write_all(fd, data)  # over blocks the spare owns already
        os.ftruncate(fd, len(data))
        os.fsync(fd)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(spare)  # half overwritten: useless now
        raise
    finally:
        os.close(fd)
    os.rename(spare, path)
    return True


def write_or_reserve(path: str, data: bytes, write, spare_size: int = RESERVE_MIN, mode: int = 0o600) -> None:
    """``write()`` (an atomic writer of ``path``); on a full disk, fall back to the spare; keep a spare after."""
    try:
        write()
    except OSError as exc:
        if not is_full(exc) or not write_via_reserve(path, data):
            raise
        return  # the spare is used up; the next write with space to spare makes a new one
    keep_reserve(path, max(spare_size, 2 * len(data)), mode)


def _write_all(fd: int, data: bytes) -> None:
    view, offset = memoryview(data), 0
    while offset < len(view):
        if hasattr(os, "pwrite"):
            offset += os.pwrite(fd, view[offset:], offset)
        else:  # Windows
            os.lseek(fd, offset, os.SEEK_SET)
            offset += os.write(fd, view[offset:])
