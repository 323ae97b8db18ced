"""``/containers/{id}/attach`` to a container that already runs: the session's pipes are wired to the backend's
``attach`` (runner.engine.attach_client: live output, stdin for ``-i`` containers, detach keys, StdinOnce),
which works alike natively and through the VM. Apart from runner.api.attach and runner.api.container_io, whose
pumps are their own concern: this module only uses the session's ``stdio()``/``writers_done()``.
"""

from __future__ import annotations

import contextlib
import threading

from runner.errors import RunnerError
from runner.stdio import Stdio, write_all


def feed(req, cid: str, session, logs: bool, detach_keys: str | None):
    """Wire ``session`` to the running container. Without ``logs`` the attach is made now, before the 101:
    output the container writes from then on waits in the session's pipes, so a client that sends input the
    moment it reads the 101 sees every answer (and a failure is still a plain HTTP error). With ``logs`` the
    log comes first, in the thread (the pipes could not hold a long log before the pump runs), then the attach.
    Either way the session's write ends close at the end, so its pump ends. Returns what to call once the
    session's pump returned: a client that went away ends the attach at once (natively and in the VM),
    rather than at the container's next output."""
    handle = None
    if not logs:
        try:
            handle = req.backend.attach(cid, session.stdio(), None, detach_keys=detach_keys)
        except BaseException:
            session.discard()
            raise

    box = [handle]

    def run() -> None:
        stdio = session.stdio()
        try:
            attached = handle
            if attached is None:
                req.backend.logs(cid, Stdio(None, stdio.stdout, stdio.stderr))
                attached = box[0] = req.backend.attach(cid, stdio, None, detach_keys=detach_keys)
            attached.wait()
        except (RunnerError, OSError) as exc:
            with contextlib.suppress(OSError):  # the 101 went out already: the reason goes to the stream
                write_all(stdio.stderr, f"Error: {exc}\n".encode())
        finally:
            session.writers_done()
    threading.Thread(target=run, name=f"attach-{cid[:12]}", daemon=True).start()

    def pump_ended() -> None:
        detach = getattr(box[0], "detach", None)
        if detach is not None:
            with contextlib.suppress(RunnerError, OSError):
                detach()
    return pump_ended


def resize(req, cid: str, rows: int, cols: int) -> None:
    """``/containers/{id}/resize`` of a container no attach of this server started: through its shim."""
    req.backend.resize(cid, rows, cols)
