"""How results look: aligned tables like docker's, or JSON with --json/--format json."""

from __future__ import annotations

import json
import sys
import time


def print_json(data) -> None:
    sys.stdout.write(json.dumps(data, indent=4, sort_keys=False) + "\n")


def table(headers: list[str], rows: list[list[str]]) -> None:
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    lines = ["   ".join(cell.ljust(widths[i]) for i, cell in enumerate(r)).rstrip() for r in [headers] + rows]
    sys.stdout.write("\n".join(lines) + "\n")


def timestamp(value: float | str | None) -> float | None:
    """Seconds since the epoch from a number or an RFC 3339 string (image configs use nanoseconds)."""
    if value is None or isinstance(value, (int, float)):
        return value
    import datetime
    import re
    text = re.sub(r"(\.\d{6})\d+", r"\1", str(value)).replace("Z", "+00:00")
    try:
        return datetime.datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None


def ago(value: float | str | None) -> str:
    """'3 seconds ago', '5 minutes ago' — docker's human durations."""
    ts = timestamp(value)
    if not ts:
        return ""
    return f"{duration(time.time() - ts)} ago"


def duration(seconds: float) -> str:
    s = max(0, int(seconds))
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if s >= size:
            n = s // size
            return f"{n} {unit}{'s' if n != 1 else ''}"
    return "Less than a second" if s < 1 else f"{s} second{'s' if s != 1 else ''}"


def container_status(c: dict) -> str:
    if c["State"] == "running":
        return f"Up {duration(time.time() - (c.get('StartedAt') or time.time()))}"
    if c["State"] == "exited":
        return f"Exited ({c.get('ExitCode')}) {ago(c.get('FinishedAt'))}"
    return "Created"


def human_size(n: int | None) -> str:
    value = float(n or 0)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.3g}{unit}" if unit != "B" else f"{int(value)}B"
        value /= 1000
    return f"{value:.3g}GB"
