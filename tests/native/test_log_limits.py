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
        assert wait_for(lambda: os.path.exists(os.path.join(root, "containers", cid, "container.log.2")))
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
        # The last 5 lines; of a live log, the last may still be unterminated (cut mid-number): not compared.
        last5 = cli(["logs", "--tail", "5", cid], root=root).stdout.decode().splitlines(keepends=True)
        tail = [int(line.split()[1]) for line in last5 if line.endswith("\n")]
        assert len(last5) == 5 and len(tail) >= 4 and tail == list(range(tail[0], tail[0] + len(tail)))
        assert tail[0] > numbers[-1]
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


def test_tail_counts_lines_not_the_chunks_they_were_written_in(native_root):
    """Docker's --tail N is the last N lines, however the workload's writes cut them: here every line spans
    two writes and each write ends a line and starts the next (tests/unit/test_log_rotation.py: both streams)."""
    script = 'for i in 1 2 3 4 5 6; do printf "x$i"; printf "y$i\\nz"; done; printf end'
    proc = cli(["run", "--name", "tail-lines", "--network", "none", IMG, "sh", "-c", script], root=native_root)
    try:
        assert proc.returncode == 0, proc.stderr.decode()
        got = cli(["logs", "--tail", "3", "tail-lines"], root=native_root)
        assert got.returncode == 0, got.stderr.decode()
        assert got.stdout.decode() == "zx5y5\nzx6y6\nzend", got.stdout.decode()  # the last is unterminated
        got = cli(["logs", "-n", "0", "tail-lines"], root=native_root)
        assert got.returncode == 0 and got.stdout == b"" and got.stderr == b""
        assert cli(["logs", "--tail", "all", "tail-lines"], root=native_root).stdout.decode() == \
            "x1y1\n" + "".join(f"zx{i}y{i}\n" for i in range(2, 7)) + "zend"
        bad = cli(["logs", "--tail", "lots", "tail-lines"], root=native_root)
        assert bad.returncode == 125 and 'invalid value for "tail"' in bad.stderr.decode()
    finally:
        cli(["rm", "-f", "tail-lines"], root=native_root)


def test_follow_with_tail_shows_the_last_lines_a_prompt_at_once_then_new_output(native_root):
    proc = cli(["run", "-d", "--name", "tail-follow", "--network", "none", IMG, "sh", "-c",
                'for i in 1 2 3 4; do echo "old $i"; done; printf "prompt> "; '
                'while [ ! -e /tmp/go ]; do sleep 0.05; done; echo answered'], root=native_root)
    assert proc.returncode == 0, proc.stderr.decode()
    follower = None
    try:
        wait_for(lambda: b"prompt> " in cli(["logs", "tail-follow"], root=native_root).stdout, what="the prompt")
        follower = subprocess.Popen([sys.executable, "-m", "runner", "--backend", "native", "logs", "-f",
                                     "--tail", "2", "tail-follow"],
                                    env=dict(os.environ, RUNNER_ROOT=native_root, PYTHONPATH=REPO),
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        os.set_blocking(follower.stdout.fileno(), False)
        seen = b""

        def read_more() -> bytes:
            nonlocal seen
            seen += follower.stdout.read() or b""
            return seen
        # The unterminated prompt is shown without waiting for its newline (the reader caught up).
        assert wait_for(lambda: read_more() == b"old 4\nprompt> ", timeout=20, what="the tail and the prompt")
        assert cli(["exec", "tail-follow", "touch", "/tmp/go"], root=native_root).returncode == 0
        assert wait_for(lambda: read_more() == b"old 4\nprompt> answered\n", timeout=20, what="the new line")
        assert follower.wait(timeout=30) == 0  # the container exited: -f ends
    finally:
        cli(["rm", "-f", "tail-follow"], root=native_root)
        if follower is not None:
            if follower.poll() is None:
                follower.kill()
            follower.wait(timeout=30)
            follower.stdout.close()
            follower.stderr.close()
