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


def feed(req, cid: str, session, logs: bool, detach_keys: str | None) -> None:
    """In a thread: with ``logs``, the output so far from the log; then the live attach until the container
    exits, the client detaches or goes away. The session's write ends close at the end, so its pump ends."""
    def run() -> None:
        stdio = session.stdio()
        try:
            if logs:
                req.backend.logs(cid, Stdio(None, stdio.stdout, stdio.stderr))
            handle = req.backend.attach(cid, stdio, None, detach_keys=detach_keys)
            handle.wait()
        except (RunnerError, OSError) as exc:
            with contextlib.suppress(OSError):  # the 101 went out already: the reason goes to the stream
                write_all(stdio.stderr, f"Error: {exc}\n".encode())
        finally:
            session.writers_done()
    threading.Thread(target=run, name=f"attach-{cid[:12]}", daemon=True).start()


def resize(req, cid: str, rows: int, cols: int) -> None:
    """``/containers/{id}/resize`` of a container no attach of this server started: through its shim."""
    req.backend.resize(cid, rows, cols)
