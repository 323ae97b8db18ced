"""Exec routes: ``POST /containers/{id}/exec`` (create), ``/exec/{id}/start`` (hijacked, or detached),
``/exec/{id}/resize`` and ``/exec/{id}/json`` (inspect).

An exec instance lives in this server only (as in dockerd, where it is in memory): created, started once,
inspected. Its exit code is recorded *before* its stream ends, so a client that inspects right after the
stream closed (the docker CLI, docker-py's ``exec_run``) reads the real code, never a stale 0 or ``Running``.
"""

from __future__ import annotations

import contextlib
import os
import threading

from runner.api.attach import AttachSession
from runner.api.containers import console_size, inspect, term_size
from runner.api.http import ApiError
from runner.api.monitor import monitor_of
from runner.api.router import route
from runner.api.streams import STDERR, attach_content_type, frame
from runner.errors import RunnerError, UsageError
from runner.spec import ExecSpec
from runner.stdio import TermSize

_MAX_EXECS = 4096  # finished instances kept for inspect; the oldest are forgotten beyond this


class ExecInstance:
    def __init__(self, eid: str, cid: str, spec: ExecSpec, attach: dict):
        self.id, self.cid, self.spec, self.attach = eid, cid, spec, attach
        self.running = False
        self.started = False
        self.exit_code: int | None = None
        self.pid = 0
        self.handle = None
        self.done = threading.Event()

    def view(self) -> dict:
        cmd = self.spec.command
        return {"ID": self.id, "Running": self.running, "ExitCode": self.exit_code, "Pid": self.pid,
                "ContainerID": self.cid, "CanRemove": False, "DetachKeys": "",
                "OpenStdin": self.attach["stdin"], "OpenStdout": self.attach["stdout"],
                "OpenStderr": self.attach["stderr"],
                "ProcessConfig": {"tty": self.spec.tty, "entrypoint": cmd[0], "arguments": cmd[1:],
                                  "privileged": self.spec.privileged, "user": self.spec.user or ""}}


def _execs(req) -> dict[str, ExecInstance]:
    with req.context["lock"]:
        return req.context.setdefault("execs", {})


def _instance(req) -> ExecInstance:
    found = _execs(req).get(req.params["id"])
    if found is None:
        raise ApiError(404, f"No such exec instance: {req.params['id']}")
    return found


@route("POST", "/containers/{id}/exec")
def create(req) -> None:
    body = req.json()
    info = inspect(req, req.params["id"])
    if not info["State"]["Running"]:
        raise ApiError(409, f"Container {info['Id']} is not running")
    cmd = body.get("Cmd")
    if isinstance(cmd, str):
        cmd = [cmd]
    env = body.get("Env") or []
    if not isinstance(env, list) or not all(isinstance(e, str) for e in env):
        raise UsageError("Env must be a list of strings")
    spec = ExecSpec(command=cmd if isinstance(cmd, list) else [], env=env,
                    workdir=body.get("WorkingDir") or None, user=body.get("User") or None,
                    tty=bool(body.get("Tty")), interactive=bool(body.get("AttachStdin")),
                    privileged=bool(body.get("Privileged"))).validate()
    eid = os.urandom(32).hex()
    attach = {"stdin": bool(body.get("AttachStdin")), "stdout": bool(body.get("AttachStdout", True)),
              "stderr": bool(body.get("AttachStderr", True))}
    execs = _execs(req)
    with req.context["lock"]:
        if len(execs) >= _MAX_EXECS:
            for old in [e for e in execs.values() if e.done.is_set()][:len(execs) // 2]:
                del execs[old.id]
        execs[eid] = ExecInstance(eid, info["Id"], spec, attach)
    req.reply({"Id": eid}, 201)


@route("POST", "/exec/{id}/start")
def start(req) -> None:
    inst = _instance(req)
    body = req.json()
    with req.context["lock"]:
        if inst.started:
            raise ApiError(409, f"Exec {inst.id} has already started")
        inst.started = True
    size = console_size(body.get("ConsoleSize"))
    if body.get("Detach"):
        _run(req, inst, monitor_of(req).null_stdio(), None, size)
        req.reply_empty(200)
        return
    tty = inst.spec.tty
    session = AttachSession(req.connection, tty, inst.spec.interactive, inst.attach["stdout"],
                            inst.attach["stderr"])
    # The 101 goes out before the process starts, as dockerd does it: output sent right behind the headers
    # can land in the client's header buffer, and docker-py then reads the raw socket past it (lost output).
    req.hijack(attach_content_type(req.version, tty))
    try:
        _run(req, inst, session.stdio(), session, size)
    except RunnerError as exc:
        session.discard()
        inst.exit_code = exc.exit_code if exc.exit_code in (126, 127) else 126
        with contextlib.suppress(OSError):  # the answer has begun: the error goes into the stream
            text = (exc.message + "\n").encode()
            req.connection.sendall(text if tty else frame(STDERR, text))
        session.close()
        return
    session.bind()
    session.pump()


def _run(req, inst: ExecInstance, stdio, session, size: TermSize | None) -> None:
    """Start the process; a thread records its exit code, then (only then) ends the stream."""
    try:
        handle = req.backend.exec(inst.cid, inst.spec.to_dict(), stdio, size)
    except RunnerError:
        inst.done.set()
        raise
    inst.handle, inst.running = handle, True
    inst.pid = getattr(handle, "pid", 0) or 0

    def reap() -> None:
        code = None
        try:
            code = handle.wait()
        except RunnerError:
            code = 126
        finally:
            inst.exit_code, inst.running = code, False  # first: an inspect after the stream sees it
            inst.done.set()
            if session is not None:
                session.writers_done()

    threading.Thread(target=reap, name=f"exec-{inst.id[:12]}", daemon=True).start()


@route("POST", "/exec/{id}/resize")
def resize(req) -> None:
    inst = _instance(req)
    size = term_size(req)
    if inst.handle is not None and inst.running:
        inst.handle.resize(size)
    req.reply_empty(200)


@route("GET", "/exec/{id}/json")
def inspect_exec(req) -> None:
    req.reply(_instance(req).view())
