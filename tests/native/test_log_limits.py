"""Log limits (issue 19): a container printing without end stays under its --log-opt limit, and `logs`
(also -f) still works across the rotated files."""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
import time

import pytest

from tests.helpers import REPO, cli, wait_for

pytestmark = pytest.mark.root
IMG = "localhost/busybox"


def log_files(root: str, cid: str) -> list[str]:
    return glob.glob(os.path.join(root, "containers", cid, "container.log*"))


def total_size(root: str, cid: str) -> int:
    total = 0
    for path in log_files(root, cid):
        try:
            total += os.path.getsize(path)
        except FileNotFoundError:  # renamed by a rotation meanwhile (it is counted under its new name or gone)
            pass
    return total


def test_endless_output_stays_under_the_log_limit_and_logs_read_across_rotation(native_root):
    root = native_root
    proc = cli(["run", "-d", "--network", "none", "--log-opt", "max-size=64k", "--log-opt", "max-file=3", IMG,
                "sh", "-c", "i=0; while true; do i=$((i+1)); echo line $i; done"], root=root)
    assert proc.returncode == 0, proc.stderr.decode()
    cid = proc.stdout.decode().strip()
    try:
        # Rotation has happened several times over: the third file exists and lines past 20000 were written.
        assert wait_for(lambda: os.path.exists(log_files(root, cid)[0].split('.log')[0] + '.log.2'))
        follower = subprocess.Popen([sys.executable, "-m", "runner", "--backend", "native", "logs", "-f", cid],
                                    env=dict(os.environ, RUNNER_ROOT=root, PYTHONPATH=REPO),
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        samples = []
        for _ in range(20):
            samples.append(total_size(root, cid))
            assert samples[-1] <= 3 * 64 * 1024, samples
            time.sleep(0.05)
        proc = cli(["logs", cid], root=root)
        assert proc.returncode == 0, proc.stderr.decode()
        out = proc.stdout.decode().splitlines()
        numbers = [int(line.split()[1]) for line in out]
        assert numbers == list(range(numbers[0], numbers[0] + len(numbers)))  # in order, nothing torn or doubled
        assert numbers[0] > 1 and len(numbers) > 1000  # the oldest went, three files' worth are read
        tail = [int(line.split()[1]) for line in
                cli(["logs", "--tail", "5", cid], root=root).stdout.decode().splitlines()]  # 5 chunks as written
        assert tail and tail == list(range(tail[0], tail[0] + len(tail))) and tail[0] > numbers[-1]
        assert json.loads(cli(["inspect", cid], root=root).stdout)[0]["HostConfig"]["LogConfig"] == \
            {"Type": "json-file", "Config": {"max-size": "64k", "max-file": "3"}}
    finally:
        cli(["rm", "-f", cid], root=root)
    # The follower crossed rotations while the container ran, and ended when it was removed.
    got, _ = follower.communicate(timeout=30)
    numbers = [int(line.split()[1]) for line in got.decode().splitlines()]
    assert numbers == list(range(numbers[0], numbers[0] + len(numbers))) and len(numbers) > 5000, numbers[-3:]


def test_bad_log_opts_are_refused(native_root):
    for opt, words in (("max-size=lots", "invalid log max-size"), ("mode=non-blocking", "unknown log opt"),
                       ("max-file", "invalid log opt")):
        proc = cli(["run", "--rm", "--log-opt", opt, IMG, "true"], root=native_root)
        assert proc.returncode == 125 and words in proc.stderr.decode(), proc.stderr.decode()
