"""The Engine API's pure parts: version prefixes, the route table, request bodies (plain and chunked)."""

from __future__ import annotations

import io

import pytest

from runner.api import router, versions
from runner.api.http import BodyReader, status_for
from runner.api.streams import attach_content_type, frame
from runner.errors import Conflict, ImageNotFound, NotFound, RunnerError, UsageError


@pytest.mark.parametrize("path,expected", [
    ("/_ping", ("1.44", "/_ping")),
    ("/v1.41/containers/json", ("1.41", "/containers/json")),
    ("/v1.24/version", ("1.24", "/version")),
    ("/volumes/x", ("1.44", "/volumes/x")),
    ("/version", ("1.44", "/version")),
])
def test_split_path(path, expected):
    assert versions.split_path(path) == expected


@pytest.mark.parametrize("path,text", [("/v1.45/x", "too new"), ("/v1.23/x", "too old"), ("/v1/x", "malformed"),
                                       ("/v1.x/x", "malformed")])
def test_split_path_refuses(path, text):
    with pytest.raises(UsageError, match=text):
        versions.split_path(path)


def test_routes_match_image_names_with_slashes_and_methods():
    saved = list(router.ROUTES)
    try:
        router.ROUTES[:] = []
        router.route("GET", "/images/{name*}/json")(lambda r: "inspect")
        router.route("DELETE", "/images/{name*}")(lambda r: "delete")
        router.route("GET", "/containers/{id}/json")(lambda r: "c")
        entry, params = router.match("GET", "/images/localhost:5000/a/b:1/json")
        assert params == {"name": "localhost:5000/a/b:1"}
        entry, params = router.match("DELETE", "/images/a/b")
        assert params == {"name": "a/b"} and entry.handler(None) == "delete"
        assert router.match("HEAD", "/containers/abc/json")[1] == {"id": "abc"}  # HEAD falls back to GET
        assert router.match("GET", "/containers/a/b/json") is None
        with pytest.raises(router.MethodNotAllowed):
            router.match("POST", "/containers/abc/json")
    finally:
        router.ROUTES[:] = saved


def test_body_reader_plain_and_chunked():
    raw = io.BytesIO(b"hello world" + b"NEXT REQUEST")
    body = BodyReader(raw, 11, chunked=False)
    assert body.read(5) == b"hello" and body.read() == b" world" and body.read() == b""
    assert raw.read() == b"NEXT REQUEST"  # never reads past the body (keep-alive)
    raw = io.BytesIO(b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nTrailer: x\r\n\r\nNEXT")
    body = BodyReader(raw, None, chunked=True)
    assert body.read(3) == b"hel" and body.read() == b"lo world"
    assert raw.read() == b"NEXT"
    with pytest.raises(UsageError, match="chunked"):
        BodyReader(io.BytesIO(b"zz\r\n"), None, chunked=True).read()
    with pytest.raises(UsageError, match="ended early"):
        BodyReader(io.BytesIO(b"abc"), 10, chunked=False).read()


def test_status_codes_are_dockers():
    assert status_for(NotFound("x")) == 404 and status_for(ImageNotFound("x")) == 404
    assert status_for(Conflict("x")) == 409 and status_for(UsageError("x")) == 400
    assert status_for(RunnerError("x")) == 500


def test_multiplexed_frames_and_content_types():
    assert frame(1, b"hi") == b"\x01\x00\x00\x00\x00\x00\x00\x02hi"
    assert frame(2, b"") == b"\x02" + b"\x00" * 7
    assert attach_content_type("1.44", tty=False) == "application/vnd.docker.multiplexed-stream"
    assert attach_content_type("1.41", tty=False) == "application/vnd.docker.raw-stream"
    assert attach_content_type("1.44", tty=True) == "application/vnd.docker.raw-stream"
