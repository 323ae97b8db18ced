"""The host side of the agent protocol: calls, streams and handles over one byte stream (standard library only).

:class:`AgentClient` speaks :mod:`runner.agent.protocol` over anything socket-like with ``sendall``, ``recv``
and ``close``: a paramiko channel to the guest, the Unix socket of the host-side connection cache
(:mod:`runner.vm.muxd`), or a plain TCP socket in tests. Frames are demultiplexed to the pending calls by
id, by the waiting caller itself when it is alone (see :class:`AgentClient`); a dropped connection fails every
pending call with the same :class:`VMError`.

:class:`RemoteProcess` is the handle of an attached process in the guest. The Backend on top of this
(:class:`runner.backends.agent.AgentBackend`) is generated from the protocol's method table.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal as signals
import threading
from typing import Any

from runner.agent import protocol as P
from runner.errors import RunnerError, VMError
from runner.stdio import ProgressFn, Stdio, TermSize, write_all

GUEST_TIMES_ENV = "RUNNER_GUEST_TIMES"  # scripts/bench-vm: where a CLI call appends the agent's own timings

INBOX_LIMIT = 8 * 1024 * 1024  # received-but-unconsumed bytes per call before the reader waits (save, output)


class _Call:
    def __init__(self, call_id: int, method: str):
        self.id = call_id
        self.method = method
        self.inbox = P.Inbox(INBOX_LIMIT)


class AgentClient:
    """One authenticated connection to the agent.

    The handshake reads the agent's CHALLENGE (refusing a different code version before sending anything)
    and sends HELLO without waiting for WELCOME: the first request follows at once, so a call costs one
    round trip after the challenge. If the agent refuses (wrong token), that ERROR fails the calls instead.

    Who reads the connection: a thread waiting for its call's next frame reads it itself when nobody else is
    reading (the usual CLI call: one call in flight, so its reply reaches it without a hand-off between
    threads), dispatching whatever else arrives to the other calls' inboxes. When it has its frame and other
    calls still expect frames, a background reader thread takes over until no call expects any; a waiting
    thread never reads while another does. "Expects frames" is the wire's view: a call is open from its
    REQUEST until its last frame arrives (REPLY, ERROR, or for an attached call EXIT), even if the caller
    stopped listening, so that frame is still read and dropped.
    """

    def __init__(self, channel: Any, token: str, version: str, where: str = "the VM"):
        self._chan = channel
        self._where = where
        self._send_lock = threading.Lock()
        self._calls: dict[int, _Call] = {}
        self._calls_lock = threading.Lock()
        self._open: dict[int, bool] = {}  # call id -> ends with EXIT (attached); until its last frame arrived
        self._reading = False  # a thread holds the reader role (only it may recv)
        self._handoff = False  # ... and it is the background reader's
        self._wake = threading.Condition(self._calls_lock)
        self._reader: threading.Thread | None = None
        self._failed = threading.Event()
        self._next_id = 1
        self._error: RunnerError | None = None
        self._decoder = P.Decoder(P.FROM_SERVER)
        self.agent_version, nonce = self._read_challenge()
        if self.agent_version != version:
            self.close()
            raise P.mismatch_error(version, self.agent_version)
        self._send(P.encode_json(P.HELLO, 0, {"version": version,
                                              "proof": P.auth_proof(P.check_token(token), nonce, version)}))
        self.agent_pid: int | None = None

    # -- connection
    def _read_challenge(self) -> tuple[str, bytes]:
        frames: list[P.Frame] = []
        try:
            while not frames:
                data = self._chan.recv(65536)
                if not data:
                    raise self._lost("it closed the connection before the handshake")
                frames = self._decoder.feed(data)
        except OSError as exc:
            raise self._lost(str(exc)) from exc
        if frames[0].kind == P.ERROR:
            raise P.parse_error(frames[0])
        if frames[0].kind != P.CHALLENGE:
            raise P.ProtocolError("the agent did not start with CHALLENGE")
        self._backlog = frames[1:]
        return P.parse_challenge(frames[0])

    def _lost(self, why: str) -> VMError:
        return VMError(f"lost the connection to the runner agent in {self._where}: {why}",
                       hint="check the machine with `runner vm status`; containers keep running in the VM")

    def _send(self, data: bytes) -> None:
        with self._send_lock:
            if self._error is not None:
                raise self._error
            try:
                self._chan.sendall(data)
                return
            except OSError as exc:
                lost = self._lost(str(exc))
        # The agent may have said why it hung up (a refused token) just before: prefer its words.
        if self._lead():
            try:
                while True:  # what it sent before hanging up, then the end of the stream
                    self._read_some()
            except RunnerError as exc:
                self._fail(exc)
        else:
            self._failed.wait(1.0)
        raise self._error or lost

    # -- reading (only the holder of the reader role)
    def _lead(self) -> bool:
        """Take the reader role if nobody holds it (and the connection is alive)."""
        with self._calls_lock:
            if self._reading or self._error is not None:
                return False
            self._reading = True
            return True

    def _read_some(self) -> None:
        """Receive once and dispatch what arrived; a lost connection or a protocol error raises."""
        if self._backlog:
            frames, self._backlog = self._backlog, []
        else:
            try:
                data = self._chan.recv(256 * 1024)
            except (OSError, EOFError) as exc:
                raise self._lost(str(exc) or type(exc).__name__) from exc
            if not data:
                raise self._lost("the agent closed it" + (" mid-frame" if self._decoder.pending else ""))
            frames = self._decoder.feed(data)
        for frame in frames:
            self._dispatch(frame)

    def _read_for(self, call: _Call) -> Any:
        """As the reader: read until ``call`` has an item, then pass the role on (or drop it)."""
        try:
            while True:
                self._read_some()
                item = call.inbox.get(block=False)
                if item is not P.Inbox.EMPTY:
                    break
        except RunnerError as exc:
            self._fail(exc)
            return call.inbox.get()  # what arrived before the failure, else the error itself
        except BaseException:  # KeyboardInterrupt in recv: the role must not leave with this thread
            self._pass_on(call, True)
            raise
        self._pass_on(call, False)
        return item

    def _pass_on(self, call: _Call, always: bool) -> None:
        """Give up the reader role: to the background reader while other calls expect frames, else to whoever
        waits next (``call``'s own next frame is read by its consumer's next wait, unless ``always``)."""
        with self._calls_lock:
            if self._error is None and any(always or cid != call.id for cid in self._open):
                self._start_background()
            else:
                self._reading = False

    def _start_background(self) -> None:
        """Hand the reader role to the background thread (calls lock held)."""
        self._reading = self._handoff = True
        if self._reader is None:
            self._reader = threading.Thread(target=self._read_loop, name="agent-reader", daemon=True)
            self._reader.start()
        else:
            self._wake.notify()

    def _read_loop(self) -> None:
        while True:
            with self._calls_lock:
                while not self._handoff:
                    if self._error is not None:
                        return
                    self._wake.wait()
            try:
                while True:
                    self._read_some()
                    with self._calls_lock:
                        if not self._open or self._error is not None:
                            self._reading = self._handoff = False
                            break
            except RunnerError as exc:  # a ProtocolError, a lost connection, or the agent's refusal
                self._fail(exc)
                return

    def _fail(self, error: RunnerError) -> None:
        """The connection is unusable: every pending call gets ``error`` (or the one that came first)."""
        with self._calls_lock:
            if self._error is None:
                self._error = error
            pending = list(self._calls.values())
            self._reading = self._handoff = False
            self._wake.notify_all()
        self._failed.set()
        for call in pending:
            call.inbox.put(self._error, force=True)

    def _dispatch(self, frame: P.Frame) -> None:
        if frame.call_id == 0:
            if frame.kind == P.WELCOME:
                self.agent_pid = P.parse_welcome(frame)["pid"]
                return
            if frame.kind == P.ERROR:
                raise P.parse_error(frame)
            raise P.ProtocolError(f"unexpected {P.KIND_NAMES[frame.kind]} during the handshake")
        with self._calls_lock:
            call = self._calls.get(frame.call_id)
            if frame.kind in (P.ERROR, P.EXIT) or frame.kind == P.REPLY and not self._open.get(frame.call_id):
                self._open.pop(frame.call_id, None)  # its last frame
        if call is not None:  # else the call has ended (e.g. output after an abandoned attach): dropped
            call.inbox.put(frame, len(frame.payload))

    @property
    def lost(self) -> bool:
        """The connection failed: every call on it fails; a long-lived caller (the API server) opens another."""
        return self._error is not None

    def close(self) -> None:
        with self._calls_lock:
            if self._error is None:
                self._error = VMError("the connection to the runner agent is closed")
            pending = list(self._calls.values())
            self._wake.notify_all()
        with contextlib.suppress(OSError, EOFError):
            self._chan.close()
        for call in pending:
            call.inbox.put(self._error, force=True)

    # -- calls
    def begin(self, method: str, args: dict, stdio: dict | None = None) -> _Call:
        """Send a REQUEST; the returned call receives its frames. Arguments are checked locally first,
        with the agent's own rules, so a bad call fails the same way without a round trip."""
        payload = P.encode_object(P.request_payload(method, args, stdio))
        req = P.parse_request(P.Frame(P.REQUEST, 1, payload))
        with self._calls_lock:
            if self._error is not None:
                raise self._error
            call = _Call(self._next_id, method)
            self._next_id += 1
            self._calls[call.id] = call
            self._open[call.id] = req.method.kind == P.ATTACH and req.attached
        try:
            self._send(P.encode(P.REQUEST, call.id, payload))
        except RunnerError:
            with self._calls_lock:
                self._open.pop(call.id, None)
            self.end(call)
            raise
        return call

    def end(self, call: _Call) -> None:
        with self._calls_lock:
            self._calls.pop(call.id, None)
        call.inbox.close()

    def next_frame(self, call: _Call, block: bool = True) -> P.Frame | None:
        """The call's next frame (None if not ``block`` and none waits); raises on a lost connection."""
        item = call.inbox.get(block=False)
        if item is P.Inbox.EMPTY:
            if not block:  # the caller polls between sends (an upload): someone must read meanwhile
                with self._calls_lock:
                    if not self._reading and self._error is None:
                        self._start_background()
                return None
            while item is P.Inbox.EMPTY:
                item = self._read_for(call) if self._lead() else call.inbox.get()
        if item is None:
            raise self._error or self._lost("the call was closed")
        if isinstance(item, RunnerError):
            raise item
        return item

    def send_frame(self, data: bytes) -> None:
        self._send(data)

    def note_took(self, method: str, frame: P.Frame) -> None:
        """For the VM benchmark (runner.bench.vm): the seconds the agent reported spending on a finished call
        (REPLY/EXIT ``took``), appended as a JSON line to the file named by ``$RUNNER_GUEST_TIMES``, so that the
        CLI + transport share of a CLI call is its wall time minus the sum of its lines. Nothing otherwise."""
        path = os.environ.get(GUEST_TIMES_ENV)
        if not path:
            return
        took = frame.json().get("took")
        if isinstance(took, (int, float)) and not isinstance(took, bool):
            with contextlib.suppress(OSError), open(path, "a") as f:
                f.write(json.dumps({"method": method, "took": float(took)}) + "\n")

    def call(self, method: str, args: dict | None = None, progress: ProgressFn | None = None) -> Any:
        """A plain (or progress-reporting) call: its result, or the agent's error raised here unchanged."""
        call = self.begin(method, args or {})
        try:
            return self.finish(call, progress)
        finally:
            self.end(call)

    def finish(self, call: _Call, progress: ProgressFn | None = None) -> Any:
        """Wait for the call's REPLY, delivering PROGRESS to ``progress`` in this thread."""
        while True:
            frame = self.next_frame(call)
            if frame.kind == P.REPLY:
                self.note_took(call.method, frame)
                return _checked_result(call.method, P.parse_reply(frame)[0])
            if frame.kind == P.ERROR:
                raise P.parse_error(frame)
            if frame.kind == P.PROGRESS and progress is not None:
                progress(frame.json())
            elif frame.kind != P.PROGRESS:
                raise P.ProtocolError(f"unexpected {P.KIND_NAMES[frame.kind]} for {call.method}")


def _checked_result(method: str, result: Any) -> Any:
    """The result, if its JSON type is what the method table promises for ``method`` (the guest is not
    trusted)."""
    expected = P.METHODS[method].result
    if not isinstance(result, expected) or isinstance(result, bool) and expected is int:
        raise P.ProtocolError(f"{method} returned a {type(result).__name__}")
    return result


class RemoteProcess:
    """The :class:`runner.stdio.ProcessHandle` of an attached container in the guest.

    A pump thread writes the container's output to the local fds as it arrives, until EXIT; a stdin thread
    sends what the local stdin fd yields and, at its end, EOF (the half-close). ``wait`` only waits, so a
    signal handler calling :meth:`resize` or :meth:`signal` meanwhile never contends with output.
    """

    def __init__(self, client: AgentClient, call: _Call, container_id: str, stdio: Stdio):
        self.container_id = container_id
        self._client, self._call, self._stdio = client, call, stdio
        self._done = threading.Event()
        self._code: int | None = None
        self._error: RunnerError | None = None
        self._sinks = {P.STDOUT: stdio.stdout, P.STDERR: stdio.stderr}
        self.ended: str | None = None  # an attach's end (runner.engine.attach_client), from its EXIT
        threading.Thread(target=self._pump, name="attach-output", daemon=True).start()
        if stdio.stdin is not None:
            threading.Thread(target=self._feed, name="attach-stdin", daemon=True).start()

    def _pump(self) -> None:
        try:
            while True:
                frame = self._client.next_frame(self._call)
                if frame.kind == P.DATA:
                    self._write(frame.stream, frame.payload)
                elif frame.kind == P.EXIT:
                    self._code = P.parse_exit(frame)
                    self.ended = P.parse_ended(frame)
                    self._client.note_took(self._call.method, frame)
                    return
                elif frame.kind == P.ERROR:
                    self._error = P.parse_error(frame)
                    return
                elif frame.kind != P.EOF:
                    raise P.ProtocolError(f"unexpected {P.KIND_NAMES[frame.kind]} for an attached process")
        except RunnerError as exc:
            self._error = exc
        finally:
            self._client.end(self._call)
            self._done.set()

    def _write(self, stream: int, data: bytes) -> None:
        fd = self._sinks.get(stream)
        if fd is None:
            return
        try:
            write_all(fd, data)
        except OSError:
            self._sinks[stream] = None  # our reader went away (`| head`): drop this output, as the shim does

    def _feed(self) -> None:
        while not self._done.is_set():
            try:
                data = os.read(self._stdio.stdin, P.CHUNK)
            except OSError as exc:
                if exc.errno == errno.EINTR:
                    continue
                data = b""  # a terminal that went away reads as EIO: treat as end of input
            if self._done.is_set():
                return
            with contextlib.suppress(RunnerError):
                if data:
                    self._client.send_frame(P.encode(P.DATA, self._call.id, data, P.STDIN))
                else:
                    self._client.send_frame(P.encode(P.EOF, self._call.id, stream=P.STDIN))
            if not data:
                return

    def wait(self) -> int:
        while not self._done.wait(0.5):  # short waits keep the main thread responsive to signals
            pass
        if self._error is not None:
            raise self._error
        return self._code

    def resize(self, size: TermSize) -> None:
        self._control(P.RESIZE, {"rows": size.rows, "cols": size.cols})

    def signal(self, signum: int) -> None:
        # By name: SIGUSR1 is 10 on Linux but 30 on macOS; the agent maps the name back to a number.
        name = signals.Signals(signum).name[3:]
        self._control(P.SIGNAL, {"signal": name})

    def detach(self) -> None:
        """End an attach (runner.engine.attach_client) whose client went away, as closing its socket would
        natively: the pseudo-signal DETACH, which the agent gives to the handle's ``detach``."""
        self._control(P.SIGNAL, {"signal": "DETACH"})

    def _control(self, kind: int, msg: dict) -> None:
        if not self._done.is_set():
            with contextlib.suppress(RunnerError):  # the process ended meanwhile: nothing left to tell
                self._client.send_frame(P.encode_json(kind, self._call.id, msg))
