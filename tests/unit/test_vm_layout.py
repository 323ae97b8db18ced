"""Machine directory layout: names, the state-dir override, private files, the short QMP socket path."""

import os
import stat

import pytest

from runner.errors import UsageError
from runner.vm import layout
from runner.vm.layout import MachinePaths


def test_state_dir_override(tmp_path, monkeypatch):
    monkeypatch.setenv(layout.STATE_ENV, str(tmp_path))
    paths = MachinePaths.for_name("default")
    assert paths.dir == tmp_path / "machines" / "default"
    assert paths.qmp_socket == paths.dir / "qmp.sock"
    assert paths.serial_log.name == "serial.log" and paths.data_disk.name == "data.qcow2"
    assert layout.accel_cache_path() == tmp_path / "accel.json"


def test_state_dir_defaults_to_platformdirs(monkeypatch):
    import platformdirs

    monkeypatch.delenv(layout.STATE_ENV, raising=False)
    assert str(layout.state_root()) == platformdirs.user_state_dir("runner")


@pytest.mark.parametrize("name", ["", "-x", "a/b", "..", "a b", "x" * 64])
def test_bad_names_are_refused(name):
    with pytest.raises(UsageError):
        MachinePaths.for_name(name)


def test_long_state_path_moves_the_socket_to_a_short_dir(tmp_path):
    deep = tmp_path / ("d" * 120)
    paths = MachinePaths.for_name("default", root=deep)
    sock = paths.qmp_socket
    assert len(os.fsencode(sock)) <= 104
    assert sock.parent == layout.short_socket_dir()
    assert sock == MachinePaths.for_name("default", root=deep).qmp_socket  # stable across calls
    assert sock != MachinePaths.for_name("other", root=deep).qmp_socket


def test_runtime_files_never_include_data_or_keys(tmp_path):
    paths = MachinePaths.for_name("m", root=tmp_path)
    runtime = paths.runtime_files()
    assert paths.data_disk not in runtime and paths.keys_dir not in runtime
    assert paths.serial_log not in runtime  # logs outlive a crash: they explain it


@pytest.mark.skipif(os.name != "posix", reason="POSIX modes")
def test_private_files_and_dirs(tmp_path):
    d = layout.ensure_private_dir(tmp_path / "a" / "b")
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    f = d / "run.json"
    layout.write_private(f, "{}")
    layout.write_private(f, '{"x": 1}')
    assert f.read_text() == '{"x": 1}'
    assert stat.S_IMODE(f.stat().st_mode) == 0o600
    assert [p.name for p in d.iterdir()] == ["run.json"]  # no temp files left behind

