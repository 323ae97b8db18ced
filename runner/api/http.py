"""One Engine API request: parse it, route it, answer it (JSON, a chunked stream, or a hijacked socket).

Built on the standard library's ``http.server`` (HTTP/1.1 with keep-alive, as Docker's clients use it). Errors
are Docker's: a JSON ``{"message": "..."}`` with 400/404/409/500, so clients show runner's one-line message
as they show dockerd's. Requests are logged without headers or bodies (``X-Registry-Auth`` carries
credentials) and only with ``runner serve --debug``.
"""

from __future__ import annotations

import json
import socket
import sys
import traceback
from http.server import BaseHTTPRequestHandler
from typing import Any, BinaryIO
from urllib.parse import parse_qs, unquote, urlsplit

from runner.api import router, versions
from runner.errors import Conflict, NotFound, RunnerError, UsageError

MAX_JSON_BODY = 16 * 1024 * 1024  # a container create with a huge Env still fits; a rogue length does not


class ApiError(RunnerError):
    """An answer with an explicit HTTP status (e.g. 304 for starting a running container)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def status_for(exc: RunnerError) -> int:
    """Docker's status code for one of runner's errors."""
    if isinstance(exc, ApiError):
        return exc.status
    if isinstance(exc, NotFound):
        return 404
    if isinstance(exc, Conflict):
        return 409
    if isinstance(exc, UsageError):
        return 400
    return 500


class BodyReader:
    """The request body as a file: ``Content-Length`` bytes, or ``Transfer-Encoding: chunked`` decoded (the
    docker CLI streams ``load``, ``import`` and build contexts chunked). Never reads past the body, so the
    next request on a kept-alive connection parses."""

    def __init__(self, rfile: BinaryIO, length: int | None, chunked: bool):
        self._rfile = rfile
        self._left = length if not chunked else 0
        self._chunked = chunked
        self._done = not chunked and not length
        self._in_chunk = False  # a chunk's data was read: its CRLF comes before the next size line

    def read(self, size: int = -1) -> bytes:
        out = bytearray()
        while not self._done and (size < 0 or len(out) < size):
            if self._left == 0:
                if not self._chunked or not self._next_chunk():
                    self._done = True
                    break
            want = self._left if size < 0 else min(self._left, size - len(out))
            data = self._rfile.read(want)
            if not data:
                raise UsageError("the request body ended early")
            out += data
            self._left -= len(data)
            if not self._chunked and self._left == 0:
                self._done = True
        return bytes(out)

    def _next_chunk(self) -> bool:
        if self._in_chunk:
            self._rfile.readline(8)  # the CRLF after a chunk's data
        line = self._rfile.readline(1024)
        try:
            size = int(line.split(b";", 1)[0].strip(), 16)
        except ValueError as exc:
            raise UsageError("malformed chunked request body") from exc
        if size == 0:
            while self._rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                pass  # trailers
            return False
        self._left, self._in_chunk = size, True
        return True

    def drain(self, limit: int = 1 << 20) -> bool:
        """Read and drop what is left (up to ``limit`` bytes); whether the body is now fully consumed."""
        while not self._done and limit > 0:
            data = self.read(min(65536, limit))
            if not data:
                break
            limit -= len(data)
        return self._done


class ChunkedWriter:
    """A response body sent as HTTP chunks, each write flushed at once (clients render progress and logs live)."""

    def __init__(self, wfile: BinaryIO):
        self._wfile = wfile
        self.closed = False

    def write(self, data: bytes) -> None:
        if data:
            self._wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self._wfile.flush()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._wfile.write(b"0\r\n\r\n")
            self._wfile.flush()


class Request:
    """What a handler sees: the method, the API version, path parameters, query and body helpers, and the
    ways to answer. Exactly one answer per request."""

    def __init__(self, handler: "Handler", version: str, path: str, params: dict[str, str], query: dict):
        self._handler = handler
        self.method = handler.command
        self.version = version
        self.path = path
        self.params = {k: unquote(v) for k, v in params.items()}
        self.query = query
        self.headers = handler.headers
        self.backend = handler.server.backend
        self.context = handler.server.context
        self.answered = False
        length = handler.headers.get("Content-Length")
        chunked = "chunked" in handler.headers.get("Transfer-Encoding", "").lower()
        try:
            size = int(length) if length is not None else None
        except ValueError as exc:
            raise UsageError("malformed Content-Length") from exc
        if size is not None and size < 0:
            raise UsageError("malformed Content-Length")
        self.body = BodyReader(handler.rfile, size, chunked)

    @property
    def connection(self) -> socket.socket:
        """The client's socket (to notice a client that hung up during a long wait)."""
        return self._handler.connection

    # ---------------------------------------------------------------- query and body
    def arg(self, name: str, default: str | None = None) -> str | None:
        values = self.query.get(name)
        return values[-1] if values else default

    def flag(self, name: str, default: bool = False) -> bool:
        """A boolean query parameter as Docker reads it: ``1``/``true``/``True`` are true, ``0``/``false``/empty
        are false; anything else is a 400."""
        value = self.arg(name)
        if value is None:
            return default
        if value.lower() in ("1", "true", "yes"):
            return True
        if value.lower() in ("0", "false", "no", ""):
            return False
        raise UsageError(f"invalid boolean value {value!r} for query parameter {name!r}")

    def int_arg(self, name: str, default: int | None = None) -> int | None:
        value = self.arg(name)
        if value in (None, ""):
            return default
        try:
            return int(value)
        except ValueError as exc:
            raise UsageError(f"invalid value {value!r} for query parameter {name!r}: not an integer") from exc

    def filters(self) -> dict[str, list[str]]:
        """The ``filters`` parameter: ``{"label": ["a=b"]}``, or the old ``{"label": {"a=b": true}}`` form."""
        raw = self.arg("filters")
        if not raw:
            return {}
        try:
            data = json.loads(raw)
        except ValueError as exc:
            raise UsageError(f"invalid filter: {raw!r} is not JSON") from exc
        if not isinstance(data, dict):
            raise UsageError("invalid filter: not a JSON object")
        out: dict[str, list[str]] = {}
        for key, value in data.items():
            if isinstance(value, dict):
                value = [k for k, v in value.items() if v]
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise UsageError(f"invalid filter {key!r}")
            out[key] = value
        return out

    def json(self) -> dict:
        """The body as a JSON object; an empty body is ``{}``; anything else is a 400."""
        data = self.body.read(MAX_JSON_BODY + 1)
        if len(data) > MAX_JSON_BODY:
            raise UsageError("the request body is too large")
        if not data.strip():
            return {}
        try:
            value = json.loads(data)
        except (ValueError, RecursionError) as exc:
            raise UsageError(f"invalid JSON in the request body: {exc}") from exc
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise UsageError("the request body must be a JSON object")
        return value

    # ---------------------------------------------------------------- answers
    def reply(self, obj: Any, status: int = 200) -> None:
        """A whole JSON answer."""
        self.send(status, json.dumps(obj).encode(), "application/json")

    def reply_empty(self, status: int = 204) -> None:
        self.send(status, b"", None)

    def send(self, status: int, data: bytes, content_type: str | None,
             headers: dict[str, str] | None = None) -> None:
        h = self._begin(status)
        if content_type:
            h.send_header("Content-Type", content_type)
        for key, value in (headers or {}).items():
            h.send_header(key, value)
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        if self.method != "HEAD" and data:
            h.wfile.write(data)
        h.wfile.flush()

    def stream(self, content_type: str = "application/json", status: int = 200,
               headers: dict[str, str] | None = None) -> ChunkedWriter:
        """Start a chunked answer; the headers are flushed at once (``wait`` clients block on them)."""
        h = self._begin(status)
        h.send_header("Content-Type", content_type)
        for key, value in (headers or {}).items():
            h.send_header(key, value)
        h.send_header("Transfer-Encoding", "chunked")
        h.end_headers()
        h.wfile.flush()
        return ChunkedWriter(h.wfile)

    def hijack(self, content_type: str) -> socket.socket:
        """Take the connection over for a raw, two-way stream (attach, exec start).

        A client that asked for ``Upgrade: tcp`` gets ``101 UPGRADED``, flushed alone before any output;
        others get a 200 with the stream's content type. The connection is never reused for HTTP after it."""
        h = self._handler
        upgrade = "upgrade" in h.headers.get("Connection", "").lower() and h.headers.get("Upgrade")
        h.close_connection = True
        self.answered = True
        if upgrade:
            h.send_response_only(101, "UPGRADED")
            h.send_header("Content-Type", content_type)
            h.send_header("Connection", "Upgrade")
            h.send_header("Upgrade", "tcp")
        else:
            h.send_response_only(200)
            h.send_header("Content-Type", content_type)
        h.end_headers()
        h.wfile.flush()
        h.log_request(101 if upgrade else 200)
        return h.connection

    def _begin(self, status: int) -> "Handler":
        if self.answered:
            raise RuntimeError("a request was answered twice")
        self.answered = True
        h = self._handler
        h.send_response(status)
        h.send_header("Api-Version", versions.API_VERSION)
        h.send_header("Docker-Experimental", "false")
        h.send_header("Ostype", "linux")
        return h


def _runner_version() -> str:
    from runner import __version__
    return __version__


class Handler(BaseHTTPRequestHandler):
    """The http.server handler: every method goes through :meth:`dispatch`."""

    protocol_version = "HTTP/1.1"
    default_request_version = "HTTP/1.0"  # so the answer to an unreadable request line still has a status line

    def version_string(self) -> str:
        return f"runner/{_runner_version()} (linux)"  # as dockerd's "Docker/25.0.0 (linux)"

    def do_GET(self):
        self.dispatch()

    do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = do_OPTIONS = do_GET

    def dispatch(self) -> None:
        request = None
        try:
            split = urlsplit(self.path)
            version, path = versions.split_path(split.path)
            found = router.match(self.command, path)
            if found is None:
                raise ApiError(404, "page not found")
            entry, params = found
            request = Request(self, version, path, params, parse_qs(split.query, keep_blank_values=True))
            entry.handler(request)
            if not request.answered:
                raise RuntimeError(f"the handler of {entry.pattern} sent no answer")
        except router.MethodNotAllowed as exc:
            self._fail(request, 405, str(exc))
        except RunnerError as exc:
            self._fail(request, status_for(exc), exc.message)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client went away; its handler cleaned up what it started
        except Exception as exc:  # a bug: still a JSON 500, and the server keeps serving
            if self.server.debug:
                traceback.print_exc()
            self._fail(request, 500, f"internal error: {type(exc).__name__}: {exc}")
        if request is not None and not self.close_connection and not request.body.drain():
            self.close_connection = True

    def _fail(self, request: Request | None, status: int, message: str) -> None:
        if request is not None and request.answered:
            self.close_connection = True  # mid-stream: the only honest signal left is closing
            return
        try:
            self.send_json_error(status, message)
        except OSError:
            self.close_connection = True

    def send_json_error(self, status: int, message: str) -> None:
        body = json.dumps({"message": message}).encode()
        self.send_response(status)
        self.send_header("Api-Version", versions.API_VERSION)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        self.wfile.flush()

    def send_error(self, code, message=None, explain=None):
        """http.server's own errors (malformed request line, headers too large) as Docker-style JSON."""
        self.close_connection = True
        try:
            self.send_json_error(int(code), message or "bad request")
        except OSError:
            pass

    def log_message(self, format, *args):  # noqa: A002 - http.server's signature
        if self.server.debug:
            sys.stderr.write("%s\n" % (format % args))

    def log_request(self, code="-", size="-"):
        if self.server.debug:
            # The path without its query (a query may name registries or filters; never credentials, but
            # logs are shared) and never headers: X-Registry-Auth carries passwords.
            path = urlsplit(getattr(self, "path", "")).path
            sys.stderr.write(f"{self.command} {path} {code}\n")
