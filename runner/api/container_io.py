"""A container's streams over the API: attach (hijacked), wait (headers first, the answer at exit) and logs.

The docker CLI's ``run`` opens ``attach`` and ``wait`` before it calls ``start``: an attach to a container that
does not run yet is parked in the server's :class:`runner.api.monitor.Monitor` until ``start`` wires its pipes
to the container; ``wait`` sends its headers at once (the CLI blocks on them before starting) and its body
when the monitor sees the exit. An attach to a container that already runs goes through the engine's ``attach``
(runner.api.attach_running): live output, and stdin when the container was created with ``-i``.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time

from runner.api import attach_running
from runner.api.attach import AttachSession, PipeReaders, client_gone
from runner.api.containers import inspect
from runner.api.monitor import monitor_of
from runner.api.router import route
from runner.api.streams import STDERR, STDOUT, attach_content_type, frame, json_line
from runner.errors import NotFound, RunnerError, UsageError
from runner.stdio import Stdio


@route("POST", "/containers/{id}/attach")
def attach(req) -> None:
    info = inspect(req, req.params["id"])
    cid, tty = info["Id"], bool(info["Config"]["Tty"])
    stream, logs = req.flag("stream"), req.flag("logs")
    running = info["State"]["Running"]
    stdin = req.flag("stdin") and stream and (not running or bool(info["Config"]["OpenStdin"]))
    content_type = attach_content_type(req.version, tty)
    session = AttachSession(req.connection, tty, stdin, req.flag("stdout"), req.flag("stderr"))
    if not stream:
        req.hijack(content_type)
        _from_log(req, cid, session, follow=False, tail=None if logs else 0)
        session.pump()
        return
    if running:  # wired to the running container by its shim (runner.api.attach_running)
        pump_ended = attach_running.feed(req, cid, session, logs, req.arg("detachKeys") or None)
        req.hijack(content_type)
        session.pump()
        pump_ended()
        return
    mon = monitor_of(req)
    mon.add_pending(cid, session)  # before the 101: the client sends its start the moment it reads that
    req.hijack(content_type)
    if not session.wait_bound():  # the client left before the start
        if mon.drop_pending(cid, session):
            session.abandon()
        else:
            session.close()  # a start took it meanwhile: the reaper closes the write ends at the exit
        return
    session.pump()


def _from_log(req, cid: str, session: AttachSession, follow: bool, tail: int | None) -> None:
    """Feed ``session`` from the container's log (live with ``follow``) in a thread."""
    def run() -> None:
        with contextlib.suppress(RunnerError, OSError):
            req.backend.logs(cid, session.stdio(), follow=follow, tail=tail)
        session.writers_done()
    threading.Thread(target=run, name=f"attach-log-{cid[:12]}", daemon=True).start()


# ------------------------------------------------------------------------------------------------ wait

_CONDITIONS = ("not-running", "next-exit", "removed")
_CHECK_EVERY = 1.0  # seconds between looks at the record when nobody tells the server (a start elsewhere)


@route("POST", "/containers/{id}/wait")
def wait(req) -> None:
    condition = req.arg("condition") or "not-running"
    if condition not in _CONDITIONS:
        raise UsageError(f"invalid condition {condition!r}: use not-running, next-exit or removed")
    info = inspect(req, req.params["id"])
    writer = req.stream("application/json")  # at once: the docker CLI starts the container only after this
    result = wait_for(req, info, condition)
    if result is None:
        return  # the client went away
    code, error = result
    writer.write(json_line({"StatusCode": code, "Error": {"Message": error} if error else None}))
    writer.close()


def wait_for(req, info: dict, condition: str) -> tuple[int, str] | None:
    """(exit code, error text) once ``condition`` holds; None if the client hung up first."""
    mon, cid = monitor_of(req), info["Id"]
    state = info["State"]
    if condition == "not-running" and not state["Running"]:
        return state["ExitCode"], ""
    seen = mon.exits_seen(cid)
    exited = False
    code, error = state["ExitCode"], ""
    if state["Running"]:
        mon.watch(cid)  # a no-op for a container this server started: it watches those already
    next_check = time.monotonic() + _CHECK_EVERY  # ``info`` is fresh: no second look at once
    while True:
        if not exited and mon.exits_seen(cid) > seen:
            exited = True
            code, error = mon.last_exit(cid)
            code = 0 if code is None else code
            if condition != "removed":
                return code, error
            next_check = 0.0  # an --rm container is gone by the time its exit is known: look now
        if condition == "removed" and mon.is_removed(cid):
            return code, error
        if time.monotonic() >= next_check:
            next_check = time.monotonic() + _CHECK_EVERY
            try:
                now = req.backend.inspect(cid)
            except NotFound:
                if exited:
                    return code, error
                if mon.tracking(cid):
                    continue  # removed (--rm) the moment it exited: its handle brings the code
                if condition == "removed":
                    return code, error
                return code, "the container was removed before its exit code was read"
            if now["State"]["Running"]:
                mon.watch(cid)  # started elsewhere, or before this server: learn its exit
            elif condition == "removed" and now["State"]["Status"] == "exited" and not exited \
                    and mon.handle(cid) is None and mon.exits_seen(cid) == seen and state["Running"]:
                exited, code = True, now["State"]["ExitCode"]  # it ended unseen (started elsewhere)
        if client_gone(req.connection):
            return None
        mon.wait_event(0.25)


# ------------------------------------------------------------------------------------------------ logs

def _tail(req) -> int | None:
    value = req.arg("tail")
    if value in (None, "", "all"):
        return None
    try:
        return max(0, int(value))
    except ValueError as exc:
        raise UsageError(f"invalid value {value!r} for tail: a number or 'all'") from exc


def _since(req) -> float | None:
    value = req.arg("since")
    if value in (None, "", "0"):
        return None
    try:
        return float(value)
    except ValueError as exc:
        raise UsageError(f"invalid value {value!r} for since: a Unix time (seconds[.nanoseconds])") from exc


@route("GET", "/containers/{id}/logs")
def logs(req) -> None:
    info = inspect(req, req.params["id"])
    want = {STDOUT: req.flag("stdout"), STDERR: req.flag("stderr")}
    if not any(want.values()):
        raise UsageError("Bad parameters: you must choose at least one stream")
    tty = bool(info["Config"]["Tty"])
    args = {"follow": req.flag("follow"), "tail": _tail(req)}
    since = _since(req)
    if since is not None:
        args["since"] = since
    until = req.arg("until")
    if until not in (None, "", "0"):
        from runner.api.timefilter import parse_time
        args["until"] = parse_time(until)
    if req.flag("timestamps"):
        args["timestamps"] = True
    out_r, out_w = os.pipe()  # not pipe2: Windows has none (os.pipe is non-inheritable everywhere)
    err_r, err_w = os.pipe()

    def produce() -> None:
        try:
            with contextlib.suppress(RunnerError, OSError):
                req.backend.logs(info["Id"], Stdio(None, out_w, err_w), **args)
        finally:
            os.close(out_w)
            os.close(err_w)

    writer = req.stream(attach_content_type(req.version, tty))
    threading.Thread(target=produce, name=f"logs-{info['Id'][:12]}", daemon=True).start()
    _pump_pipes({out_r: STDOUT, err_r: STDERR}, want, tty, writer.write)  # closes both read ends
    writer.close()


def _pump_pipes(sources: dict[int, int], want: dict[int, bool], tty: bool, write) -> None:
    """Read the pipes until both end, writing each chunk (framed without a TTY) through ``write``; each
    pipe's read end is closed as its reader ends (a producer still writing gets EPIPE). A failing ``write``
    (the client left) stops both readers and is raised here."""
    failed: list[OSError] = []

    def deliver(stream: int, data: bytes) -> None:
        if want[stream]:
            try:
                write(data if tty else frame(stream, data))
            except OSError as exc:
                failed.append(exc)
                raise

    PipeReaders(list(sources.items()), deliver).run()
    if failed:
        raise failed[0]
