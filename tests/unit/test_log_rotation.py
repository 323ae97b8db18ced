"""Log rotation as Docker's json-file driver (--log-opt max-size/max-file) and reading across rotated files."""

from __future__ import annotations

import os
import threading

import pytest

from runner.engine import logs
from runner.errors import UsageError
from runner.spec import DEFAULT_LOG_MAX_FILE, DEFAULT_LOG_MAX_SIZE, ContainerSpec, log_limits


def test_limits_default_and_parse_as_dockers():
    assert log_limits({}) == (DEFAULT_LOG_MAX_SIZE, DEFAULT_LOG_MAX_FILE) == (20_000_000, 5)
    assert log_limits({"max-size": "10k", "max-file": "3"}) == (10 * 1024, 3)
    assert log_limits({"max-size": "-1"}) == (None, 5)
    for bad in ({"max-size": "lots"}, {"max-file": "0"}, {"max-file": "x"}, {"mode": "non-blocking"}):
        with pytest.raises(UsageError):
            log_limits(bad)
    with pytest.raises(UsageError, match="log max-file"):
        ContainerSpec(image="x", log_opts={"max-file": "0"}).validate()


def frames(path, **kw):
    return [data for _, _, data in logs.read_frames(path, **kw)]


def test_a_log_rotates_within_its_limit_and_reads_back_in_order(tmp_path):
    path = str(tmp_path / "container.log")
    writer = logs.LogWriter(path, max_size=1000, max_file=3)
    lines = [b"line %04d\n" % i for i in range(500)]
    for line in lines:
        writer.write(logs.STDOUT, line)
    writer.close()
    names = sorted(os.listdir(tmp_path))
    assert names == ["container.log", "container.log.1", "container.log.2"]
    assert all(os.path.getsize(tmp_path / n) <= 1000 for n in names)
    got = frames(path)
    assert got == lines[-len(got):] and len(got) > 50  # the newest lines, in order, none torn


def test_a_chunk_bigger_than_a_file_is_split_and_max_file_one_starts_over(tmp_path):
    path = str(tmp_path / "container.log")
    writer = logs.LogWriter(path, max_size=100, max_file=1)
    writer.write(logs.STDERR, b"x" * 250)
    writer.close()
    assert os.listdir(tmp_path) == ["container.log"] and os.path.getsize(path) <= 100
    assert b"".join(frames(path)) == b"x" * (250 - 2 * (100 - 13))


def test_following_reader_crosses_rotations(tmp_path):
    path = str(tmp_path / "container.log")
    writer = logs.LogWriter(path, max_size=200, max_file=4)
    done = threading.Event()
    got = []

    def follow():
        for _, _, data in logs.read_frames(path, follow=lambda: not done.is_set(), poll=0.001):
            got.append(data)

    reader = threading.Thread(target=follow, daemon=True)
    writer.write(logs.STDOUT, b"first\n")
    reader.start()
    lines = [b"%03d\n" % i for i in range(40)]
    try:
        for line in lines:
            writer.write(logs.STDOUT, line)
            assert_eventually(lambda: got[-1:] == [line])  # the reader keeps up line by line
    finally:
        done.set()
    reader.join(10)
    writer.close()
    assert got == [b"first\n"] + lines


def assert_eventually(cond, timeout=5.0):
    import time
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline
        time.sleep(0.001)


def test_a_rotation_between_the_reader_opening_files_neither_skips_nor_repeats(tmp_path, monkeypatch):
    """A rotation while the reader opens the files one by one shifts every name: the reader must notice and
    open a consistent set (a live container rotated its log under `logs --tail` in CI)."""
    import builtins

    path = str(tmp_path / "container.log")
    writer = logs.LogWriter(path, max_size=1000, max_file=3)
    number = 0

    def write_lines(n):
        nonlocal number
        for _ in range(n):
            writer.write(logs.STDOUT, b"line %05d\n" % number)
            number += 1

    write_lines(150)  # container.log.1 and container.log exist now
    real_open, opens = builtins.open, []

    def rotating_open(name, *args, **kw):
        opens.append(name)
        if len(opens) == 2:  # between opening the first file and the next: one rotation's worth of output
            write_lines(100)
        return real_open(name, *args, **kw)

    monkeypatch.setattr(builtins, "open", rotating_open)
    got = [int(data.split()[1]) for _, _, data in logs.read_frames(path)]
    monkeypatch.setattr(builtins, "open", real_open)
    writer.close()
    assert len(opens) > 3  # the first set was found inconsistent and opened again
    assert got == list(range(got[0], number)), got  # consecutive up to the newest line: no gap, no repeat


def test_lines_split_odd_chunks_per_stream_as_dockers_json_file(tmp_path):
    """--tail counts lines: output written in odd chunks (a line across writes, several lines in one write,
    stdout and stderr interleaved mid-line) reads back as one entry per line, per stream."""
    path = str(tmp_path / "container.log")
    writer = logs.LogWriter(path)
    for stream, chunk in ((logs.STDOUT, b"a"), (logs.STDOUT, b"b\nc"), (logs.STDERR, b"E1\nE"),
                          (logs.STDOUT, b"\nd\ne\n"), (logs.STDERR, b"2\n"), (logs.STDOUT, b"tail-no-newline")):
        writer.write(stream, chunk)
    writer.close()
    assert len(frames(path)) == 6
    assert [(s, d) for s, _, d in logs.lines(logs.read_frames(path))] == [
        (1, b"ab\n"), (2, b"E1\n"), (1, b"c\n"), (1, b"d\n"), (1, b"e\n"), (2, b"E2\n"), (1, b"tail-no-newline")]


def test_lines_cut_a_long_line_into_dockers_16k_entries_and_flush_a_partial_when_caught_up():
    frames_in = [(1, 0.0, b"x" * 40000 + b"\ny"), (logs.IDLE, 0.0, b""), (1, 0.0, b"z\n")]
    assert [(s, len(d)) for s, _, d in logs.lines(iter(frames_in))] == \
        [(1, 16384), (1, 16384), (1, 40000 - 2 * 16384 + 1), (1, 1), (1, 2)]
