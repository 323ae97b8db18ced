"""Container lifecycle routes: create, start, stop, kill, restart, rm, inspect, list, resize.

Each is a thin translation onto the Backend (native engine or the VM's agent) with Docker's status codes and
texts, which clients match on: ``No such container: <ref>`` (404), the name conflict (409), 304 for starting a
running or stopping a stopped container. Streams (attach, wait, logs) are in :mod:`runner.api.container_io`.
"""

from __future__ import annotations

import contextlib

from runner.api.http import ApiError
from runner.api.monitor import monitor_of
from runner.api.router import route
from runner.errors import Conflict, ImageNotFound, NotFound, RunnerError, UsageError
from runner.stdio import TermSize


def no_such_container(ref: str) -> ApiError:
    return ApiError(404, f"No such container: {ref}")


def inspect(req, ref: str) -> dict:
    """The container's inspect view; 404 with Docker's text when there is none."""
    try:
        return req.backend.inspect(ref)
    except NotFound as exc:
        raise no_such_container(ref) from exc


@route("POST", "/containers/create")
def create(req) -> None:
    from runner.api.createspec import container_spec
    name = req.arg("name")
    if name is not None and name.startswith("/"):
        name = name[1:]
    body = req.json()
    spec = container_spec(body, name)
    try:
        cid = req.backend.create(spec)
    except ImageNotFound as exc:
        raise ApiError(404, f"No such image: {spec['image']}") from exc
    except Conflict as exc:
        if not name or "already in use" not in exc.message:
            raise
        owner = ""
        with contextlib.suppress(RunnerError):
            owner = req.backend.inspect(name)["Id"]
        raise ApiError(409, f'Conflict. The container name "/{name}" is already in use by container "{owner}". '
                            "You have to remove (or rename) that container to be able to reuse that name.") from exc
    size = console_size((body.get("HostConfig") or {}).get("ConsoleSize"))
    if size is not None and spec["tty"]:
        monitor_of(req).console_sizes[cid] = size  # API 1.42+: the terminal's size from its first moment
    req.reply({"Id": cid, "Warnings": []}, 201)


def console_size(value) -> TermSize | None:
    """``ConsoleSize`` [rows, cols] (API 1.42+), or None when absent or zero."""
    if isinstance(value, list) and len(value) == 2 and all(isinstance(v, int) and 0 < v <= 65535 for v in value):
        return TermSize(value[0], value[1])
    return None


def start_container(req, cid: str) -> None:
    """Start ``cid`` with this server watching it: with the pending attach's pipes if a client attached
    before (``docker run``, ``docker start -a``), else detached with output to /dev/null (the log keeps it)."""
    mon = monitor_of(req)
    session = mon.take_pending(cid)
    stdio = session.stdio() if session is not None else mon.null_stdio()
    size = mon.console_sizes.pop(cid, None)
    mon.starting(cid)
    try:
        handle = req.backend.start(cid, stdio, size)
    except BaseException:
        mon.start_failed(cid)
        if session is not None:
            session.abandon()
        raise
    mon.started(cid, handle, session)
    if session is not None:
        session.bind()


@route("POST", "/containers/{id}/start")
def start(req) -> None:
    info = inspect(req, req.params["id"])
    if info["State"]["Running"]:
        raise ApiError(304, "container already started")
    try:
        start_container(req, info["Id"])
    except RunnerError:
        if info["HostConfig"].get("AutoRemove"):  # as dockerd: an --rm container that cannot start is removed
            with contextlib.suppress(RunnerError):
                req.backend.rm(info["Id"], force=True)
            monitor_of(req).removed(info["Id"])
        raise
    req.reply_empty(204)


def _timeout(req) -> float:
    t = req.int_arg("t")
    if t is None:
        t = req.int_arg("timeout")  # docker-py before 7 sent ``timeout``
    return 10 if t is None else (t if t >= 0 else 10 ** 6)  # -1: wait for ever, as Docker


@route("POST", "/containers/{id}/stop")
def stop(req) -> None:
    info = inspect(req, req.params["id"])
    if not info["State"]["Running"]:
        raise ApiError(304, "container already stopped")
    req.backend.stop(info["Id"], _timeout(req))
    req.reply_empty(204)


@route("POST", "/containers/{id}/kill")
def kill(req) -> None:
    info = inspect(req, req.params["id"])
    if not info["State"]["Running"]:
        raise ApiError(409, f"Container {info['Id']} is not running")
    req.backend.kill(info["Id"], req.arg("signal") or "KILL")
    req.reply_empty(204)


@route("POST", "/containers/{id}/restart")
def restart(req) -> None:
    info = inspect(req, req.params["id"])
    if info["State"]["Running"]:
        req.backend.stop(info["Id"], _timeout(req))
    start_container(req, info["Id"])
    req.reply_empty(204)


@route("DELETE", "/containers/{id}")
def remove(req) -> None:
    info = inspect(req, req.params["id"])
    force = req.flag("force")
    volumes = req.flag("v")  # also the container's anonymous volumes (compose's down -v, docker rm -v)
    if info["State"]["Running"] and not force:
        raise ApiError(409, f"You cannot remove a running container {info['Id']}. Stop the container before "
                            "attempting removal or force remove")
    try:
        req.backend.rm(info["Id"], force=force, volumes=volumes)
    except NotFound:
        pass  # removed meanwhile (an --rm container that just exited): what was asked is done
    monitor_of(req).removed(info["Id"])
    req.reply_empty(204)


@route("GET", "/containers/{id}/json")
def inspect_route(req) -> None:
    info = inspect(req, req.params["id"])
    if req.flag("size"):
        info.update(SizeRw=0, SizeRootFs=0)
    req.reply(info)


@route("POST", "/containers/{id}/resize")
def resize(req) -> None:
    info = inspect(req, req.params["id"])
    size = term_size(req)
    handle = monitor_of(req).handle(info["Id"])
    if handle is not None:
        handle.resize(size)
    elif info["State"]["Running"] and info["Config"]["Tty"]:
        from runner.api import attach_running
        attach_running.resize(req, info["Id"], size.rows, size.cols)
    req.reply_empty(200)


def term_size(req) -> TermSize:
    rows, cols = req.int_arg("h", 0), req.int_arg("w", 0)
    if not (0 <= rows <= 65535 and 0 <= cols <= 65535):
        raise UsageError("invalid terminal size: h and w must be between 0 and 65535")
    return TermSize(rows, cols)


# ------------------------------------------------------------------------------------------------ list

@route("GET", "/containers/json")
def list_containers(req) -> None:
    """Filtered where the containers live, by the engine's one implementation of Docker's filters
    (runner.engine.filters): the same keys, checks and meaning as ``runner ps --filter``."""
    filters = req.filters()
    limit = req.int_arg("limit", -1)
    out = req.backend.ps(all=req.flag("all") or limit > 0, filters=filters)
    if limit > 0:
        out = out[:limit]
    if req.flag("size"):
        for c in out:
            c.update(SizeRw=0, SizeRootFs=0)
    req.reply(out)
