"""POST /build with real Docker clients: the docker CLI's classic builder (DOCKER_BUILDKIT=0) and docker-py, on
both backends (the server streams the client's context tar into the native engine or the VM's)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile

import pytest

IMG = "localhost/busybox"


@pytest.fixture(params=[pytest.param("native", marks=pytest.mark.root),
                        pytest.param("vm", marks=pytest.mark.vm)])
def served(request):
    """(the Engine API server, the CLI driver of the same engine) of each backend."""
    return request.getfixturevalue(f"{request.param}_api"), request.getfixturevalue(f"{request.param}_driver")


@pytest.fixture
def ctx(served):
    path = tempfile.mkdtemp(prefix="runner-api-build-")
    with open(os.path.join(path, "Dockerfile"), "w") as f:
        f.write(f"FROM {IMG}\nARG WHO=nobody\nCOPY hello.txt /hello.txt\nRUN echo \"built for $WHO\" >> /hello.txt\n"
                "CMD [\"cat\", \"/hello.txt\"]\n")
    with open(os.path.join(path, "hello.txt"), "w") as f:
        f.write("hello\n")
    with open(os.path.join(path, "ignored.txt"), "w") as f:
        f.write("never sent\n")
    with open(os.path.join(path, ".dockerignore"), "w") as f:
        f.write("ignored.txt\n")
    yield path
    shutil.rmtree(path, ignore_errors=True)
    _, rn = served
    for name in ("api-build:cli", "api-build:py"):
        rn("rmi", "-f", name)
    rn("builder", "prune", "-f")


def test_docker_cli_classic_build(served, ctx):
    api, rn = served
    p = api.docker("build", "--build-arg", "WHO=docker", "-t", "api-build:cli", ctx, env={"DOCKER_BUILDKIT": "0"})
    assert p.returncode == 0, p.stderr
    out = p.stdout.decode()
    assert "Step 1/5 : FROM localhost/busybox" in out and "Successfully tagged api-build:cli" in out
    run = rn("run", "--rm", "api-build:cli")
    assert run.stdout.decode() == "hello\nbuilt for docker\n", run.stderr
    again = api.docker("build", "--build-arg", "WHO=docker", "-t", "api-build:cli", ctx, env={"DOCKER_BUILDKIT": "0"})
    assert again.returncode == 0 and again.stdout.decode().count("Using cache") == 4, again.stdout
    quiet = api.docker("build", "-q", "--build-arg", "WHO=docker", ctx, env={"DOCKER_BUILDKIT": "0"})
    assert quiet.returncode == 0 and quiet.stdout.decode().strip().startswith("sha256:"), quiet.stderr
    image_id = json.loads(rn("inspect", "api-build:cli").stdout)[0]["Id"]
    assert quiet.stdout.decode().strip() == image_id
    assert rn("run", "--rm", "api-build:cli", "ls", "/ignored.txt").returncode != 0


def test_failing_build_reports_in_band_and_docker_py_builds(served, ctx):
    import docker
    api, rn = served
    with open(os.path.join(ctx, "Dockerfile"), "a") as f:
        f.write("RUN echo about to fail; exit 4\n")
    p = api.docker("build", "-t", "api-build:cli", ctx, env={"DOCKER_BUILDKIT": "0"})
    assert p.returncode != 0
    assert "returned a non-zero code: 4" in p.stderr.decode() and "about to fail" in p.stdout.decode()
    assert rn("ps", "-a", "-q").stdout == b""
    with open(os.path.join(ctx, "Dockerfile"), "w") as f:
        f.write(f"FROM {IMG}\nLABEL via=docker-py\nCOPY hello.txt /\n")
    client = docker.APIClient(base_url=api.host, version="1.41")
    events = list(client.build(path=ctx, tag="api-build:py", decode=True, labels={"extra": "1"}))
    ids = [e["aux"]["ID"] for e in events if "aux" in e]
    assert len(ids) == 1 and not [e for e in events if "error" in e], events
    assert any("Successfully built" in e.get("stream", "") for e in events)
    config = json.loads(rn("inspect", "api-build:py").stdout)[0]["Config"]
    assert config["Labels"] == {"via": "docker-py", "extra": "1"}
    errors = list(client.build(path=ctx, dockerfile="Missing.dockerfile", decode=True))
    assert "Cannot locate specified Dockerfile: Missing.dockerfile" in errors[-1]["error"]
    client.close()
    high = docker.DockerClient(base_url=api.host)  # images.build: build, then GET /images/{id}/json
    try:
        image, log = high.images.build(path=ctx, tag="api-build:hl")
        assert "api-build:hl" in image.tags and image.id.startswith("sha256:")
        assert image.labels["via"] == "docker-py"
    finally:
        high.close()


def test_buildkit_and_remote_contexts_are_refused_clearly(served, ctx):
    api, _ = served
    p = api.docker("build", ctx, env={"DOCKER_BUILDKIT": "1"})
    assert p.returncode != 0
    import docker
    client = docker.APIClient(base_url=api.host, version="1.41")
    with pytest.raises(docker.errors.APIError, match="remote build contexts are not supported"):
        list(client.build(path="https://example.invalid/repo.git"))
    prune = client.prune_builds()
    assert isinstance(prune["SpaceReclaimed"], int) and isinstance(prune["CachesDeleted"], list)
    client.close()


def test_a_client_that_hangs_up_mid_run_cancels_the_build(served, tmp_path):
    """As dockerd's classic builder: the docker CLI SIGKILLed while a RUN step sleeps ends the build within
    moments (the step's container killed and removed, nothing tagged, no image committed), not when the
    step would have ended; the server serves on. Natively the server cancels the engine's build; with the
    VM it sends the agent a SIGNAL for the build call over the connection it keeps."""
    import signal
    import subprocess
    import threading
    import time

    from tests.api.conftest import DOCKER
    from tests.helpers import wait_for
    native_api, rn = served
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(f"FROM {IMG}\nRUN echo step-started; sleep 1000\n")
    images_before = rn("images", "-a", "-q", "--no-trunc").stdout.split()
    env = dict(os.environ, DOCKER_HOST=native_api.host, DOCKER_BUILDKIT="0",
               DOCKER_CONFIG=os.path.join(native_api.dir, "docker-config"))
    client = subprocess.Popen([DOCKER, "build", "-t", "api-build:cancelled", str(ctx)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    guard = threading.Timer(120, client.kill)  # a build that never prints the line fails the test, never hangs it
    guard.start()
    try:
        seen = b""
        while b"\nstep-started" not in seen:
            line = client.stdout.readline()
            assert line, seen.decode()
            seen += line
        steps = rn("ps", "-aq", "--no-trunc", "--filter", "label=io.runner.build.step").stdout.split()
        assert len(steps) == 1, seen.decode()
        client.send_signal(signal.SIGKILL)
        assert client.wait(timeout=30) == -signal.SIGKILL
        hung_up = time.monotonic()
    finally:
        guard.cancel()
        if client.poll() is None:
            client.kill()
            client.wait()
        client.stdout.close()
    wait_for(lambda: rn("ps", "-aq", "--filter", "label=io.runner.build.step").stdout == b"", 20,
             "the cancelled build's step container to be removed")
    took = time.monotonic() - hung_up
    assert took < 15, took  # seconds, not the step's 1000 s
    assert rn("images", "-a", "-q", "--no-trunc").stdout.split() == images_before
    assert rn("inspect", "api-build:cancelled").returncode != 0
    assert json.loads(rn("system", "df", "--format", "json").stdout)["Partial downloads"]["Total"] == 0
    assert native_api.docker("version", "--format", "{{.Server.Version}}").returncode == 0
    assert "Traceback" not in native_api.output()


def test_system_df_lists_the_build_cache_the_cli_counts(served, ctx):
    """GET /system/df's BuildCache: Docker's records (step images, the kept context) from the engine's own
    numbers, so `docker system df` shows the same "Build Cache" row as `runner system df`, and -v lists them."""
    import docker
    api, rn = served
    p = api.docker("build", "-t", "api-build:cli", ctx, env={"DOCKER_BUILDKIT": "0"})
    assert p.returncode == 0, p.stderr
    ours = json.loads(rn("system", "df", "--format", "json").stdout)
    row = ours["Build Cache"]
    assert row["Total"] >= 2 and row["Total"] == len(ours["BuildCacheList"])  # step images + the context
    client = docker.APIClient(base_url=api.host, version="1.41")
    try:
        df = client.df()
    finally:
        client.close()
    cache = df["BuildCache"]
    assert len(cache) == row["Total"] and df["BuilderSize"] == sum(c["Size"] for c in cache) == row["Size"]
    types = {"ID": str, "Type": str, "Description": str, "InUse": bool, "Shared": bool, "Size": int,
             "CreatedAt": str, "LastUsedAt": str, "UsageCount": int}
    for record in cache:
        assert all(isinstance(record[k], t) for k, t in types.items()), record
        assert record["Type"] in ("regular", "source.local") and record["CreatedAt"].endswith("Z")
    steps = [c for c in cache if c["Type"] == "regular"]
    assert any("built for" in c["Description"] for c in steps), steps  # the RUN step, by its command
    assert [c for c in cache if c["Type"] == "source.local"]
    table = api.docker("system", "df", "--format", "{{.Type}}|{{.TotalCount}}|{{.Active}}")
    assert table.returncode == 0, table.stderr
    rows = dict(line.split("|", 1) for line in table.stdout.decode().splitlines())
    assert rows["Build Cache"] == f"{row['Total']}|{row['Active']}"
    verbose = api.docker("system", "df", "-v")
    assert verbose.returncode == 0 and "Build cache usage" in verbose.stdout.decode(), verbose.stderr
    assert steps[0]["ID"][:12] in verbose.stdout.decode()
