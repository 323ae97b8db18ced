"""The pure parts of attaching to a running container: detach keys, the escape scanner, the attach frames."""

from __future__ import annotations

import pytest

from runner.engine import attach_server as wire
from runner.engine.attach_client import EscapeScanner, parse_detach_keys
from runner.errors import UsageError


@pytest.mark.parametrize("text,keys", [(None, b"\x10\x11"), ("ctrl-p,ctrl-q", b"\x10\x11"), ("ctrl-x,x", b"\x18x"),
                                       ("ctrl-@,ctrl-[,ctrl-_", b"\x00\x1b\x1f"), ("a", b"a"), ("CTRL-A", b"\x01")])
def test_detach_keys_parse_as_docker(text, keys):
    assert parse_detach_keys(text) == keys


@pytest.mark.parametrize("text", ["ctrl-", "ctrl-1", "ab", "", "ctrl-p,,ctrl-q", "é"])
def test_bad_detach_keys_are_a_usage_error(text):
    with pytest.raises(UsageError):
        parse_detach_keys(text)


def test_escape_scanner_holds_a_partial_match_and_passes_it_on_when_it_is_not_one():
    s = EscapeScanner(b"\x10\x11")
    assert s.feed(b"ab\x10") == (b"ab", False)  # ctrl-p held back
    assert s.feed(b"c") == (b"\x10c", False)  # not the sequence after all: passed on
    assert s.feed(b"x\x10") == (b"x", False)
    assert s.feed(b"\x11rest") == (b"", True)  # split over two reads; nothing of it is passed on
    s = EscapeScanner(b"\x10\x11")
    assert s.feed(b"\x10\x10\x11") == (b"\x10", True)


def test_frames_round_trip_in_pieces_and_refuse_a_huge_length():
    data = wire.encode(wire.IN, b"hello") + wire.encode(wire.STDIN_EOF) + wire.encode(wire.EXIT, b"\0\0\0\7")
    d = wire.Decoder()
    got = []
    for i in range(len(data)):
        got += d.feed(data[i:i + 1])
    assert got == [(wire.IN, b"hello"), (wire.STDIN_EOF, b""), (wire.EXIT, b"\0\0\0\7")]
    with pytest.raises(ValueError):
        wire.Decoder().feed(wire.HEADER.pack(wire.OUT, wire.MAX_FRAME + 1))
