"""Volume routes: ``/volumes`` create, list, inspect, remove, prune (Engine API 1.44 shapes).

The engine does the work (runner.engine.volumes); this module maps Docker's request fields and query
parameters onto it. Docker's rules kept: ``create`` of an existing name answers the existing volume (201);
``DELETE`` of a volume in use is a 409 (the engine's Conflict); ``prune`` removes anonymous volumes only from
API 1.42 on unless the ``all=true`` filter is given, and every unused volume for older clients.
"""

from __future__ import annotations

from runner.api import versions
from runner.api.router import route
from runner.errors import UsageError


def _str_map(value, what: str) -> dict | None:
    if value is None:
        return None
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise UsageError(f"invalid {what}: a JSON object of strings is needed")
    return value or None


@route("POST", "/volumes/create")
def create(req) -> None:
    body = req.json()
    name = body.get("Name") or None
    if name is not None and not isinstance(name, str):
        raise UsageError("invalid volume name: not a string")
    driver = body.get("Driver") or "local"
    if driver != "local":
        raise UsageError(f"volume driver {driver!r} is not available: runner has the local driver only")
    req.reply(req.backend.volume_create(name, _str_map(body.get("Labels"), "Labels"),
                                        _str_map(body.get("DriverOpts"), "DriverOpts")), 201)


@route("GET", "/volumes")
def ls(req) -> None:
    req.reply({"Volumes": req.backend.volume_ls(req.filters() or None), "Warnings": []})


@route("GET", "/volumes/{name}")
def inspect(req) -> None:
    req.reply(req.backend.volume_inspect(req.params["name"]))


@route("DELETE", "/volumes/{name}")
def remove(req) -> None:
    req.backend.volume_rm(req.params["name"], req.flag("force"))
    req.reply_empty()


@route("POST", "/volumes/prune")
def prune(req) -> None:
    filters = req.filters()
    every = filters.pop("all", ["false"])[-1].lower() in ("1", "true") or not versions.at_least(req.version, "1.42")
    req.reply(req.backend.volume_prune(every, filters or None))
