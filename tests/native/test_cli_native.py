"""Native-only checks of the engine through the real CLI: isolation details, limits, leaks, concurrency,
bad input. (Scenarios that must match the VM backend live in tests/contract.)"""

from __future__ import annotations

import concurrent.futures
import json
import os
import shutil
import subprocess
import sys
import time

import pytest

from runner.engine.state import proc_start_time
from tests.helpers import REPO, cli, run_in_pty, wait_for

pytestmark = pytest.mark.root
IMG = "localhost/busybox"


def run(root, *args, **kw):
    return cli(list(args), root=root, **kw)


def text(p):
    return p.stdout.decode()


def host_mounts() -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return f.read().splitlines()


def runner_cgroups() -> list[str]:
    found = []
    for base, dirs, _ in os.walk("/sys/fs/cgroup"):
        if os.path.basename(base) == "runner":
            found += [os.path.join(base, d) for d in dirs]
            dirs.clear()
    return found


def test_host_processes_and_mounts_are_invisible(native_root):
    p = run(native_root, "run", "--rm", IMG, "sh", "-c", "ls /proc | grep -c '^[0-9]'; cat /proc/self/mountinfo")
    lines = text(p).splitlines()
    assert int(lines[0]) <= 3  # sh, ls/grep — never the host's hundreds of processes
    assert not any(REPO in ln or " /work" in ln for ln in lines[1:])
    assert any(" / " in ln and "overlay" in ln for ln in lines[1:])


def test_proc_sys_readonly_and_masked_paths(native_root):
    p = run(native_root, "run", "--rm", IMG, "sh", "-c", "echo x > /proc/sys/kernel/domainname && echo WROTE")
    assert "WROTE" not in text(p) and "Read-only file system" in p.stderr.decode()
    masked = [f for f in ("/proc/kcore", "/proc/keys", "/proc/timer_list", "/proc/sched_debug") if os.path.exists(f)]
    assert masked, "the host has none of the masked /proc files"
    script = "; ".join(f"echo {f}=$(cat {f} 2>/dev/null | wc -c)" for f in masked) + "; ls /sys/firmware | wc -l"
    lines = text(run(native_root, "run", "--rm", IMG, "sh", "-c", script)).split()
    assert lines == [f"{f}=0" for f in masked] + ["0"]


def test_only_stdio_fds_are_open(native_root):
    # "; true" keeps sh from exec-ing ls, whose own directory fd would show up as 3.
    p = run(native_root, "run", "--rm", IMG, "sh", "-c", "ls /proc/$$/fd; true")
    assert sorted(text(p).split()) == ["0", "1", "2"]


def test_cpus_quota_is_in_the_container_cgroup(native_root):
    cid = text(run(native_root, "run", "-d", "--cpus", "0.5", IMG, "sleep", "30")).strip()
    try:
        paths = [p for p in runner_cgroups() if p.endswith(cid)]
        values = []
        for path in paths:
            for name in ("cpu.max", "cpu.cfs_quota_us"):
                if os.path.exists(os.path.join(path, name)):
                    values.append(open(os.path.join(path, name)).read().split()[0])
        assert "50000" in values
    finally:
        run(native_root, "rm", "-f", cid)


def test_bind_mounts_read_write_and_read_only(native_root, tmp_path):
    (tmp_path / "in.txt").write_text("from host\n")
    p = run(native_root, "run", "--rm", "-v", f"{tmp_path}:/data", IMG, "sh", "-c",
            "cat /data/in.txt; echo from container > /data/out.txt")
    assert text(p) == "from host\n"
    assert (tmp_path / "out.txt").read_text() == "from container\n"
    p = run(native_root, "run", "--rm", "-v", f"{tmp_path}:/data:ro", IMG, "sh", "-c", "echo x > /data/nope")
    assert p.returncode != 0
    assert not (tmp_path / "nope").exists()


def test_read_only_rootfs(native_root):
    p = run(native_root, "run", "--rm", "--read-only", IMG, "sh", "-c", "touch /x && echo WROTE")
    assert "WROTE" not in text(p)


def test_user_by_name_from_image_passwd(native_root):
    p = run(native_root, "run", "--rm", "-u", "nobody", IMG, "id", "-u")
    assert text(p).strip() == "65534"
    p = run(native_root, "run", "--rm", "-u", "nosuchuser", IMG, "true")
    assert p.returncode == 125 and "nosuchuser" in p.stderr.decode()


def test_tty_gives_a_real_terminal_with_the_window_size(native_root):
    code, output = run_in_pty(["run", "--rm", "-it", IMG, "sh", "-c", "tty; stty size"], native_root,
                              rows=33, cols=111)
    assert code == 0
    assert b"/dev/pts/0" in output
    assert b"33 111" in output


def test_ctrl_c_reaches_a_foreground_container(native_root):
    env = dict(os.environ, RUNNER_ROOT=native_root, PYTHONPATH=REPO)
    proc = subprocess.Popen([sys.executable, "-m", "runner", "run", "--rm", IMG, "sh", "-c",
                             "trap 'echo got-int; exit 5' INT; echo ready; while true; do sleep 0.1; done"],
                            stdout=subprocess.PIPE, env=env)
    try:
        assert proc.stdout.readline() == b"ready\n"
        proc.send_signal(2)
        assert proc.wait(timeout=30) == 5
        assert proc.stdout.read() == b"got-int\n"
    finally:
        if proc.poll() is None:
            proc.kill()


def test_fifty_run_rm_cycles_leak_nothing(native_root):
    # Checked per container this test made, so containers of other runs on the host cannot blur it.
    ids_before = set(os.listdir(os.path.join(native_root, "containers")))
    made = []
    for _ in range(50):
        cid = text(run(native_root, "create", "--network", "none", IMG, "true")).strip()
        made.append(cid)
        assert run(native_root, "start", "-a", cid).returncode == 0
        assert run(native_root, "rm", cid).returncode == 0
    mounts = "\n".join(host_mounts())
    assert not [cid for cid in made if cid in mounts]
    assert not [path for path in runner_cgroups() if os.path.basename(path) in made]
    assert set(os.listdir(os.path.join(native_root, "containers"))) == ids_before
    procs = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert not [cid for cid in made if cid in procs]


def test_ten_parallel_runs_all_succeed(native_root):
    def one(i):
        return run(native_root, "run", "--rm", IMG, "echo", f"n{i}")
    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        results = list(pool.map(one, range(10)))
    assert [text(p) for p in results] == [f"n{i}\n" for i in range(10)]
    assert all(p.returncode == 0 for p in results)
    assert text(run(native_root, "ps", "-a", "-q")).strip() == ""


def test_ps_never_shows_a_dead_container_running(native_root):
    cid = text(run(native_root, "run", "-d", IMG, "sleep", "100")).strip()
    try:
        state = json.load(open(os.path.join(native_root, "containers", cid, "state.json")))
        os.kill(state["shim_pid"], 9)  # the monitor dies first: the workload is still running
        wait_for(lambda: proc_start_time(state["shim_pid"]) is None, 10, "the shim to die")
        assert cid[:12] in text(run(native_root, "ps"))
        os.kill(state["pid"], 9)
        # SIGKILL is delivered asynchronously: once the kernel reports the workload dead (gone or a
        # zombie), the very next ps must not show it running.
        wait_for(lambda: proc_start_time(state["pid"]) is None, 10, "the workload to die")
        assert cid[:12] not in text(run(native_root, "ps"))
        info = json.loads(text(run(native_root, "inspect", cid)))[0]
        assert info["State"]["Status"] == "exited"
    finally:
        run(native_root, "rm", "-f", cid)


def test_format_json_prints_one_docker_row_a_line(native_root):
    """`docker ps/images/network ls/volume ls --format json`: one object per line, docker's row fields (scripts
    pipe it to jq line by line), not the API objects."""
    cid = text(run(native_root, "run", "-d", "--name", "fmtjson", "-v", "fmtjson-vol:/data", IMG, "sleep", "100"))
    try:
        rows = [json.loads(line) for line in text(run(native_root, "ps", "--format", "json")).splitlines()]
        assert [(r["ID"], r["Names"], r["State"], r["LocalVolumes"]) for r in rows] == \
            [(cid.strip()[:12], "fmtjson", "running", "1")]
        assert set(rows[0]) >= {"Command", "CreatedAt", "Image", "Labels", "Mounts", "Networks", "Ports",
                                "RunningFor", "Size", "Status"}
        images = [json.loads(line) for line in text(run(native_root, "images", "--format", "json")).splitlines()]
        assert [(i["Repository"], i["Tag"]) for i in images] == [(IMG, "latest")]
        nets = [json.loads(line) for line in text(run(native_root, "network", "ls", "--format", "json")).splitlines()]
        assert "bridge" in [n["Name"] for n in nets] and all(n["Internal"] in ("true", "false") for n in nets)
        vols = [json.loads(line) for line in text(run(native_root, "volume", "ls", "--format", "json")).splitlines()]
        assert [(v["Name"], v["Driver"]) for v in vols] == [("fmtjson-vol", "local")]
    finally:
        run(native_root, "rm", "-f", "-v", "fmtjson")
        run(native_root, "volume", "rm", "fmtjson-vol")


@pytest.mark.parametrize("args, needle", [
    (["run", "--rm", "--pull", "never", "localhost/nope:1", "true"], "not found"),
    (["run", "--rm", "-v", "x:/x", IMG, "true"], "volume"),
    (["run", "--rm", "-v", "/tmp:/x:zz", IMG, "true"], "volume"),
    (["run", "--rm", "-m", "lots", IMG, "true"], "memory"),
    (["run", "--rm", "--bogus-flag", IMG, "true"], "bogus"),
    (["run", "--rm", "-v", "/no/such/dir:/x", IMG, "true"], "does not exist"),
    (["kill", "-s", "NOPE", "x"], "signal"),
])
def test_bad_input_is_one_clear_line_and_creates_nothing(native_root, args, needle):
    before = set(os.listdir(os.path.join(native_root, "containers")))
    p = run(native_root, *args)
    assert p.returncode == 125, p.stderr
    msg = p.stderr.decode()
    assert msg.startswith("Error: ") and needle in msg.lower() and "Traceback" not in msg
    assert len(msg.splitlines()) <= 2
    assert set(os.listdir(os.path.join(native_root, "containers"))) == before


def test_not_root_is_a_clear_error(native_root, tmp_path):
    os.chmod(tmp_path, 0o777)
    env = dict(os.environ, RUNNER_ROOT=str(tmp_path / "r"), PYTHONPATH=REPO)
    # A user namespace without a uid map: the process is uid 65534 to itself, yet can still read this
    # checkout and the Python installation (the kernel checks file access with its real uid).
    p = subprocess.run(["unshare", "--user", sys.executable, "-m",
                        "runner", "run", "--rm", IMG, "true"], capture_output=True, env=env, cwd=str(tmp_path))
    assert p.returncode == 125
    assert p.stderr.decode().startswith("Error: ") and "root" in p.stderr.decode()


@pytest.mark.parametrize("runtime", ["builtin", "runc"])
def test_privileged_gets_every_host_device_also_in_subdirectories(native_root, runtime):
    """--privileged as Docker (runc's host device walk): every device node under the host's /dev, nested ones
    too (/dev/net/tun, /dev/mapper/..., here a scratch directory), with the host's numbers; not symlinks, not
    what is in pts/shm/mqueue-like directories."""
    import uuid
    scratch = f"/dev/runner-test-{uuid.uuid4().hex[:8]}"
    os.makedirs(f"{scratch}/deeper/shm")
    try:
        os.mknod(f"{scratch}/deeper/nullish", 0o620 | 0o020000, os.makedev(1, 3))  # a char device: /dev/null's
        os.mknod(f"{scratch}/deeper/shm/hidden", 0o600 | 0o020000, os.makedev(1, 5))
        os.symlink("/dev/null", f"{scratch}/link")
        expected = set()
        for base, dirs, files in os.walk("/dev"):
            dirs[:] = [d for d in dirs if d not in ("pts", "shm", "fd", "mqueue", ".lxc", ".lxd-mounts", ".udev")]
            if base != "/dev":
                for name in files:
                    st = os.lstat(os.path.join(base, name))
                    if name != "console" and (st.st_mode & 0o170000) in (0o020000, 0o060000):
                        expected.add(f"{os.path.join(base, name)} {os.major(st.st_rdev):x}:{os.minor(st.st_rdev):x}")
        assert f"{scratch}/deeper/nullish 1:3" in expected and len(expected) >= 2
        script = ("find /dev -mindepth 2 \\( -type c -o -type b \\) ! -path '/dev/pts/*' ! -path '/dev/shm/*' "
                  "! -path '/dev/mqueue/*' -exec stat -c '%n %t:%T' {} +; ls -l " + scratch)
        p = run(native_root, "run", "--rm", "--network", "none", "--runtime", runtime, "--privileged", IMG,
                "sh", "-c", script)
        assert p.returncode == 0, p.stderr.decode()
        lines = text(p).splitlines()
        got = {line for line in lines if line.startswith("/dev/")}
        assert got == expected, (sorted(got ^ expected))
        assert not any("link" in line for line in lines)  # the symlink is not a device
        p = run(native_root, "run", "--rm", "--network", "none", "--runtime", runtime, IMG, "ls", scratch)
        assert p.returncode != 0  # not without --privileged
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
