"""runner.procs: process identity that survives pid reuse, the one file lock, the one atomic write."""

import os
import stat
import subprocess
import sys
import time

import pytest

from runner import procs
from runner.errors import RunnerError, VMError

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


def test_identity_names_a_live_process_and_not_a_finished_one():
    me = procs.identity(os.getpid())
    assert me and me == procs.identity(os.getpid())
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert procs.identity(child.pid) is None  # reaped: gone


@linux_only
def test_alive_needs_the_same_start_time():
    started = procs.start_time(os.getpid())
    assert procs.alive(os.getpid(), started) and procs.running(os.getpid())
    assert not procs.alive(os.getpid(), started - 1)  # the same pid, another process's start time
    assert not procs.alive(None, started) and not procs.alive(os.getpid(), None)


@linux_only
def test_a_zombie_counts_as_gone():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 10
    while procs.running(child.pid) and time.monotonic() < deadline:  # exited, not yet reaped: a zombie
        time.sleep(0.01)
    assert not procs.running(child.pid) and procs.identity(child.pid) is None
    child.wait()


def test_cmdline_and_kill(tmp_path):
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "marker-arg"])
    try:
        if sys.platform.startswith("linux"):
            # Until the child has exec'd, /proc shows no (or the parent's) command line: wait for the exec.
            from tests.helpers import wait_for
            wait_for(lambda: "marker-arg" in procs.cmdline(child.pid), 10, "the child's command line")
        else:
            line = procs.cmdline(child.pid)
            assert line is None or "marker-arg" in line
        assert procs.kill(child.pid) is True
        child.wait(10)
        assert procs.kill(child.pid) is False  # gone already
    finally:
        child.kill()
        child.wait()


def test_write_atomic_replaces_with_the_given_mode(tmp_path):
    path = tmp_path / "state.json"
    path.write_text("old")
    procs.write_atomic(path, "new", 0o640)
    assert path.read_text() == "new" and stat.S_IMODE(path.stat().st_mode) == 0o640 & ~_umask()
    procs.write_atomic(str(path), b"bytes", durable=False, sync_dir=True)
    assert path.read_bytes() == b"bytes"
    assert sorted(os.listdir(tmp_path)) == ["state.json"]  # no temp file left


def test_write_atomic_leaves_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "f"
    path.write_text("old")
    with pytest.raises(TypeError):
        procs.write_atomic(path, 12345)  # not bytes: fails after the temp file was made
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["f"]


def test_file_lock_excludes_another_holder_and_times_out_with_the_callers_error(tmp_path):
    path = tmp_path / "lock"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; sys.path.insert(0, sys.argv[1]); from runner.procs import FileLock\n"
        "with FileLock(sys.argv[2]):\n    print('held', flush=True); time.sleep(60)"),
        os.path.dirname(os.path.dirname(procs.__file__)), str(path)], stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline() == b"held\n"
        began = time.monotonic()
        with pytest.raises(VMError, match="busy here") as err:
            with procs.FileLock(path, timeout=0.3, busy="busy here", error=VMError):
                pass
        assert time.monotonic() - began >= 0.3 and err.value.hint
        with pytest.raises(RunnerError):
            procs.FileLock(path, timeout=0).acquire()
    finally:
        holder.kill()
        holder.wait()
    with procs.FileLock(path, timeout=0):  # the kernel released the dead holder's lock
        pass


@pytest.mark.skipif(os.name != "posix", reason="sessions are POSIX")
def test_spawn_detached_runs_in_its_own_session_and_logs(tmp_path):
    log = tmp_path / "out.log"
    proc = procs.spawn_detached([sys.executable, "-c", "import os; print(os.getsid(0))"], log)
    assert proc.wait(10) == 0
    assert int(log.read_text()) == proc.pid != os.getsid(0)  # a session leader of its own
    assert stat.S_IMODE(log.stat().st_mode) == 0o600 & ~_umask()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
