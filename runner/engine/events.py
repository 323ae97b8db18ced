"""The event journal: what happened to containers, images and networks, for ``/events`` and ``runner events``.

Why a file: events are written by several processes (the CLI's engine, the API server's, the agent's, and
each container's shim, which alone sees a container die) and read by others, natively and in the guest. One
append-only file of JSON lines under the engine root does it without a daemon: each event is one
``O_APPEND`` write of one line (the kernel appends it whole, never interleaved with another writer's), so
readers never see half an event from a writer that finished. A crashed writer can leave a torn last line;
readers skip lines that do not parse.

Bounded: once the file passes :data:`MAX_BYTES` a writer renames it to ``events.jsonl.1`` (replacing the
previous one), under a lock so two writers never rotate twice; readers read ``.1`` then the current file.

Readers ask for the events after a cursor (the ``timeNano`` of the last one they saw) rather than following
the file themselves: the API server polls :func:`read` through whichever backend it has, so a client that
goes away ends the polling on the host and leaves nothing running in the guest.

Events are Docker's shape (Engine API 1.44 ``EventMessage``, plus the old ``status``/``id``/``from`` fields
that docker-py and older clients still read). Standard library only.
"""

from __future__ import annotations

import json
import os
import time

MAX_BYTES = 1 << 20  # ~5000 events per file; two files kept
MAX_READ = 5000  # events returned by one read (a reader resumes from the last one's cursor)
FILE = "events.jsonl"


def path_of(root: str) -> str:
    return os.path.join(root, FILE)


def record(root: str, kind: str, action: str, actor_id: str, attributes: dict | None = None) -> None:
    """Append one event; never fails the operation it reports (a full disk loses the event, not the call)."""
    nanos = time.time_ns()
    attrs = {str(k): str(v) for k, v in (attributes or {}).items()}
    event = {"Type": kind, "Action": action, "Actor": {"ID": actor_id, "Attributes": attrs}, "scope": "local",
             "time": nanos // 1_000_000_000, "timeNano": nanos}
    if kind in ("container", "image"):
        event.update(status=action, id=actor_id)
        if kind == "container" and "image" in attrs:
            event["from"] = attrs["image"]
    line = json.dumps(event, separators=(",", ":")).encode() + b"\n"
    path = path_of(root)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, line)
            size = os.fstat(fd).st_size
        finally:
            os.close(fd)
        if size > MAX_BYTES:
            _rotate(path)
    except OSError:
        pass


def _rotate(path: str) -> None:
    from runner.procs import FileLock
    with FileLock(path + ".lock"):
        try:
            if os.stat(path).st_size > MAX_BYTES:  # another writer may have rotated meanwhile
                os.replace(path, path + ".1")
        except FileNotFoundError:
            pass


def read(root: str, after: int = 0, until: int | None = None) -> list[dict]:
    """Events with ``after < timeNano <= until`` (``until`` None: up to now), oldest first, at most
    :data:`MAX_READ`."""
    path = path_of(root)
    out: list[dict] = []
    for name in (path + ".1", path):
        try:
            with open(name, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            continue
        for line in data.splitlines():
            try:
                event = json.loads(line)
                stamp = int(event["timeNano"])
            except (ValueError, KeyError, TypeError):
                continue  # a torn line of a crashed writer
            if stamp > after and (until is None or stamp <= until):
                out.append(event)
    out.sort(key=lambda e: e["timeNano"])  # a rotation between the two reads cannot reorder: sorted anyway
    return out[:MAX_READ]


def matches(event: dict, filters: dict[str, list[str]]) -> bool:
    """Docker's event filters: ``type``, ``event``/``action``, ``container``, ``image``, ``network``,
    ``label`` (each a list of alternatives; different keys are ANDed)."""
    actor = event.get("Actor") or {}
    attrs = actor.get("Attributes") or {}
    kind = event.get("Type")
    checks = {
        "type": lambda v: kind == v,
        "event": lambda v: event.get("Action") == v or str(event.get("Action", "")).split(":")[0] == v,
        "container": lambda v: kind == "container" and (actor.get("ID", "").startswith(v) or attrs.get("name") == v),
        "image": lambda v: attrs.get("image") == v or (kind == "image" and (actor.get("ID") == v
                                                                             or attrs.get("name") == v)),
        "network": lambda v: kind == "network" and (actor.get("ID", "").startswith(v) or attrs.get("name") == v),
        "label": lambda v: (v.partition("=")[0] in attrs
                            and (not v.partition("=")[1] or attrs[v.partition("=")[0]] == v.partition("=")[2])),
    }
    for key, values in filters.items():
        key = "event" if key == "action" else key
        check = checks.get(key)
        if check is not None and values and not any(check(v) for v in values):
            return False
    return True
