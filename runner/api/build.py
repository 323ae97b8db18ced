"""Build routes: ``POST /build`` (Docker's classic builder, what ``DOCKER_BUILDKIT=0 docker build`` and docker-py's
``images.build`` use) and ``POST /build/prune``.

A thin adapter: the request body *is* the context tar the engine's ``build`` takes (plain or compressed, sent
chunked by the docker CLI), streamed to the backend as it arrives (natively into the engine, through the agent
into the VM's engine); the query becomes the engine's build options; the engine's progress events go out as
Docker's JSON stream, one object per chunk: ``{"stream": ...}`` lines, ``{"aux": {"ID": ...}}`` for the result,
and a failure in-band as ``{"errorDetail": {"message", "code"}, "error": ...}`` after a 200 (the answer has
begun by then), as dockerd does. runner's own ``step`` events (for ``runner build --progress plain``) are not
part of Docker's stream and are dropped. BuildKit (``version=2``) and remote contexts are refused with a 400
that says how to get a classic build. A client that hangs up cancels its build (the running RUN step is
killed, nothing is tagged), as dockerd cancels a build whose request context ended.
"""

from __future__ import annotations

import json
import threading

from runner.api.attach import hung_up
from runner.api.router import route
from runner.api.streams import json_line
from runner.errors import RunnerError, UsageError
from runner.stdio import Cancel

# Query parameters of Docker's classic build that change nothing here (resource limits of the build
# containers, cache sources, squash, ...): accepted and ignored, as podman's compat handler does for most.
_IGNORED = ("extrahosts", "cachefrom", "pull", "rm", "forcerm", "memory", "memswap", "cpushares", "cpusetcpus",
            "cpuperiod", "cpuquota", "shmsize", "squash", "outputs", "session", "buildid")


def _json_map(req, name: str) -> dict:
    raw = req.arg(name)
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except ValueError as exc:
        raise UsageError(f"invalid {name}: {raw[:80]!r} is not JSON") from exc
    if not isinstance(value, dict) or not all(isinstance(k, str) and (v is None or isinstance(v, str))
                                              for k, v in value.items()):
        raise UsageError(f"invalid {name}: expected an object of strings")
    return value


def build_options(req) -> dict:
    """The engine's build options from the query (checked like the CLI's by runner.images.builder)."""
    from runner.images.builder import check_options
    if req.arg("remote"):
        raise UsageError("remote build contexts are not supported", hint="send the context as a tar body")
    if req.arg("version") == "2":
        raise UsageError("BuildKit is not supported by runner: use the classic builder",
                         hint="set DOCKER_BUILDKIT=0 (the docker CLI) or omit version=2")
    options = {"tags": [t for t in req.query.get("t", []) if t], "buildargs": _json_map(req, "buildargs"),
               "labels": _json_map(req, "labels"), "nocache": req.flag("nocache"),
               "dockerfile": req.arg("dockerfile") or "Dockerfile"}
    network = req.arg("networkmode")
    if network and network != "default":
        options["network"] = network
    for name in ("target", "platform"):
        if req.arg(name):
            options[name] = req.arg(name)
    return check_options(options)


@route("POST", "/build")
def build(req) -> None:
    options = build_options(req)
    quiet = req.flag("q")
    out = req.stream("application/json")

    cancel = Cancel()

    def progress(event: dict) -> None:
        line = json_line({"stream": event["stream"]}) if "stream" in event and not quiet else \
            json_line({"aux": event["aux"]}) if "aux" in event else None
        if line is None or cancel.is_set():
            return
        try:
            out.write(line)
        except OSError:  # the client is gone: so is the build (the engine must not die of our broken pipe)
            cancel.set()

    watching = _watch_client(req, cancel)
    try:
        image_id = req.backend.build(req.body, options, progress, cancel)
        if quiet:
            out.write(json_line({"stream": image_id + "\n"}))
    except RunnerError as exc:
        if cancel.is_set():  # nobody is listening: the build stopped because its client left
            req._handler.close_connection = True
            return
        message = exc.message + (f" ({exc.hint})" if exc.hint and "\n" not in exc.hint else "")
        if exc.hint and "\n" in exc.hint:
            message += "\n" + exc.hint
        out.write(json_line({"errorDetail": {"message": message, "code": exc.exit_code}, "error": message}))
    finally:
        watching.set()
    out.close()


def _watch_client(req, cancel: Cancel) -> threading.Event:
    """Cancel the build once its client hangs up, as dockerd cancels a classic build when the request's
    context ends: its running RUN step is killed, nothing is tagged. Set the returned event when the build is
    over (the watcher then ends within a poll)."""
    over = threading.Event()
    sock = req.connection

    def watch() -> None:
        while not over.is_set():
            if hung_up(sock, 0.5):
                if not over.is_set():
                    cancel.set()
                return
    threading.Thread(target=watch, name="build-client", daemon=True).start()
    return over


@route("POST", "/build/prune")
def prune(req) -> None:
    result = req.backend.build_prune()
    req.reply({"CachesDeleted": result.get("CachesDeleted") or [], "SpaceReclaimed": result.get("SpaceReclaimed", 0)})
