"""Attach streams with more data than the pipes hold: a `cat` fed a few MB on stdin answers all of it while its
stdin is still being written. The pump must drain the output while it feeds the input: a pump that blocks
writing stdin into a container that is itself blocked writing its output deadlocks (the single-threaded poll
pump did, once the shim relayed stdin itself)."""

from __future__ import annotations

import hashlib
import os

IMAGE = "localhost/busybox"


def test_stdin_larger_than_the_pipes_comes_back_whole(api):
    data = os.urandom(3 << 20)
    proc = api.docker("run", "--rm", "-i", IMAGE, "cat", input=data, timeout=180)
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout) == len(data) and hashlib.sha256(proc.stdout).digest() == hashlib.sha256(data).digest()
