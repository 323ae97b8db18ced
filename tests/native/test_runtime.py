"""The built-in OCI runtime against the real kernel: namespaces, mounts, caps, cgroups, exec, errors.

Needs root. The rootfs is a few-file busybox tree built from the host's static busybox (Debian's
busybox-static), so no image store is involved; config.json comes from ``oci.make_config`` exactly as the engine
writes it. The test plays the caller: it passes the rootfs directory (the runtime binds it onto itself in the
container's own mount namespace, so nothing is left mounted on the host) and reaps the returned pid.
Every container is killed by its pid, reaped and ``delete()``d in a fixture finalizer, even when a test fails.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import threading
import time
import uuid

import pytest

from runner.errors import CommandNotExecutable, CommandNotFound, ContainerStartError
from runner.spec import ContainerSpec, ExecSpec, Limits, Mount

pytestmark = pytest.mark.root

BUSYBOX = shutil.which("busybox") or "/bin/busybox"
APPLETS = ("sh cat ls echo hostname id true false sleep grep mount ps dd head wc seq tr stat mkdir touch "
           "readlink env pwd yes mknod tty stty").split()
DOCKER_CAPS_HEX = "00000000a80425fb"

if not sys.platform.startswith("linux") or os.geteuid() != 0:
    pytest.skip("native runtime tests need root (namespaces, mounts, cgroups)", allow_module_level=True)
if not os.path.exists(BUSYBOX) or b"ELF" not in open(BUSYBOX, "rb").read(4):
    pytest.skip("needs a static busybox (apt install busybox-static)", allow_module_level=True)

from runner.engine.runtime import cgroups, oci  # noqa: E402  (Linux-only imports after the skips)
from runner.engine.runtime.builtin import BuiltinRuntime  # noqa: E402


@pytest.fixture(scope="module")
def rootfs(tmp_path_factory):
    root = tmp_path_factory.mktemp("rootfs")
    for d in ("bin", "etc", "tmp", "root", "home/user", "data"):
        (root / d).mkdir(parents=True, exist_ok=True)
    shutil.copy2(BUSYBOX, root / "bin" / "busybox")
    for a in APPLETS:
        os.symlink("busybox", root / "bin" / a)
    (root / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000:user:/home/user:/bin/sh\n")
    (root / "etc" / "group").write_text("root:x:0:\nuser:x:1000:\nextra:x:2000:user\n")
    (root / "notexec").write_text("#!/bin/sh\necho no\n")
    os.chmod(root / "tmp", 0o1777)
    os.chmod(root, 0o755)  # pytest's tmp dirs are 0700; the container's / must be traversable by uid 1000
    os.chown(root / "home" / "user", 1000, 1000)
    return str(root)


class Harness:
    """Plays the engine: writes bundles, starts, waits, and remembers everything to clean up."""

    def __init__(self, rootfs: str, tmp_path):
        self.rootfs = rootfs
        self.tmp = tmp_path
        self.rt = BuiltinRuntime()
        self.started: list[int] = []
        self.bundles: list[tuple[str, str]] = []

    def bundle(self, spec: ContainerSpec, user: str | None = None, etc_files: dict | None = None) -> tuple[str, str]:
        cid = "t" + uuid.uuid4().hex[:12]
        bundle = self.tmp / cid
        bundle.mkdir()
        uid, gid, gids = oci.resolve_user(user or spec.user, self.rootfs)
        cfg = oci.make_config(spec, {"Env": ["PATH=/bin"]}, rootfs=self.rootfs, container_id=cid, hostname=cid[:12],
                              etc_files=etc_files or {}, cgroups_path=f"/runner-test/{cid}", uid=uid, gid=gid,
                              additional_gids=gids, home=oci.home_dir(uid, self.rootfs))
        (bundle / "config.json").write_text(json.dumps(cfg))
        self.bundles.append((str(bundle), cid))
        return str(bundle), cid

    def start(self, spec: ContainerSpec, **kw) -> tuple[str, str, int, int]:
        """Start; returns (bundle, id, pid, read end of the container's stdout+stderr)."""
        bundle, cid = self.bundle(spec, **kw)
        r, w = os.pipe()
        null = os.open("/dev/null", os.O_RDONLY)
        try:
            pid = self.rt.start(bundle, cid, (null, w, w))
        except BaseException:
            os.close(r)
            raise
        finally:
            os.close(w)
            os.close(null)
        self.started.append(pid)
        return bundle, cid, pid, r

    def wait(self, pid: int, r: int, timeout: float = 30) -> tuple[int, str]:
        out = b""
        while True:
            chunk = os.read(r, 65536)
            if not chunk:
                break
            out += chunk
        os.close(r)
        deadline = time.monotonic() + timeout
        while True:
            got, status = os.waitpid(pid, os.WNOHANG)
            if got:
                break
            if time.monotonic() > deadline:
                raise AssertionError("container did not exit")
            time.sleep(0.01)
        self.started.remove(pid)
        return os.waitstatus_to_exitcode(status) if status & 0x7f == 0 else 128 + (status & 0x7f), out.decode()

    def run(self, cmd: list[str], **spec_kw) -> tuple[int, str]:
        user = spec_kw.pop("user", None)
        spec = ContainerSpec(image="test", command=cmd, **spec_kw)
        bundle, cid, pid, r = self.start(spec, user=user)
        code, out = self.wait(pid, r)
        self.rt.delete(bundle, cid)
        return code, out

    def cleanup(self) -> None:
        for pid in list(self.started):
            try:
                os.kill(pid, signal.SIGKILL)  # only processes this harness started, by pid
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
        for bundle, cid in self.bundles:
            try:
                self.rt.delete(bundle, cid)
            except Exception:  # noqa: BLE001 - best effort, report below
                pass
        leftovers = [d for b, c in self.bundles for d in self.rt.cgroup_paths(b, c) if os.path.isdir(d)]
        assert not leftovers, f"cgroups left behind: {leftovers}"


@pytest.fixture(scope="module", autouse=True)
def _remove_test_cgroup_parents():
    yield
    for h_ in cgroups.detect().hierarchies:
        try:
            os.rmdir(os.path.join(h_.mountpoint, "runner-test"))
        except OSError:
            pass


@pytest.fixture
def h(rootfs, tmp_path):
    harness = Harness(rootfs, tmp_path)
    try:
        yield harness
    finally:
        harness.cleanup()


def _caps(out: str) -> dict[str, str]:
    return {line.split(":")[0]: line.split()[1] for line in out.splitlines() if line.startswith("Cap")}


# ----------------------------------------------------------------------------------------------- isolation

def test_pid1_hostname_and_private_proc(h):
    code, out = h.run(["sh", "-c", "echo pid=$$; hostname; ls /proc | grep -c '^[0-9]'; cat /proc/1/cmdline; echo; echo end"])
    assert code == 0, out
    lines = out.splitlines()
    assert lines[0] == "pid=1"
    assert lines[1].startswith("t")  # the container's own hostname, not the host's
    assert lines[1] != os.uname().nodename
    assert int(lines[2]) <= 3  # sh, ls, grep: no host process is visible
    assert lines[3].startswith("sh")


def test_proc_sys_readonly_and_masked_paths(h):
    code, out = h.run(["sh", "-c",
                       "echo x > /proc/sys/kernel/hostname && echo WRITABLE; "
                       "for f in /proc/kcore /proc/keys /proc/timer_list; do [ -e $f ] && echo \"$f=$(cat $f | wc -c)\"; done; "
                       "echo firmware=$(ls -A /sys/firmware | wc -l); "
                       "touch /sys/x 2>/dev/null && echo SYSWRITABLE; echo end"])
    assert code == 0, out
    assert "WRITABLE" not in out
    assert "Read-only file system" in out
    masked = [line for line in out.splitlines() if line.startswith("/proc/")]
    assert masked, out
    assert all(line.endswith("=0") for line in masked), out
    assert "firmware=0" in out
    assert out.strip().endswith("end")


def test_capabilities_nnp_and_fds(h):
    extra = os.open("/dev/null", os.O_RDONLY)
    os.set_inheritable(extra, True)  # a leaky fd in the caller must still not reach the container
    try:
        code, out = h.run(["sh", "-c", "grep -E '^(Cap|NoNewPrivs)' /proc/self/status; echo fds=$(ls /proc/$$/fd)"])
    finally:
        os.close(extra)
    assert code == 0, out
    caps = _caps(out)
    assert caps["CapBnd"] == caps["CapEff"] == caps["CapPrm"] == DOCKER_CAPS_HEX, out
    assert caps["CapInh"] == caps["CapAmb"] == "0000000000000000"
    assert "NoNewPrivs:\t1" in out
    assert "fds=0 1 2" in out


def test_network_none_has_only_lo_up(h):
    code, out = h.run(["sh", "-c", "grep : /proc/net/dev | while IFS=: read n rest; do echo if=$n; done; "
                                    "cat /sys/class/net/lo/flags"], network="none")
    assert code == 0, out
    ifaces = [line[3:].strip() for line in out.splitlines() if line.startswith("if=")]
    assert ifaces == ["lo"], out
    flags = int(out.split()[-1], 16)
    assert flags & 1, "lo is not UP"


def test_user_switch_drops_effective_caps(h):
    code, out = h.run(["sh", "-c", "id; grep ^Cap /proc/self/status; echo home=$HOME"], user="1000:1000")
    assert code == 0, out
    assert "uid=1000" in out and "gid=1000" in out
    caps = _caps(out)
    assert caps["CapEff"] == caps["CapPrm"] == "0000000000000000"
    assert caps["CapBnd"] == DOCKER_CAPS_HEX
    assert "home=/home/user" in out


def test_named_user_gets_supplementary_groups(h):
    code, out = h.run(["id"], user="user")
    assert code == 0, out
    assert "uid=1000(user) gid=1000(user)" in out and "2000(extra)" in out


def test_readonly_root_bind_mounts_and_etc_files(h, tmp_path):
    data = tmp_path / "vol"
    data.mkdir()
    (data / "hello").write_text("from host\n")
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 localhost test-marker\n")
    spec = ContainerSpec(image="t", read_only=True, mounts=[Mount(str(data), "/data/rw"), Mount(str(data), "/mnt/ro", True)],
                         command=["sh", "-c", "cat /data/rw/hello; echo w > /data/rw/out && echo rw-ok; "
                                              "touch /mnt/ro/x 2>/dev/null || echo ro-ok; "
                                              "touch /rootfile 2>/dev/null || echo rootro-ok; cat /etc/hosts; "
                                              "echo tmp > /dev/shm/x && echo shm-ok"])
    bundle, cid, pid, r = h.start(spec, etc_files={"/etc/hosts": str(hosts)})
    code, out = h.wait(pid, r)
    h.rt.delete(bundle, cid)
    assert code == 0, out
    for marker in ("from host", "rw-ok", "ro-ok", "rootro-ok", "test-marker", "shm-ok"):
        assert marker in out, out
    assert (data / "out").read_text() == "w\n"


def test_mount_target_symlink_cannot_escape_rootfs(h, rootfs, tmp_path):
    """An image symlink /escape -> /tmp/<host dir> must resolve inside the rootfs, not on the host."""
    victim = tmp_path / "victim"
    victim.mkdir()
    link = os.path.join(rootfs, "escape")
    os.symlink(str(victim), link)
    # the first component of the victim's path that the mount will create inside the rootfs (to remove after)
    parts = str(victim).strip("/").split("/")
    created = next(os.path.join(rootfs, *parts[:i + 1]) for i in range(len(parts))
                   if not os.path.exists(os.path.join(rootfs, *parts[:i + 1])))
    try:
        src = tmp_path / "src"
        src.mkdir()
        code, out = h.run(["sh", "-c", "ls /escape >/dev/null && echo mounted"],
                          mounts=[Mount(str(src), "/escape")])
        assert code == 0, out
        assert not any(victim.iterdir()), "a mount target was created on the host"
        assert os.path.isdir(os.path.join(rootfs, str(victim).lstrip("/")))
    finally:
        os.unlink(link)
        shutil.rmtree(created, ignore_errors=True)


def test_device_cgroup_blocks_host_block_devices(h):
    """CAP_MKNOD is in Docker's set; the device allow-list is what keeps a node for the host disk unusable."""
    disk = next((os.stat(p).st_rdev for p in ("/dev/vda", "/dev/sda", "/dev/nvme0n1") if os.path.exists(p)), None)
    if disk is None or cgroups.detect().version == 2:
        pytest.skip("needs a host block device and the v1 devices controller (v2 device filtering is not done)")
    code, out = h.run(["sh", "-c", f"mknod /tmp/disk b {os.major(disk)} {os.minor(disk)} && echo made; "
                                   "head -c 1 /tmp/disk >/dev/null && echo READ; rm -f /tmp/disk; "
                                   "head -c 1 /dev/urandom >/dev/null && echo urandom-ok"])
    assert "made" in out and "READ" not in out and "urandom-ok" in out, out


def test_sigpipe_is_default_in_the_container(h):
    """Python ignores SIGPIPE; an ignored signal survives execve unless the runtime resets it."""
    code, out = h.run(["sh", "-c", "yes | head -n 1; echo done"])
    assert code == 0 and out == "y\ndone\n", out


def test_terminal_is_the_controlling_tty(h):
    master, slave = os.openpty()
    try:
        spec = ContainerSpec(image="t", tty=True, command=["sh", "-c", "[ -t 0 ] && echo TTY; "
                                                                       "echo term=$TERM; exec cat /proc/self/stat"])
        bundle, cid = h.bundle(spec)
        pid = h.rt.start(bundle, cid, (slave, slave, slave))
        h.started.append(pid)
        os.close(slave)
        slave = -1
        out = b""
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO once the last slave fd is closed
                break
            if not chunk:
                break
            out += chunk
        os.waitpid(pid, 0)
        h.started.remove(pid)
    finally:
        os.close(master)
        if slave >= 0:
            os.close(slave)
    text = out.decode()
    assert "TTY" in text and "term=xterm" in text, text
    stat_fields = text.strip().splitlines()[-1].rsplit(")", 1)[1].split()
    assert int(stat_fields[4]) != 0, "no controlling terminal (tty_nr is 0)"


# ----------------------------------------------------------------------------------------------- exit codes

def test_exit_codes_pass_through(h):
    assert h.run(["true"])[0] == 0
    assert h.run(["false"])[0] == 1
    assert h.run(["sh", "-c", "exit 42"])[0] == 42


def test_command_not_found_is_127_and_cleans_up(h):
    spec = ContainerSpec(image="t", command=["no-such-command"])
    with pytest.raises(CommandNotFound) as exc:
        h.start(spec)
    assert exc.value.exit_code == 127
    assert "executable file not found" in exc.value.message
    bundle, cid = h.bundles[-1]
    assert not any(os.path.isdir(d) for d in h.rt.cgroup_paths(bundle, cid))


def test_not_executable_is_126(h):
    with pytest.raises(CommandNotExecutable) as exc:
        h.start(ContainerSpec(image="t", command=["/notexec"]))
    assert exc.value.exit_code == 126
    assert "permission denied" in exc.value.message


def test_missing_path_with_slash_is_127(h):
    with pytest.raises(CommandNotFound):
        h.start(ContainerSpec(image="t", command=["/bin/nope"]))


def test_child_failure_is_one_clear_line(h, tmp_path):
    spec = ContainerSpec(image="t", command=["true"], mounts=[Mount(str(tmp_path / "does-not-exist"), "/x")])
    with pytest.raises(ContainerStartError) as exc:
        h.start(spec)
    assert "does-not-exist" in exc.value.message and "\n" not in exc.value.message


# ----------------------------------------------------------------------------------------------- cgroups

def test_memory_limit_oom_kill_is_137(h):
    spec = ContainerSpec(image="t", limits=Limits(memory=32 * 1024 * 1024),
                         command=["sh", "-c", "x=aaaaaaaaaaaaaaaa; while true; do x=$x$x; done"])
    bundle, cid, pid, r = h.start(spec)
    code, _ = h.wait(pid, r, timeout=60)
    assert code == 137
    assert h.rt.oom_killed(bundle, cid) is True
    h.rt.delete(bundle, cid)
    assert not any(os.path.isdir(d) for d in h.rt.cgroup_paths(bundle, cid))


def test_no_oom_reported_for_normal_exit(h):
    bundle, cid, pid, r = h.start(ContainerSpec(image="t", command=["true"], limits=Limits(memory=64 * 1024 * 1024)))
    assert h.wait(pid, r)[0] == 0
    assert h.rt.oom_killed(bundle, cid) is False


def test_pids_limit_stops_fork_bomb_and_delete_kills_leftovers(h):
    spec = ContainerSpec(image="t", limits=Limits(pids=20),
                         command=["sh", "-c", "(i=0; while [ $i -lt 40 ]; do sleep 30 & i=$((i+1)); done); "
                                              "echo started; exec sleep 30"])
    bundle, cid, pid, r = h.start(spec)
    buf = b""
    while b"started" not in buf:
        chunk = os.read(r, 4096)
        assert chunk, buf
        buf += chunk
    assert b"can't fork" in buf or b"Resource temporarily unavailable" in buf, buf
    cg = cgroups.Cgroup(f"/runner-test/{cid}")
    assert 0 < len(cg.pids()) <= 20
    h.rt.delete(bundle, cid)  # kills PID 1 and every sleep still in the cgroup
    code, _ = h.wait(pid, r)
    assert code == 137
    assert not any(os.path.isdir(d) for d in h.rt.cgroup_paths(bundle, cid))


def test_cpu_quota_visible_on_host(h):
    bundle, cid, pid, r = h.start(ContainerSpec(image="t", command=["sleep", "30"], limits=Limits(cpus=0.5)))
    layout = cgroups.detect()
    paths = h.rt.cgroup_paths(bundle, cid)
    if layout.version == 2:
        assert open(os.path.join(paths[0], "cpu.max")).read().split() == ["50000", "100000"]
    else:
        cpu_dir = next(p for p, hi in zip(paths, layout.hierarchies) if "cpu" in hi.controllers)
        assert open(os.path.join(cpu_dir, "cpu.cfs_quota_us")).read().strip() == "50000"
        assert open(os.path.join(cpu_dir, "cpu.cfs_period_us")).read().strip() == "100000"
    assert pid in {int(x) for d in paths for x in open(os.path.join(d, "cgroup.procs")).read().split()}
    os.kill(pid, signal.SIGKILL)
    assert h.wait(pid, r)[0] == 137
    h.rt.delete(bundle, cid)
    assert not any(os.path.isdir(p) for p in paths)


def test_delete_is_idempotent(h):
    bundle, cid = h.bundle(ContainerSpec(image="t", command=["true"]))
    h.rt.delete(bundle, cid)
    h.rt.delete(bundle, cid)


# ----------------------------------------------------------------------------------------------- exec

def test_exec_joins_running_container(h):
    bundle, cid, pid, r = h.start(ContainerSpec(image="t", command=["sleep", "30"]))
    cfg = json.load(open(os.path.join(bundle, "config.json")))
    proc = oci.exec_process(ExecSpec(["sh", "-c", "cat /proc/1/cmdline; echo; hostname; "
                                                  "grep ^CapEff /proc/self/status; exit 7"]), cfg, 0, 0, [])
    er, ew = os.pipe()
    null = os.open("/dev/null", os.O_RDONLY)
    try:
        epid = h.rt.exec(bundle, cid, pid, proc, (null, ew, ew))
    finally:
        os.close(ew)
        os.close(null)
    h.started.append(epid)
    code, out = h.wait(epid, er)
    assert code == 7, out
    assert out.startswith("sleep\x0030"), out
    assert cfg["hostname"] in out
    assert DOCKER_CAPS_HEX in out
    os.kill(pid, signal.SIGKILL)
    h.wait(pid, r)


def test_exec_not_found_and_not_running(h):
    bundle, cid, pid, r = h.start(ContainerSpec(image="t", command=["sleep", "30"]))
    cfg = json.load(open(os.path.join(bundle, "config.json")))
    with pytest.raises(CommandNotFound):
        h.rt.exec(bundle, cid, pid, oci.exec_process(ExecSpec(["nope"]), cfg, 0, 0), (0, 1, 2))
    os.kill(pid, signal.SIGKILL)
    h.wait(pid, r)
    with pytest.raises(ContainerStartError, match="not running"):
        h.rt.exec(bundle, cid, pid, oci.exec_process(ExecSpec(["true"]), cfg, 0, 0), (0, 1, 2))


# ----------------------------------------------------------------------------------------------- the caller

def test_start_from_a_thread_of_a_multithreaded_caller(h):
    """The PID-namespace trick is per thread: the caller's other threads and later forks stay in the host ns."""
    result: dict = {}
    stop = threading.Event()
    busy = threading.Thread(target=stop.wait)
    busy.start()

    def worker():
        try:
            result["out"] = h.run(["sh", "-c", "echo $$"])
            result["ns"] = (os.readlink("/proc/thread-self/ns/pid_for_children"), os.readlink("/proc/self/ns/pid"))
        except BaseException as exc:  # noqa: BLE001
            result["exc"] = exc

    t = threading.Thread(target=worker)
    t.start()
    t.join(30)
    stop.set()
    busy.join()
    assert "exc" not in result, result.get("exc")
    assert result["out"] == (0, "1\n")
    assert result["ns"][0] == result["ns"][1]
    assert os.readlink("/proc/thread-self/ns/pid_for_children") == os.readlink("/proc/self/ns/pid")
