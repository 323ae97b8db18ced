"""User-level container scenarios that must behave identically on the native and the VM backend.

Those marked ``aarch64`` run on an aarch64 guest machine too (what Apple silicon hosts run; under TCG here, so
a subset): what depends on the guest's architecture or its kernel (exec errors, signals and exec, cgroup v2
limits and OOM, namespaces, capabilities, 9p bind mounts, published ports, a registry pull). Left out there:
env/workdir/stdin, stdout/stderr separation, --rm, kill codes, load/save, unknown images, a port in use and a
killed client, which are the same Python (CLI, agent protocol, state) on any guest and would only add TCG time.
"""

from __future__ import annotations

import json

import pytest

from tests.helpers import wait_for

IMG = "localhost/busybox"


def text(proc) -> str:
    return proc.stdout.decode()


@pytest.mark.aarch64
def test_run_prints_output_and_passes_exit_codes(rn):
    p = rn("run", "--rm", IMG, "echo", "hello")
    assert p.returncode == 0, p.stderr
    assert text(p) == "hello\n"
    assert rn("run", "--rm", IMG, "sh", "-c", "exit 3").returncode == 3
    assert rn("run", "--rm", IMG, "false").returncode == 1


@pytest.mark.aarch64
def test_missing_and_non_executable_commands_give_127_and_126(rn):
    p = rn("run", "--rm", IMG, "/no/such/binary")
    assert p.returncode == 127
    assert p.stderr.decode().startswith("Error: ")
    p = rn("run", "--rm", IMG, "/etc/passwd")
    assert p.returncode == 126


def test_env_workdir_user_and_stdin(rn):
    p = rn("run", "--rm", "-e", "GREETING=hi there", "-w", "/tmp", "-u", "1000:1000", IMG,
           "sh", "-c", 'echo "$GREETING"; pwd; id -u; id -g')
    assert p.returncode == 0, p.stderr
    assert text(p).split("\n")[:4] == ["hi there", "/tmp", "1000", "1000"]
    p = rn("run", "--rm", "-i", IMG, "tr", "a-z", "A-Z", input=b"shout\n")
    assert text(p) == "SHOUT\n"


def test_logs_tail_counts_lines_on_both_backends(rn):
    """--tail N is the last N lines (Docker's json-file entries) however the writes cut them, and through the
    agent as natively; stdout and stderr keep their streams."""
    script = 'for i in 1 2 3 4; do printf "a$i"; printf "b$i\\nc"; done; echo E >&2; printf end'
    p = rn("run", "--name", "contract-tail", "--network", "none", IMG, "sh", "-c", script)
    try:
        assert p.returncode == 0, p.stderr
        p = rn("logs", "--tail", "2", "contract-tail")
        assert p.returncode == 0, p.stderr
        lines = [(1, ln) for ln in text(p).splitlines(keepends=True)] + \
            [(2, ln) for ln in p.stderr.decode().splitlines(keepends=True)]
        assert len(lines) == 2 and (1, "cend") in lines, lines  # the unterminated last line counts as one
        other = [ln for ln in lines if ln != (1, "cend")]
        assert other[0] in ((1, "ca4b4\n"), (2, "E\n")), lines  # streams are relayed apart: either came last
        assert text(rn("logs", "-n", "1", "contract-tail")) == "cend"
    finally:
        rn("rm", "-f", "contract-tail")


def test_stdout_and_stderr_stay_apart(rn):
    p = rn("run", "--rm", IMG, "sh", "-c", "echo out; echo err >&2")
    assert text(p) == "out\n"
    assert p.stderr.decode() == "err\n"


@pytest.mark.aarch64
def test_detached_lifecycle_logs_exec_stop_wait_rm(rn):
    p = rn("run", "-d", "--name", "contract-life", IMG, "sh", "-c",
           "echo started; trap 'echo bye; exit 0' TERM; while true; do sleep 0.1; done")
    assert p.returncode == 0, p.stderr
    cid = text(p).strip()
    assert len(cid) == 64
    try:
        wait_for(lambda: "started" in text(rn("logs", "contract-life")), 30, "'started' in the logs", interval=0.1)
        assert text(rn("logs", "contract-life")) == "started\n"
        assert cid[:12] in text(rn("ps"))
        p = rn("exec", "contract-life", "sh", "-c", "echo in-exec; exit 7")
        assert (p.returncode, text(p)) == (7, "in-exec\n")
        assert rn("stop", "-t", "5", "contract-life").returncode == 0
        assert text(rn("wait", "contract-life")).strip() == "0"
        assert "bye" in text(rn("logs", "contract-life"))
        info = json.loads(text(rn("inspect", "contract-life")))[0]
        assert info["State"]["Status"] == "exited" and info["State"]["Running"] is False
        assert cid[:12] not in text(rn("ps"))
        assert cid[:12] in text(rn("ps", "-a"))
    finally:
        rn("rm", "-f", "contract-life")
    assert cid[:12] not in text(rn("ps", "-a"))


def test_rm_flag_leaves_nothing(rn):
    before = set(text(rn("ps", "-a", "-q")).split())
    assert rn("run", "--rm", IMG, "true").returncode == 0
    assert set(text(rn("ps", "-a", "-q")).split()) == before


def test_kill_reports_signal_exit_code(rn):
    cid = text(rn("run", "-d", IMG, "sleep", "100")).strip()
    try:
        assert rn("kill", cid).returncode == 0
        assert text(rn("wait", cid)).strip() == "137"
    finally:
        rn("rm", "-f", cid)


@pytest.mark.aarch64
def test_memory_limit_oom_is_137_and_oomkilled(rn):
    p = rn("run", "--name", "contract-oom", "-m", "32m", IMG, "sh", "-c",
           "x=0123456789; while true; do x=$x$x; done")
    try:
        assert p.returncode == 137, p.stderr
        info = json.loads(text(rn("inspect", "contract-oom")))[0]
        assert info["State"]["OOMKilled"] is True
        assert info["HostConfig"]["Memory"] == 32 * 1024 * 1024
    finally:
        rn("rm", "-f", "contract-oom")


@pytest.mark.aarch64
def test_pids_limit_stops_a_fork_loop(rn):
    loop = "n=0; for i in $(seq 1 40); do sleep 5 & n=$((n+1)); done; echo started=$n"
    p = rn("run", "--rm", "--pids-limit", "20", IMG, "sh", "-c", loop)
    assert p.returncode != 0 and "fork" in p.stderr.decode().lower()
    assert "started=40" not in text(p)
    p = rn("run", "--rm", IMG, "sh", "-c", loop)  # the same loop without the limit completes
    assert text(p).strip() == "started=40"


@pytest.mark.aarch64
def test_isolation_pid1_hostname_and_no_network(rn):
    p = rn("run", "--rm", "--network", "none", "--hostname", "boxy", IMG, "sh", "-c",
           "echo $$; hostname; cat /proc/net/dev")
    lines = text(p).splitlines()
    assert lines[0] == "1" and lines[1] == "boxy"
    ifaces = [ln.split(":")[0].strip() for ln in lines[2:] if ":" in ln]
    assert ifaces == ["lo"]


@pytest.mark.aarch64
def test_security_caps_and_no_new_privs(rn):
    p = rn("run", "--rm", IMG, "grep", "-E", "^(Cap|NoNewPrivs)", "/proc/self/status")
    status = dict(line.split(":\t") for line in text(p).splitlines())
    assert status["CapBnd"] == status["CapEff"] == status["CapPrm"] == "00000000a80425fb"
    assert status["CapInh"] == status["CapAmb"] == "0000000000000000"
    assert status["NoNewPrivs"] == "1"


def test_load_save_round_trip_keeps_image_id(rn, tmp_path):
    archive = tmp_path / "busybox.tar"
    with open(archive, "wb") as f:
        p = rn("save", IMG)
        f.write(p.stdout)
    assert p.returncode == 0 and archive.stat().st_size > 100_000
    before = json.loads(text(rn("inspect", IMG)))[0]["Id"]
    assert rn("tag", IMG, "contract/copy:v1").returncode == 0
    assert rn("rmi", "contract/copy:v1").returncode == 0
    p = rn("load", "-i", str(archive))
    assert p.returncode == 0, p.stderr
    assert "localhost/busybox:latest" in text(p)
    assert json.loads(text(rn("inspect", IMG)))[0]["Id"] == before


def test_unknown_image_is_a_clear_error(rn):
    p = rn("run", "--rm", "--pull", "never", "localhost/does-not-exist:1", "true")
    assert p.returncode == 125
    lines = p.stderr.decode().splitlines()
    assert lines[0].startswith("Error: ") and "not found" in lines[0]
    assert "Traceback" not in p.stderr.decode()


# ---- host directories, published ports, registries, a killed client (issue #5) -----------------------------


def _shared_tmpdir(prefix: str) -> str:
    """A fresh directory under the system temp dir: shared with the VM by default (runner.vm.shares)."""
    import tempfile

    return tempfile.mkdtemp(prefix=prefix)


@pytest.mark.aarch64
def test_bind_mount_read_write_and_read_only(rn):
    import os
    import shutil

    d = _shared_tmpdir("runner-contract-bind-")
    try:
        with open(os.path.join(d, "in.txt"), "w") as f:
            f.write("from-host\n")
        p = rn("run", "--rm", "-v", f"{d}:/data", IMG, "sh", "-c", "cat /data/in.txt; echo from-ctr > /data/out.txt")
        assert (p.returncode, text(p)) == (0, "from-host\n"), p.stderr
        with open(os.path.join(d, "out.txt")) as f:
            assert f.read() == "from-ctr\n"
        p = rn("run", "--rm", "-v", f"{d}:/data:ro", IMG, "sh", "-c", "cat /data/in.txt; echo x > /data/ro.txt")
        assert p.returncode != 0 and text(p) == "from-host\n"
        assert "read-only" in p.stderr.decode().lower()
        assert not os.path.exists(os.path.join(d, "ro.txt"))
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.mark.aarch64
def test_published_port_reached_from_the_host(rn):
    import urllib.request

    p = rn("run", "-d", "--name", "contract-web", "-p", "127.0.0.1::80", IMG, "sh", "-c",
           "mkdir -p /www && echo hello-web > /www/index.html && exec httpd -f -p 80 -h /www")
    assert p.returncode == 0, p.stderr
    try:
        p = rn("port", "contract-web", "80")
        assert p.returncode == 0, p.stderr
        host, _, port = text(p).strip().rpartition(":")
        assert host == "127.0.0.1" and port.isdigit()
        assert f"127.0.0.1:{port}->80/tcp" in text(rn("ps"))
        def get():
            try:
                return urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10).read()
            except OSError:
                return None
        body = wait_for(get, 30, f"an answer on 127.0.0.1:{port}", interval=0.3)
        assert body == b"hello-web\n"
        assert rn("rm", "-f", "contract-web").returncode == 0
        # the port is free again: nothing (no proxy, no host forward) is left behind
        import socket

        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT of our request is fine
            s.bind(("127.0.0.1", int(port)))
            s.listen()  # fails if anything still listens there
    finally:
        rn("rm", "-f", "contract-web")


def test_published_port_in_use_is_a_clear_error_and_leaves_nothing(rn):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        before = set(text(rn("ps", "-a", "-q")).split())
        p = rn("run", "-d", "-p", f"127.0.0.1:{port}:80", IMG, "sleep", "30")
        assert p.returncode == 125
        assert p.stderr.decode().startswith("Error: ") and str(port) in p.stderr.decode()
        assert set(text(rn("ps", "-a", "-q")).split()) == before


@pytest.mark.registry
@pytest.mark.aarch64
def test_pull_from_a_registry_on_the_host_loopback(rn, registry):
    ref = f"{registry.host}/contract/busybox:v1"
    assert rn("run", "--rm", IMG, "true").returncode == 0  # the default image is made on first use
    assert rn("tag", IMG, ref).returncode == 0
    try:
        p = rn("push", ref)
        assert p.returncode == 0, p.stderr
        assert rn("rmi", ref).returncode == 0
        p = rn("pull", ref)
        assert p.returncode == 0, p.stderr
        assert text(p).strip().splitlines()[-1] == ref
        p = rn("run", "--rm", ref, "echo", "pulled")
        assert (p.returncode, text(p)) == (0, "pulled\n"), p.stderr
        # --pull missing (the default): a run of an absent image pulls it, then runs, as docker does
        assert rn("rmi", ref).returncode == 0
        p = rn("run", "--rm", ref, "echo", "pulled by run")
        assert (p.returncode, text(p)) == (0, "pulled by run\n"), p.stderr
        assert ref.rsplit(":", 1)[0] in rn("images").stdout.decode()
    finally:
        rn("rmi", ref)


def test_killed_client_leaves_a_container_that_can_be_removed(rn):
    import os
    import signal
    import subprocess
    import sys

    from tests.helpers import REPO

    env = dict(os.environ, PYTHONPATH=REPO, **rn.env)
    if rn.root:
        env["RUNNER_ROOT"] = rn.root
    client = subprocess.Popen([sys.executable, "-m", "runner", "--backend", rn.backend, "run", "--name",
                               "contract-orphan", IMG, "sh", "-c", "echo up; sleep 300"],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
    try:
        assert client.stdout.readline() == b"up\n"
        client.send_signal(signal.SIGKILL)
        client.wait(10)
        # The container printed "up", so it ran; its client's death may leave it running or stopped.
        p = rn("inspect", "contract-orphan")
        assert p.returncode == 0, p.stderr
        assert json.loads(text(p))[0]["State"]["Status"] in ("running", "exited")
        assert "contract-orphan" in text(rn("ps", "-a"))
        assert rn("rm", "-f", "contract-orphan").returncode == 0
        assert "contract-orphan" not in text(rn("ps", "-a"))
    finally:
        if client.poll() is None:
            client.kill()
        rn("rm", "-f", "contract-orphan")


@pytest.mark.aarch64
def test_image_of_the_other_cpu_architecture_runs_with_platform(rn, tmp_path):
    """--platform with an image of the other architecture: natively through the host's binfmt_misc emulator
    (qemu-user-static), in either guest through the one the guest image registers at boot."""
    from tests.platform_images import UNAME, busybox_archive

    machine = text(rn("run", "--rm", "--network", "none", IMG, "uname", "-m")).strip()
    foreign = "arm64" if machine == "x86_64" else "amd64"
    name = f"localhost/contract-busybox-{foreign}"
    p = rn("load", "-i", busybox_archive(foreign, name, str(tmp_path / "image.tar")))
    assert p.returncode == 0, p.stderr.decode()
    try:
        p = rn("run", "--rm", "--network", "none", "--platform", f"linux/{foreign}", name, "uname", "-m")
        assert (p.returncode, text(p)) == (0, UNAME[foreign] + "\n"), p.stderr.decode()
    finally:
        rn("rmi", name)


def test_network_connect_and_disconnect_a_running_container(rn):
    """The same engine operation natively and through the guest's agent (the method table's network_connect)."""
    assert rn("network", "create", "contract-net").returncode == 0
    try:
        for args in (("--name", "contract-peer", "--network", "contract-net"), ("--name", "contract-box")):
            p = rn("run", "-d", *args, IMG, "sleep", "300")
            assert p.returncode == 0, p.stderr
        p = rn("network", "connect", "--alias", "boxy", "contract-net", "contract-box")
        assert (p.returncode, text(p)) == (0, ""), p.stderr
        for ref, target in (("contract-box", "contract-peer"), ("contract-peer", "boxy")):
            p = rn("exec", ref, "ping", "-c", "1", "-W", "5", target)
            assert p.returncode == 0, (ref, target, p.stderr)
        nets = json.loads(text(rn("inspect", "contract-box")))[0]["NetworkSettings"]["Networks"]
        assert sorted(nets) == ["bridge", "contract-net"] and nets["contract-net"]["IPAddress"]
        assert rn("network", "disconnect", "contract-net", "contract-box").returncode == 0
        p = rn("exec", "contract-box", "ping", "-c", "1", "-W", "2", "contract-peer")
        assert p.returncode != 0 and b"bad address" in p.stderr
        p = rn("network", "disconnect", "contract-net", "contract-box")
        assert p.returncode == 125 and b"is not connected to network contract-net" in p.stderr
    finally:
        rn("rm", "-f", "contract-box")
        rn("rm", "-f", "contract-peer")
        rn("network", "rm", "contract-net")
