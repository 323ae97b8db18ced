"""Containers through the Engine API with the real docker CLI (Debian's 20.10, API 1.41), on both backends.

Each test is a scenario a user runs first: run/echo and exit codes, stdin, a real terminal, the detached
lifecycle, published ports, version negotiation, Docker's error texts. The docker CLI is the client; nothing
of the client side is faked.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import select
import signal
import struct
import subprocess
import termios
import time
import urllib.request
import uuid

import pytest

from tests.api.conftest import DOCKER
from tests.helpers import wait_for

IMAGE = "localhost/busybox"


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _ok(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 0, (proc.returncode, proc.stdout, proc.stderr)
    return proc.stdout.decode()


def test_run_echo_and_exit_codes(api):
    proc = api.docker("run", "--rm", IMAGE, "sh", "-c", "echo to-out; echo to-err >&2")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == b"to-out\n" and proc.stderr == b"to-err\n"
    assert api.docker("run", "--rm", IMAGE, "sh", "-c", "exit 1").returncode == 1
    proc = api.docker("run", "--rm", IMAGE, "/etc")
    assert proc.returncode == 126, proc.stderr
    assert b"permission denied" in proc.stderr
    proc = api.docker("run", "--rm", IMAGE, "no-such-command")
    assert proc.returncode == 127, proc.stderr
    assert b"executable file not found" in proc.stderr
    assert api.docker("run", IMAGE, "sh", "-c", "exit 7").returncode == 7  # without --rm: wait next-exit


def test_run_with_stdin_and_half_close(api):
    proc = api.docker("run", "-i", "--rm", IMAGE, "cat", input=b"hi\n")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == b"hi\n"
    # The client's half-close ends the container's stdin only: output written after it still arrives.
    proc = api.docker("run", "-i", "--rm", IMAGE, "sh", "-c", "cat; echo after-eof; exit 3", input=b"a\nb\n")
    assert proc.returncode == 3, proc.stderr
    assert proc.stdout == b"a\nb\nafter-eof\n"


def _docker_in_pty(api, args: list[str], rows: int, cols: int, answer: bytes, after: bytes,
                   timeout: float = 120) -> tuple[int, bytes]:
    """The docker CLI on a new pseudo-terminal of ``rows`` x ``cols``; when ``after`` appears, type ``answer``."""
    env = dict(os.environ, DOCKER_HOST=api.host, DOCKER_CONFIG=os.path.join(api.dir, "docker-config"))
    binary = DOCKER
    pid, fd = pty.fork()
    if pid == 0:  # the child: the terminal's size is set before the CLI starts and reads it
        fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        os.execve(binary, [binary, *args], env)
    output, answered = b"", False
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 1)
            if not ready:
                continue
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                break
            if not chunk:
                break
            output += chunk
            if not answered and after in output:
                os.write(fd, answer)
                answered = True
    finally:
        if time.monotonic() >= deadline:
            os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        os.close(fd)
    return os.waitstatus_to_exitcode(status), output


def test_run_interactive_tty_gets_the_window_size(api):
    # The docker CLI 20.10 sends the window size (resize) only after start returns: the container polls until
    # it has one, as Docker's own containers would see it (newer clients send ConsoleSize with create).
    script = "echo ready; read line; echo got-$line; until [ \"$(stty size 2>/dev/null)\" ]; do sleep 0.05; done; " \
             "stty size; exit 4"
    code, output = _docker_in_pty(api, ["run", "-it", "--rm", IMAGE, "sh", "-c", script],
                                  rows=33, cols=111, answer=b"x\r", after=b"ready")
    assert b"got-x" in output, output
    assert b"33 111" in output, output
    assert code == 4, output


def test_detached_lifecycle_logs_exec_stop_wait_rm(api):
    name = _name("life")
    cid = _ok(api.docker("run", "-d", "--name", name, "-l", "suite=api", IMAGE, "sh", "-c",
                         "trap 'exit 0' TERM; echo first; while true; do echo tick; sleep 0.2; done")).strip()
    assert len(cid) == 64
    try:
        follower = subprocess.Popen([DOCKER, "logs", "-f", name], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    env=dict(os.environ, DOCKER_HOST=api.host))
        try:
            assert follower.stdout.readline() == b"first\n"
            assert follower.stdout.readline() == b"tick\n"  # written after logs -f began: it follows
        finally:
            follower.kill()
            follower.wait()
        assert _ok(api.docker("exec", name, "echo", "from-exec")) == "from-exec\n"
        assert api.docker("exec", name, "sh", "-c", "exit 5").returncode == 5
        assert _ok(api.docker("exec", "-e", "V=1", "-w", "/etc", name, "sh", "-c", "echo $V $PWD")) == "1 /etc\n"
        rows = _ok(api.docker("ps", "--filter", "label=suite=api", "--format", "{{.Names}}|{{.Status}}|{{.Command}}"))
        assert f"{name}|Up" in rows
        assert _ok(api.docker("inspect", "-f", "{{.State.Status}} {{.Name}} {{.Config.Image}}", name)) == \
            f"running /{name} {IMAGE}\n"
        tail = _ok(api.docker("logs", "--tail", "1", "-t", name))
        assert tail.count("\n") == 1 and tail.split(" ", 1)[1] == "tick\n" and tail[:4].isdigit()
        _ok(api.docker("stop", "-t", "5", name))
        assert _ok(api.docker("wait", name)) == "0\n"
        assert name not in _ok(api.docker("ps", "--format", "{{.Names}}"))
        assert f"{name} exited" in _ok(api.docker("ps", "-a", "--filter", "status=exited", "--format",
                                                  "{{.Names}} {{.State}}"))
        _ok(api.docker("rm", name))
        proc = api.docker("inspect", name)
        assert proc.returncode == 1 and b"No such" in proc.stderr
    finally:
        api.docker("rm", "-f", name)


def test_published_port_is_reachable_at_the_reported_port(api):
    name = _name("web")
    _ok(api.docker("run", "-d", "--name", name, "-p", "127.0.0.1::80", IMAGE, "httpd", "-f", "-p", "80", "-h", "/etc"))
    try:
        line = _ok(api.docker("port", name, "80")).splitlines()[0]
        host, port = line.rsplit(":", 1)
        assert host == "127.0.0.1" and int(port) > 0
        ports = json.loads(_ok(api.docker("inspect", "-f", "{{json .NetworkSettings.Ports}}", name)))
        assert ports["80/tcp"][0]["HostPort"] == port

        def fetch():
            try:
                return urllib.request.urlopen(f"http://127.0.0.1:{port}/hostname", timeout=5).read()
            except OSError:
                return None
        assert wait_for(fetch, 60, "the container's httpd through the published port").strip() == \
            _ok(api.docker("inspect", "-f", "{{.Config.Hostname}}", name)).strip().encode()
        assert f"127.0.0.1:{port}->80/tcp" in _ok(api.docker("ps", "--filter", f"name={name}", "--format",
                                                            "{{.Ports}}"))
    finally:
        api.docker("rm", "-f", name)


def test_pinned_api_version_runs_containers(api):
    for version in ("1.41", "1.30"):
        proc = api.docker("run", "--rm", IMAGE, "echo", version, env={"DOCKER_API_VERSION": version})
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout == f"{version}\n".encode()


def test_docker_error_texts(api):
    name = _name("dup")
    _ok(api.docker("create", "--name", name, IMAGE, "true"))
    try:
        cid = _ok(api.docker("inspect", "-f", "{{.Id}}", name)).strip()
        proc = api.docker("create", "--name", name, IMAGE, "true")
        assert proc.returncode != 0
        assert (f'Conflict. The container name "/{name}" is already in use by container "{cid}". You have to '
                "remove (or rename) that container to be able to reuse that name.").encode() in proc.stderr
        proc = api.docker("start", "no-such-container-x")
        assert b"No such container: no-such-container-x" in proc.stderr
        proc = api.docker("run", "--rm", "--dns", "1.1.1.1", IMAGE, "true")
        assert proc.returncode == 125 and b"HostConfig.Dns is not supported" in proc.stderr
    finally:
        api.docker("rm", "-f", name)


NEWER_DOCKER = "/usr/local/bin/docker"


@pytest.mark.skipif(not os.path.exists(NEWER_DOCKER), reason="no newer docker CLI at /usr/local/bin/docker here")
def test_newer_docker_cli_sizes_the_terminal_from_the_start(api, monkeypatch):
    """A docker CLI of API 1.42+ sends ConsoleSize with create: the size is there before the first command."""
    import tests.api.test_containers as this
    monkeypatch.setattr(this, "DOCKER", NEWER_DOCKER)
    proc = subprocess.run([NEWER_DOCKER, "run", "--rm", IMAGE, "echo", "new-cli"], capture_output=True, timeout=180,
                          env=dict(os.environ, DOCKER_HOST=api.host))
    assert proc.returncode == 0 and proc.stdout == b"new-cli\n", proc.stderr
    code, output = _docker_in_pty(api, ["run", "-it", "--rm", IMAGE, "sh", "-c", "stty size; exit 5"],
                                  rows=21, cols=71, answer=b"", after=b"\x00never")
    assert b"21 71" in output and code == 5, output


def test_restart_kill_and_wait(api):
    name = _name("rs")
    _ok(api.docker("run", "-d", "--name", name, IMAGE, "sh", "-c", "trap 'exit 0' TERM; while true; do sleep 0.1; done"))
    try:
        first = _ok(api.docker("inspect", "-f", "{{.State.StartedAt}}", name))
        _ok(api.docker("restart", "-t", "5", name))
        assert _ok(api.docker("inspect", "-f", "{{.State.Running}} {{.State.StartedAt}}", name)) != f"true {first}"
        assert _ok(api.docker("inspect", "-f", "{{.State.Running}}", name)) == "true\n"
        _ok(api.docker("kill", "-s", "KILL", name))
        assert _ok(api.docker("wait", name)) == "137\n"
        proc = api.docker("kill", name)
        assert proc.returncode != 0 and b"is not running" in proc.stderr
        assert api.docker("stop", name).returncode == 0  # 304: already stopped, still a success for the CLI
    finally:
        api.docker("rm", "-f", name)


def test_name_and_ancestor_filters_mean_the_same_through_the_api_and_the_cli(api, rn, tmp_path):
    """`docker ps` (GET /containers/json) and `runner ps` filter with the engine's one implementation, with
    dockerd's meaning (checked against a dockerd 20.10): a `name` that is no valid regular expression lists
    nothing, without an error; `ancestor` resolves the image and also takes the containers of images built
    on it; a missing image lists nothing."""
    prefix = _name("flt")
    child = f"{prefix}-img"
    (tmp_path / "Dockerfile").write_text(f"FROM {IMAGE}\nLABEL flt=child\n")
    _ok(rn("build", "-q", "-t", child, str(tmp_path)))
    try:
        _ok(rn("create", "--name", f"{prefix}-parent", IMAGE, "true"))
        _ok(rn("create", "--name", f"{prefix}-child", child, "true"))
        for ps in (lambda *a: api.docker("ps", "-a", "--format", "{{.Names}}", *a),
                   lambda *a: rn("ps", "-a", "--format", "{{.Names}}", *a)):
            def names(*filters: str) -> list[str]:
                args = [x for f in filters for x in ("--filter", f)]
                return sorted(n for n in _ok(ps(*args)).split() if n.startswith(prefix))
            assert names("name=[") == [] and names("name=(") == []
            assert names("name=[", f"name=^/{prefix}-par") == [f"{prefix}-parent"]  # values ORed; slash or not
            assert names(f"name=^{prefix}-chi") == [f"{prefix}-child"]
            assert names(f"ancestor={IMAGE}") == [f"{prefix}-child", f"{prefix}-parent"]
            assert names(f"ancestor={child}") == [f"{prefix}-child"]
            image_id = _ok(rn("inspect", "-f", "{{.Id}}", child)).strip()
            assert names(f"ancestor={image_id.split(':')[1][:10]}") == [f"{prefix}-child"]
            assert names("ancestor=no-such-image") == []
            bad = ps("--filter", "colour=red")
            assert bad.returncode != 0 and "invalid filter 'colour'" in bad.stderr.decode()
    finally:
        rn("rm", "-f", f"{prefix}-parent", f"{prefix}-child")
        rn("rmi", "-f", child)
