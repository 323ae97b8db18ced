"""``--runtime runc``: the same OCI bundle run by the real runc binary, through the real CLI.

Needs root and runc on PATH (scripts/apt-packages.txt lists it). The engine writes config.json exactly as for
the builtin runtime; these tests prove that the bundle is the whole contract: runs, exit codes, stderr, a
detached container stopped again, exec, a terminal, and the builtin runtime's "use --runtime runc" advice.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import uuid

import pytest

from tests.helpers import cli, err, out, run_in_pty

pytestmark = pytest.mark.root
IMG = "localhost/busybox"
RUNC = shutil.which("runc")

if not sys.platform.startswith("linux") or os.geteuid() != 0:
    pytest.skip("runc tests need root (namespaces, mounts, cgroups)", allow_module_level=True)
if not RUNC:
    pytest.skip("needs runc on PATH (apt install runc; scripts/setup does)", allow_module_level=True)


def run(root, *args, **kw):
    return cli(list(args), root=root, **kw)


def test_run_rm_echo(native_root):
    p = run(native_root, "run", "--rm", "--runtime", "runc", IMG, "echo", "hello from runc")
    assert p.returncode == 0, err(p)
    assert out(p) == "hello from runc\n"


def test_exit_codes_and_both_streams(native_root):
    p = run(native_root, "run", "--rm", "--runtime", "runc", IMG, "sh", "-c", "echo out; echo err >&2; exit 3")
    assert (p.returncode, out(p), err(p)) == (3, "out\n", "err\n")
    p = run(native_root, "run", "--rm", "--runtime", "runc", IMG, "nosuchcommand")
    assert p.returncode == 127 and "nosuchcommand" in err(p) and "Traceback" not in err(p)
    p = run(native_root, "run", "--rm", "--runtime", "runc", IMG, "sh", "-c", "exit 0")
    assert p.returncode == 0


def test_detached_container_is_recorded_stopped_and_removed(native_root):
    name = "runc-" + uuid.uuid4().hex[:8]
    p = run(native_root, "run", "-d", "--name", name, "--runtime", "runc", IMG, "sleep", "60")
    assert p.returncode == 0, err(p)
    cid = out(p).strip()
    try:
        info = json.loads(out(run(native_root, "inspect", name)))[0]
        assert info["HostConfig"]["Runtime"] == "runc" and info["State"]["Running"] is True
        assert os.path.exists(f"/proc/{info['State']['Pid']}")
        assert out(run(native_root, "exec", name, "cat", "/proc/1/cmdline")) == "sleep\x0060\x00"
        assert name in out(run(native_root, "ps"))
        p = run(native_root, "stop", "-t", "1", name)
        assert p.returncode == 0, err(p)
        info = json.loads(out(run(native_root, "inspect", name)))[0]
        assert info["State"]["Status"] == "exited" and info["State"]["ExitCode"] == 137
        assert not os.path.exists(f"/run/runner-runc/{cid}")  # runc's own state is deleted with the run
    finally:
        run(native_root, "rm", "-f", name)
    assert cid not in out(run(native_root, "ps", "-a", "-q", "--no-trunc"))


def test_unknown_runtime_is_one_clear_error_and_leaves_nothing(native_root):
    before = out(run(native_root, "ps", "-a", "-q"))
    for command in ("run", "create"):
        p = run(native_root, command, "--runtime", "crunchy", IMG, "true")
        assert p.returncode == 125
        assert err(p).startswith("Error: unknown or invalid runtime name: crunchy") and "Traceback" not in err(p)
    assert out(run(native_root, "ps", "-a", "-q")) == before


def test_terminal_under_runc(native_root):
    code, output = run_in_pty(["run", "--rm", "-it", "--runtime", "runc", IMG, "sh", "-c", "tty; stty size"],
                              native_root, rows=33, cols=111)
    assert code == 0, output
    assert b"/dev/pts/0" in output and b"33 111" in output


# ------------------------------------------------------------------ the builtin runtime's advice is real

@pytest.fixture
def userns_bundle(native_root):
    """A bundle whose config asks for a user namespace (uid 0 inside = 100000 outside), on the busybox rootfs
    of a created (not started) container; runc's and our cgroups are removed afterwards."""
    from runner.engine.runtime import oci
    from runner.spec import ContainerSpec

    import pathlib
    import tempfile
    # Not under pytest's 0700 tmp dirs: the container's root (host uid 100000) must reach its rootfs.
    tmp_path = pathlib.Path(tempfile.mkdtemp(prefix="runner-userns-"))
    rootfs = tmp_path / "rootfs"
    (rootfs / "bin").mkdir(parents=True)
    busybox = shutil.which("busybox") or "/bin/busybox"
    shutil.copy2(busybox, rootfs / "bin" / "busybox")
    for applet in ("sh", "cat", "id"):
        os.symlink("busybox", rootfs / "bin" / applet)
    os.chmod(tmp_path, 0o755)
    # Owned by the container's root, as a user-namespaced rootfs must be (Docker's userns-remap does the same).
    for path in [rootfs, *rootfs.rglob("*")]:
        os.lchown(path, 100000, 100000)
    cid = "userns" + uuid.uuid4().hex[:10]
    spec = ContainerSpec(image="test", command=["sh", "-c", "id -u; cat /proc/self/uid_map"])
    config = oci.make_config(spec, {"Env": ["PATH=/bin"]}, rootfs=str(rootfs), container_id=cid, hostname=cid,
                             etc_files={}, cgroups_path=f"/runner-test/{cid}", uid=0, gid=0, additional_gids=[],
                             home="/")
    config["linux"]["namespaces"].append({"type": "user"})
    config["linux"]["uidMappings"] = [{"containerID": 0, "hostID": 100000, "size": 65536}]
    config["linux"]["gidMappings"] = [{"containerID": 0, "hostID": 100000, "size": 65536}]
    (tmp_path / "config.json").write_text(json.dumps(config))
    yield str(tmp_path), cid
    shutil.rmtree(tmp_path, ignore_errors=True)
    import glob
    # The test's parent cgroup, empty once runc deleted its own; runc makes it in every v1 hierarchy mounted.
    for parent in glob.glob("/sys/fs/cgroup/runner-test") + glob.glob("/sys/fs/cgroup/*/runner-test"):
        try:
            os.rmdir(parent)
        except OSError:
            pass


def test_user_namespace_hint_leads_to_a_runtime_that_runs_it(userns_bundle):
    from runner.engine.runtime.builtin import BuiltinRuntime
    from runner.engine.runtime.runc import RuncRuntime
    from runner.errors import ContainerStartError

    bundle, cid = userns_bundle
    null = os.open("/dev/null", os.O_RDONLY)
    r, w = os.pipe()
    runc = RuncRuntime()
    pid = None
    try:
        with pytest.raises(ContainerStartError) as info:
            BuiltinRuntime().start(bundle, cid, (null, w, w))
        assert info.value.hint == "use --runtime runc"
        pid = runc.start(bundle, cid, (null, w, w))  # the advice: the very same bundle, under runc
        os.close(w)
        w = None
        output = b""
        while chunk := os.read(r, 4096):
            output += chunk
        _, status = os.waitpid(pid, 0)
        pid = None
        assert os.waitstatus_to_exitcode(status) == 0, output
        lines = output.decode().split()
        assert lines[0] == "0" and lines[1:4] == ["0", "100000", "65536"]
    finally:
        if pid is not None:
            os.kill(pid, signal.SIGKILL)  # only the container this test started, by pid
            os.waitpid(pid, 0)
        runc.delete(bundle, cid)
        for fd in (null, r, w):
            if fd is not None:
                os.close(fd)
