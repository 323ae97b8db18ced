"""Loopback registry servers for tests: ``docker-registry`` processes and a JWT token service.

Kept apart from ``conftest.py`` so test modules can import the helpers and constants directly.
"""

from __future__ import annotations

import base64
import datetime
import json
import os
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

REGISTRY_BIN = shutil.which("docker-registry")
USER, PASSWORD = "alice", "s3cret-pass"
SERVICE, ISSUER = "runner-test-registry", "runner-test-issuer"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class RegistryServer:
    """One running ``docker-registry``: ``host`` is ``127.0.0.1:<port>``, ``storage`` its data root."""

    root: Path
    auth: dict | None = None
    host: str = ""
    storage: Path = field(init=False)
    process: subprocess.Popen | None = None

    def __post_init__(self):
        self.storage = self.root / "storage"

    def start(self) -> "RegistryServer":
        if REGISTRY_BIN is None:
            pytest.skip("docker-registry is not installed (apt install docker-registry)")
        port = free_port()
        self.host = f"127.0.0.1:{port}"
        config = {
            "version": 0.1,
            "log": {"level": "warn", "accesslog": {"disabled": True}},
            "storage": {"filesystem": {"rootdirectory": str(self.storage)}, "delete": {"enabled": True}},
            "http": {"addr": self.host, "secret": "runner-tests"},
        }
        if self.auth:
            config["auth"] = self.auth
        # JSON is YAML, and needs no YAML writer.
        (self.root / "config.yml").write_text(json.dumps(config))
        self._log = open(self.root / "registry.log", "wb")
        self.process = subprocess.Popen([REGISTRY_BIN, "serve", str(self.root / "config.yml")],
                                        stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"docker-registry exited: {self.log()}")
            try:
                urllib.request.urlopen(f"http://{self.host}/v2/", timeout=1).close()
                return self
            except urllib.error.HTTPError:
                return self  # 401: up, and asking for auth
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"docker-registry did not start: {self.log()}")

    def log(self) -> str:
        return (self.root / "registry.log").read_text(errors="replace")[-2000:]

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if getattr(self, "_log", None):
            self._log.close()

    def blob_file(self, digest: str) -> Path:
        """Where the registry keeps a blob's bytes (for tampering tests)."""
        hexd = digest.split(":", 1)[1]
        return (self.storage / "docker/registry/v2/blobs/sha256" / hexd[:2] / hexd / "data")


class TokenServer:
    """A tiny token service: basic-auths USER/PASSWORD (anonymous gets pull only when ``anonymous_pull``),
    grants the requested scopes, signs RS256 JWTs with ``x5c``; records every request for assertions."""

    def __init__(self, root: Path, anonymous_pull: bool = False, lifetime: int = 300):
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import rsa
        from cryptography.x509.oid import NameOID

        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "runner test token signer")])
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(days=1))
                .not_valid_after(now + datetime.timedelta(days=1))
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .sign(self.key, hashes.SHA256()))
        self.cert_path = root / "token-cert.pem"
        self.cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        self.x5c = base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()
        self.anonymous_pull = anonymous_pull
        self.lifetime = lifetime
        self.requests: list[dict] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                server.handle(self)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/token"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def sign(self, claims: dict) -> str:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        def b64(data: bytes) -> str:
            return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

        header = {"typ": "JWT", "alg": "RS256", "x5c": [self.x5c]}
        signing_input = b64(json.dumps(header).encode()) + "." + b64(json.dumps(claims).encode())
        signature = self.key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return signing_input + "." + b64(signature)

    def handle(self, request: BaseHTTPRequestHandler) -> None:
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(request.path).query)
        authorization = request.headers.get("Authorization", "")
        user = None
        if authorization.startswith("Basic "):
            given = base64.b64decode(authorization[6:]).decode()
            if given != f"{USER}:{PASSWORD}":
                self.requests.append({"query": query, "user": "REJECTED"})
                request.send_response(401)
                request.send_header("Content-Type", "application/json")
                request.end_headers()
                request.wfile.write(b'{"details":"incorrect username or password"}')
                return
            user = USER
        self.requests.append({"query": query, "user": user})
        access = []
        for scope in query.get("scope", []):
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            allowed = {"pull", "push"} if user else ({"pull"} if self.anonymous_pull else set())
            granted = [a for a in actions.split(",") if a in allowed]
            access.append({"type": kind, "name": name, "actions": granted})
        now = int(time.time())
        claims = {"iss": ISSUER, "sub": user or "", "aud": query.get("service", [""])[0], "exp": now + self.lifetime,
                  "nbf": now - 10, "iat": now, "jti": os.urandom(8).hex(), "access": access}
        body = json.dumps({"token": self.sign(claims), "expires_in": self.lifetime,
                           "issued_at": datetime.datetime.now(datetime.timezone.utc).isoformat()}).encode()
        request.send_response(200)
        request.send_header("Content-Type", "application/json")
        request.send_header("Content-Length", str(len(body)))
        request.end_headers()
        request.wfile.write(body)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
