"""Container output: the framed log file and the relay that fills it.

Why framed: a container's stdout and stderr must stay apart for ``runner logs`` (as in Docker), and output is
arbitrary bytes, so each chunk is stored as a small binary frame::

    +--------+----------------------+----------------+---------------+
    | stream | time (float64, BE)   | length (u32 BE)| data (length) |
    | 1 byte | 8 bytes              | 4 bytes        |               |
    +--------+----------------------+----------------+---------------+

stream 1 is stdout, 2 is stderr (a terminal's output is stream 1). Frames are appended with one ``write``
each by the container's shim, the only writer; readers tolerate a torn last frame (a shim killed mid-write).
"""

from __future__ import annotations

import errno
import os
import selectors
import struct
import threading
import time
TYPE_CHECKING = False  # annotations only: importing typing costs the start path ~6 ms
if TYPE_CHECKING:
    from typing import Callable, Iterator

_HEADER = struct.Struct(">BdI")
STDOUT, STDERR = 1, 2


class LogWriter:
    """Appends frames to a container's log; output that finds the disk full is dropped, not fatal.

    Why drop: the shim must keep draining the workload's pipes (or the workload blocks) and keep watching
    it for its exit code; Docker's json-file driver likewise loses lines it cannot write. ``dropped`` counts
    the bytes lost; a frame is written whole or not at all (a torn frame would end every reader there).
    """

    def __init__(self, path: str):
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        self.dropped = 0

    def write(self, stream: int, data: bytes) -> None:
        frame = _HEADER.pack(stream, time.time(), len(data)) + data
        try:
            n = os.write(self.fd, frame)
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            n = 0
        if n != len(frame):  # short or failed write: cut the partial frame off again
            self.dropped += len(data)
            if n:  # the only writer appends, so the partial frame is the file's last n bytes
                os.ftruncate(self.fd, os.fstat(self.fd).st_size - n)

    def close(self) -> None:
        os.close(self.fd)


def read_frames(path: str, follow: Callable[[], bool] | None = None,
                poll: float = 0.05) -> Iterator[tuple[int, float, bytes]]:
    """Yield (stream, time, data) frames; with ``follow``, keep waiting for more while it returns True."""
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        return
    with f:
        buf = b""
        while True:
            chunk = f.read(65536)
            if chunk:
                buf += chunk
                while len(buf) >= _HEADER.size:
                    stream, ts, length = _HEADER.unpack_from(buf)
                    if len(buf) < _HEADER.size + length:
                        break
                    yield stream, ts, buf[_HEADER.size:_HEADER.size + length]
                    buf = buf[_HEADER.size + length:]
                continue
            if follow is None or not follow():
                # One last read: output written between the check and now must not be lost.
                if follow is not None and (rest := f.read()):
                    buf += rest
                    continue
                return
            time.sleep(poll)


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _copy_until_eof(src: int, dst: int) -> None:
    try:
        while data := os.read(src, 65536):
            write_all(dst, data)
    except OSError:
        pass  # the container's side went away: nothing left to feed


def relay(sources: dict[int, int], log: LogWriter | None, sinks: dict[int, int | None],
          stdin: tuple[int, int] | None = None) -> None:
    """Copy container output to the log and to attached sinks until every source reaches EOF.

    ``sources`` maps a readable fd to its stream number; ``sinks`` maps a stream number to the caller's fd
    (or None when detached). ``stdin`` is (caller fd, container fd) for terminals, where input must be
    pushed into the pty master. A sink that fails (the client went away) is dropped and logging goes on:
    a container outlives its client, as in Docker.
    """
    sel = selectors.DefaultSelector()
    for fd, stream in sources.items():
        sel.register(fd, selectors.EVENT_READ, ("out", stream))
    if stdin is not None:
        try:
            sel.register(stdin[0], selectors.EVENT_READ, ("in", stdin[1]))
        except PermissionError:
            # A regular file or /dev/null cannot be polled (EPERM): copy it from a thread instead.
            threading.Thread(target=_copy_until_eof, args=stdin, daemon=True).start()
    open_sources = set(sources)
    while open_sources:
        for key, _ in sel.select():
            kind, target = key.data
            try:
                data = os.read(key.fd, 65536)
            except OSError as exc:
                # A pty master reports EIO once the last slave fd is closed: that is its EOF.
                if exc.errno not in (errno.EIO, errno.EBADF):
                    raise
                data = b""
            if kind == "in":
                if not data:
                    sel.unregister(key.fd)
                    continue
                try:
                    write_all(target, data)
                except OSError:
                    sel.unregister(key.fd)
                continue
            if not data:
                sel.unregister(key.fd)
                open_sources.discard(key.fd)
                continue
            if log is not None:
                log.write(target, data)
            sink = sinks.get(target)
            if sink is not None:
                try:
                    write_all(sink, data)
                except OSError:
                    sinks[target] = None
    sel.close()
