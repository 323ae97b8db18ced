"""top, stats, diff, rename, pause/unpause, events, system df, container prune and login through the API with
the docker CLI and docker-py, natively and through the VM; and runner's own CLI commands of the same names.

Containers are made with runner's own CLI on the same state (the API's container routes are another
branch's); what is checked is what the docker CLI gets from the routes of this branch.
"""

from __future__ import annotations

import json
import time

import pytest

from tests.helpers import ok, wait_for
from tests.registry.conftest import basic_registry  # noqa: F401

IMG = "localhost/busybox"


@pytest.fixture
def sleeper(rn):
    """A running container (no network: nothing but the workload)."""
    cid = ok(rn("run", "-d", "--network", "none", IMG, "sh", "-c",
                "echo changed >> /etc/passwd; mkdir /newdir; rm /bin/yes; exec sleep 300")).strip()
    wait_for(lambda: "/newdir" in ok(rn("diff", cid)), 60, "the workload's file changes")
    yield cid
    rn("rm", "-f", cid)


def test_top_lists_the_container_processes(api, sleeper):
    out = ok(api.docker("top", sleeper))
    header, *rows = out.splitlines()
    assert header.split()[:3] == ["UID", "PID", "PPID"] and header.split()[-1] == "CMD"
    assert any(row.endswith("sleep 300") for row in rows), out
    assert len(rows) == 1  # only the container's own task, nothing of the host's


def test_stats_no_stream_and_docker_py_stats(api, sleeper):
    out = ok(api.docker("stats", "--no-stream", "--format", "{{.ID}} {{.MemUsage}} {{.PIDs}}", sleeper))
    cid, *_, pids = out.split()
    assert sleeper.startswith(cid) and pids == "1"
    docker = pytest.importorskip("docker")
    client = docker.DockerClient(base_url=api.host, version="auto", timeout=120)
    try:
        sample = client.api.stats(sleeper, stream=False)
        assert sample["id"] == sleeper and sample["pids_stats"]["current"] == 1
        assert sample["memory_stats"]["usage"] > 0 and sample["memory_stats"]["limit"] > 0
        assert sample["cpu_stats"]["system_cpu_usage"] >= sample["precpu_stats"]["system_cpu_usage"] > 0
        stream = client.api.stats(sleeper, stream=True, decode=True)
        first, second = next(stream), next(stream)
        assert second["precpu_stats"]["cpu_usage"]["total_usage"] == first["cpu_stats"]["cpu_usage"]["total_usage"]
    finally:
        client.close()


def test_diff_shows_added_changed_deleted(api, sleeper):
    lines = set(ok(api.docker("diff", sleeper)).splitlines())
    assert lines == {"A /newdir", "C /etc", "C /etc/passwd", "C /bin", "D /bin/yes"}, lines


def test_rename_and_its_conflict(api, rn, sleeper):
    other = ok(rn("create", "--name", "api-taken", IMG, "true")).strip()
    try:
        ok(api.docker("rename", sleeper, "api-renamed"))
        assert json.loads(ok(rn("inspect", sleeper)))[0]["Name"] == "/api-renamed"
        proc = api.docker("rename", sleeper, "api-taken")
        assert proc.returncode != 0 and "is already in use" in proc.stderr.decode()
        assert json.loads(ok(rn("inspect", sleeper)))[0]["Name"] == "/api-renamed"
    finally:
        rn("rm", "-f", other)


def test_pause_unpause_and_exec_into_a_paused_container(api, rn, sleeper):
    ok(api.docker("pause", sleeper))
    try:
        state = json.loads(ok(rn("inspect", sleeper)))[0]["State"]
        assert state["Status"] == "paused" and state["Paused"] and state["Running"]
        # frozen: its tasks are in the kernel's refrigerator (/proc state D), not running or sleeping
        proc = rn("exec", sleeper, "true")
        assert proc.returncode == 125 and "is paused" in proc.stderr.decode()
        again = api.docker("pause", sleeper)
        assert again.returncode != 0 and "already paused" in again.stderr.decode()
    finally:
        ok(api.docker("unpause", sleeper))
    state = json.loads(ok(rn("inspect", sleeper)))[0]["State"]
    assert state["Status"] == "running" and not state["Paused"]
    assert ok(rn("exec", sleeper, "echo", "thawed")) == "thawed\n"


def test_a_paused_container_can_be_removed(api, rn):
    cid = ok(rn("run", "-d", "--network", "none", IMG, "sleep", "300")).strip()
    try:
        ok(api.docker("pause", cid))
        ok(rn("rm", "-f", cid))
        assert cid not in ok(rn("ps", "-a", "-q", "--no-trunc"))
    finally:
        rn("rm", "-f", cid)


def test_events_show_a_run_from_create_to_destroy(api, rn):
    since = int(time.time()) - 1
    cid = ok(rn("run", "-d", "--rm", "--name", "api-events", "--network", "none", IMG, "true")).strip()
    wait_for(lambda: cid not in ok(rn("ps", "-a", "-q", "--no-trunc")), 60, "the --rm container to go")
    out = ok(api.docker("events", "--since", str(since), "--until", "0s", "--filter", f"container={cid}",
                        "--format", "{{.Action}}"))
    actions = out.split()
    assert actions == ["create", "start", "die", "destroy"], out
    detail = ok(api.docker("events", "--since", str(since), "--until", "0s", "--filter", "event=die",
                           "--format", "{{json .}}"))
    die = [json.loads(line) for line in detail.splitlines() if cid in line][0]
    assert die["Actor"]["Attributes"]["exitCode"] == "0" and die["Actor"]["Attributes"]["name"] == "api-events"
    assert die["Type"] == "container" and die["status"] == "die" and die["from"] == IMG
    own = ok(rn("events", "--since", str(since), "--until", "0s", "--filter", f"container={cid}"))
    assert [line.split()[2] for line in own.splitlines()] == ["create", "start", "die", "destroy"]


def test_events_follow_until_the_client_leaves(api, rn):
    """Without --until the stream stays open and delivers new events as they happen."""
    import subprocess
    import os
    env = dict(os.environ, DOCKER_HOST=api.host)
    from tests.api.conftest import DOCKER
    import select
    since = str(int(time.time()) - 1)  # whenever the follower connects, it starts from before the events
    follower = subprocess.Popen([DOCKER, "events", "--since", since, "--filter", "type=network", "--filter",
                                 "network=api-evnet", "--format", "{{.Action}}"], stdout=subprocess.PIPE, env=env)
    try:
        ok(api.docker("network", "create", "api-evnet"))
        ok(api.docker("network", "rm", "api-evnet"))
        got = b""
        deadline = time.monotonic() + 60
        while got.count(b"\n") < 2 and time.monotonic() < deadline:
            if select.select([follower.stdout], [], [], 1)[0]:
                got += follower.stdout.read1(4096)
        assert got.split() == [b"create", b"destroy"]
        assert follower.poll() is None  # still following
    finally:
        follower.kill()
        follower.wait()


def test_system_df_and_container_prune(api, rn):
    stopped = ok(rn("create", "--label", "apiprune=yes", IMG, "true")).strip()
    kept = ok(rn("create", IMG, "true")).strip()
    try:
        df = ok(api.docker("system", "df", "--format", "{{.Type}} {{.TotalCount}}"))
        rows = dict(line.rsplit(" ", 1) for line in df.splitlines())
        assert int(rows["Images"]) >= 1 and int(rows["Containers"]) >= 2
        out = ok(api.docker("container", "prune", "-f", "--filter", "label=apiprune=yes"))
        assert stopped in out and kept not in out
        assert stopped not in ok(rn("ps", "-a", "-q", "--no-trunc"))
        assert kept in ok(rn("ps", "-a", "-q", "--no-trunc"))
    finally:
        rn("rm", "-f", stopped)
        rn("rm", "-f", kept)


@pytest.mark.registry
def test_login_checks_credentials_against_the_registry(api, basic_registry):
    from regtest_servers import PASSWORD, USER
    good = api.docker("login", "-u", USER, "--password-stdin", basic_registry.host, input=PASSWORD.encode())
    assert good.returncode == 0 and "Login Succeeded" in good.stdout.decode(), good.stderr.decode()
    bad = api.docker("login", "-u", USER, "--password-stdin", basic_registry.host, input=b"wrong-password")
    assert bad.returncode != 0 and "401 Unauthorized" in bad.stderr.decode()
    assert PASSWORD not in api.output() and "wrong-password" not in api.output()


def test_runner_cli_top_stats_rename_pause(rn):
    """runner's own commands of the same names, over the same engine operations."""
    cid = ok(rn("run", "-d", "--network", "none", "--name", "cli-insp", IMG, "sleep", "300")).strip()
    try:
        out = ok(rn("top", "cli-insp"))
        assert out.splitlines()[0].split()[:2] == ["UID", "PID"] and "sleep 300" in out
        row = ok(rn("stats", "--no-stream", "cli-insp")).splitlines()[1].split()
        assert row[0] == cid[:12] and row[1] == "cli-insp" and row[-1] == "1"
        ok(rn("rename", "cli-insp", "cli-insp2"))
        ok(rn("pause", "cli-insp2"))
        assert json.loads(ok(rn("inspect", cid)))[0]["State"]["Status"] == "paused"
        ok(rn("unpause", "cli-insp2"))
        assert json.loads(ok(rn("inspect", cid)))[0]["State"]["Status"] == "running"
        assert "C /etc" not in ok(rn("diff", cid))  # only runner's own mount points changed: none shown
    finally:
        rn("rm", "-f", cid)
