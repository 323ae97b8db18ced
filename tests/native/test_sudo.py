"""The README's commands work verbatim for a user with sudo rights, and say what to do without sudo.

A throw-away user (``rnr<pid>``) with a NOPASSWD sudoers drop-in runs the CLI and scripts/test; it is
removed again, with its drop-in, even when a test fails. Root running them needs no sudo at all: the rest
of the suite runs as root through the very same scripts.
"""

import os
import shutil
import subprocess
import sys
import tempfile

import pytest

from tests.helpers import REPO

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def user():
    name = f"rnr{os.getpid()}"
    dropin = f"/etc/sudoers.d/{name}"
    subprocess.run(["useradd", "--create-home", "--shell", "/bin/bash", name], check=True, capture_output=True)
    try:
        with open(dropin, "w") as f:
            f.write(f"{name} ALL=(ALL) NOPASSWD: ALL\n")
        os.chmod(dropin, 0o440)
        yield name
    finally:
        if os.path.exists(dropin):
            os.unlink(dropin)
        subprocess.run(["userdel", "--remove", name], capture_output=True)


@pytest.fixture
def bindir():
    """A directory the throw-away user can read (pytest's tmp_path is root's alone), for a PATH without sudo."""
    top = tempfile.mkdtemp(prefix="rnr-path-")
    os.chmod(top, 0o755)
    try:
        yield top
    finally:
        shutil.rmtree(top, ignore_errors=True)


def as_user(name, argv, path=None, timeout=120):
    env = ["env", f"PYTHONPATH={REPO}", f"PATH={path or os.environ.get('PATH', '/usr/bin:/bin')}"]
    return subprocess.run(["runuser", "-u", name, "--", *env, *argv], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)


def test_runner_runs_itself_again_through_sudo(user):
    proc = as_user(user, [sys.executable, "-m", "runner", "run", "--rm", "localhost/busybox", "id", "-u"])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "0\n"  # the container ran as root, through sudo
    assert proc.stderr == "runner: the native backend needs root; running the command again through sudo\n"


def test_without_sudo_runner_says_so_in_one_error(user, bindir):
    # an empty PATH: no sudo on it (sys.executable is absolute)
    proc = as_user(user, [sys.executable, "-m", "runner", "ps"], path=bindir)
    assert proc.returncode == 125
    assert proc.stderr.splitlines() == [
        "Error: the native backend needs root privileges",
        "Hint: run it as root (no sudo here: su -c 'runner ...'), or use the VM backend: runner --backend vm ..."]


def test_scripts_test_runs_itself_again_through_sudo(user):
    proc = as_user(user, ["bash", "scripts/test", "-q", "-p", "no:cacheprovider", "tests/unit/test_spec.py"],
                   timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "scripts/test: the suite needs root; running again through sudo" in proc.stderr
    assert " passed" in proc.stdout


def test_scripts_without_sudo_say_how_to_run_them(user, bindir):
    for tool in ("bash", "id", "dirname"):  # what the scripts need before they elevate, and no sudo
        os.symlink(shutil.which(tool), os.path.join(bindir, tool))
    for script, what in (("setup", "scripts/setup installs system packages"), ("test", "the test suite needs root")):
        proc = as_user(user, ["bash", f"scripts/{script}"], path=bindir)
        assert proc.returncode == 125, proc.stderr
        lines = proc.stderr.splitlines()
        assert len(lines) == 2 and lines[0].startswith(f"Error: {what}") and lines[1].startswith("Hint: "), lines
