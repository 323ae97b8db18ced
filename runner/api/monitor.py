"""What the API server knows about containers beyond their records: process handles, exit codes, attaches.

Why the server keeps this: the docker CLI's ``run`` calls ``attach`` and ``wait`` *before* ``start``, on three
connections, and expects them to be tied together. So a pending attach waits here until ``start`` hands its
pipes to the engine; ``wait`` learns the exit code from the started process's handle, which still has it after
``--rm`` removed the container (``wait?condition=removed`` must report it). Every container this server starts
is started with a handle (a detached one with its output going to /dev/null; the engine's log has it), and one
thread per running container waits on it: the exit is known the moment it happens, and natively that thread
also reaps the container's shim. A container started elsewhere (runner's CLI, an earlier server) is watched
with the backend's ``wait`` on demand.

Nothing here is needed for correctness of the containers themselves: if the server dies, shims run on and
write their records; a new server sees the containers and watches them as started elsewhere.
"""

from __future__ import annotations

import os
import threading

from runner.errors import RunnerError, VMError


_KEEP = 4096  # exits and removals remembered (a waiter asks within moments; a long-lived server must not grow)


def _trim(table: dict) -> None:
    """Forget the oldest half of ``table`` once it holds more than _KEEP entries."""
    if len(table) > _KEEP:
        for key in list(table)[:len(table) // 2]:
            del table[key]


class _Exit:
    __slots__ = ("count", "code", "error")

    def __init__(self):
        self.count, self.code, self.error = 0, None, ""


class Monitor:
    def __init__(self, backend):
        self.backend = backend
        self._cond = threading.Condition()
        self._exits: dict[str, _Exit] = {}
        self._handles: dict[str, object] = {}
        self._pending: dict[str, object] = {}  # cid -> AttachSession waiting for start
        self._watched: set[str] = set()
        self._removed: dict[str, None] = {}  # insertion-ordered, so the oldest are dropped first
        self._devnull: int | None = None
        self.console_sizes: dict[str, object] = {}  # cid -> TermSize from create's ConsoleSize, for its start

    # ---------------------------------------------------------------- attaches waiting for start
    def add_pending(self, cid: str, session) -> None:
        with self._cond:
            old = self._pending.get(cid)
            self._pending[cid] = session
        if old is not None:
            old.abandon()  # one attach per start, as with a second `docker start -a`: the newest wins

    def drop_pending(self, cid: str, session) -> bool:
        """Withdraw a pending attach; False if a start took it meanwhile (its pipes are the process's now)."""
        with self._cond:
            if self._pending.get(cid) is session:
                del self._pending[cid]
                return True
            return False

    def take_pending(self, cid: str):
        with self._cond:
            return self._pending.pop(cid, None)

    # ---------------------------------------------------------------- started processes
    def null_stdio(self):
        """Stdio for a detached start: output to /dev/null (the log keeps it), no stdin."""
        from runner.stdio import Stdio
        if self._devnull is None:
            self._devnull = os.open(os.devnull, os.O_WRONLY)  # non-inheritable everywhere (PEP 446); "nul" on Windows
        return Stdio(None, self._devnull, self._devnull)

    def starting(self, cid: str) -> None:
        """A start of ``cid`` by this server is under way: its handle will bring the exit, so nobody else
        needs to watch it (a waiter that sees it running before the start returned must not)."""
        with self._cond:
            self._watched.add(cid)

    def start_failed(self, cid: str) -> None:
        with self._cond:
            if cid not in self._handles:
                self._watched.discard(cid)

    def started(self, cid: str, handle, session=None) -> None:
        """``handle`` runs container ``cid``; a thread waits for its exit (and then ends ``session``)."""
        with self._cond:
            self._handles[cid] = handle
            self._watched.add(cid)
        threading.Thread(target=self._reap, args=(cid, handle, session), name=f"reap-{cid[:12]}",
                         daemon=True).start()

    def _reap(self, cid: str, handle, session) -> None:
        code, error = None, ""
        try:
            code = handle.wait()
        except VMError:
            # The connection to the machine was lost, not the container: watch it on a new connection.
            if session is not None:
                session.writers_done()
            with self._cond:
                if self._handles.get(cid) is handle:
                    del self._handles[cid]
                    self._watched.discard(cid)
            self.watch(cid)
            return
        except RunnerError as exc:
            error = exc.message
        except Exception as exc:  # a bug: the waiters still hear of the end, the stream still closes
            error = f"{type(exc).__name__}: {exc}"
        if session is not None:
            session.writers_done()
        self._record_exit(cid, code, error, handle)

    def _record_exit(self, cid: str, code: int | None, error: str = "", handle=None) -> None:
        with self._cond:
            if self._handles.get(cid) is handle:  # not a newer start's (restart)
                self._handles.pop(cid, None)
                self._watched.discard(cid)
            ex = self._exits.setdefault(cid, _Exit())
            ex.count, ex.code, ex.error = ex.count + 1, code, error
            _trim(self._exits)
            self._cond.notify_all()

    def tracking(self, cid: str) -> bool:
        """Whether a thread of this server waits for the container's exit (it will be recorded)."""
        with self._cond:
            return cid in self._watched

    def handle(self, cid: str):
        with self._cond:
            return self._handles.get(cid)

    def watch(self, cid: str) -> None:
        """Learn the exit of a running container this server did not start (a backend ``wait`` in a thread)."""
        with self._cond:
            if cid in self._watched:
                return
            self._watched.add(cid)

        def run() -> None:
            code, error = None, ""
            try:
                code = self.backend.wait(cid)
            except RunnerError as exc:
                error = exc.message
            self._record_exit(cid, code, error)

        threading.Thread(target=run, name=f"watch-{cid[:12]}", daemon=True).start()

    # ---------------------------------------------------------------- waiting
    def exits_seen(self, cid: str) -> int:
        with self._cond:
            ex = self._exits.get(cid)
            return ex.count if ex else 0

    def last_exit(self, cid: str) -> tuple[int | None, str]:
        with self._cond:
            ex = self._exits.get(cid)
            return (ex.code, ex.error) if ex else (None, "")

    def wait_exit(self, cid: str, after: int, timeout: float) -> bool:
        """Whether container ``cid`` exited more than ``after`` times (waiting up to ``timeout`` seconds)."""
        with self._cond:
            return self._cond.wait_for(lambda: (self._exits.get(cid) or _Exit()).count > after, timeout)

    def removed(self, cid: str) -> None:
        with self._cond:
            self._removed[cid] = None
            _trim(self._removed)
            _trim(self._exits)
            self._cond.notify_all()

    def is_removed(self, cid: str) -> bool:
        with self._cond:
            return cid in self._removed

    def wait_event(self, timeout: float) -> None:
        """Sleep until any exit or removal is recorded, or ``timeout`` seconds."""
        with self._cond:
            self._cond.wait(timeout)


def monitor_of(req) -> Monitor:
    """The server's one Monitor (created on first use, in the request context shared by all requests)."""
    ctx = req.context
    mon = ctx.get("monitor")
    if mon is None:
        with ctx["lock"]:
            mon = ctx.get("monitor")
            if mon is None:
                mon = ctx["monitor"] = Monitor(req.backend)
    return mon
