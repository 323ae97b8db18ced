"""The resident agent: serves the Engine inside the VM to the host's runner (standard library only).

Started once per VM boot by the host (``runner.vm.ship``), from the runner code the host shipped::

    python3 -m runner.agent.server --guest --port P --token-file /runner/config.json --root /var/lib/runner --daemon

or by the guest's init before its snapshot point, when the host sent the code along (vmimage/init).

It listens on the guest's loopback only (the host reaches it through an SSH ``direct-tcpip`` channel) and
still demands the token in the handshake, because a ``--network host`` container shares that loopback. One
thread per connection reads frames (see :mod:`runner.agent.protocol` for the diagram); each request runs in
its own thread, so a blocking call (``wait``, ``logs -f``, an attached ``run``) never stalls the frames of
another; only the few that are cheap and cannot block (``ping``, ``images``) are answered by the connection's
thread itself. Threads are kept for reuse (:class:`Workers`): starting one costs ~4 ms under TCG. Methods are
served generically: the whitelist in ``protocol.METHODS`` maps a name to the Engine method of the same name;
JSON arguments are passed through; stdio becomes pipes whose far ends are relayed to and from frames; tar
streams and progress become file objects and callbacks backed by frames.

When a connection drops, attached containers run on detached, as Docker's do when its client dies: stdin is
closed (Docker's StdinOnce), output is no longer relayed (the engine's shim drops a sink it cannot write to
and keeps logging), and the exit status is still collected so nothing is left a zombie. A build, though, is
cancelled (its :class:`runner.stdio.Cancel` is set: the running step's container is killed, nothing is tagged),
as dockerd cancels a classic build whose client left; so is a build the client sends a SIGNAL.

With ``--daemon`` the process detaches (double fork, new session), writes ``/run/runner/agent.pid`` (JSON:
pid, version, port) and logs to ``/run/runner/agent.log``; the parent exits 0 only once the socket listens and
the engine is loaded, so whoever started it can connect right away (or gets the error on stderr).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import gc
import hmac
import io
import json
import logging
import os
import re
import secrets
import selectors
import signal as signals
import socket
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Callable

from runner import procs
from runner.agent import protocol as P
from runner.stdio import Cancel, Stdio, TermSize, write_all
from runner.errors import RunnerError, VMError

RUN_DIR = "/run/runner"
INBOX_LIMIT = 4 * 1024 * 1024  # unconsumed stdin/blob bytes per call before the connection is back-pressured
DRAIN_TIMEOUT = 10.0  # after an exit, how long output may still trickle from a process's leftover children

log = logging.getLogger("runner.agent")


def read_token(path: str) -> str:
    """The agent token: a file holding the hex token, or the guest's ``/runner/config.json`` (``agent_token``)."""
    text = Path(path).read_text()
    with contextlib.suppress(ValueError):
        data = json.loads(text)
        if isinstance(data, dict):
            text = str(data.get("agent_token", ""))
    return P.check_token(text)


class BootToken:
    """This boot's agent token, read again for each connection (call the object).

    An agent started before the guest's snapshot point (vmimage/init, runner.vm.snapshot) lives on in every
    boot resumed from that state, and each such boot brings its own token (the GO line rewrites
    ``/runner/config.json``). A changed token therefore means a new boot of a saved state, so the kernel's
    CRNG is reseeded right then, before the connection draws its nonce: otherwise every resume would replay
    the RNG state saved in the snapshot."""

    def __init__(self, path: str, on_new_boot: Callable[[], None] = lambda: None):
        self.path = path
        self.current = read_token(path)
        self.on_new_boot = on_new_boot
        self._lock = threading.Lock()  # two first connections of a boot: one new boot, not two

    def __call__(self) -> str:
        try:
            token = read_token(self.path)
        except (OSError, VMError):  # never lose the agent to a config file being replaced right now
            return self.current
        with self._lock:
            if token != self.current:
                self.current = token
                _reseed_kernel_rng()
                self.on_new_boot()
        return token


def new_boot_nonce() -> None:
    """A new boot of a saved guest state: a fresh nonce for the engine's boot id (runner.engine.state.BOOT_NONCE),
    written before this boot's first request. Such boots share the kernel's boot_id and reuse the pids and
    start times of the processes of an earlier boot from the same state: without it a container of a killed
    boot could pass for alive (and a restart policy would not start it again)."""
    from runner.engine.state import BOOT_NONCE
    from runner.procs import write_atomic
    try:
        os.makedirs(os.path.dirname(BOOT_NONCE), mode=0o700, exist_ok=True)
        write_atomic(BOOT_NONCE, os.urandom(16).hex(), 0o644, durable=False)
    except OSError as exc:
        log.warning("could not write the boot nonce: %s", exc)


def bring_up_default_network(engine: Any, root: str, ready_marker: str) -> None:
    """In the background, bring up the default bridge network (bridge device, NAT), as dockerd makes docker0
    when it starts, instead of in the first ``run`` after a boot. It waits for the guest's init to say it is
    ready (``ready_marker``, written after READY: the work must not delay the host's SSH login) and acts only
    if the data disk holding the network's state is mounted at ``root``."""

    def run() -> None:
        deadline = time.monotonic() + 600
        while not os.path.exists(ready_marker):
            if time.monotonic() > deadline:
                return
            time.sleep(0.05)
        if not os.path.ismount(root):
            return
        try:
            from runner.engine import network

            network.Networks(engine).ensure(network.DEFAULT_NETWORK)
        except Exception as exc:  # the first container that needs it will report the problem
            log.warning("could not bring up the default network: %s", exc)
        try:  # as dockerd at its start: what a restart policy keeps running runs again (runner.engine.restart)
            started = engine.restore()
            if started:
                log.info("restart policies: started %d container(s) again", len(started))
        except Exception as exc:
            log.warning("could not restore containers with restart policies: %s", exc)

    threading.Thread(target=run, name="default-network", daemon=True).start()


class LazyEngine:
    """The Engine, built on first use. The agent may start before the guest's data disk is mounted at the
    engine's root (the snapshot point): building it then would create its state directories on the tmpfs the
    mount hides. The imports, the slow part under TCG, are done at start (see :data:`WARM_IMPORTS`)."""

    def __init__(self, root: str, publish_address: str | None = None):
        self._root = root
        self._publish_address = publish_address
        self._engine: Any = None
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        if self._engine is None:
            with self._lock:
                if self._engine is None:
                    from runner.engine.engine import Engine

                    self._engine = Engine(self._root, publish_address=self._publish_address)
        return getattr(self._engine, name)


# What a container's life imports lazily: imported when a guest agent starts, so that the first `run` of a boot
# (or of a resumed snapshot, where the agent started long ago) does not pay for them.
WARM_IMPORTS = ("runner.engine.engine", "runner.engine.shim", "runner.engine.network", "runner.engine.portproxy",
                "runner.engine.logs", "runner.engine.execution", "runner.engine.runtime.builtin",
                "runner.engine.runtime.cgroups", "runner.engine.runtime.oci", "runner.images.store",
                "runner.images.rootfs", "runner.images.reference", "runner.engine.views",
                "runner.engine.bundle")


GUEST_PUBLISH = "0.0.0.0"  # the guest's proxies listen where QEMU's host forwards arrive (runner.engine.network)


def _guest_environment(root: str) -> None:
    """The VM agent's settings (``--guest``): temp files stay on the data disk, because the guest's /tmp may be
    the host's /tmp shared over 9p (runner.vm.shares); the engine's modules are imported now. (Its port
    proxies listen on the guest's 0.0.0.0, where QEMU's host forwards arrive: see :data:`GUEST_PUBLISH`.)"""
    import importlib

    os.environ["TMPDIR"] = os.path.join(root, "tmp")
    for name in WARM_IMPORTS:
        importlib.import_module(name)
    # Everything loaded so far lives as long as the agent: out of the collector's sight, so no collection walks
    # it again, and a forked shim does not dirty (copy) those pages by touching their GC headers.
    gc.freeze()


def own_version(root: Path | None = None) -> str:
    """The version of the code this process runs: the same hash the host computes over what it shipped.

    The host unpacks each version into a directory named after that hash and marks it ``.complete`` only
    once the whole tree is written (``runner.vm.ship.start_script``), so such a directory's name is the
    answer; re-hashing every source file cost ~1.3 s of the agent's start under TCG. Anywhere else (tests, a
    tree run in place) the files are hashed."""
    root = root or Path(__file__).resolve().parents[2]
    if re.fullmatch(r"[0-9a-f]{16}", root.name) and (root / ".complete").is_file():
        return root.name
    return P.version_of(P.collect_sources(root))


class Workers:
    """Threads that serve calls, kept for the next call once theirs ends.

    Why: under TCG starting a thread costs ~4 ms in the guest (clone, stack, TLS, all emulated), more than a
    whole round trip should. Each job still gets a thread of its own for as long as it runs, so a blocking call
    never waits for another; only the start is saved. A thread idle for ``idle_timeout`` exits, and at most
    ``max_idle`` wait, so a burst of calls does not leave a crowd of threads behind.
    """

    def __init__(self, idle_timeout: float = 60.0, max_idle: int = 16):
        self.idle_timeout = idle_timeout
        self.max_idle = max_idle
        self._lock = threading.Lock()
        self._idle: list[_Worker] = []

    def submit(self, job: Any, name: str) -> None:
        """Run ``job()`` in a thread of its own: an idle one if any waits, else a new one."""
        with self._lock:
            worker = self._idle.pop() if self._idle else None
        if worker is None:
            threading.Thread(target=self._work, args=(job, name), name=name, daemon=True).start()
        else:
            worker.job, worker.name = job, name
            worker.wake.release()

    def _work(self, job: Any, name: str) -> None:
        me = _Worker()
        while True:
            threading.current_thread().name = name
            try:
                job()
            except BaseException:  # jobs handle their own errors; a bug must not cost the pool this thread
                log.error("%s failed:\n%s", name, traceback.format_exc())
            job = me.job = None
            with self._lock:
                if len(self._idle) >= self.max_idle:
                    return
                self._idle.append(me)
            if not me.wake.acquire(timeout=self.idle_timeout):
                with self._lock:
                    if me in self._idle:  # nobody took us meanwhile: leave
                        self._idle.remove(me)
                        return
                me.wake.acquire()  # submit() popped us just as the wait timed out: the job is on its way
            job, name = me.job, me.name


class _Worker:
    """An idle worker's mailbox: ``submit`` puts the job there and releases ``wake``."""

    def __init__(self):
        self.job: Any = None
        self.name = ""
        self.wake = threading.Lock()
        self.wake.acquire()


_PONG = P.encode_object({"result": None})  # ping's reply, encoded once


class Connection:
    """One client connection: the handshake, then frames dispatched to calls by id."""

    # Served in the connection's own thread, without a hand-off: methods that are cheap and can never block (no
    # lock, no network, no waiting for a container). A call that could block runs in a worker, because it would
    # stall every later frame of this connection (stdin, signals, other calls) while it waits.
    INLINE = frozenset({"images"})  # and ping, answered before a Call is even made
    workers = Workers()  # shared by every connection of the process

    def __init__(self, sock: socket.socket, engine: Any, version: str, token: str):
        self.sock = sock
        self.engine = engine
        self.version = version
        self.token = token
        self.calls: dict[int, Call] = {}
        self.closed = False
        self._send_lock = threading.Lock()
        self._calls_lock = threading.Lock()

    def send(self, data: bytes) -> bool:
        """Send one encoded frame; False once the client is gone (callers then stop producing)."""
        with self._send_lock:
            if self.closed:
                return False
            try:
                self.sock.sendall(data)
                return True
            except OSError:
                self.closed = True
                return False

    def serve(self) -> None:
        peer = f"connection {self.sock.fileno()}"
        try:
            self._serve()
        except P.ProtocolError as exc:
            log.warning("%s: %s", peer, exc)
        except OSError as exc:
            log.info("%s: connection error: %s", peer, exc)
        finally:
            with self._send_lock:
                self.closed = True
            with contextlib.suppress(OSError):
                self.sock.close()
            with self._calls_lock:
                calls = list(self.calls.values())
            for call in calls:
                call.disconnected()

    def _serve(self) -> None:
        nonce = secrets.token_bytes(P.NONCE_BYTES)
        self.send(P.encode_json(P.CHALLENGE, 0, {"version": self.version, "nonce": nonce.hex()}))
        decoder = P.Decoder(P.FROM_CLIENT)
        authed = False
        # One buffer for every recv: a fresh 256 KiB bytes object per read, shrunk to the few bytes of a frame,
        # cost up to ~0.3 ms of a round trip in the guest under TCG (measured against this, interleaved).
        buf = bytearray(256 * 1024)
        view = memoryview(buf)
        while True:
            n = self.sock.recv_into(buf)
            if not n:
                return
            for frame in decoder.feed(view[:n]):
                if not authed:
                    if frame.kind != P.HELLO:
                        raise P.ProtocolError("the first frame must be HELLO")
                    if not self._handshake(frame, nonce):
                        return
                    authed = True
                elif frame.kind == P.HELLO:
                    raise P.ProtocolError("HELLO sent twice")
                elif frame.kind == P.REQUEST:
                    self._request(frame)
                else:
                    with self._calls_lock:
                        call = self.calls.get(frame.call_id)
                    if call is not None:  # frames for a call that has ended are dropped (see the diagram)
                        call.frame(frame)

    def _handshake(self, frame: P.Frame, nonce: bytes) -> bool:
        version, proof = P.parse_hello(frame)
        expected = P.auth_proof(self.token, nonce, self.version)
        # compare_digest: the time taken must not tell an attacker how much of a guessed proof was right.
        if not hmac.compare_digest(proof, expected):
            log.warning("refused a client with a wrong agent token")
            self._refuse(VMError("the runner agent refused the connection: wrong agent token",
                                 hint="the machine's files do not match the running VM; `runner vm stop` "
                                      "and start it again"))
            return False
        if version != self.version:
            self._refuse(VMError(f"the runner agent in the VM runs code version {self.version}, but the "
                                 f"client is version {version}",
                                 hint="runner restarts the agent with its own code automatically; if this "
                                      "persists, run `runner vm stop` and retry"))
            return False
        self.send(P.encode_json(P.WELCOME, 0, {"version": self.version, "pid": os.getpid()}))
        return True

    def _refuse(self, error: RunnerError) -> None:
        self.send(P.encode_json(P.ERROR, 0, error.to_dict()))
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_WR)

    def _request(self, frame: P.Frame) -> None:
        cid = frame.call_id
        with self._calls_lock:
            if cid == 0 or cid in self.calls:
                raise P.ProtocolError(f"call id {cid} is zero or already in use")
        try:
            req = P.parse_request(frame)
        except RunnerError as exc:
            self.send(P.encode_json(P.ERROR, cid, exc.to_dict()))
            return
        if req.method.name == "ping":  # the bare round trip: the least work a call can cost (a constant reply)
            self.send(P.encode(P.REPLY, cid, _PONG))
            return
        call = Call(self, cid, req)
        if req.method.name in self.INLINE:  # never registered: no frame of the client's may follow a plain call
            call.run()
            return
        with self._calls_lock:
            self.calls[cid] = call
        self.workers.submit(call.run, f"call-{cid}-{req.method.name}")

    def forget(self, call: "Call") -> None:
        with self._calls_lock:
            self.calls.pop(call.id, None)


class Call:
    """One request being served: runs the engine method and owns its pipes, inbox and process handle."""

    def __init__(self, conn: Connection, call_id: int, req: P.Request):
        self.conn = conn
        self.id = call_id
        self.req = req
        # stdin (attached calls with stdin) or the uploaded tar (load, import): bytes from the client
        self.inbox = P.Inbox(INBOX_LIMIT) if req.stdin or req.method.kind in P.UPLOAD_KINDS else None
        self.handle: Any = None
        self.cancel = Cancel() if req.method.cancellable else None  # set by a SIGNAL or a dropped connection
        self._early: list[P.Frame] = []  # RESIZE/SIGNAL that arrived before the process existed
        self._lock = threading.Lock()

    # -- frames from the connection thread
    def frame(self, frame: P.Frame) -> None:
        if frame.kind in (P.DATA, P.EOF):
            expected = P.BLOB if self.req.method.kind in P.UPLOAD_KINDS else P.STDIN
            if self.inbox is None or frame.stream != expected:
                raise P.ProtocolError(f"{P.KIND_NAMES[frame.kind]} on stream {frame.stream} for "
                                      f"{self.req.method.name}")
            self.inbox.put(frame.payload if frame.kind == P.DATA else None, len(frame.payload))
            return
        if self.cancel is not None and frame.kind == P.SIGNAL:
            P.parse_signal(frame)
            log.info("call %d (%s) cancelled by its client", self.id, self.req.method.name)
            Connection.workers.submit(self.cancel.set, f"cancel-{self.id}")  # kills a step: not in this thread
            return
        if self.req.method.kind != P.ATTACH:
            raise P.ProtocolError(f"{P.KIND_NAMES[frame.kind]} for {self.req.method.name}")
        with self._lock:
            if self.handle is None:
                self._early.append(frame)
                return
        self._control(frame)

    def _control(self, frame: P.Frame) -> None:
        if frame.kind == P.RESIZE:
            rows, cols = P.parse_resize(frame)
            self.handle.resize(TermSize(rows, cols))
        else:  # SIGNAL: by name, because signal numbers differ between the host's OS and Linux
            name = P.parse_signal(frame)
            if name == P.DETACH:  # not a signal: an attach's client went away (runner.engine.attach_client)
                detach = getattr(self.handle, "detach", None)
                if detach is not None:
                    detach()
                return
            signum = getattr(signals, "SIG" + name, None)
            if isinstance(signum, signals.Signals):
                self.handle.signal(int(signum))
            else:
                log.warning("ignored unknown signal %s", name)

    def disconnected(self) -> None:
        if self.inbox is not None:
            self.inbox.fail()  # an upload ends in an error, stdin in EOF (Docker's StdinOnce)
        if self.cancel is not None:  # a build whose client left stops now, as dockerd's does
            log.info("call %d (%s) cancelled: its client went away", self.id, self.req.method.name)
            self.cancel.set()

    # -- the call's own thread
    def took(self) -> float:
        """Seconds this call has spent in the agent so far: sent with REPLY and EXIT ("took"), so the host
        can tell time spent in the guest from time spent in the CLI and the transport."""
        return round(time.monotonic() - self.began, 4)

    def run(self) -> None:
        self.began = time.monotonic()
        try:
            kind = self.req.method.kind
            if kind == P.ATTACH:
                self._attach()
            elif kind == P.OUTPUT:
                self._output()
            else:
                result = self._simple()
                self.conn.send(P.encode_json(P.REPLY, self.id, {"result": result, "took": self.took()}))
        except RunnerError as exc:
            self.conn.send(P.encode_json(P.ERROR, self.id, exc.to_dict()))
        except Exception as exc:  # a bug: logged in full here, reported in one line to the user
            from runner.diskfull import disk_full_error, is_full
            if is_full(exc):  # the guest's data disk is full: the same one line as natively
                where = exc.filename if isinstance(exc.filename, str) else "/"
                err = disk_full_error(where, f"serving {self.req.method.name}")
                self.conn.send(P.encode_json(P.ERROR, self.id, err.to_dict()))
                return
            log.error("call %s failed:\n%s", self.req.method.name, traceback.format_exc())
            err = RunnerError(f"the runner agent failed in {self.req.method.name}: {type(exc).__name__}: {exc}",
                              hint=f"the traceback is in {RUN_DIR}/agent.log in the VM (`runner vm ssh`)")
            self.conn.send(P.encode_json(P.ERROR, self.id, err.to_dict()))
        finally:
            if self.inbox is not None:
                self.inbox.close()
            self.conn.forget(self)

    def _method(self):
        return getattr(self.conn.engine, self.req.method.name)

    def _simple(self) -> Any:
        kind, args = self.req.method.kind, dict(self.req.args)
        if self.cancel is not None:
            args["cancel"] = self.cancel
        if kind == P.PROGRESS_CALL:
            args["progress"] = self._progress
        elif kind in P.UPLOAD_KINDS:
            if kind == P.UPLOAD_PROGRESS:
                args["progress"] = self._progress
            return self._method()(io.BufferedReader(InboxReader(self.inbox), P.CHUNK), **args)
        elif kind == P.DOWNLOAD:
            out = io.BufferedWriter(FrameWriter(self.conn, self.id), P.CHUNK)
            self._method()(stream=out, **args)
            out.flush()
            if not self.conn.send(P.encode(P.EOF, self.id, stream=P.BLOB)):
                raise VMError("the client went away during save")
            return None
        return self._method()(**args)

    def _progress(self, event: dict) -> None:
        self.conn.send(P.encode_json(P.PROGRESS, self.id, event))

    def _output(self) -> None:
        """``logs``: the engine writes into pipes, a relay turns them into frames, then REPLY."""
        relay = OutputRelay(self.conn, self.id)
        relay.start()
        try:
            self._method()(stdio=relay.stdio(None), **self.req.args)
        finally:
            relay.finish()
        self.conn.send(P.encode_json(P.REPLY, self.id, {"result": None}))

    def _attach(self) -> None:
        args = dict(self.req.args)
        size = args.pop("size", None)
        term = TermSize(size["rows"], size["cols"]) if size else None
        if not self.req.attached:  # run -d / start without -a: a plain call returning the id
            result = self._method()(stdio=None, size=term, **args)
            self.conn.send(P.encode_json(P.REPLY, self.id, {"result": result}))
            return
        relay = OutputRelay(self.conn, self.id)
        stdin_r = None
        try:
            if self.req.stdin:
                stdin_r, stdin_w = os.pipe2(os.O_CLOEXEC)
                Connection.workers.submit(lambda: self._feed_stdin(stdin_w), f"stdin-{self.id}")
            handle = self._method()(stdio=relay.stdio(stdin_r), size=term, **args)
            self.conn.send(P.encode_json(P.REPLY, self.id, {"result": {"container_id": handle.container_id},
                                                            "attached": True, "took": self.took()}))
            relay.start()
            with self._lock:
                self.handle = handle
                early, self._early = self._early, []
            for frame in early:
                self._control(frame)
            code = handle.wait()
        finally:
            # The caller owns the fds it lent the engine (as the CLI owns its 0/1/2 natively): close ours
            # only now, so the relay sees EOF once the container's side is gone too.
            if stdin_r is not None:
                os.close(stdin_r)
            if self.inbox is not None:
                self.inbox.fail()
            relay.finish(DRAIN_TIMEOUT)
        done = {"exit_code": code, "took": self.took()}
        if isinstance(getattr(handle, "ended", None), str):  # attach: how it ended (runner.engine.attach_client)
            done["ended"] = handle.ended
        self.conn.send(P.encode_json(P.EXIT, self.id, done))

    def _feed_stdin(self, fd: int) -> None:
        """Client stdin frames → the container's stdin pipe; EOF (or a drop) closes it: the half-close."""
        try:
            while (chunk := self.inbox.get()) is not None:
                write_all(fd, chunk)
        except OSError:
            pass  # the container closed its stdin: the rest is dropped, as a pipe would
        finally:
            self.inbox.close()
            os.close(fd)


class OutputRelay:
    """Pipes handed to the engine as stdout/stderr; once started, a thread turns what arrives into DATA frames
    and then EOF per stream.

    Attached calls start it only after their REPLY, so the client always sees the REPLY before any output
    (the pipes hold what the container writes meanwhile). If the client is gone the read ends are closed at
    once: the writer (the engine's shim or exec'd process) gets EPIPE and drops this sink, while the container
    itself runs on and keeps logging.
    """

    def __init__(self, conn: Connection, call_id: int):
        self.conn, self.id = conn, call_id
        self._out_r, self._out_w = os.pipe2(os.O_CLOEXEC)
        self._err_r, self._err_w = os.pipe2(os.O_CLOEXEC)
        self._started = False
        self._done = threading.Event()

    def stdio(self, stdin: int | None) -> Stdio:
        return Stdio(stdin, self._out_w, self._err_w)

    def start(self) -> None:
        self._started = True
        Connection.workers.submit(self._relay, f"relay-{self.id}")

    def finish(self, timeout: float | None = None) -> None:
        """Close our write ends and wait until everything written has been sent (or ``timeout`` passes)."""
        for fd in (self._out_w, self._err_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        if self._started:
            self._done.wait(timeout)
        else:  # never started: the call failed before any output could be relayed
            os.close(self._out_r)
            os.close(self._err_r)

    def _relay(self) -> None:
        try:
            self._run()
        finally:
            self._done.set()

    def _run(self) -> None:
        sel = selectors.DefaultSelector()
        streams = {self._out_r: P.STDOUT, self._err_r: P.STDERR}
        for fd in streams:
            sel.register(fd, selectors.EVENT_READ)
        try:
            while streams:
                for key, _ in sel.select():
                    data = os.read(key.fd, P.CHUNK)
                    stream = streams[key.fd]
                    if data:
                        frame = P.encode(P.DATA, self.id, data, stream)
                    else:
                        sel.unregister(key.fd)
                        os.close(key.fd)
                        del streams[key.fd]
                        frame = P.encode(P.EOF, self.id, stream=stream)
                    if not self.conn.send(frame):
                        return
        finally:
            sel.close()
            for fd in streams:
                os.close(fd)


class InboxReader(io.RawIOBase):
    """The uploaded tar stream as a readable file for the engine (``load``, ``import_image``)."""

    def __init__(self, inbox: P.Inbox):
        self._inbox = inbox
        self._buf = b""
        self._eof = False

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        while not self._buf and not self._eof:
            chunk = self._inbox.get()
            if chunk is None:
                if self._inbox.failed:
                    raise VMError("the client went away during the upload")
                self._eof = True
            else:
                self._buf = chunk
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n


class FrameWriter(io.RawIOBase):
    """A writable file for the engine (``save``) whose bytes leave as DATA frames on the blob stream."""

    def __init__(self, conn: Connection, call_id: int):
        self._conn, self._id = conn, call_id

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        data = bytes(b)
        for i in range(0, len(data), P.CHUNK):
            if not self._conn.send(P.encode(P.DATA, self._id, data[i:i + P.CHUNK], P.BLOB)):
                raise BrokenPipeError("the client went away during save")
        return len(data)


# ---------------------------------------------------------------------------------------------- process

def serve_forever(listener: socket.socket, engine: Any, version: str, token: Callable[[], str]) -> None:
    """Accept connections for ever; ``token()`` gives the token each new connection must prove (a
    :class:`BootToken`)."""
    while True:
        sock, _ = listener.accept()
        # Frames are small and interactive (a keystroke, a prompt): Nagle's delay would add up to 40 ms each.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = Connection(sock, engine, version, token())
        Connection.workers.submit(conn.serve, "conn")  # a thread of its own, but one that served before


class RunDir:
    """The daemon's files in ``/run/runner`` (tmpfs: a reboot forgets them, as it forgets the agent)."""

    def __init__(self, path: str):
        self.path = path
        self.pid_file = os.path.join(path, "agent.pid")
        self.log_file = os.path.join(path, "agent.log")
        self.lock_file = os.path.join(path, "agent.lock")
        self.ready_marker = os.path.join(path, "ready")  # written by the guest's init once it said READY

    def lock(self) -> procs.FileLock:
        """Serialise starts: two hosts calls shipping at once must end with one agent, not two racing ones."""
        os.makedirs(self.path, mode=0o700, exist_ok=True)
        return procs.FileLock(self.lock_file).acquire()

    def running_agent(self) -> dict | None:
        """The pid file's record if it names a live agent process (a recycled pid is not trusted)."""
        try:
            with open(self.pid_file) as f:
                rec = json.load(f)
            cmdline = procs.cmdline(int(rec["pid"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return rec if "runner.agent.server" in (cmdline or "") else None

    def write_pid(self, version: str, port: int) -> None:
        procs.write_atomic(self.pid_file, json.dumps({"pid": os.getpid(), "version": version, "port": port}),
                           0o644, durable=False)

    def remove_pid(self) -> None:
        if (self.running_agent() or {}).get("pid") == os.getpid():
            with contextlib.suppress(OSError):
                os.unlink(self.pid_file)


def _listen(port: int, patience: float = 10.0) -> socket.socket:
    """The agent's listening socket. An agent just stopped may still have the port for a moment: a shim it
    was forking holds a copy of its socket until the shim closes the fds it inherited (under TCG that takes
    long enough to be hit), so a busy port is retried for a while before it is an error."""
    deadline = time.monotonic() + patience
    while True:
        try:
            return socket.create_server(("127.0.0.1", port))
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE or time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def _stop_agent(pid: int, timeout: float = 5.0) -> None:
    """Stop an agent of another version: TERM, then KILL. Its containers live on in their shims."""
    for sig in (signals.SIGTERM, signals.SIGKILL):
        procs.kill(pid, sig)
        deadline = time.monotonic() + timeout
        while procs.running(pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        if not procs.running(pid):
            return


def _daemonize(log_file: str) -> None:
    """Double fork + setsid: the agent must outlive the SSH session that started it and own no terminal."""
    if os.fork() != 0:
        os._exit(0)
    os.setsid()
    if os.fork() != 0:
        os._exit(0)
    logfd = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(logfd, 1)
    os.dup2(logfd, 2)
    os.close(devnull)
    os.close(logfd)
    os.chdir("/")


def _reseed_kernel_rng() -> None:
    """Make the kernel's CRNG reseed now (RNDRESEEDCRNG, root only). A VM resumed from a snapshot
    (runner.vm.snapshot) starts with the CRNG state saved in it; the guest's init has mixed the host's fresh
    seed into the input pool, but the kernel would only fold it in at its next periodic reseed. The agent
    draws nonces from it, so it forces that reseed first. Harmless on a normal boot; ignored off Linux."""
    try:
        import fcntl

        fd = os.open("/dev/urandom", os.O_WRONLY)
        try:
            fcntl.ioctl(fd, 0x5207)  # RNDRESEEDCRNG = _IO('R', 0x07)
        finally:
            os.close(fd)
    except (OSError, ImportError):
        pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m runner.agent.server", description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, required=True, help="TCP port on 127.0.0.1")
    parser.add_argument("--token-file", required=True, help="hex token file, or the guest's config.json")
    parser.add_argument("--root", required=True, help="the engine's state root")
    parser.add_argument("--daemon", action="store_true",
                        help="detach, keep one agent per VM (reuse one of this version, replace another)")
    parser.add_argument("--run-dir", default=RUN_DIR, help="pid, log and lock files of --daemon")
    parser.add_argument("--guest", action="store_true",
                        help="the VM's agent: publish ports on 0.0.0.0, temp files under ROOT/tmp, warm imports")
    args = parser.parse_args(argv)
    if not 1 <= args.port <= 65535:
        parser.error("--port must be 1-65535")
    run_dir = RunDir(args.run_dir)
    ready_w = lock = None
    try:
        token = BootToken(args.token_file,
                          lambda: (new_boot_nonce() if args.guest else None,
                                   bring_up_default_network(engine, args.root, run_dir.ready_marker)))
        version = own_version()
        if args.daemon:
            lock = run_dir.lock()  # held (by the daemon too, after the fork) until it is ready
            current = run_dir.running_agent()
            if current and current.get("version") == version and current.get("port") == args.port:
                print(f"ready pid={current['pid']} version={version} (already running)")
                return 0
            if current:
                _stop_agent(int(current["pid"]))
        # Guest loopback only: the host comes in through SSH's direct-tcpip, never over the network.
        listener = _listen(args.port)
        if args.daemon:
            ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
            if os.fork() != 0:  # the starter: wait until the daemon reports ready (or its error)
                os.close(ready_w)
                with os.fdopen(ready_r, "rb") as f:
                    status = f.read().decode(errors="replace").strip()
                print(status or "runner agent: the daemon died while starting",
                      file=sys.stdout if status.startswith("ready") else sys.stderr)
                return 0 if status.startswith("ready") else 1
            os.close(ready_r)
            _daemonize(run_dir.log_file)
        logging.basicConfig(level=logging.INFO, format="%(asctime)s agent[%(process)d] %(levelname)s %(message)s")
        if args.guest:  # after the fork: the starter need not pay for the imports
            _guest_environment(args.root)
        engine = LazyEngine(args.root, GUEST_PUBLISH if args.guest else None)
        if args.guest:
            bring_up_default_network(engine, args.root, run_dir.ready_marker)
        if args.daemon:
            run_dir.write_pid(version, args.port)
    except Exception as exc:  # incl. an engine that fails to import: whoever started us must hear about it
        detail = str(exc) if isinstance(exc, (RunnerError, OSError)) else f"{type(exc).__name__}: {exc}"
        if ready_w is not None:
            os.write(ready_w, f"runner agent: cannot start: {detail}".encode())
            os._exit(1)
        print(f"runner agent: cannot start: {detail}", file=sys.stderr)
        return 1
    _reseed_kernel_rng()
    log.info("listening on 127.0.0.1:%d, version %s, root %s", args.port, version, args.root)
    if ready_w is not None:
        os.write(ready_w, f"ready pid={os.getpid()} version={version}".encode())
        os.close(ready_w)
        lock.release()

    def terminate(*_: Any) -> None:
        # Leave at once: running containers belong to their shims, which outlive the agent.
        if args.daemon:
            run_dir.remove_pid()
        os._exit(0)

    signals.signal(signals.SIGTERM, terminate)
    serve_forever(listener, engine, version, token)
    return 0


if __name__ == "__main__":
    sys.exit(main())
