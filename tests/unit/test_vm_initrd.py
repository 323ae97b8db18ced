"""The per-VM config initramfs: pure-Python newc writer, config contract, and key generation."""

from __future__ import annotations

import io
import json
import shutil
import stat
import subprocess
import sys

import pytest

from runner.vm import initrd, keys


def _config(**overrides):
    cfg = {"hostname": "runner", "ssh_host_key": "-----BEGIN OPENSSH PRIVATE KEY-----\nabc\n-----END OPENSSH "
           "PRIVATE KEY-----\n", "authorized_keys": "ssh-ed25519 AAAA c@h\n", "agent_token": "ab" * 16,
           "agent_port": 7070, "time": 1700000000.5, "rng_seed": "0f" * 64, "timezone": "UTC"}
    cfg.update(overrides)
    return cfg


def test_cpio_round_trip():
    buf = io.BytesIO()
    w = initrd.CpioWriter(buf)
    w.add_dir("etc", 0o755)
    w.add_file("etc/a", b"hello", 0o600)
    w.add_file("etc/empty", b"")
    w.add_symlink("etc/link", "a")
    w.close()
    data = buf.getvalue()
    assert len(data) % 512 == 0
    entries = initrd.read_cpio(data)
    assert [(n, stat.S_IFMT(m), stat.S_IMODE(m), d) for n, m, d in entries] == [
        ("etc", stat.S_IFDIR, 0o755, b""),
        ("etc/a", stat.S_IFREG, 0o600, b"hello"),
        ("etc/empty", stat.S_IFREG, 0o644, b""),
        ("etc/link", stat.S_IFLNK, 0o777, b"a"),
    ]


@pytest.mark.skipif(sys.platform == "win32", reason="Windows has no cpio")
def test_cpio_readable_by_gnu_cpio(tmp_path):
    # scripts/setup installs cpio (scripts/programs.txt): missing, this fails instead of skipping unseen.
    assert shutil.which("cpio"), "no cpio binary to cross-check with: run scripts/setup (apt package cpio)"
    path = tmp_path / "c.cpio"
    initrd.make_config_initrd(_config(), path)
    listing = subprocess.run(["cpio", "-it", "--quiet"], stdin=open(path, "rb"), capture_output=True,
                             text=True, check=True).stdout.split()
    assert listing == ["runner", "runner/config.json"]


def test_config_initrd_is_private_and_parses_back(tmp_path):
    path = tmp_path / "config.cpio"
    cfg = _config()
    initrd.make_config_initrd(cfg, path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    entries = {n: (m, d) for n, m, d in initrd.read_cpio(path.read_bytes())}
    assert stat.S_IMODE(entries["runner"][0]) == 0o700
    mode, data = entries["runner/config.json"]
    assert stat.S_IMODE(mode) == 0o600
    assert json.loads(data) == cfg
    # one key per line: the guest's init reads it with sed
    assert all(line.count('": ') == 1 for line in data.decode().splitlines()[1:-1])


def test_combined_initrd_appends_config_aligned(tmp_path):
    base = tmp_path / "base.img"
    buf = io.BytesIO()
    w = initrd.CpioWriter(buf)
    w.add_file("init", b"#!/bin/sh\n", 0o755)
    w.close()
    base.write_bytes(buf.getvalue())
    out = tmp_path / "boot.img"
    initrd.combined_initrd(base, _config(), out)
    data = out.read_bytes()
    assert data.startswith(base.read_bytes())
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    appended = initrd.read_cpio(data[len(base.read_bytes()):])
    assert [n for n, _, _ in appended] == ["runner", "runner/config.json"]


def test_combined_initrd_can_carry_the_agent_tree_parents_first(tmp_path):
    base = tmp_path / "base.img"
    base.write_bytes(b"")
    out = tmp_path / "boot.img"
    files = {"runner/__init__.py": b"", "runner/agent/server.py": b"x = 1\n", "runner/engine/runtime/oci.py": b"y"}
    initrd.combined_initrd(base, _config(), out, agent=("0123456789abcdef", files))
    entries = initrd.read_cpio(out.read_bytes())
    names = [n for n, _, _ in entries]
    tree = "runner/agent/0123456789abcdef"
    assert names[:4] == ["runner", "runner/config.json", "runner/agent", tree]
    for name in names:  # every entry's parent directory came before it
        parent = name.rpartition("/")[0]
        assert not parent or parent in names[:names.index(name)], name
    body = {n: (m, d) for n, m, d in entries}
    assert body[f"{tree}/runner/agent/server.py"] == (stat.S_IFREG | 0o600, b"x = 1\n")
    assert f"{tree}/.complete" in body and stat.S_IMODE(body[tree][0]) == 0o700


@pytest.mark.parametrize("version, files", [
    ("../../etc", {"runner/a.py": b""}),
    ("0123456789abcdef", {"../evil.py": b""}),
    ("0123456789abcdef", {"/abs.py": b""}),
])
def test_agent_tree_refuses_bad_names(tmp_path, version, files):
    (tmp_path / "base.img").write_bytes(b"")
    with pytest.raises(ValueError):
        initrd.combined_initrd(tmp_path / "base.img", _config(), tmp_path / "o", agent=(version, files))
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("bad, needle", [
    ({"agent_port": "7070"}, "agent_port has type str"),
    ({"rng_seed": "00"}, "rng_seed must be 64 bytes"),
    ({"authorized_keys": "ssh-ed25519 AAAA it's\n"}, "authorized_keys must be ASCII"),
    ({"hostname": "h\u00e9"}, "hostname must be ASCII"),
    ({"timezone": "Europe/Berlin"}, "timezone must be UTC"),
    ({"extra": 1}, "unknown key extra"),
])
def test_config_validation_names_the_problem(bad, needle):
    with pytest.raises(ValueError, match=needle):
        initrd.config_json(_config(**bad))


def test_config_validation_reports_every_missing_key():
    with pytest.raises(ValueError) as exc:
        initrd.config_json({})
    for key in ("hostname", "ssh_host_key", "agent_port", "rng_seed"):
        assert f"missing {key}" in str(exc.value)


def test_keys_are_private_and_pinnable(tmp_path):
    client, host = keys.ensure_keys(tmp_path / "keys", "m1")
    for pair in (client, host):
        assert stat.S_IMODE(pair.private_path.stat().st_mode) == 0o600
        assert pair.private_pem.startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
        assert pair.key_type == "ssh-ed25519"
        assert pair.fingerprint.startswith("SHA256:") and len(pair.fingerprint) == 50
    assert client.public != host.public
    again = keys.ensure_keys(tmp_path / "keys", "m1")
    assert (again[0].public, again[1].public) == (client.public, host.public)
    # the generated config must pass the guest contract (no quotes/backslashes in PEM or pubkey)
    initrd.config_json(_config(ssh_host_key=host.private_pem, authorized_keys=client.public + "\n"))


def test_fingerprint_matches_paramiko(tmp_path):
    paramiko = pytest.importorskip("paramiko")
    pair = keys.generate(tmp_path / "k", "c")
    loaded = paramiko.Ed25519Key.from_private_key_file(str(pair.private_path))
    assert loaded.get_base64() == pair.key_base64
    assert pair.fingerprint == loaded.fingerprint
