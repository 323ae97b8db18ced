"""``GET /events``: the engine's event journal as Docker's stream of JSON messages.

The journal (runner.engine.events) is read through the backend in polls, from a cursor, every half second
while the client listens: with ``until`` the stream ends once that time has passed; without it, when the
client goes away (its end of the connection becomes readable at EOF: checked while waiting between polls).
Polling on this side, instead of a following read in the engine, means a client that leaves stops
everything, natively and in the VM alike.
"""

from __future__ import annotations

import select
import socket
import time

from runner.api import streams
from runner.api.router import route
from runner.api.timefilter import parse_time
from runner.errors import UsageError

POLL = 0.5
FILTERS = {"type", "event", "action", "container", "image", "network", "label", "volume", "daemon", "scope"}


def _gone(sock: socket.socket, timeout: float) -> bool:
    """Wait up to ``timeout`` for the client to close its end; True when it did."""
    if hasattr(sock, "peer_closed"):  # a Windows named pipe (runner.api.npipe): no descriptor to select
        return sock.peer_closed(timeout)
    try:
        readable, _, _ = select.select([sock], [], [], timeout)
        if not readable:
            return False
        return sock.recv(1, socket.MSG_PEEK) == b""
    except (OSError, ValueError):
        return True


@route("GET", "/events")
def events(req) -> None:
    filters = req.filters()
    unknown = set(filters) - FILTERS
    if unknown:
        raise UsageError(f"invalid filter '{sorted(unknown)[0]}'")
    now = time.time()
    since = parse_time(req.arg("since"), now) if req.arg("since") else now
    until = parse_time(req.arg("until"), now, end_of_second=True) if req.arg("until") else None
    cursor = int(since * 1e9)
    until_ns = int(until * 1e9) if until is not None else None
    backend = req.backend
    first = backend.events(cursor, until_ns, filters)  # a failing backend is still a plain HTTP error
    out = req.stream("application/json")
    sock = req._handler.connection
    batch = first
    while True:
        for event in batch["events"]:
            out.write(streams.json_line(event))
        cursor = batch["cursor"]
        if until_ns is not None and cursor >= until_ns:
            break
        wait = POLL if until is None else max(0.0, min(POLL, until - time.time() + 0.25))
        if _gone(sock, wait):
            req._handler.close_connection = True
            return
        batch = backend.events(cursor, until_ns, filters)
    out.close()
