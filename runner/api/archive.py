"""``/containers/{id}/archive``: HEAD (stat), GET (a tar of a path), PUT (extract a tar), for ``docker cp``.

The engine does the work inside the container's root (runner.engine.archive: symlinks never leave it); here
the stat dict travels as Docker's ``X-Docker-Container-Path-Stat`` header (base64 of its JSON), the tar as
the body: streamed out chunked, streamed in from the request body (chunked or sized) without a copy in memory.
"""

from __future__ import annotations

import base64
import json

from runner.api.router import route
from runner.errors import UsageError


def _path(req) -> str:
    path = req.arg("path")
    if not path:
        raise UsageError("path is required: give ?path=/in/the/container")
    return path if path.startswith("/") else "/" + path


def _stat_header(stat: dict) -> dict[str, str]:
    return {"X-Docker-Container-Path-Stat": base64.b64encode(json.dumps(stat).encode()).decode()}


@route("HEAD", "/containers/{id}/archive")
def head(req) -> None:
    stat = req.backend.archive_stat(req.params["id"], _path(req))
    req.send(200, b"", None, _stat_header(stat))


@route("GET", "/containers/{id}/archive")
def get(req) -> None:
    ref, path = req.params["id"], _path(req)
    stat = req.backend.archive_stat(ref, path)  # a missing path is a clean 404 before the stream starts
    out = req.stream("application/x-tar", headers=_stat_header(stat))
    req.backend.archive_get(ref=ref, path=path, stream=out)
    out.close()


@route("PUT", "/containers/{id}/archive")
def put(req) -> None:
    req.backend.archive_put(stream=req.body, ref=req.params["id"], path=_path(req))
    req.reply_empty(200)
