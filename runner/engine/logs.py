"""Container output: the framed log file and the relay that fills it.

Why framed: a container's stdout and stderr must stay apart for ``runner logs`` (as in Docker), and output is
arbitrary bytes, so each chunk is stored as a small binary frame::

    +--------+----------------------+----------------+---------------+
    | stream | time (float64, BE)   | length (u32 BE)| data (length) |
    | 1 byte | 8 bytes              | 4 bytes        |               |
    +--------+----------------------+----------------+---------------+

stream 1 is stdout, 2 is stderr (a terminal's output is stream 1). Frames are appended with one ``write``
each by the container's shim, the only writer; readers tolerate a torn last frame (a shim killed mid-write).
The log rotates as Docker's json-file driver does (``--log-opt max-size=20m,max-file=5`` are the defaults,
see runner.spec.log_limits): ``container.log``, ``container.log.1`` (older), ... ``container.log.4`` (oldest).
"""

from __future__ import annotations

import contextlib
import errno
import os
import selectors
import struct
import threading
import time

from runner.stdio import write_all

TYPE_CHECKING = False  # annotations only: importing typing costs the start path ~6 ms
if TYPE_CHECKING:
    from typing import Callable, Iterator

_HEADER = struct.Struct(">BdI")
STDOUT, STDERR = 1, 2
IDLE = 0  # not a stream: read_frames(idle=True)'s "caught up" marker
MAX_LINE = 16 * 1024  # Docker's log copier splits a longer line into entries of this size


class LogWriter:
    """Appends frames to a container's log, rotating it as Docker's json-file driver does, and drops output
    that finds the disk full instead of failing.

    Rotation: a file never grows past ``max_size`` bytes (None: unbounded); when the next frame would not fit,
    ``container.log`` becomes ``container.log.1`` (``.1`` becomes ``.2``, ...; the oldest beyond
    ``max_file - 1`` is dropped) and a new file begins; with ``max_file`` 1 the one file starts over. A chunk
    bigger than a whole file is split into frames that fit. Why drop on a full disk: the shim must keep
    draining the workload's pipes (or the workload blocks) and keep watching it for its exit code; Docker's
    driver likewise loses lines it cannot write. ``dropped`` counts the bytes lost; a frame is written whole
    or not at all (a torn frame would end every reader there).
    """

    def __init__(self, path: str, max_size: int | None = None, max_file: int = 1):
        self.path, self.max_size, self.max_file = path, max_size, max_file
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        self.size = os.fstat(self.fd).st_size
        self.dropped = 0

    def write(self, stream: int, data: bytes) -> None:
        while data:
            piece = data
            if self.max_size is not None:
                if self.size and self.size + _HEADER.size + len(data) > self.max_size:
                    self._rotate()
                piece = data[:max(1, self.max_size - _HEADER.size)]
            self._append(stream, piece)
            data = data[len(piece):]

    def _append(self, stream: int, data: bytes) -> None:
        frame = _HEADER.pack(stream, time.time(), len(data)) + data
        try:
            n = os.write(self.fd, frame)
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            n = 0
        self.size += n
        if n != len(frame):  # short or failed write: cut the partial frame off again
            self.dropped += len(data)
            if n:  # the only writer appends, so the partial frame is the file's last n bytes
                self.size -= n
                os.ftruncate(self.fd, self.size)

    def _rotate(self) -> None:
        if self.max_file <= 1:
            os.ftruncate(self.fd, 0)  # O_APPEND: the next frame goes to offset 0; readers notice the shrink
            self.size = 0
            return
        for i in range(self.max_file - 1, 0, -1):  # renames need no space: rotation works on a full disk
            try:
                os.rename(self.path if i == 1 else f"{self.path}.{i - 1}", f"{self.path}.{i}")
            except FileNotFoundError:
                pass
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        os.close(self.fd)
        self.fd, self.size = fd, 0

    def close(self) -> None:
        os.close(self.fd)


def _rotated(path: str) -> list[str]:
    """The rotated files of ``path``, oldest first (``path.N`` ... ``path.1``; a gap mid-rotation is fine)."""
    directory, base = os.path.split(path)
    numbers = []
    for name in os.listdir(directory or "."):
        suffix = name[len(base) + 1:]
        if name.startswith(base + ".") and suffix.isdigit():
            numbers.append(int(suffix))
    return [f"{path}.{n}" for n in sorted(numbers, reverse=True)]


def _open_newer(path: str, ino: int) -> list:
    """After the file ``ino`` was rotated away: the files written after it, oldest first, opened."""
    names = _rotated(path)
    for k, name in enumerate(names):
        with contextlib.suppress(OSError):
            if os.stat(name).st_ino == ino:
                names = names[k + 1:]
                break
    files = []
    for name in names + [path]:  # (ours gone entirely: every file left is newer than it)
        with contextlib.suppress(FileNotFoundError):
            files.append(open(name, "rb"))
    return files


def _open_all(path: str, tries: int = 50) -> list:
    """The log and its rotated files, oldest first, opened as one consistent set. Opened files never change
    under a rotation (it renames), but a rotation *between* the opens shifts every name by one, so the set
    could skip or repeat a file: each name is checked to still be the file opened, and the set opened again
    if not (a rotation happens once per max-size bytes, so a retry succeeds at once)."""
    for attempt in range(tries):
        opened = []
        names = _rotated(path)
        for name in names + [path]:
            with contextlib.suppress(FileNotFoundError):
                opened.append((name, open(name, "rb")))
        # The listing is checked too: listed mid-rotation (``.1`` already renamed to ``.2``, ``.1`` not yet
        # there) and opened after it, the set would be ``.2`` and the *new* log, skipping the new ``.1``.
        if attempt + 1 == tries or (_rotated(path) == names and all(_is(name, f) for name, f in opened)):
            return [f for _, f in opened]
        for _, f in opened:
            f.close()
    return []


def _is(name: str, f) -> bool:
    try:
        return os.stat(name).st_ino == os.fstat(f.fileno()).st_ino
    except FileNotFoundError:
        return False


def read_frames(path: str, follow: Callable[[], bool] | None = None,
                poll: float = 0.05, idle: bool = False) -> Iterator[tuple[int, float, bytes]]:
    """Yield (stream, time, data) frames of the log and its rotated files, oldest first; with ``follow``,
    keep waiting for more while it returns True, across rotations. With ``idle``, a following reader also
    yields ``(IDLE, time, b"")`` each time it has caught up and is about to wait (see ``lines``)."""
    files = _open_all(path)
    try:
        while files:
            f = files[0]
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
                if len(files) > 1:
                    break  # a rotated file is complete: on to the next
                if follow is None:
                    return  # not following: the files as they were when opened
                ino = os.fstat(f.fileno()).st_ino
                try:
                    current = os.stat(path)
                except FileNotFoundError:
                    current = None
                if current is not None and current.st_ino != ino:  # rotated away: drain it, then the newer ones
                    files.extend(_open_newer(path, ino))
                    if len(files) > 1:
                        continue
                if current is not None and current.st_ino == ino and current.st_size < f.tell():
                    f.seek(0)  # started over (max-file 1)
                    buf = b""
                    continue
                if follow is None or not follow():
                    # One last read: output written between the check and now must not be lost.
                    if follow is not None and (rest := f.read()):
                        buf += rest
                        follow = None
                        continue
                    return
                if idle:
                    yield IDLE, time.time(), b""
                time.sleep(poll)
            files.pop(0).close()
    finally:
        for f in files:
            f.close()


def lines(frames: Iterator[tuple[int, float, bytes]],
          max_line: int = MAX_LINE) -> Iterator[tuple[int, float, bytes]]:
    """The frames as Docker's json-file driver stores output: one entry per line, per stream.

    Why: a frame is whatever one read of the workload's pipe returned, so ``logs --tail N`` counted in
    frames depends on how the workload happened to write. Docker's copier splits each stream at newlines
    (a line longer than 16 KiB becomes several entries) and logs a line once it is complete, so an entry's
    order is the order lines were completed; a trailing partial line is an entry of its own at the end, or
    as soon as the reader catches up with a live log (the ``IDLE`` marker), so ``-f`` shows a prompt at once.
    An entry's time is that of the chunk that completed it (``logs -t``, ``--since``).
    """
    pending: dict[int, tuple[float, bytes]] = {}
    for stream, ts, data in frames:
        if stream == IDLE:
            for s in list(pending):
                yield (s, *pending.pop(s))
            continue
        buf, start = pending.pop(stream, (ts, b""))[1] + data, 0
        while True:
            nl = buf.find(b"\n", start, start + max_line)
            if nl >= 0:
                end = nl + 1
            elif len(buf) - start >= max_line:
                end = start + max_line
            else:
                break
            yield stream, ts, buf[start:end]
            start = end
        if start < len(buf):
            pending[stream] = (ts, buf[start:])
    for s, (ts, data) in pending.items():
        yield s, ts, data


def with_timestamps(ts: float, data: bytes) -> bytes:
    """Every line of ``data`` prefixed with ``ts`` as RFC 3339 with nanoseconds and a space (``logs -t``)."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)).encode() + b".%09dZ " % int(ts % 1 * 1e9)
    return b"".join(stamp + line for line in data.splitlines(keepends=True))


def _copy_until_eof(src: int, dst: int) -> None:
    try:
        while data := os.read(src, 65536):
            write_all(dst, data)
    except OSError:
        pass  # the container's side went away: nothing left to feed


def relay(sources: dict[int, int], log: LogWriter | None, sinks: dict[int, int | None],
          stdin: tuple[int, int] | None = None, hub=None) -> None:
    """Copy container output to the log and to attached sinks until every source reaches EOF.

    ``sources`` maps a readable fd to its stream number; ``sinks`` maps a stream number to the caller's fd
    (or None when detached). ``stdin`` is (caller fd, container fd) for terminals, where input must be
    pushed into the pty master. A sink that fails (the client went away) is dropped and logging goes on:
    a container outlives its client, as in Docker. ``hub``: the container's attach endpoint
    (runner.engine.attach_server.Hub), which watches its own sockets in this loop and gets every chunk; while
    an attacher has too much output queued, the output is not read (back-pressure, as Docker applies it).
    """
    sel = selectors.DefaultSelector()
    if hub is not None:
        hub.register(sel)
    for fd, stream in sources.items():
        sel.register(fd, selectors.EVENT_READ, ("out", stream))
    if stdin is not None:
        try:
            sel.register(stdin[0], selectors.EVENT_READ, ("in", stdin[1]))
        except PermissionError:
            # A regular file or /dev/null cannot be polled (EPERM): copy it from a thread instead.
            threading.Thread(target=_copy_until_eof, args=stdin, daemon=True).start()
    open_sources = set(sources)
    paused = False
    while open_sources:
        if hub is not None and hub.congested() != paused:  # an attacher lags: the container waits (Docker's too)
            paused = not paused
            for fd in open_sources:
                if paused:
                    sel.unregister(fd)
                else:
                    sel.register(fd, selectors.EVENT_READ, ("out", sources[fd]))
        for key, mask in sel.select(1.0 if paused else None):
            kind, target = key.data
            if kind == "hub":
                hub.dispatch(target, mask)
                continue
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
            if hub is not None:
                hub.output(target, data)
            sink = sinks.get(target)
            if sink is not None:
                try:
                    write_all(sink, data)
                except OSError:
                    sinks[target] = None
    if hub is not None:
        hub.unregister()
    sel.close()
