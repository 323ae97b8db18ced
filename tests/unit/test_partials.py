"""Store.ingest_resumable: partial downloads resumed, restarted, removed (with a real registry and a SIGKILLed
pull in tests/registry/test_resume.py)."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import io
import os
import time

import pytest

from runner.errors import ImageError
from runner.images.store import Store

DATA = os.urandom(300_000)
DIGEST = "sha256:" + hashlib.sha256(DATA).hexdigest()


class Source:
    """fetch(offset) as the pull gives it; ``ranges``: whether the server honours Range."""

    def __init__(self, ranges=True, data=DATA):
        self.ranges, self.data, self.asked = ranges, data, []

    def __call__(self, offset):
        self.asked.append(offset)
        start = offset if self.ranges else 0
        return io.BytesIO(self.data[start:]), start


def test_a_partial_is_resumed_from_where_it_stopped(tmp_path):
    store = Store(str(tmp_path))
    with open(store.partial_path(DIGEST), "wb") as f:
        f.write(DATA[:123_456])
    source = Source()
    assert store.ingest_resumable(DIGEST, len(DATA), source) is True
    assert source.asked == [123_456]
    assert store.open_blob(DIGEST).read() == DATA and os.listdir(tmp_path / "tmp") == []


def test_a_server_without_range_starts_over(tmp_path):
    store = Store(str(tmp_path))
    with open(store.partial_path(DIGEST), "wb") as f:
        f.write(DATA[:1000])
    assert store.ingest_resumable(DIGEST, len(DATA), Source(ranges=False)) is True
    assert store.open_blob(DIGEST).read() == DATA


def test_kept_bytes_that_are_not_the_blobs_are_downloaded_again(tmp_path):
    store = Store(str(tmp_path))
    with open(store.partial_path(DIGEST), "wb") as f:
        f.write(b"garbage" * 100)
    source = Source()
    assert store.ingest_resumable(DIGEST, len(DATA), source) is True
    assert source.asked == [700, 0] and store.open_blob(DIGEST).read() == DATA


def test_bad_content_and_a_full_disk_remove_the_partial_other_failures_keep_it(tmp_path):
    store = Store(str(tmp_path))
    with pytest.raises(ImageError):
        store.ingest_resumable(DIGEST, len(DATA), Source(data=DATA[:-1] + b"!"))
    assert not os.path.exists(store.partial_path(DIGEST))

    class Failing(io.BytesIO):
        def __init__(self, err):
            super().__init__(DATA[:5000])
            self.err, self.calls = err, 0

        def read(self, n=-1):
            self.calls += 1
            if self.calls > 1:
                raise self.err
            return super().read(5000)

    for err, kept in ((ConnectionResetError("reset"), True), (OSError(errno.ENOSPC, "full"), False)):
        with pytest.raises(OSError):
            store.ingest_resumable(DIGEST, len(DATA), lambda offset: (Failing(err), 0))
        assert os.path.exists(store.partial_path(DIGEST)) is kept


def test_sweep_removes_old_partials_and_prune_all_unheld_ones(tmp_path):
    store = Store(str(tmp_path))
    old, new = store.partial_path("sha256:" + "a" * 64), store.partial_path("sha256:" + "b" * 64)
    for path in (old, new):
        with open(path, "wb") as f:
            f.write(b"x" * 10)
    day_ago = time.time() - 2 * 24 * 3600
    os.utime(old, (day_ago, day_ago))
    store.sweep_tmp()
    assert not os.path.exists(old) and os.path.exists(new)
    assert store.tmp_usage()[0] == 1
    store.sweep_tmp(0)
    assert store.tmp_usage() == (0, 0)


def test_sweep_removes_a_dead_writers_temp_entries_at_once_and_never_a_live_ones(tmp_path):
    """A killed load/unpack/rmi leaves an unlocked temp entry: gone at the next sweep, whatever its age; an
    entry whose writer is alive (its lock held) stays, and so does a fresh partial (worth resuming)."""
    store = Store(str(tmp_path))
    live_file, live_lock = store._claim_temp("blob-")
    live_dir, dir_lock = store._claim_temp("unpack-", directory=True)
    dead_file, lock = store._claim_temp("blob-")
    os.write(lock, b"x" * 5000)
    os.close(lock)  # as the kernel does for a SIGKILLed writer
    dead_dir, lock = store._claim_temp("rm-", directory=True)
    os.makedirs(os.path.join(dead_dir, "x", "y"))
    os.close(lock)
    fresh_partial = store.partial_path("sha256:" + "c" * 64)
    with open(fresh_partial, "wb") as f:
        f.write(b"p")
    try:
        assert store.sweep_tmp() > 0
        assert sorted(os.listdir(store._tmp)) == sorted(os.path.basename(p)
                                                         for p in (live_file, live_dir, fresh_partial))
    finally:
        os.close(live_lock)
        os.close(dir_lock)
    store.sweep_tmp(0)
    assert store.tmp_usage() == (0, 0)


def test_a_writer_whose_new_entry_was_swept_before_it_locked_it_makes_another(tmp_path, monkeypatch):
    store = Store(str(tmp_path))
    real_flock, swept = fcntl.flock, []

    def flock_after_a_sweep(fd, op):
        if not swept:  # the sweeper wins the race for the writer's first, still unlocked entry
            swept.append(os.listdir(store._tmp))
            store.sweep_tmp()
            swept.append(os.listdir(store._tmp))
        return real_flock(fd, op)

    monkeypatch.setattr(fcntl, "flock", flock_after_a_sweep)
    path, lock = store._claim_temp("blob-")
    monkeypatch.setattr(fcntl, "flock", real_flock)
    try:
        assert len(swept[0]) == 1 and swept[1] == []  # the first entry was swept ...
        assert os.path.exists(path) and swept[0][0] != os.path.basename(path)  # ... and another one made and os.listdir(store._tmp) == [os.path.basename(path)]
    finally:
        os.close(lock)


def test_drop_partial_removes_an_unheld_partial_only(tmp_path):
    store = Store(str(tmp_path))
    digest = "sha256:" + "d" * 64
    path = store.partial_path(digest)
    with open(path, "wb") as f:
        f.write(b"x")
    held = os.open(path, os.O_RDONLY)
    fcntl.flock(held, fcntl.LOCK_EX)  # a pull writing it
    try:
        store.drop_partial(digest)
        assert os.path.exists(path)
    finally:
        os.close(held)
    store.drop_partial(digest)
    assert not os.path.exists(path)
    store.drop_partial(digest)  # none: nothing to do
