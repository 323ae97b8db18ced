"""A running record from another boot is dead even if its pids name live processes now: a VM resumed from the
same saved state reuses pids and start times (runner.engine.state.boot_id, the agent's boot nonce)."""

import os
import sys

import pytest

from runner.engine import state
from runner.procs import start_time

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc (Linux)")


def _record(boot: str | None) -> state.ContainerRecord:
    me = os.getpid()
    return state.ContainerRecord(id="c" * 64, name="x", spec={}, image_id="i", image_ref="i", created=0,
                                 status=state.RUNNING, pid=me, pid_start=start_time(me), shim_pid=me,
                                 shim_start=start_time(me), extra={} if boot is None else {"boot_id": boot})


def test_other_boot_is_dead_even_when_its_pids_are_alive(tmp_path, monkeypatch):
    monkeypatch.setattr(state, "BOOT_NONCE", str(tmp_path / "nonce"))
    store = state.StateStore(str(tmp_path))
    (tmp_path / "nonce").write_text("first\n")
    here = state.boot_id()
    assert here.endswith("/first")
    rec = _record(here)
    os.makedirs(store.dir(rec.id))
    store.save(rec)
    assert store.reconcile(store.load(rec.id)).status == state.RUNNING  # this boot, alive: running
    (tmp_path / "nonce").write_text("second\n")  # the agent's next boot of the same saved state
    fresh = store.reconcile(store.load(rec.id))
    assert (fresh.status, fresh.exit_code) == (state.EXITED, 255)
    assert fresh.error.startswith("the machine stopped")
    assert store.load(rec.id).status == state.EXITED  # saved


def test_records_without_a_boot_id_keep_the_pid_check(tmp_path):
    store = state.StateStore(str(tmp_path))
    rec = _record(None)
    os.makedirs(store.dir(rec.id))
    store.save(rec)
    assert store.reconcile(store.load(rec.id)).status == state.RUNNING
