"""A scriptable fake registry for what a real one will not do: hostile manifests, cut connections,
redirects to another port. Loopback only; every request's headers are recorded."""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FakeRegistry:
    """Serves ``manifests[(repo, ref)] = (media_type, bytes)`` and ``blobs[digest] = bytes``.

    ``truncate[digest] = n``: the next n downloads of that blob send half the body, then close.
    ``redirect_blobs_to``: blob GETs answer 307 to that base URL + the same path.
    ``basic``: (user, password) required on every request except the redirect target's.
    It also works as an HTTP proxy in front of itself (absolute-URL request lines are accepted).
    """

    def __init__(self):
        self.manifests: dict[tuple[str, str], tuple[str, bytes]] = {}
        self.blobs: dict[str, bytes] = {}
        self.truncate: dict[str, int] = {}
        self.redirect_blobs_to: str | None = None
        self.basic: tuple[str, str] | None = None
        self.requests: list[tuple[str, str, dict]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                fake._handle(self)

            def do_HEAD(self):
                fake._handle(self)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.host = f"127.0.0.1:{self.httpd.server_address[1]}"
        self.url = f"http://{self.host}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def add_blob(self, data: bytes) -> dict:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        self.blobs[digest] = data
        return {"digest": digest, "size": len(data)}

    def add_manifest(self, repo: str, ref: str, manifest: dict | bytes, media_type: str) -> str:
        data = manifest if isinstance(manifest, bytes) else json.dumps(manifest).encode()
        self.manifests[(repo, ref)] = (media_type, data)
        return "sha256:" + hashlib.sha256(data).hexdigest()

    def _reply(self, req, status, body=b"", headers=()):
        req.send_response(status)
        for key, value in headers:
            req.send_header(key, value)
        req.send_header("Content-Length", str(len(body)))
        req.end_headers()
        if req.command != "HEAD":
            req.wfile.write(body)

    def _handle(self, req: BaseHTTPRequestHandler) -> None:
        self.requests.append((req.command, req.path, dict(req.headers)))
        if self.basic is not None:
            expected = "Basic " + base64.b64encode(":".join(self.basic).encode()).decode()
            if req.headers.get("Authorization") != expected:
                return self._reply(req, 401, b'{"errors":[{"code":"UNAUTHORIZED"}]}',
                                   [("WWW-Authenticate", 'Basic realm="fake"')])
        # Through a proxy the request line carries the absolute URL.
        path = urllib.parse.urlsplit(req.path).path
        if path == "/v2/":
            return self._reply(req, 200, b"{}")
        parts = path[len("/v2/"):].rsplit("/", 2)
        if len(parts) != 3:
            return self._reply(req, 404)
        repo, kind, ref = parts
        if kind == "manifests" and (repo, ref) in self.manifests:
            media_type, data = self.manifests[(repo, ref)]
            return self._reply(req, 200, data, [("Content-Type", media_type)])
        if kind == "blobs" and ref in self.blobs:
            if self.redirect_blobs_to:
                return self._reply(req, 307, headers=[("Location", self.redirect_blobs_to + path)])
            data = self.blobs[ref]
            if self.truncate.get(ref, 0) > 0:
                self.truncate[ref] -= 1
                req.send_response(200)
                req.send_header("Content-Length", str(len(data)))
                req.end_headers()
                req.wfile.write(data[: len(data) // 2])
                req.wfile.flush()
                req.close_connection = True
                return None
            return self._reply(req, 200, data, [("Content-Type", "application/octet-stream")])
        return self._reply(req, 404, b'{"errors":[{"code":"MANIFEST_UNKNOWN","message":"unknown"}]}')

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
