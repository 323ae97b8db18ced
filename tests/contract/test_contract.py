"""User-level container scenarios that must behave identically on the native and the VM backend."""

from __future__ import annotations

import json
import time

IMG = "localhost/busybox"


def text(proc) -> str:
    return proc.stdout.decode()


def test_run_prints_output_and_passes_exit_codes(rn):
    p = rn("run", "--rm", IMG, "echo", "hello")
    assert p.returncode == 0, p.stderr
    assert text(p) == "hello\n"
    assert rn("run", "--rm", IMG, "sh", "-c", "exit 3").returncode == 3
    assert rn("run", "--rm", IMG, "false").returncode == 1


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


def test_stdout_and_stderr_stay_apart(rn):
    p = rn("run", "--rm", IMG, "sh", "-c", "echo out; echo err >&2")
    assert text(p) == "out\n"
    assert p.stderr.decode() == "err\n"


def test_detached_lifecycle_logs_exec_stop_wait_rm(rn):
    p = rn("run", "-d", "--name", "contract-life", IMG, "sh", "-c",
           "echo started; trap 'echo bye; exit 0' TERM; while true; do sleep 0.1; done")
    assert p.returncode == 0, p.stderr
    cid = text(p).strip()
    assert len(cid) == 64
    try:
        deadline = time.time() + 30
        while "started" not in text(rn("logs", "contract-life")) and time.time() < deadline:
            time.sleep(0.1)
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


def test_pids_limit_stops_a_fork_loop(rn):
    loop = "n=0; for i in $(seq 1 40); do sleep 5 & n=$((n+1)); done; echo started=$n"
    p = rn("run", "--rm", "--pids-limit", "20", IMG, "sh", "-c", loop)
    assert p.returncode != 0 and "fork" in p.stderr.decode().lower()
    assert "started=40" not in text(p)
    p = rn("run", "--rm", IMG, "sh", "-c", loop)  # the same loop without the limit completes
    assert text(p).strip() == "started=40"


def test_isolation_pid1_hostname_and_no_network(rn):
    p = rn("run", "--rm", "--network", "none", "--hostname", "boxy", IMG, "sh", "-c",
           "echo $$; hostname; cat /proc/net/dev")
    lines = text(p).splitlines()
    assert lines[0] == "1" and lines[1] == "boxy"
    ifaces = [ln.split(":")[0].strip() for ln in lines[2:] if ":" in ln]
    assert ifaces == ["lo"]


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
