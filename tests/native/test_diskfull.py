"""A full disk (issue 19): runner's state root on a small tmpfs of its own, filled by a container, by a load
and by a file. Each time the error is one line naming the filesystem, nothing half-made remains, and `ps`,
`inspect`, `images`, `rm -f`, `rmi` and `system prune` work and give the space back."""

from __future__ import annotations

import errno
import json
import os
import re
import subprocess
import time
import sys

import pytest

from tests.helpers import REPO, cli, wait_for

pytestmark = pytest.mark.root
IMG = "localhost/busybox"
FULL = re.compile(r"^Error: no space left on (\S+) \(tmpfs, \S+ free\) while (.+)$")


def run(root, *args, **kw):
    return cli(list(args), root=root, **kw)


@pytest.fixture
def small_root(tmp_path):
    """A 16 MB tmpfs as RUNNER_ROOT's filesystem, with the default image in it; unmounted whatever happens."""
    mnt = str(tmp_path / "fs")
    os.mkdir(mnt)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m,mode=0700", "tmpfs", mnt], check=True)
    root = os.path.join(mnt, "root")
    try:
        warm = run(root, "run", "--rm", "--network", "none", IMG, "true")
        assert warm.returncode == 0, warm.stderr.decode()
        yield mnt, root
    finally:
        ids = run(root, "ps", "-aq", "--no-trunc").stdout.decode().split()
        for cid in ids:
            run(root, "rm", "-f", cid)
        run(root, "network", "rm", "bridge")
        subprocess.run(["umount", "-l", mnt], check=False)


def fill(mnt: str, name: str = "filler") -> str:
    """Fill the filesystem with one file (the last bytes too); return its path."""
    path = os.path.join(mnt, name)
    with open(path, "wb") as f:
        try:
            while True:
                f.write(bytes(1 << 20))
                f.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    with open(path, "ab", buffering=0) as f:
        try:
            while True:
                f.write(b"x" * 512)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    return path


def free(mnt: str) -> int:
    st = os.statvfs(mnt)
    return st.f_bavail * st.f_frsize


def container_dirs(root: str) -> list[str]:
    return [e for e in os.listdir(os.path.join(root, "containers")) if not e.startswith(".")]


def assert_full_error(proc, mnt: str, what: str) -> None:
    assert proc.returncode == 125, proc.stderr.decode()
    lines = proc.stderr.decode().splitlines()
    assert FULL.match(lines[0]), lines
    assert FULL.match(lines[0]).group(1) == mnt and what in lines[0], lines
    assert lines[1].startswith("Hint:") and "runner system prune" in lines[1], lines
    assert "Traceback" not in proc.stderr.decode() and len(lines) == 2


def test_rm_container_that_fills_the_disk_keeps_its_own_error_and_is_removed(small_root):
    mnt, root = small_root
    before = free(mnt)
    proc = run(root, "run", "--rm", "--network", "none", IMG,
               "sh", "-c", "dd if=/dev/zero of=/fill bs=1M count=64; exit 3")
    # The workload met ENOSPC itself, said so on its stderr and chose its exit code; runner said nothing.
    assert proc.returncode == 3, proc.stderr.decode()
    assert b"No space left on device" in proc.stderr and b"Error:" not in proc.stderr
    assert container_dirs(root) == []
    assert wait_for(lambda: free(mnt) >= before - (256 << 10)), (free(mnt), before)


def test_full_disk_keeps_ps_rm_rmi_working_and_leaves_nothing_half_made(small_root):
    mnt, root = small_root
    cid = run(root, "run", "-d", "--network", "none", IMG, "sh", "-c",
              "dd if=/dev/zero of=/fill bs=1M count=64; sleep 1000").stdout.decode().strip()
    assert wait_for(lambda: free(mnt) < (64 << 10)), free(mnt)
    filler = fill(mnt)
    try:
        for what, args in (("creating a container", ["run", "-d", "--network", "none", IMG, "true"]),
                           ("creating a container", ["create", "--network", "none", IMG, "true"])):
            assert_full_error(run(root, *args), mnt, what)
            assert container_dirs(root) == [cid]  # no empty container directory left behind
        for args in (["ps", "-a"], ["inspect", cid], ["images"], ["logs", cid], ["info"]):
            proc = run(root, *args)
            assert proc.returncode == 0, (args, proc.stderr.decode())
        assert cid[:12] in run(root, "ps").stdout.decode()
        assert json.loads(run(root, "inspect", cid).stdout)[0]["State"]["Running"] is True
        proc = run(root, "rm", "-f", cid)
        assert proc.returncode == 0, proc.stderr.decode()
        assert container_dirs(root) == []
        proc = run(root, "rmi", IMG)
        assert proc.returncode == 0, proc.stderr.decode()
        assert run(root, "images", "-q").stdout.decode().strip() == ""
        assert os.listdir(os.path.join(root, "images", "blobs", "sha256")) == []
    finally:
        os.unlink(filler)


def test_dead_container_is_shown_exited_though_the_record_cannot_be_saved(small_root):
    mnt, root = small_root
    cid = run(root, "run", "-d", "--network", "none", IMG, "sleep", "1000").stdout.decode().strip()
    with open(os.path.join(root, "containers", cid, "state.json")) as f:
        rec = json.load(f)
    filler = fill(mnt)
    try:
        for name in os.listdir(os.path.join(root, "containers", cid)):
            if name.endswith(".reserve"):  # no spare left either: the record truly cannot be written
                os.unlink(os.path.join(root, "containers", cid, name))
        os.unlink(fill(mnt, "filler2"))  # what the spare gave back is taken too (and given back at the end)
        fill(mnt, "filler2")
        os.kill(rec["shim_pid"], 9)
        os.kill(rec["pid"], 9)
        assert wait_for(lambda: "Exited (255)" in run(root, "ps", "-a").stdout.decode())
        with open(os.path.join(root, "containers", cid, "state.json")) as f:
            assert json.load(f)["status"] == "running"  # shown, not saved
    finally:
        os.unlink(filler)
        os.unlink(os.path.join(mnt, "filler2"))
    assert run(root, "rm", cid).returncode == 0


def test_load_into_a_full_disk_fails_clearly_and_leaves_no_partial(small_root, tmp_path):
    mnt, root = small_root
    archive = str(tmp_path / "img.tar")
    assert run(root, "save", "-o", archive, IMG).returncode == 0
    assert run(root, "rmi", IMG).returncode == 0
    filler = fill(mnt)
    try:
        os.truncate(filler, os.path.getsize(filler) - (1 << 20))  # 1 MB free: less than the image
        proc = run(root, "load", "-i", archive)
        assert_full_error(proc, mnt, "loading images")
        assert os.listdir(os.path.join(root, "images", "tmp")) == []
        assert run(root, "images", "-q").stdout.decode().strip() == ""
    finally:
        os.unlink(filler)
    proc = run(root, "load", "-i", archive)
    assert proc.returncode == 0, proc.stderr.decode()


def test_system_prune_works_on_a_full_disk_and_gives_the_space_back(small_root):
    mnt, root = small_root
    proc = run(root, "run", "--network", "none", IMG, "sh", "-c", "dd if=/dev/zero of=/fill bs=1M count=64")
    assert proc.returncode == 1 and b"No space left" in proc.stderr  # dd's own failure, its own exit code
    filler = fill(mnt)
    try:
        assert free(mnt) == 0
        proc = run(root, "system", "prune", "-a", "-f")
        assert proc.returncode == 0, proc.stderr.decode()
        out = proc.stdout.decode()
        assert "Deleted Containers:" in out and "Deleted Images:" in out and "Total reclaimed space:" in out
        assert container_dirs(root) == [] and run(root, "images", "-q").stdout.decode().strip() == ""
        assert free(mnt) > (8 << 20)
        df = run(root, "system", "df", "--format", "json")
        assert df.returncode == 0 and json.loads(df.stdout)["Disk"]["Mount"] == mnt
    finally:
        os.unlink(filler)


def small_tmpfs(path: str, size: str = "256k") -> str:
    os.mkdir(path)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", path], check=True)
    return path


def test_save_into_a_full_filesystem_names_that_filesystem_not_runners(native_root, tmp_path):
    """`save -o` (or `save >`) onto a full filesystem elsewhere: the error names that filesystem and the file,
    with a hint that helps there (pruning runner's store would not), and no partial archive stays."""
    out = small_tmpfs(str(tmp_path / "out"))
    try:
        proc = run(native_root, "save", "-o", f"{out}/busybox.tar", IMG)
        lines = proc.stderr.decode().splitlines()
        assert proc.returncode == 125 and len(lines) == 2, lines
        assert lines[0].startswith(f"Error: no space left on {out} (tmpfs, ") and \
            lines[0].endswith(f"while writing {out}/busybox.tar"), lines
        assert lines[1] == "Hint: free space there, or write the archive elsewhere (-o PATH)", lines
        assert os.listdir(out) == []  # the temp archive went, nothing under the real name either
        with open(f"{out}/piped.tar", "wb") as f:  # `runner save IMG > file`
            proc = subprocess.run([sys.executable, "-m", "runner", "--backend", "native", "save", IMG], stdout=f,
                                  stderr=subprocess.PIPE, env=dict(os.environ, RUNNER_ROOT=native_root,
                                                                   PYTHONPATH=REPO), timeout=120)
        assert proc.returncode == 125 and proc.stderr.decode().splitlines()[0].endswith(
            "while writing standard output"), proc.stderr.decode()
    finally:
        subprocess.run(["umount", "-l", out], check=False)


def test_output_redirected_onto_a_full_filesystem_is_named_as_such(native_root, tmp_path):
    """`runner logs c > file` on a full filesystem: no write path of runner's words that, so the last resort
    names the redirected stdout's filesystem, not the working directory or runner's root."""
    out = small_tmpfs(str(tmp_path / "out"), "64k")
    try:
        p = run(native_root, "run", "--name", "chatty", "--network", "none", IMG, "sh", "-c",
                "i=0; while [ $i -lt 3000 ]; do echo a line of the chatty container $i; i=$((i+1)); done")
        assert p.returncode == 0, p.stderr.decode()
        with open(f"{out}/logs.txt", "wb") as f:
            proc = subprocess.run([sys.executable, "-m", "runner", "--backend", "native", "logs", "chatty"],
                                  stdout=f, stderr=subprocess.PIPE, timeout=120,
                                  env=dict(os.environ, RUNNER_ROOT=native_root, PYTHONPATH=REPO))
        lines = proc.stderr.decode().splitlines()
        assert proc.returncode == 125 and len(lines) == 2, lines
        assert lines[0].startswith(f"Error: no space left on {out} (tmpfs, 0B free) while writing standard output")
    finally:
        run(native_root, "rm", "-f", "chatty")
        subprocess.run(["umount", "-l", out], check=False)


# ---------------------------------------------------------------------------------------- volumes (#19)

def test_volumes_filled_by_containers_are_removed_on_a_full_disk_and_shown_by_df(small_root):
    """A container filling a volume meets its own ENOSPC; on the full disk `system df` shows the volumes,
    `volume rm`, `volume prune -a` and `system prune --volumes` (anonymous only) all work and give space back."""
    mnt, root = small_root
    for name in ("v1", "v2"):
        assert run(root, "volume", "create", name).returncode == 0
    proc = run(root, "run", "--name", "anon", "--network", "none", "-v", "/scratch", IMG, "true")
    assert proc.returncode == 0 and run(root, "rm", "anon").returncode == 0  # rm without -v: the volume stays
    proc = run(root, "run", "--rm", "--network", "none", "-v", "v1:/data", IMG,
               "sh", "-c", "dd if=/dev/zero of=/data/fill bs=1M count=64")
    assert proc.returncode == 1, proc.stderr.decode()  # dd's own failure and exit code, not runner's
    assert b"No space left on device" in proc.stderr and b"Error:" not in proc.stderr
    filler = fill(mnt)
    try:
        df = json.loads(run(root, "system", "df", "--format", "json").stdout)
        row = df["Local Volumes"]
        assert row["Total"] == 3 and row["Active"] == 0, row
        assert row["Size"] >= (4 << 20) and row["Reclaimable"] == row["Size"], row
        assert {v["Name"] for v in df["VolumesList"]} >= {"v1", "v2"}
        table = run(root, "system", "df").stdout.decode()
        assert re.search(r"^Local Volumes\s+3\s+0\s", table, re.M) and re.search(r"^Build Cache\s", table, re.M)
        proc = run(root, "system", "prune", "-f", "--volumes")
        assert proc.returncode == 0, proc.stderr.decode()
        assert "Deleted Volumes:" in proc.stdout.decode()
        assert sorted(run(root, "volume", "ls", "-q").stdout.decode().split()) == ["v1", "v2"]  # named stay
        proc = run(root, "volume", "rm", "v1")
        assert proc.returncode == 0 and proc.stdout.decode().strip() == "v1", proc.stderr.decode()
        assert free(mnt) > (4 << 20)
        os.unlink(filler)
        filler = fill(mnt)
        proc = run(root, "volume", "prune", "-a", "-f")
        assert proc.returncode == 0 and "v2" in proc.stdout.decode(), proc.stderr.decode()
        assert run(root, "volume", "ls", "-q").stdout.decode().split() == []
        assert os.listdir(os.path.join(root, "volumes")) == [".lock"]
    finally:
        os.unlink(filler)


# ------------------------------------------------------------------------------------------ build (#19)

def _write_context(path: str, dockerfile: str) -> str:
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "Dockerfile"), "w") as f:
        f.write(dockerfile)
    return path


def _spawn_build(root: str, ctx: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "runner", "--backend", "native", "build", "--progress", "plain",
                             "--network", "none", ctx], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env=dict(os.environ, RUNNER_ROOT=root, PYTHONPATH=REPO))


def _step_containers(root: str) -> list[str]:
    return run(root, "ps", "-aq", "--no-trunc", "--filter", "label=io.runner.build.step").stdout.decode().split()


def test_build_killed_during_a_run_step_stops_the_step_and_leaves_nothing(small_root, tmp_path):
    mnt, root = small_root
    ctx = _write_context(str(tmp_path / "ctx"), f"FROM {IMG}\nRUN echo step-started; sleep 1000\n")
    proc = _spawn_build(root, ctx)
    try:
        import threading
        guard = threading.Timer(120, proc.kill)  # a build that never prints the line fails the test, never hangs it
        guard.start()
        seen = line = b""
        while not (line.rstrip().endswith(b" step-started") and b"RUN" not in line):  # the step's own output
            line = proc.stdout.readline()
            assert line, seen.decode()
            seen += line
        guard.cancel()
        proc.kill()  # SIGKILL: nothing of runner build's own cleanup runs
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
    # The step's shim sees its builder die: the step is killed and its container removed within moments,
    # as dockerd stops a build whose client left (before, it ran its sleep on until the next build swept it).
    killed = time.monotonic()
    wait_for(lambda: _step_containers(root) == [], 20, "the killed build's step container to go")
    assert time.monotonic() - killed < 15
    assert run(root, "ps", "-aq").stdout.decode() == ""
    ok = run(root, "build", "-q", "--network", "none", _write_context(str(tmp_path / "ok"), f"FROM {IMG}\nLABEL a=b\n"))
    assert ok.returncode == 0, ok.stderr.decode()
    assert _step_containers(root) == [] and run(root, "ps", "-aq").stdout.decode() == ""
    assert os.listdir(os.path.join(root, "images", "tmp")) == []


def test_build_killed_during_the_context_upload_leaves_no_temp_file(tmp_path):
    """The context spool of a killed build is a claimed temp file: `system prune` (and the next build) sweep it."""
    root = str(tmp_path / "root")
    ctx = _write_context(str(tmp_path / "ctx"), f"FROM {IMG}\n")
    with open(os.path.join(ctx, "big"), "wb") as f:
        f.truncate(4 << 30)  # sparse: cheap to make, slow enough to send that the kill lands mid-upload
    tmp = os.path.join(root, "images", "tmp")
    os.makedirs(tmp)
    proc = _spawn_build(root, ctx)
    try:
        def spooling():
            return [n for n in os.listdir(tmp) if n.startswith("context-")
                    and os.path.getsize(os.path.join(tmp, n)) > 0]
        spool = wait_for(spooling, 60, "the context spool", interval=0.005)
        proc.kill()
        assert proc.wait(timeout=30) == -9
        assert os.listdir(tmp) == spool  # left behind by the kill ...
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
    prune = run(root, "system", "prune", "-f")
    assert prune.returncode == 0, prune.stderr.decode()
    assert os.listdir(tmp) == []  # ... and swept


def test_build_whose_run_fills_the_disk_fails_with_the_steps_error_and_leaves_no_half_image(small_root, tmp_path):
    mnt, root = small_root
    images_before = run(root, "images", "-aq", "--no-trunc").stdout.decode().split()
    ctx = _write_context(str(tmp_path / "ctx"), f"FROM {IMG}\nRUN dd if=/dev/zero of=/fill bs=1M count=64\n")
    proc = run(root, "build", "--network", "none", ctx)
    out = proc.stdout.decode() + proc.stderr.decode()
    assert proc.returncode == 1, out
    assert "No space left on device" in out and "returned a non-zero code: 1" in out, out
    assert run(root, "images", "-aq", "--no-trunc").stdout.decode().split() == images_before
    assert _step_containers(root) == [] and os.listdir(os.path.join(root, "images", "tmp")) == []


def test_build_whose_layer_commit_meets_a_full_disk_says_so_in_one_line(small_root, tmp_path):
    """The step's own writes fit, the layer tar made of them does not: runner's disk-full error, exit 125."""
    mnt, root = small_root
    images_before = run(root, "images", "-aq", "--no-trunc").stdout.decode().split()
    size = free(mnt) * 6 // 10 // 1024
    ctx = _write_context(str(tmp_path / "ctx"), f"FROM {IMG}\nRUN dd if=/dev/urandom of=/blob bs=1k count={size}\n")
    proc = run(root, "build", "-q", "--network", "none", ctx)
    assert_full_error(proc, mnt, "")
    assert _step_containers(root) == [] and os.listdir(os.path.join(root, "images", "tmp")) == []
    assert run(root, "images", "-aq", "--no-trunc").stdout.decode().split() == images_before  # no half image
