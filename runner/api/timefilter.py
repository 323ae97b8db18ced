"""Docker's time arguments (``since``/``until`` of events and logs, the ``until`` prune filter).

A value is a Unix time (``1700000000`` or ``1700000000.5``), an RFC 3339 time, or a Go duration before now
(``10m``, ``1h30m``, ``45s``); the docker CLI converts most to Unix times itself, other clients do not.
"""

from __future__ import annotations

import datetime
import re
import time

from runner.errors import UsageError

_DURATION = re.compile(r"^(\d+(?:\.\d+)?(?:ns|us|µs|ms|s|m|h))+$")
_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}


def parse_time(text: str, now: float | None = None, end_of_second: bool = False) -> float:
    """Unix seconds for one of Docker's time values; anything else is a 400.

    ``end_of_second``: a whole-second Unix time means the end of that second, as dockerd reads ``until``
    (the docker CLI sends ``--until 0s`` as whole seconds, and events of that very second belong in)."""
    value = text.strip()
    now = time.time() if now is None else now
    if re.fullmatch(r"\d+", value):
        return float(value) + (1 if end_of_second else 0)
    if re.fullmatch(r"\d+\.\d+", value):
        return float(value)
    if _DURATION.match(value):
        return now - sum(float(n) * _UNITS[u] for n, u in _PART.findall(value))
    try:
        stamp = re.sub(r"(\.\d{6})\d+", r"\1", value).replace("Z", "+00:00")
        parsed = datetime.datetime.fromisoformat(stamp)
    except ValueError as exc:
        raise UsageError(f"invalid time value {text!r}",
                         hint="use a Unix time, an RFC 3339 time or a duration like 10m") from exc
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=datetime.timezone.utc)
    return parsed.timestamp()
