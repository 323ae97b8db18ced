"""Small file-system primitives every part of runner shares: atomic writes and exclusive file locks.

Why one module: state records, the image index, credentials and caches all need "a reader sees the old or
the new file, never half of one" (write a temp file in the same directory, rename it over) and some need it
to survive a crash too (fsync before the rename). Standard library only: it runs in the VM guest too.
"""

from __future__ import annotations

import contextlib
import fcntl
import os


def write_atomic(path: str, data: bytes, mode: int = 0o600, durable: bool = True, sync_dir: bool = False) -> None:
    """Replace ``path`` with ``data`` atomically; the temp file has ``mode`` from its first byte.

    ``durable`` fsyncs the data before the rename, so a crash cannot leave an empty file under the real
    name; ``sync_dir`` also fsyncs the directory, so the rename itself survives a crash.
    """
    directory = os.path.dirname(path) or "."
    tmp = os.path.join(directory, f".{os.path.basename(path)}.tmp.{os.getpid()}.{os.urandom(4).hex()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.rename(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if sync_dir:
        dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


@contextlib.contextmanager
def flock(path: str):
    """Hold an exclusive ``fcntl`` lock on ``path`` (created 0600 if missing) for the block."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
