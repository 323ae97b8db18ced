"""runner.diskfull: a full disk as one clear error, and the spare file that lets records be written anyway.
(The real thing, a full tmpfs, is tested in tests/native/test_diskfull.py.)"""

from __future__ import annotations

import errno
import json
import os

import pytest

from runner import diskfull
from runner.engine import logs
from runner.engine.state import EXITED, RUNNING, ContainerRecord, StateStore
from runner.errors import DiskFullError, RunnerError


def full(path="/x/y"):
    return OSError(errno.ENOSPC, "No space left on device", path)


def test_sizes_are_docker_units():
    assert [diskfull.human_size(n) for n in (0, 999, 1000, 1234567, 12 * 10**9)] == \
        ["0B", "999B", "1kB", "1.23MB", "12GB"]


def test_mount_of_finds_the_longest_mount_point_and_its_type():
    assert diskfull.mount_of("/proc/self/status") == ("/proc", "proc")
    point, fstype = diskfull.mount_of("/proc/no/such/file")  # the nearest existing parent counts
    assert (point, fstype) == ("/proc", "proc")


def test_space_for_names_the_filesystem_its_free_space_and_the_work():
    with pytest.raises(DiskFullError) as info:
        with diskfull.space_for("pulling busybox", "/"):
            raise full("/proc/self/status")
    err = info.value
    assert err.exit_code == 125 and "runner system prune" in err.hint
    assert str(err).startswith("no space left on /proc (proc, ") and str(err).endswith(" while pulling busybox")
    assert isinstance(err.__cause__, OSError)
    with pytest.raises(PermissionError):  # anything else passes unchanged
        with diskfull.space_for("x", "/"):
            raise PermissionError(errno.EACCES, "denied")


def test_quota_counts_as_full():
    with pytest.raises(DiskFullError):
        with diskfull.space_for("x", "/"):
            raise OSError(errno.EDQUOT, "Disk quota exceeded")


def test_needs_space_words_the_call_and_uses_the_objects_root(tmp_path):
    class Thing:
        root = str(tmp_path)

        @diskfull.needs_space("pulling {ref}")
        def pull(self, ref, platform=None):
            raise OSError(errno.ENOSPC, "No space left on device")  # no file name: the root's filesystem

    with pytest.raises(DiskFullError, match=r" while pulling alpine:3$"):
        Thing().pull("alpine:3")
    with pytest.raises(DiskFullError, match=r" while pulling alpine$"):
        Thing().pull(ref="alpine")


def test_the_error_crosses_the_agent_protocol_as_its_type():
    err = diskfull.disk_full_error("/", "loading images")
    back = RunnerError.from_dict(json.loads(json.dumps(err.to_dict())))
    assert type(back) is DiskFullError and back.message == err.message and back.hint == err.hint


def test_a_full_disk_writes_through_the_spare(tmp_path):
    path = str(tmp_path / "state.json")

    def failing():
        raise full(path)

    with pytest.raises(OSError):  # no spare yet: the error stands
        diskfull.write_or_reserve(path, b"{}", failing)
    diskfull.write_or_reserve(path, b'{"a": 1}', lambda: open(path, "wb").write(b'{"a": 1}'))
    spare = diskfull.reserve_path(path)
    assert os.path.getsize(spare) == diskfull.RESERVE_MIN  # kept after a normal write
    diskfull.write_or_reserve(path, b'{"a": 2}', failing)
    assert open(path, "rb").read() == b'{"a": 2}' and not os.path.exists(spare)  # used up
    with pytest.raises(OSError):
        diskfull.write_or_reserve(path, b'{"a": 3}', failing)
    assert open(path, "rb").read() == b'{"a": 2}'


def test_log_output_that_finds_the_disk_full_is_dropped_not_fatal():
    writer = logs.LogWriter("/dev/full")  # every write to /dev/full fails with ENOSPC
    try:
        writer.write(logs.STDOUT, b"hello")
        writer.write(logs.STDERR, b"world!")
    finally:
        writer.close()
    assert writer.dropped == 11


def test_reconcile_shows_a_dead_container_exited_though_it_cannot_be_saved(tmp_path, monkeypatch):
    store = StateStore(str(tmp_path))
    rec = store.create("c", lambda cid, name: ContainerRecord(cid, name, {}, "img", "img", 0.0, status=RUNNING,
                                                              pid=2**22 - 1, pid_start=1, shim_pid=2**22 - 1,
                                                              shim_start=1))

    def no_space(*a, **kw):
        raise full()

    monkeypatch.setattr(store, "save", no_space)
    shown = store.reconcile(store.load(rec.id))
    assert shown.status == EXITED and shown.exit_code == 255
    assert store.load(rec.id).status == RUNNING  # not saved


def test_a_record_that_cannot_be_saved_leaves_no_container_directory(tmp_path, monkeypatch):
    store = StateStore(str(tmp_path))
    monkeypatch.setattr("runner.engine.state.write_json_atomic", lambda *a, **kw: (_ for _ in ()).throw(full()))
    with pytest.raises(OSError):
        store.create("c", lambda cid, name: ContainerRecord(cid, name, {}, "img", "img", 0.0))
    assert [e for e in os.listdir(store.root) if not e.startswith(".")] == []
