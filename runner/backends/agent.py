"""The Backend as agent calls: every method generated from the agent protocol's one method table.

Why generated: the engine's methods are JSON in, JSON out (see :mod:`runner.backends.base`), so what a call
sends is fully described by :data:`runner.agent.protocol.METHODS` (name, parameters in signature order,
how data moves, result type). This module has one function per *kind* of call (plain, progress, attached,
output, upload, download), never one per method: adding an engine method means adding it to the engine and
to the table. Optional arguments the caller leaves out are not sent, so their defaults live in the engine
alone.

It knows nothing about VMs: :mod:`runner.backends.vm` adds where the connection comes from (starting the
machine and the agent) and what the host adds around the engine's answers.
"""

from __future__ import annotations

import threading
from typing import IO, Any, Callable

from runner.agent import protocol as P
from runner.agent.client import AgentClient, RemoteProcess
from runner.backends.base import Features
from runner.errors import RunnerError
from runner.stdio import Stdio, TermSize, write_all

_MISSING = object()


class AgentBackend:
    """The Backend protocol as agent calls. ``connect`` returns a fresh :class:`AgentClient` (called once,
    lazily); subclasses add where that connection comes from. The engine methods are added below the class,
    from the method table."""

    name = "agent"
    features = Features(bind_mounts=False, host_network=True, published_ports=False)

    def __init__(self, connect: Callable[[], AgentClient]):
        self._connect = connect
        self._client: AgentClient | None = None
        self._connecting = threading.Lock()

    @property
    def client(self) -> AgentClient:
        """The one connection, made on first use. Calls from many threads (the API server's) share it: the
        client multiplexes calls by id; the lock only keeps two first calls from opening two connections. A
        connection that was lost (the machine restarted) is replaced on the next call."""
        client = self._client
        if client is None or client.lost:
            with self._connecting:
                if self._client is None or self._client.lost:
                    if self._client is not None:
                        self._client.close()
                    self._client = self._connect()
                client = self._client
        return client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    # -- one function per kind of call
    def _plain(self, method: str, args: dict, local: dict) -> Any:
        return self.client.call(method, args, local.get("progress"))

    def _attach(self, method: str, args: dict, local: dict) -> Any:
        stdio: Stdio | None = local["stdio"]
        size: TermSize | None = args.get("size")
        if size is not None:
            args["size"] = {"rows": size.rows, "cols": size.cols}
        if stdio is None:
            return self.client.call(method, args)
        client = self.client
        call = client.begin(method, args, {"stdin": stdio.stdin is not None})
        try:
            frame = client.next_frame(call)
            if frame.kind == P.ERROR:
                raise P.parse_error(frame)
            if frame.kind != P.REPLY:
                raise P.ProtocolError(f"unexpected {P.KIND_NAMES[frame.kind]} before the reply to {method}")
            result, attached = P.parse_reply(frame)
            if not attached:
                raise P.ProtocolError(f"{method} with stdio returned no process")
        except BaseException:
            client.end(call)
            raise
        return RemoteProcess(client, call, result["container_id"], stdio)

    def _output(self, method: str, args: dict, local: dict) -> None:
        """Output streamed into the caller's fds until REPLY (``logs``)."""
        stdio: Stdio = local["stdio"]
        sinks = {P.STDOUT: stdio.stdout, P.STDERR: stdio.stderr}
        self._receive(method, args, {"stdin": False}, lambda frame: write_all(sinks[frame.stream], frame.payload))

    def _download(self, method: str, args: dict, local: dict) -> None:
        """A blob streamed into the caller's file until REPLY (``save``)."""
        stream: IO[bytes] = local["stream"]
        self._receive(method, args, None, lambda frame: stream.write(frame.payload))

    def _receive(self, method: str, args: dict, stdio: dict | None, sink: Callable[[P.Frame], Any]) -> None:
        client = self.client
        call = client.begin(method, args, stdio)
        try:
            while True:
                frame = client.next_frame(call)
                if frame.kind == P.DATA:
                    sink(frame)
                elif frame.kind == P.REPLY:
                    return None
                elif frame.kind == P.ERROR:
                    raise P.parse_error(frame)
                elif frame.kind != P.EOF:
                    raise P.ProtocolError(f"unexpected {P.KIND_NAMES[frame.kind]} for {method}")
        finally:
            client.end(call)

    def _upload(self, method: str, args: dict, local: dict) -> Any:
        """Send the caller's stream as blob frames, then wait for the reply. An early ERROR (a bad tar header)
        stops the upload at once instead of after the whole file; PROGRESS (a build's) goes to the caller's
        ``progress`` as it comes, during the upload too."""
        stream: IO[bytes] = local["stream"]
        progress = local.get("progress")
        client = self.client
        call = client.begin(method, args)
        forget = _cancel_by_signal(client, call, local.get("cancel"))
        try:
            while True:
                early = client.next_frame(call, block=False)
                if early is not None:
                    if early.kind == P.ERROR:
                        raise P.parse_error(early)
                    if early.kind == P.PROGRESS and P.METHODS[method].kind == P.UPLOAD_PROGRESS:
                        if progress is not None:
                            progress(early.json())
                        continue
                    raise P.ProtocolError(f"unexpected {P.KIND_NAMES[early.kind]} during an upload")
                data = stream.read(P.CHUNK)
                if not data:
                    client.send_frame(P.encode(P.EOF, call.id, stream=P.BLOB))
                    break
                client.send_frame(P.encode(P.DATA, call.id, data, P.BLOB))
            return client.finish(call, progress)
        finally:
            forget()
            client.end(call)


def _cancel_by_signal(client: AgentClient, call, cancel) -> Callable[[], None]:
    """A caller's :class:`runner.stdio.Cancel` (the API server's client hung up) passed on to the agent as a
    SIGNAL frame for the call, which cancels it there; what unregisters that once the call is over."""
    if cancel is None:
        return lambda: None

    def signal() -> None:
        try:
            client.send_frame(P.encode_json(P.SIGNAL, call.id, {"signal": "INT"}))
        except RunnerError:
            pass  # the connection is gone: the agent cancels the call itself
    return cancel.on_set(signal)


_BY_KIND = {P.PLAIN: AgentBackend._plain, P.PROGRESS_CALL: AgentBackend._plain, P.ATTACH: AgentBackend._attach,
            P.OUTPUT: AgentBackend._output, P.DOWNLOAD: AgentBackend._download, P.UPLOAD: AgentBackend._upload,
            P.UPLOAD_PROGRESS: AgentBackend._upload}


def _bind(method: P.Method, args: tuple, kwargs: dict) -> tuple[dict, dict]:
    """The call's arguments by name, as Python binds them: (JSON arguments, local ones). Optional arguments
    left out are left out of the request too."""
    params = method.params
    if len(args) > len(params):
        raise TypeError(f"{method.name}() takes {len(params)} arguments but {len(args)} were given")
    given = dict(zip((p.name for p in params), args))
    for key, value in kwargs.items():
        if key in given:
            raise TypeError(f"{method.name}() got multiple values for argument {key!r}")
        given[key] = value
    wire: dict = {}
    local: dict = {}
    for p in params:
        value = given.pop(p.name, _MISSING)
        if value is _MISSING:
            if p.required:
                raise TypeError(f"{method.name}() missing required argument {p.name!r}")
            value = None if p.local else _MISSING
        if value is not _MISSING:
            (local if p.local else wire)[p.name] = value
    if given:
        raise TypeError(f"{method.name}() got an unexpected keyword argument {next(iter(given))!r}")
    return wire, local


def _generate(method: P.Method) -> Callable[..., Any]:
    run = _BY_KIND[method.kind]

    def call(self: AgentBackend, *args: Any, **kwargs: Any) -> Any:
        wire, local = _bind(method, args, kwargs)
        return run(self, method.name, wire, local)

    call.__name__ = call.__qualname__ = method.name
    call.__doc__ = f"The engine's ``{method.name}({', '.join(p.name for p in method.params)})``, in the agent."
    return call


for _method in P.METHODS.values():
    if _method.name not in P.AGENT_ONLY:
        setattr(AgentBackend, _method.name, _generate(_method))
del _method
