"""Container routes beyond the lifecycle: top, stats, changes, rename, pause/unpause, prune.

Each is one engine operation (runner.engine.observe, the freezer); this module adds the HTTP shapes: the
stats stream (one sample a second, each carrying the previous sample's CPU numbers as ``precpu_stats``, as
dockerd sends them, so clients can compute a CPU percentage), and Docker's status codes.
"""

from __future__ import annotations

import time

from runner.api import streams
from runner.api.router import route
from runner.errors import UsageError

INTERVAL = 1.0  # seconds between stats samples, as dockerd's collector


@route("GET", "/containers/{id}/top")
def top(req) -> None:
    req.reply(req.backend.top(req.params["id"], req.arg("ps_args") or None))


@route("GET", "/containers/{id}/changes")
def changes(req) -> None:
    req.reply(req.backend.changes(req.params["id"]) or None)


@route("GET", "/containers/{id}/stats")
def stats(req) -> None:
    ref = req.params["id"]
    stream = req.flag("stream", True)
    one_shot = req.flag("one-shot")
    if one_shot and stream:
        raise UsageError("cannot have stream=true and one-shot=true")
    sample = req.backend.stats(ref)
    if not stream:
        if not one_shot:  # dockerd waits for a second sample so precpu_stats is meaningful
            previous, _ = sample, time.sleep(INTERVAL)
            sample = _with_previous(req.backend.stats(ref), previous)
        req.reply(sample)
        return
    out = req.stream("application/json")
    previous = None
    while True:
        out.write(streams.json_line(_with_previous(sample, previous) if previous else sample))
        if sample["cpu_stats"].get("system_cpu_usage") is None and previous is not None:
            break  # the container stopped: dockerd ends the stream too
        previous = sample
        time.sleep(INTERVAL)
        sample = req.backend.stats(ref)


def _with_previous(sample: dict, previous: dict) -> dict:
    return {**sample, "preread": previous["read"], "precpu_stats": previous["cpu_stats"]}


@route("POST", "/containers/{id}/rename")
def rename(req) -> None:
    name = req.arg("name")
    if not name:
        raise UsageError("a new name is required (name=...)")
    req.backend.rename(req.params["id"], name)
    req.reply_empty(204)


@route("POST", "/containers/{id}/pause")
def pause(req) -> None:
    req.backend.pause(req.params["id"])
    req.reply_empty(204)


@route("POST", "/containers/{id}/unpause")
def unpause(req) -> None:
    req.backend.unpause(req.params["id"])
    req.reply_empty(204)


@route("POST", "/containers/prune")
def prune(req) -> None:
    filters = req.filters()
    unknown = set(filters) - {"label", "until"}
    if unknown:
        raise UsageError(f"invalid filter '{sorted(unknown)[0]}'")
    until = None
    if filters.get("until"):
        from runner.api.timefilter import parse_time
        until = parse_time(filters["until"][-1])
    result = req.backend.container_prune(filters.get("label") or None, until)
    result["ContainersDeleted"] = result["ContainersDeleted"] or None
    req.reply(result)
