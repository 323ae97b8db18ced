"""Interrupted transfers (issue 19): a `runner pull` SIGKILLed mid-download leaves its partial blob, the next
pull resumes it with HTTP Range (the bytes already there are not downloaded twice) and leaves no temp file;
`system df` shows partials and `system prune` removes them. A real docker-registry, behind a small proxy
that counts the bytes it serves and can stall a blob's body at a chosen byte."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from regtest_images import build_image
from runner.images.push import push
from tests.helpers import REPO, cli, wait_for

pytestmark = pytest.mark.registry


class CountingProxy:
    """Forwards GET/HEAD to ``upstream``; counts body bytes served per blob digest and records Range headers.

    ``stall[digest] = n``: that blob's body stops after n bytes (the connection stays open) until released.
    """

    def __init__(self, upstream: str):
        self.upstream = upstream
        self.served: dict[str, int] = {}
        self.ranges: list[tuple[str, str | None]] = []
        self.stall: dict[str, int] = {}
        self.release = threading.Event()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                proxy._forward(self)

            def do_HEAD(self):
                proxy._forward(self)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.host = f"127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def _forward(self, req):
        conn = http.client.HTTPConnection(self.upstream, timeout=30)
        headers = {k: v for k, v in req.headers.items() if k.lower() not in ("host", "connection")}
        conn.request(req.command, req.path, headers=headers)
        reply = conn.getresponse()
        digest = req.path.rsplit("/", 1)[-1] if "/blobs/" in req.path else None
        if digest and req.command == "GET":
            self.ranges.append((digest, req.headers.get("Range")))
        req.send_response(reply.status)
        for key, value in reply.getheaders():
            if key.lower() not in ("connection", "transfer-encoding"):
                req.send_header(key, value)
        req.send_header("Connection", "close")
        req.end_headers()
        limit = self.stall.get(digest) if digest else None
        try:
            while req.command == "GET" and (chunk := reply.read(16384)):
                if limit is not None:
                    room = limit - self.served.get(digest, 0)
                    if room <= 0:
                        self.release.wait(60)  # hold the body here: the test kills the pull meanwhile
                        return
                    chunk = chunk[:room]
                req.wfile.write(chunk)
                req.wfile.flush()
                if digest:
                    self.served[digest] = self.served.get(digest, 0) + len(chunk)
        except OSError:
            pass
        finally:
            conn.close()
            req.close_connection = True

    def close(self):
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def proxy(registry):
    server = CountingProxy(registry.host)
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def big_image(registry, store):
    """An image whose one layer is 3 MB of random (incompressible) bytes, pushed to the registry."""
    name = f"{registry.host}/resume/img:1"
    built = build_image(store, name, [{"big": os.urandom(3 << 20)}, {"small": b"hello\n"}])
    push(store, name)
    sizes = {d: os.path.getsize(store.blob_path(d)) for d in built["layers"]}
    return built, max(sizes, key=sizes.get), sizes


def partial_of(root: str, digest: str) -> str:
    return os.path.join(root, "images", "tmp", "partial-" + digest.split(":", 1)[1])


def start_pull(root: str, ref: str) -> subprocess.Popen:
    env = dict(os.environ, RUNNER_ROOT=root, PYTHONPATH=REPO)
    return subprocess.Popen([sys.executable, "-m", "runner", "--backend", "native", "pull", "-q", ref],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.mark.parametrize("point", [1, 0.5, -1], ids=["first-chunk", "half", "all-but-one-byte"])
def test_a_killed_pull_is_resumed_without_downloading_twice(proxy, big_image, tmp_path, point):
    built, big, sizes = big_image
    size = sizes[big]
    cut = {1: 16384, 0.5: size // 2, -1: size - 1}[point]
    root = str(tmp_path / "root")
    ref = f"{proxy.host}/resume/img:1"
    proxy.stall[big] = cut
    pull = start_pull(root, ref)
    try:
        # Killed once all the bytes the proxy let through are in the partial file: a point we control.
        assert wait_for(lambda: os.path.exists(partial_of(root, big))
                        and os.path.getsize(partial_of(root, big)) == cut), proxy.served
    finally:
        pull.send_signal(signal.SIGKILL)
        pull.wait()
    assert os.path.getsize(partial_of(root, big)) == cut
    del proxy.stall[big]
    proxy.served.clear()
    proxy.ranges.clear()
    again = cli(["pull", "-q", ref], root=root)
    assert again.returncode == 0, again.stderr.decode()
    assert proxy.served[big] == size - cut  # only the missing bytes crossed the wire
    assert (big, f"bytes={cut}-") in proxy.ranges
    assert os.listdir(os.path.join(root, "images", "tmp")) == []
    images = cli(["images", "--format", "json"], root=root, check=True).stdout.splitlines()
    assert [json.loads(line)["ID"] for line in images] == [built["config"].split(":")[-1][:12]]


def test_df_shows_partials_and_prune_removes_them(proxy, big_image, tmp_path):
    built, big, sizes = big_image
    root = str(tmp_path / "root")
    ref = f"{proxy.host}/resume/img:1"
    proxy.stall[big] = sizes[big] // 2
    pull = start_pull(root, ref)
    try:
        assert wait_for(lambda: os.path.exists(partial_of(root, big))
                        and os.path.getsize(partial_of(root, big)) == sizes[big] // 2)
    finally:
        pull.send_signal(signal.SIGKILL)
        pull.wait()
    data = json.loads(cli(["system", "df", "--format", "json"], root=root, check=True).stdout)
    assert data["Partial downloads"]["Total"] >= 1
    assert data["Partial downloads"]["Size"] >= sizes[big] // 2
    table = cli(["system", "df"], root=root, check=True).stdout.decode()
    assert table.splitlines()[0].split() == ["TYPE", "TOTAL", "ACTIVE", "SIZE", "RECLAIMABLE"]
    assert any(line.startswith("Partial downloads") for line in table.splitlines())
    proc = cli(["system", "prune", "-f"], root=root, check=True)
    assert "Total reclaimed space:" in proc.stdout.decode()
    assert os.listdir(os.path.join(root, "images", "tmp")) == []


def test_a_stale_partial_is_removed_by_the_next_pull(proxy, big_image, tmp_path, registry):
    built, big, sizes = big_image
    root = str(tmp_path / "root")
    os.makedirs(os.path.join(root, "images", "tmp"))
    stale = os.path.join(root, "images", "tmp", "partial-" + "ab" * 32)  # a blob nobody will ask for again
    with open(stale, "wb") as f:
        f.write(b"x" * 4096)
    day_ago = time.time() - 25 * 3600
    os.utime(stale, (day_ago, day_ago))
    fresh = os.path.join(root, "images", "tmp", "partial-" + "cd" * 32)
    with open(fresh, "wb") as f:
        f.write(b"y")
    assert cli(["pull", "-q", f"{proxy.host}/resume/img:1"], root=root).returncode == 0
    assert not os.path.exists(stale) and os.path.exists(fresh)


@pytest.mark.root
def test_a_pull_into_a_full_disk_fails_in_one_line_and_leaves_no_partial(proxy, big_image, tmp_path):
    mnt = str(tmp_path / "fs")
    os.mkdir(mnt)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", mnt], check=True)
    try:
        root = os.path.join(mnt, "root")
        proc = cli(["pull", "-q", f"{proxy.host}/resume/img:1"], root=root)
        assert proc.returncode == 125
        lines = proc.stderr.decode().splitlines()
        assert lines[0].startswith(f"Error: no space left on {mnt} (tmpfs, ") and "while pulling" in lines[0], lines
        assert lines[1].startswith("Hint:") and len(lines) == 2
        assert os.listdir(os.path.join(root, "images", "tmp")) == []
        assert cli(["images", "-q"], root=root).stdout == b""
    finally:
        subprocess.run(["umount", "-l", mnt], check=False)


class UploadProxy:
    """Forwards every request to ``upstream`` keeping the Host header (so the Location URLs the registry
    builds point back here); records (method, path) of what it forwards; ``hold`` = a digest whose closing upload PUT is held
    unanswered (its body read, nothing forwarded: the blob is never committed) until the proxy closes."""

    def __init__(self, upstream: str):
        self.upstream, self.requests, self.hold = upstream, [], None
        self.held = threading.Event()
        self.release = threading.Event()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _any(self):
                proxy._forward(self)
            do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _any

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.host = f"127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def _forward(self, req):
        body = req.rfile.read(int(req.headers.get("Content-Length") or 0))
        if req.command == "PUT" and self.hold and f"digest={self.hold.replace(':', '%3A')}" in req.path:
            self.held.set()  # not recorded: it never reaches the registry
            self.release.wait(60)  # the test kills the push meanwhile
            req.close_connection = True
            return
        self.requests.append((req.command, req.path))
        conn = http.client.HTTPConnection(self.upstream, timeout=30)
        headers = {k: v for k, v in req.headers.items() if k.lower() != "connection"}
        conn.request(req.command, req.path, body=body if body or req.command in ("POST", "PUT", "PATCH") else None,
                     headers=headers)
        reply = conn.getresponse()
        data = reply.read()
        req.send_response(reply.status)
        for key, value in reply.getheaders():
            if key.lower() not in ("connection", "transfer-encoding", "content-length"):
                req.send_header(key, value)
        if req.command != "HEAD":
            req.send_header("Content-Length", str(len(data)))
        req.send_header("Connection", "close")
        req.end_headers()
        if req.command != "HEAD":
            req.wfile.write(data)
        conn.close()
        req.close_connection = True

    def uploads(self) -> list[str]:
        """Digests of the blobs whose upload was finished (the closing PUT ?digest=...)."""
        import urllib.parse
        out = []
        for method, path in self.requests:
            if method == "PUT" and "/blobs/uploads/" in path:
                out += urllib.parse.parse_qs(urllib.parse.urlsplit(path).query).get("digest", [])
        return out

    def close(self):
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def test_a_killed_push_run_again_uploads_only_the_missing_blobs(registry, tmp_path):
    """As docker: every blob is checked with HEAD before its upload, so a push killed after some layers
    reached the registry sends only the others when run again (a half-sent blob starts over: registries
    drop an unfinished upload session, and docker does not resume one either)."""
    from runner.images.store import Store
    proxy = UploadProxy(registry.host)
    try:
        root = str(tmp_path / "root")
        name = f"{proxy.host}/pushresume/img:1"
        built = build_image(Store(os.path.join(root, "images")), name,
                            [{"big": os.urandom(3 << 20)}, {"a": b"first\n"}, {"b": b"second\n"}])
        big, small = built["layers"][0], built["layers"][1:] + [built["config"]]
        proxy.hold = big
        env = dict(os.environ, RUNNER_ROOT=root, PYTHONPATH=REPO)
        first = subprocess.Popen([sys.executable, "-m", "runner", "--backend", "native", "push", name],
                                 env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            # Killed while the big layer's upload waits for its answer and the small blobs are in.
            wait_for(lambda: proxy.held.is_set() and sorted(proxy.uploads()) == sorted(small),
                     what="the small blobs uploaded and the big one held")
        finally:
            first.send_signal(signal.SIGKILL)
            first.wait()
            first.stdout.close()
            first.stderr.close()
        assert "/manifests/" not in " ".join(path for _, path in proxy.requests)  # the manifest never went
        proxy.hold = None
        proxy.requests.clear()
        again = cli(["push", name], root=root)
        assert again.returncode == 0, again.stderr.decode()
        assert proxy.uploads() == [big]  # only the missing blob was sent again
        heads = {path.rsplit("/", 1)[-1] for method, path in proxy.requests if method == "HEAD"}
        assert heads >= set(small) | {big}
        assert again.stdout.decode().count("Layer already exists") == 2, again.stdout.decode()
        pulled = cli(["pull", "-q", name], root=str(tmp_path / "other"))
        assert pulled.returncode == 0, pulled.stderr.decode()
    finally:
        proxy.close()
