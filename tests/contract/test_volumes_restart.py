"""Volumes, restart policies, healthchecks, labels/filters/--format and cp: the same scenarios on every backend.

The VM-only tests at the end prove that volume data and restart policies survive the machine itself: a clean
`vm stop`/`vm start` and a SIGKILLed QEMU.
"""

from __future__ import annotations

import json
import os
import signal
import tempfile

import pytest

from runner.procs import start_time as proc_start_time
from tests.helpers import cli, ok, wait_for

IMG = "localhost/busybox"


def text(proc) -> str:
    return proc.stdout.decode()


def inspect(rn, ref: str, template: str) -> str:
    return ok(rn("inspect", "-f", template, ref)).strip()


def volumes(rn, *args) -> list[str]:
    return ok(rn("volume", "ls", "-q", *args)).split()


def test_named_volume_lifecycle_copy_up_and_in_use_conflict(rn):
    try:
        assert ok(rn("volume", "create", "--label", "team=a", "vr-data")).strip() == "vr-data"
        assert ok(rn("volume", "create", "vr-data")).strip() == "vr-data"  # Docker: create is idempotent
        assert "vr-data" in volumes(rn, "--filter", "label=team=a")
        assert "vr-data" not in volumes(rn, "--filter", "label=team=b")
        info = json.loads(ok(rn("volume", "inspect", "vr-data")))[0]
        assert (info["Name"], info["Driver"], info["Labels"]) == ("vr-data", "local", {"team": "a"})
        ok(rn("run", "--name", "vr-writer", "-v", "vr-data:/data", IMG, "sh", "-c", "echo kept > /data/f"))
        mounts = json.loads(inspect(rn, "vr-writer", "{{json .Mounts}}"))
        assert [(m["Type"], m["Name"], m["Destination"], m["RW"]) for m in mounts] == \
            [("volume", "vr-data", "/data", True)]
        p = rn("volume", "rm", "vr-data")  # a stopped container still uses it: Docker's 409
        assert p.returncode != 0 and "volume is in use" in p.stderr.decode() and "vr-writer" in p.stderr.decode()
        ok(rn("rm", "vr-writer"))
        assert ok(rn("run", "--rm", "-v", "vr-data:/d:ro", IMG, "cat", "/d/f")) == "kept\n"
        p = rn("run", "--rm", "--mount", "type=volume,src=vr-data,dst=/d,readonly", IMG, "sh", "-c", "echo x > /d/g")
        assert p.returncode != 0 and "Read-only file system" in p.stderr.decode()
        # copy-up: a new volume mounted over /etc starts with the image's /etc; a non-empty one is left alone
        assert "passwd" in ok(rn("run", "--rm", "-v", "vr-etc:/etc", IMG, "ls", "/etc")).split()
        assert "passwd" in ok(rn("run", "--rm", "-v", "vr-etc:/mnt", IMG, "ls", "/mnt")).split()
        assert ok(rn("run", "--rm", "--mount", "type=volume,src=vr-nocopy,dst=/etc,volume-nocopy", IMG,
                     "ls", "/etc")).split() == ["hostname", "hosts", "resolv.conf"]  # only the mount points
    finally:
        rn("rm", "-f", "vr-writer")
        rn("volume", "rm", "-f", "vr-data", "vr-etc", "vr-nocopy")
    assert not {"vr-data", "vr-etc", "vr-nocopy"} & set(volumes(rn))


def test_anonymous_volumes_rm_v_prune_and_bad_names(rn):
    before = set(volumes(rn))
    cid = ok(rn("create", "-v", "/anon", "-v", "vr-named:/named", IMG, "true")).strip()
    try:
        anon = set(volumes(rn)) - before - {"vr-named"}
        assert len(anon) == 1 and len(next(iter(anon))) == 64
        ok(rn("rm", "-v", cid))  # the anonymous volume goes, the named one stays (Docker's rule)
        assert set(volumes(rn)) - before == {"vr-named"}
        ok(rn("run", "--rm", "-v", "/gone-with-rm", IMG, "true"))  # --rm removes anonymous volumes too
        assert set(volumes(rn)) - before == {"vr-named"}
        cid = ok(rn("create", "-v", "/anon2", IMG, "true")).strip()
        ok(rn("rm", cid))  # without -v the anonymous volume stays: prune takes it, and not the named one
        assert len(set(volumes(rn)) - before) == 2
        out = ok(rn("volume", "prune", "-f"))
        assert "Deleted Volumes:" in out and "vr-named" not in out
        assert set(volumes(rn)) - before == {"vr-named"}
        assert "vr-named" in ok(rn("volume", "prune", "-f", "--all"))
        assert set(volumes(rn)) - before == set()
    finally:
        rn("rm", "-f", cid)
        rn("volume", "rm", "-f", "vr-named")
    p = rn("run", "--rm", "-v", "x:/d", IMG, "true")
    assert p.returncode == 125 and "invalid volume name" in p.stderr.decode()
    p = rn("volume", "create", "../escape")
    assert p.returncode == 125 and "invalid volume name" in p.stderr.decode()
    p = rn("run", "--rm", "-v", "vr-ok:relative", IMG, "true")
    assert p.returncode == 125 and "not an absolute path" in p.stderr.decode()


def test_tmpfs_and_mount_syntax(rn):
    out = ok(rn("run", "--rm", "--tmpfs", "/scratch:size=1m,mode=1777", "--mount", "type=tmpfs,dst=/t2",
                IMG, "sh", "-c", "grep -E ' /(scratch|t2) ' /proc/mounts; stat -c %a /scratch"))
    lines = out.splitlines()
    assert any(ln.startswith("tmpfs /scratch tmpfs") and "size=1024k" in ln and "noexec" in ln for ln in lines)
    assert any(ln.startswith("tmpfs /t2 tmpfs") for ln in lines)
    assert lines[-1] == "1777"
    p = rn("run", "--rm", "--mount", "type=nfs,dst=/x", IMG, "true")
    assert p.returncode == 125 and "invalid mount type" in p.stderr.decode()


def test_restart_on_failure_counts_and_stop_does_not_restart(rn):
    try:
        ok(rn("run", "-d", "--name", "vr-fail", "--restart", "on-failure:2", IMG, "sh", "-c", "echo run; exit 3"))
        wait_for(lambda: inspect(rn, "vr-fail", "{{.State.Status}} {{.RestartCount}}") == "exited 2", 60,
                 "two restarts, then exited")
        assert inspect(rn, "vr-fail", "{{.State.ExitCode}} {{.HostConfig.RestartPolicy.Name}}") == "3 on-failure"
        assert text(rn("logs", "vr-fail")) == "run\nrun\nrun\n"
        ok(rn("run", "-d", "--name", "vr-always", "--restart", "always", IMG, "sh", "-c", "sleep 0.3; exit 0"))
        wait_for(lambda: int(inspect(rn, "vr-always", "{{.RestartCount}}")) >= 2, 60, "always: restarted")
        ok(rn("stop", "-t", "1", "vr-always"))
        assert inspect(rn, "vr-always", "{{.State.Status}}") == "exited"
        count = inspect(rn, "vr-always", "{{.RestartCount}}")
        p = rn("run", "--rm", IMG, "sleep", "1")  # time passes; a stopped container must stay stopped
        assert p.returncode == 0 and inspect(rn, "vr-always", "{{.State.Status}} {{.RestartCount}}") == \
            f"exited {count}"
        p = rn("run", "--rm", "--restart", "always", IMG, "true")
        assert p.returncode == 125 and "--restart and --rm" in p.stderr.decode()
    finally:
        rn("rm", "-f", "vr-fail", "vr-always")


def test_healthcheck_healthy_then_unhealthy_and_none(rn):
    try:
        ok(rn("run", "-d", "--name", "vr-health", "--health-cmd", "cat /tmp/ok", "--health-interval", "300ms",
              "--health-retries", "2", IMG, "sh", "-c", "echo fine > /tmp/ok; sleep 300"))
        wait_for(lambda: inspect(rn, "vr-health", "{{.State.Health.Status}}") == "healthy", 60, "healthy")
        assert "(healthy)" in ok(rn("ps", "--filter", "name=vr-health", "--format", "{{.Status}}"))
        assert ok(rn("ps", "-q", "--filter", "health=healthy", "--filter", "name=vr-health")).strip()
        log = json.loads(inspect(rn, "vr-health", "{{json .State.Health.Log}}"))
        assert log[-1]["ExitCode"] == 0 and log[-1]["Output"] == "fine\n"
        ok(rn("exec", "vr-health", "rm", "/tmp/ok"))
        wait_for(lambda: inspect(rn, "vr-health", "{{.State.Health.Status}}") == "unhealthy", 60, "unhealthy")
        assert "(unhealthy)" in ok(rn("ps", "--filter", "name=vr-health", "--format", "{{.Status}}"))
        assert int(inspect(rn, "vr-health", "{{.State.Health.FailingStreak}}")) >= 2
        ok(rn("run", "-d", "--name", "vr-nohealth", "--no-healthcheck", IMG, "sleep", "300"))
        assert inspect(rn, "vr-nohealth", "{{.State.Health}}") == "<no value>"
    finally:
        rn("rm", "-f", "vr-health", "vr-nohealth")


def test_labels_filters_and_format(rn):
    with tempfile.NamedTemporaryFile("w", suffix=".labels", delete=False) as f:
        f.write("# a comment\nfrom.file=yes\n")
    try:
        ok(rn("run", "-d", "--name", "vr-lab1", "--label", "app=shop", "--label", "tier=web", "--label-file", f.name,
              IMG, "sleep", "300"))
        ok(rn("create", "--name", "vr-lab2", "--label", "app=shop", IMG, "true"))

        def names(*args):
            return sorted(ok(rn("ps", "-a", "--format", "{{.Names}}", *args)).split())
        assert names("--filter", "label=app=shop") == ["vr-lab1", "vr-lab2"]
        assert names("--filter", "label=app=shop", "--filter", "label=tier=web") == ["vr-lab1"]  # ANDed
        assert names("--filter", "label=from.file") == ["vr-lab1"]
        assert names("--filter", "label=app=shop", "--filter", "status=created") == ["vr-lab2"]
        assert names("--filter", "label=app", "--filter", "name=lab1") == ["vr-lab1"]
        assert "vr-lab1" in names("--filter", f"ancestor={IMG}")
        cid = inspect(rn, "vr-lab1", "{{.Id}}")
        assert names("--filter", f"id={cid[:10]}") == ["vr-lab1"]
        assert ok(rn("ps", "--filter", "name=vr-lab1", "--format", '{{.Label "tier"}}|{{.Labels}}')).strip() == \
            "web|app=shop,from.file=yes,tier=web"
        table = ok(rn("ps", "--filter", "name=vr-lab1", "--format", r"table {{.Names}}\t{{.State}}")).splitlines()
        assert table[0].split() == ["NAMES", "STATE"] and table[1].split() == ["vr-lab1", "running"]
        assert inspect(rn, "vr-lab1", '{{.State.Running}} {{index .Config.Labels "app"}}') == "true shop"
        p = rn("ps", "--format", "{{.Names")
        assert p.returncode == 125 and "template parsing error" in p.stderr.decode()
        p = rn("ps", "--filter", "colour=red")
        assert p.returncode == 125 and "invalid filter" in p.stderr.decode()
        assert "localhost/busybox:latest" in ok(rn("images", "--format", "{{.Repository}}:{{.Tag}}")).split()
        ok(rn("network", "create", "--label", "vr=1", "vr-net"))
        assert ok(rn("network", "ls", "--filter", "label=vr=1", "--format", "{{.Name}}")).split() == ["vr-net"]
    finally:
        os.unlink(f.name)
        rn("rm", "-f", "vr-lab1", "vr-lab2")
        rn("network", "rm", "vr-net")


def test_cp_both_ways_and_symlinks_never_reach_the_machine(rn, tmp_path):
    secret = tmp_path / "host-secret"
    secret.write_text("HOST SECRET\n")
    try:
        ok(rn("run", "-d", "--name", "vr-cp", IMG, "sh", "-c",
              f"mkdir -p /data/sub && echo inside > /data/sub/f && ln -s {secret} /data/escape && "
              f"ln -s {secret} /lone && ln -s / /rootlink && sleep 300"))
        wait_for(lambda: rn("exec", "vr-cp", "test", "-L", "/lone").returncode == 0, 30, "the links")
        ok(rn("cp", "vr-cp:/data", str(tmp_path / "out")))
        assert (tmp_path / "out/sub/f").read_text() == "inside\n"
        assert os.path.islink(tmp_path / "out/escape")  # copied as a link, its target never read
        p = rn("cp", "-L", "vr-cp:/lone", str(tmp_path / "followed"))  # followed inside the container only
        assert p.returncode != 0 and not (tmp_path / "followed").exists()
        p = rn("cp", f"vr-cp:/rootlink{secret}", str(tmp_path / "via-root"))
        assert p.returncode != 0 and not (tmp_path / "via-root").exists()
        host_file = tmp_path / "in.txt"
        host_file.write_text("from host\n")
        ok(rn("cp", str(host_file), "vr-cp:/data/sub/"))
        ok(rn("cp", str(host_file), "vr-cp:/renamed.txt"))
        assert ok(rn("exec", "vr-cp", "cat", "/data/sub/in.txt", "/renamed.txt")) == "from host\nfrom host\n"
        assert ok(rn("exec", "vr-cp", "stat", "-c", "%u", "/renamed.txt")).strip() == "0"
        ok(rn("cp", str(host_file), "vr-cp:/data/escape"))  # the link is replaced, nothing written through it
        assert secret.read_text() == "HOST SECRET\n"
        assert ok(rn("exec", "vr-cp", "sh", "-c", "test ! -L /data/escape && cat /data/escape")) == "from host\n"
        ok(rn("stop", "-t", "0", "vr-cp"))  # a stopped container's files are reachable too
        ok(rn("cp", "vr-cp:/renamed.txt", str(tmp_path / "back.txt")))
        assert (tmp_path / "back.txt").read_text() == "from host\n"
        p = rn("cp", "vr-cp:/no/such", str(tmp_path / "x"))
        assert p.returncode != 0 and "Could not find the file /no/such" in p.stderr.decode()
    finally:
        rn("rm", "-f", "vr-cp")
    assert secret.read_text() == "HOST SECRET\n"


def test_cp_of_a_stopped_container_reaches_its_volumes(rn, tmp_path):
    """docker cp mounts a stopped (or never started) container's volumes: files go into and come out of the
    volume, not the container's own layer, and a read-only volume refuses a copy in."""
    host_file = tmp_path / "in.txt"
    host_file.write_text("from host\n")
    try:
        ok(rn("run", "--rm", "-v", "vr-cpvol:/vol", IMG, "sh", "-c", "echo in volume > /vol/f"))
        ok(rn("create", "--name", "vr-cpstop", "-v", "vr-cpvol:/vol", "-v", "vr-cpro:/ro:ro", IMG, "true"))
        ok(rn("cp", "vr-cpstop:/vol/f", str(tmp_path / "out.txt")))
        assert (tmp_path / "out.txt").read_text() == "in volume\n"
        ok(rn("cp", str(host_file), "vr-cpstop:/vol/new.txt"))
        assert ok(rn("run", "--rm", "-v", "vr-cpvol:/v", IMG, "cat", "/v/new.txt")) == "from host\n"
        p = rn("cp", str(host_file), "vr-cpstop:/ro/")
        assert p.returncode != 0 and b"read-only file system" in p.stderr, p.stderr
        assert ok(rn("run", "--rm", "-v", "vr-cpro:/r", IMG, "ls", "-A", "/r")) == ""
    finally:
        rn("rm", "-f", "vr-cpstop")
        rn("volume", "rm", "vr-cpvol", "vr-cpro")


# ------------------------------------------------------------------------------------------------ the VM itself

def _qemu_pid(vm_driver) -> int:
    return json.loads(ok(cli(["vm", "status", "--json"], backend="vm", env=vm_driver.env)))["pid"]


def _wait_running(rn, name: str, what: str) -> None:
    """Wait for the agent's restore to start ``name``; on failure, say what the machine knows."""
    try:
        wait_for(lambda: inspect(rn, name, "{{.State.Status}}") == "running", 60, what)
    except AssertionError as exc:
        state = text(rn("inspect", "-f", "{{json .State}} {{.RestartCount}}", name))
        log = text(cli(["vm", "ssh", "--", "tail", "-20", "/run/runner/agent.log"], backend="vm", env=rn.env))
        raise AssertionError(f"{exc}\nstate: {state}\nagent log:\n{log}") from None


@pytest.mark.vm
def test_vm_volume_data_and_restart_policies_survive_stop_start_and_sigkill(vm_driver):
    rn = vm_driver
    try:
        ok(rn("run", "--rm", "-v", "vr-persist:/data", IMG, "sh", "-c", "echo durable > /data/f; sync"))
        ok(rn("run", "-d", "--name", "vr-always", "--restart", "always", IMG, "sleep", "3000"))
        ok(rn("run", "-d", "--name", "vr-unless", "--restart", "unless-stopped", IMG, "sleep", "3000"))
        ok(rn("stop", "-t", "0", "vr-unless"))  # its user stopped it: it stays stopped across boots
        ok(cli(["vm", "stop"], backend="vm", env=rn.env, timeout=120))
        ok(cli(["vm", "start"], backend="vm", env=rn.env, timeout=300))
        assert ok(rn("run", "--rm", "-v", "vr-persist:/data", IMG, "cat", "/data/f")) == "durable\n"
        _wait_running(rn, "vr-always", "always: started at boot")
        assert inspect(rn, "vr-unless", "{{.State.Status}}") == "exited"
        pid = _qemu_pid(rn)
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: proc_start_time(pid) is None, 20, "QEMU to die")  # (a zombie counts as dead)
        ok(cli(["vm", "start"], backend="vm", env=rn.env, timeout=300))
        assert ok(rn("run", "--rm", "-v", "vr-persist:/data", IMG, "cat", "/data/f")) == "durable\n"
        _wait_running(rn, "vr-always", "always: after SIGKILL")
    finally:
        rn("rm", "-f", "vr-always", "vr-unless")
        rn("volume", "rm", "-f", "vr-persist")
