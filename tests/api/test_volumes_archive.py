"""The Engine API's /volumes and /containers/{id}/archive, driven by the docker CLI and docker-py, on every
backend (containers are made with runner's own CLI: the container routes are another module's)."""

from __future__ import annotations

import io
import json
import os
import tarfile

import pytest

from tests.helpers import cli, ok, wait_for

IMG = "localhost/busybox"


def rn(api, *args: str):
    return cli(list(args), backend=api.backend, env=api.env, timeout=180)


@pytest.fixture
def dockerpy(api):
    import docker
    client = docker.DockerClient(base_url=api.host, version="1.44", timeout=120)
    yield client
    client.close()


def test_docker_cli_volumes(api):
    try:
        assert ok(api.docker("volume", "create", "--label", "api=yes", "api-vol")).strip() == "api-vol"
        assert ok(api.docker("volume", "ls", "-q", "--filter", "label=api=yes")).split() == ["api-vol"]
        assert ok(api.docker("volume", "inspect", "-f", "{{.Driver}} {{.Labels}}", "api-vol")).strip() == \
            "local map[api:yes]"
        ok(rn(api, "run", "--name", "api-vol-user", "-v", "api-vol:/d", IMG, "sh", "-c", "echo x > /d/f"))
        p = api.docker("volume", "rm", "api-vol")
        assert p.returncode != 0 and "volume is in use" in p.stderr.decode()
        ok(rn(api, "rm", "api-vol-user"))
        assert ok(api.docker("volume", "rm", "api-vol")).strip() == "api-vol"
        p = api.docker("volume", "inspect", "api-vol")
        assert p.returncode != 0 and "no such volume" in p.stderr.decode().lower()
    finally:
        rn(api, "rm", "-f", "api-vol-user")
        rn(api, "volume", "rm", "-f", "api-vol")


def test_docker_py_volumes_and_prune(api, dockerpy):
    import docker
    try:
        vol = dockerpy.volumes.create("api-py", labels={"team": "b"})
        assert (vol.name, vol.attrs["Driver"], vol.attrs["Labels"]) == ("api-py", "local", {"team": "b"})
        assert [v.name for v in dockerpy.volumes.list(filters={"label": "team=b"})] == ["api-py"]
        assert dockerpy.volumes.get("api-py").attrs["Mountpoint"].endswith("/volumes/api-py/_data")
        anon = dockerpy.volumes.create(labels={"com.docker.volume.anonymous": ""})
        result = dockerpy.volumes.prune()  # 1.44: anonymous volumes only
        assert anon.name in result["VolumesDeleted"] and "api-py" not in result["VolumesDeleted"]
        result = dockerpy.volumes.prune(filters={"all": "true", "label": "team=b"})
        assert result["VolumesDeleted"] == ["api-py"]
        with pytest.raises(docker.errors.NotFound):
            dockerpy.volumes.get("api-py")
        with pytest.raises(docker.errors.APIError) as info:
            dockerpy.volumes.create("../bad")
        assert info.value.status_code == 400
    finally:
        rn(api, "volume", "rm", "-f", "api-py")


def test_docker_cp_both_ways_and_a_symlink_out_of_the_rootfs(api, dockerpy, tmp_path):
    import docker
    secret = tmp_path / "secret"
    secret.write_text("HOST ONLY\n")
    try:
        ok(rn(api, "run", "-d", "--name", "api-cp", IMG, "sh", "-c",
              f"mkdir /data && echo in > /data/f && ln -s {secret} /lone && ln -s / /rootlink && sleep 300"))
        wait_for(lambda: rn(api, "exec", "api-cp", "test", "-L", "/lone").returncode == 0, 30, "the links")
        src = tmp_path / "host.txt"
        src.write_text("from host\n")
        ok(api.docker("cp", str(src), "api-cp:/data/"))
        ok(api.docker("cp", "api-cp:/data", str(tmp_path / "out")))
        assert (tmp_path / "out/f").read_text() == "in\n" and (tmp_path / "out/host.txt").read_text() == "from host\n"
        p = api.docker("cp", "-L", "api-cp:/lone", str(tmp_path / "followed"))
        assert p.returncode != 0 and not (tmp_path / "followed").exists()
        stream, stat = dockerpy.api.get_archive("api-cp", "/lone")
        members = tarfile.open(fileobj=io.BytesIO(b"".join(stream))).getmembers()
        assert [(m.name, m.issym(), m.linkname) for m in members] == [("lone", True, str(secret))]
        assert stat["linkTarget"] == str(secret) and stat["name"] == "lone"
        with pytest.raises(docker.errors.NotFound):
            dockerpy.api.get_archive("api-cp", f"/rootlink{secret}")
        data = io.BytesIO()
        with tarfile.open(fileobj=data, mode="w") as tar:
            info = tarfile.TarInfo("../../up.txt")
            info.size = 3
            tar.addfile(info, io.BytesIO(b"up\n"))
        assert dockerpy.api.put_archive("api-cp", "/data", data.getvalue())
        assert ok(rn(api, "exec", "api-cp", "cat", "/up.txt")) == "up\n"  # '..' stops at the container's root
        with pytest.raises(docker.errors.APIError) as info:
            dockerpy.api.put_archive("api-cp", "/data/f", data.getvalue())
        assert info.value.status_code == 400
        assert not os.path.exists("/up.txt") or open("/up.txt").read() != "up\n"
        assert secret.read_text() == "HOST ONLY\n"
        head = json.loads(__import__("base64").b64decode(
            dockerpy.api.head(dockerpy.api._url("/containers/api-cp/archive"), params={"path": "/data/f"})
            .headers["X-Docker-Container-Path-Stat"]))
        assert head["name"] == "f" and head["size"] == 3
    finally:
        rn(api, "rm", "-f", "api-cp")
