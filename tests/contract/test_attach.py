"""`runner attach` to a container that already runs, on every backend: typing into a `-dit` shell, detach keys,
window sizes, piped input into a `-di` container, StdinOnce, two attachers at once; and `logs --until`."""

from __future__ import annotations

import json
import os
import sys
import uuid

import pytest

from tests.helpers import REPO, wait_for
from tests.ptysession import PtySession

IMG = "localhost/busybox"


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _state(rn, name: str) -> dict:
    p = rn("inspect", name)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)[0]["State"]


def _attach_pty(rn, *args: str, rows: int = 33, cols: int = 111) -> PtySession:
    env = dict(os.environ, PYTHONPATH=REPO, **rn.env)
    if rn.root:
        env["RUNNER_ROOT"] = rn.root
    return PtySession([sys.executable, "-m", "runner", "--backend", rn.backend, "attach", *args], env, rows, cols)


@pytest.fixture
def container(rn):
    """Names of containers a test starts; each is removed at the end, whatever happened."""
    names: list[str] = []
    yield names
    for name in names:
        rn("rm", "-f", name)


def _until_seen(session: PtySession, command: bytes, needle: bytes, tries: int = 15) -> None:
    """Type ``command`` until its output shows ``needle`` (a resize reaches the container asynchronously)."""
    for _ in range(tries):
        session.send(command)
        try:
            session.expect(needle, 2)
            return
        except AssertionError:
            continue
    raise AssertionError(f"{needle!r} never seen; output: {session.output[-2000:]!r}")


def _run_d(rn, container: list, name: str, *args: str) -> None:
    container.append(name)
    p = rn("run", "-d", "--name", name, *args)
    assert p.returncode == 0, p.stderr


def test_attach_types_into_a_running_tty_shell_detaches_and_resizes(rn, container):
    name = _name("att-tty")
    _run_d(rn, container, name, "-it", IMG, "sh")
    session = _attach_pty(rn, name)
    try:
        session.send(b"echo $((6 * 7))-answer\r")
        session.expect(b"42-answer")
        session.send(b"\x10\x11")  # ctrl-p ctrl-q: detach, the shell runs on
        assert session.wait() == 0
        assert b"\x11" not in session.output.split(b"42-answer")[-1]  # the keys were not passed on
    finally:
        session.close()
    assert _state(rn, name)["Running"]

    session = _attach_pty(rn, name, rows=21, cols=77)  # the attach brings its window size along
    try:
        session.send(b"stty size\r")
        session.expect(b"21 77")
        session.resize(40, 100)  # SIGWINCH in the CLI: the container's terminal follows
        _until_seen(session, b"stty size\r", b"40 100")
        session.send(b"exit 5\r")
        assert session.wait() == 5  # the container's exit code is the attach's
    finally:
        session.close()
    state = _state(rn, name)
    assert not state["Running"] and state["ExitCode"] == 5


def test_custom_detach_keys(rn, container):
    name = _name("att-keys")
    _run_d(rn, container, name, "-it", IMG, "sh")
    session = _attach_pty(rn, "--detach-keys", "ctrl-x,x", name)
    try:
        session.send(b"echo \x10\x11still-attached\r")  # the default keys mean nothing now
        session.expect(b"still-attached")
        session.send(b"\x18x")
        assert session.wait() == 0
    finally:
        session.close()
    assert _state(rn, name)["Running"]


def test_piped_stdin_into_a_di_container_and_two_attachers(rn, container):
    """Without StdinOnce (``run -di``) the end of one attacher's input leaves the container's stdin open: the
    next attacher's input reaches the same shell; each attach answers with the exit code, as docker attach."""
    import subprocess
    name = _name("att-di")
    _run_d(rn, container, name, "-i", IMG, "sh")
    env = dict(os.environ, PYTHONPATH=REPO, **rn.env)
    if rn.root:
        env["RUNNER_ROOT"] = rn.root
    argv = [sys.executable, "-m", "runner", "--backend", rn.backend, "attach", name]
    first = subprocess.Popen(argv, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        first.stdin.write(b"echo one-$((1 + 1))\n")
        first.stdin.close()  # its input ends; it waits for the exit (the container's stdin stays open)
        wait_for(lambda: b"one-2" in rn("logs", name).stdout, 60, "the first attacher's input run by the shell")
        assert first.poll() is None and _state(rn, name)["Running"]
        second = rn("attach", name, input=b"echo two-$((2 + 1)); exit 4\n")
        assert second.returncode == 4, second.stderr
        assert first.wait(60) == 4
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
        first.stdout.close()
        first.stderr.close()
    assert rn("logs", name).stdout == b"one-2\ntwo-3\n"


def test_stdin_once_container_ends_its_stdin_with_the_attachers(rn, container):
    """``create -i`` (StdinOnce, as docker): the attacher's end of input is the container's, and the attach
    streams the output until the container exits."""
    name = _name("att-once")
    container.append(name)
    p = rn("create", "-i", "--name", name, IMG, "sh", "-c", "tr a-z A-Z; echo done")
    assert p.returncode == 0, p.stderr
    assert json.loads(rn("inspect", name).stdout)[0]["Config"]["StdinOnce"] is True
    assert rn("start", name).returncode == 0
    p = rn("attach", name, input=b"shout\n")
    assert p.returncode == 0, p.stderr
    assert p.stdout == b"SHOUT\ndone\n"
    assert _state(rn, name)["Status"] == "exited"


def test_attach_without_stdin_follows_the_output_and_returns_the_exit_code(rn, container):
    """A container without -i and -t: its output from now on (from the log), and its exit code."""
    import subprocess
    import threading
    name = _name("att-out")
    _run_d(rn, container, name, IMG, "sh", "-c", "echo before; while [ ! -e /tmp/go ]; do echo tick; sleep 0.1; "
                                                 "done; echo after; exit 6")
    wait_for(lambda: b"before" in rn("logs", name).stdout, 60, "the first line")
    env = dict(os.environ, PYTHONPATH=REPO, **rn.env)
    if rn.root:
        env["RUNNER_ROOT"] = rn.root
    proc = subprocess.Popen([sys.executable, "-m", "runner", "--backend", rn.backend, "attach", name], env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    seen = bytearray()

    def read() -> None:
        while chunk := proc.stdout.read1(4096):
            seen.extend(chunk)
    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        wait_for(lambda: b"tick" in seen, 60, "live output through the attach")
        assert rn("exec", name, "touch", "/tmp/go").returncode == 0
        assert proc.wait(60) == 6
        reader.join(10)
        assert seen.endswith(b"after\n") and b"before" not in seen  # from "now" on, to the end
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        reader.join(10)
        proc.stdout.close()
        proc.stderr.close()


def test_attach_to_a_stopped_container_is_a_clear_error(rn, container):
    name = _name("att-stopped")
    container.append(name)
    assert rn("create", "-i", "--name", name, IMG, "true").returncode == 0
    p = rn("attach", name)
    assert p.returncode != 0
    assert "You cannot attach to a stopped container, start it first" in p.stderr.decode()
    assert "Traceback" not in p.stderr.decode()


def test_logs_until_and_since(rn, container):
    name = _name("logs-until")
    container.append(name)
    p = rn("run", "--name", name, IMG, "sh", "-c", "echo one; sleep 1.2; echo two")
    assert p.returncode == 0, p.stderr
    stamped = rn("logs", "-t", name).stdout.decode().splitlines()
    assert [line.split(" ", 1)[1] for line in stamped] == ["one", "two"]
    second = stamped[1].split(" ", 1)[0]
    assert rn("logs", "--until", second, name).stdout == b"one\n"
    assert rn("logs", "--since", second, name).stdout == b"two\n"
    assert rn("logs", "--until", "2000-01-01T00:00:00Z", name).stdout == b""


def test_start_ai_of_a_stopped_interactive_container_keeps_working(rn, container):
    name = _name("att-startai")
    container.append(name)
    assert rn("create", "-i", "--name", name, IMG, "tr", "a-z", "A-Z").returncode == 0
    for word in (b"first", b"again"):  # a second start wires the new run's stdin afresh
        p = rn("start", "-ai", name, input=word + b"\n")
        assert p.returncode == 0, p.stderr
        assert p.stdout == word.upper() + b"\n"


def test_run_i_reads_a_regular_file_as_stdin(rn, tmp_path):
    from tests.helpers import cli
    data = b"line\n" * 50000  # more than any pipe holds: read at the container's pace
    src = tmp_path / "input.txt"
    src.write_bytes(data)
    with open(src, "rb") as f:
        p = cli(["run", "--rm", "-i", IMG, "wc", "-c"], root=rn.root, backend=rn.backend, env=rn.env, stdin=f)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == str(len(data)).encode()


def test_sig_proxy_passes_ctrl_c_to_a_container_without_a_terminal(rn, container):
    import signal
    import subprocess
    name = _name("att-sig")
    _run_d(rn, container, name, "-i", IMG, "sh", "-c",
           "trap 'echo got-int; exit 9' INT; while :; do echo tick; sleep 0.1; done")
    env = dict(os.environ, PYTHONPATH=REPO, **rn.env)
    if rn.root:
        env["RUNNER_ROOT"] = rn.root
    proc = subprocess.Popen([sys.executable, "-m", "runner", "--backend", rn.backend, "attach", name], env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdout.readline() == b"tick\n"  # attached (live output): its signal handlers are in place
        proc.send_signal(signal.SIGINT)  # docker's --sig-proxy (the default): to the container, not the CLI
        assert proc.wait(60) == 9, proc.stderr.read()
        assert proc.stdout.read().endswith(b"got-int\n")  # (its stdin stayed open: the attach saw it all)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def test_an_attacher_beside_the_terminal_that_started_the_container(rn, container):
    """`run -it` in one terminal, `attach` in another: both type into the same shell, both see its output,
    and both end with its exit code."""
    name = _name("att-two")
    container.append(name)
    env = dict(os.environ, PYTHONPATH=REPO, **rn.env)
    if rn.root:
        env["RUNNER_ROOT"] = rn.root
    starter = PtySession([sys.executable, "-m", "runner", "--backend", rn.backend, "run", "-it", "--name", name,
                          IMG, "sh"], env)
    other = None
    try:
        starter.send(b"echo started-$((1 + 1))\r")
        starter.expect(b"started-2")
        other = _attach_pty(rn, name)
        other.send(b"echo from-other-$((3 + 4))\r")
        other.expect(b"from-other-7")
        starter.expect(b"from-other-7")  # the starter's terminal shows what the other typed, and its answer
        starter.send(b"exit 3\r")
        assert starter.wait() == 3
        assert other.wait() == 3
    finally:
        starter.close()
        if other is not None:
            other.close()
