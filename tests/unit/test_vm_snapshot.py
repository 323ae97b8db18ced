"""Snapshot fast start, the host-side pure parts: what invalidates a saved state, the GO line, the files."""

import os
import re

from runner.vm import snapshot
from runner.vm.layout import MachinePaths

ARGV = ["qemu-system-x86_64", "-m", "2048", "-netdev", "user,id=net0,hostfwd=tcp:127.0.0.1:40022-:22",
        "-drive", "file=/m/data.qcow2,if=none,id=data,format=qcow2"]
EXTRA = {"qemu": "1:2", "manifest": "abc", "keys": ["ssh-ed25519 A", "ssh-ed25519 B"]}


def test_key_ignores_the_ssh_port_only():
    k = snapshot.key(ARGV, 40022, EXTRA)
    moved = [a.replace("40022", "41234") for a in ARGV]
    assert snapshot.key(moved, 41234, EXTRA) == k
    assert snapshot.key([a.replace("2048", "4096") for a in ARGV], 40022, EXTRA) != k  # memory
    assert snapshot.key(ARGV + ["-virtfs", "local,path=/x"], 40022, EXTRA) != k  # devices
    assert snapshot.key(ARGV, 40022, dict(EXTRA, manifest="other")) != k  # image rebuilt
    assert snapshot.key(ARGV, 40022, dict(EXTRA, keys=["ssh-ed25519 C", "ssh-ed25519 B"])) != k  # keys
    assert snapshot.key(ARGV, 40022, dict(EXTRA, qemu="3:4")) != k  # another QEMU


def test_usable_needs_the_same_key_and_an_intact_file(tmp_path):
    assert snapshot.usable(tmp_path, "k") is None
    snapshot.state_path(tmp_path).write_bytes(b"x" * 10)
    snapshot.meta_path(tmp_path).write_text('{"key": "k", "size": 10}')
    assert snapshot.usable(tmp_path, "k") == snapshot.state_path(tmp_path)
    assert snapshot.usable(tmp_path, "other") is None
    snapshot.state_path(tmp_path).write_bytes(b"x" * 9)  # truncated
    assert snapshot.usable(tmp_path, "k") is None
    snapshot.meta_path(tmp_path).write_text("not json")
    assert snapshot.usable(tmp_path, "k") is None
    snapshot.discard(tmp_path)
    assert not snapshot.state_path(tmp_path).exists() and not snapshot.meta_path(tmp_path).exists()


def test_go_line_carries_fresh_time_entropy_and_the_token():
    token = "ab" * 32
    a, b = snapshot.go_line(token), snapshot.go_line(token)
    m = re.fullmatch(rb"GO (\d+\.\d{3}) ([0-9a-f]{128}) ([0-9a-f]+)\n", a)
    assert m and m.group(3) == token.encode()
    assert a.split()[2] != b.split()[2]  # a new seed every time


def test_incoming_uri_quotes_the_path():
    assert snapshot.incoming_uri(snapshot.state_path(snapshot.Path("/a b"))) == "exec:cat '/a b/snapshot.state'"


def test_env_switch(monkeypatch):
    monkeypatch.delenv(snapshot.ENV, raising=False)
    assert snapshot.enabled("linux") and snapshot.enabled("darwin") and not snapshot.enabled("windows")
    monkeypatch.setenv(snapshot.ENV, "0")
    assert not snapshot.enabled("linux")


def test_long_state_dirs_get_a_short_control_socket(tmp_path):
    deep = tmp_path / ("d" * 120)
    assert len(os.fsencode(MachinePaths("m", deep).control_socket)) < 108
    assert MachinePaths("m", tmp_path).control_socket == tmp_path / "control.sock"
