"""Docker's stream framings: the multiplexed stdout/stderr of a container without a TTY, and JSON streams.

Without a TTY, attach, logs and exec send each piece of output behind an 8-byte header: the stream (0 stdin,
1 stdout, 2 stderr), three zero bytes, and the payload length (uint32, big endian). With a TTY the output is
the raw byte stream. Progress (pull, push, load, build) and events are a stream of JSON objects, one per chunk.
"""

from __future__ import annotations

import json
import struct

STDIN, STDOUT, STDERR = 0, 1, 2
_HEADER = struct.Struct(">BxxxI")
MULTIPLEXED = "application/vnd.docker.multiplexed-stream"
RAW = "application/vnd.docker.raw-stream"


def frame(stream: int, data: bytes) -> bytes:
    """One multiplexed frame (``stream`` 1 = stdout, 2 = stderr)."""
    return _HEADER.pack(stream, len(data)) + data


def json_line(obj: object) -> bytes:
    """One object of a JSON stream: compact, newline-terminated (clients split on the newline or decode a
    stream of objects; both work)."""
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


def attach_content_type(version: str, tty: bool) -> str:
    """The Content-Type of an attach/exec stream: raw with a TTY; from API 1.42 the multiplexed type without.

    Older clients expect ``application/vnd.docker.raw-stream`` for both and tell the two apart by the
    container's Config.Tty."""
    from runner.api.versions import at_least
    if not tty and at_least(version, "1.42"):
        return MULTIPLEXED
    return RAW
