"""Image routes with real clients (the docker CLI, docker-py), natively and through the VM.

Containers these tests need are made with runner's own CLI on the same state (``rn``), since the API's
container routes are another branch's; what the docker CLI does here is what the image routes serve.
"""

from __future__ import annotations

import io
import json
import os
import tarfile

import pytest

from tests.registry.conftest import basic_registry  # noqa: F401
from tests.helpers import ok

IMG = "localhost/busybox"


def text(proc) -> str:
    return proc.stdout.decode()


def test_images_tag_inspect_history_rmi(api, rn):
    ok(rn("inspect", IMG))  # the default image exists (made on first use)
    ok(api.docker("tag", IMG, "apitest/tagged:v1"))
    try:
        listed = ok(api.docker("images", "--format", "{{.Repository}}:{{.Tag}} {{.ID}}"))
        ids = dict(line.split() for line in listed.splitlines())
        assert ids["apitest/tagged:v1"] == ids[f"{IMG}:latest"]
        only = ok(api.docker("images", "--filter", "reference=apitest/*", "--format", "{{.Repository}}"))
        assert only.split() == ["apitest/tagged"]
        info = json.loads(ok(api.docker("image", "inspect", "apitest/tagged:v1")))[0]
        assert "apitest/tagged:v1" in info["RepoTags"] and info["Id"].startswith("sha256:")
        history = ok(api.docker("history", "--format", "{{.ID}} {{.CreatedBy}}", "apitest/tagged:v1"))
        assert history.splitlines()[0].startswith(ids["apitest/tagged:v1"][:12])
        assert "busybox" in history
    finally:
        out = ok(api.docker("rmi", "apitest/tagged:v1"))
    assert "Untagged: apitest/tagged:v1" in out
    assert "apitest/tagged" not in ok(api.docker("images"))
    assert IMG in ok(api.docker("images"))  # untagging one name left the image


@pytest.mark.parametrize("args", [("image", "inspect", "no-such-image:v9"), ("rmi", "no-such-image:v9"),
                                  ("tag", "no-such-image:v9", "x:y"), ("history", "no-such-image:v9")])
def test_missing_image_is_docker_404_text(api, args):
    proc = api.docker(*args)
    assert proc.returncode != 0
    assert "No such image: no-such-image:v9" in proc.stderr.decode()


def _tiny_image(api, tmp_path, name: str) -> str:
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w") as tar:
        info = tarfile.TarInfo("hello.txt")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"hi\n"))
    tarball = tmp_path / "tiny.tar"
    tarball.write_bytes(data.getvalue())
    return ok(api.docker("import", str(tarball), name)).strip()


def test_rmi_of_an_image_in_use_is_a_409_with_docker_text(api, rn, tmp_path):
    image_id = _tiny_image(api, tmp_path, "apitest/inuse:v1")
    cid = ok(rn("create", "apitest/inuse:v1", "/hello.txt")).strip()
    try:
        proc = api.docker("rmi", "apitest/inuse:v1")
        assert proc.returncode != 0
        err = proc.stderr.decode()
        assert "conflict: unable to remove repository reference" in err and cid[:12] in err, err
        assert "apitest/inuse" in ok(api.docker("images"))  # refused: nothing was removed
        ok(api.docker("tag", "apitest/inuse:v1", "apitest/inuse:v2"))
        proc = api.docker("rmi", image_id.split(":", 1)[1][:12])  # by ID, with two names
        assert "image is referenced in multiple repositories" in proc.stderr.decode()
    finally:
        rn("rm", "-f", cid)
        api.docker("rmi", "apitest/inuse:v1")
        api.docker("rmi", "apitest/inuse:v2")


def test_save_and_load_round_trip(api, tmp_path):
    ok(api.docker("tag", IMG, "apitest/saved:v1"))
    archive = tmp_path / "saved.tar"
    try:
        ok(api.docker("save", "-o", str(archive), "apitest/saved:v1"))
        with tarfile.open(archive) as tar:
            manifest = json.load(tar.extractfile("manifest.json"))
        assert manifest[0]["RepoTags"] == ["apitest/saved:v1"]
        ok(api.docker("rmi", "apitest/saved:v1"))
        assert "apitest/saved" not in ok(api.docker("images"))
        out = ok(api.docker("load", "-i", str(archive)))
        assert "Loaded image: apitest/saved:v1" in out
        assert "apitest/saved" in ok(api.docker("images"))
    finally:
        api.docker("rmi", "apitest/saved:v1")


def test_import_a_rootfs_tarball_with_changes(api, tmp_path):
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w") as tar:
        info = tarfile.TarInfo("hello.txt")
        payload = b"imported\n"
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    tarball = tmp_path / "rootfs.tar"
    tarball.write_bytes(data.getvalue())
    try:
        image_id = ok(api.docker("import", "--change", "ENV IMPORTED=yes", str(tarball), "apitest/imported:v1"))
        assert image_id.strip().startswith("sha256:")
        config = json.loads(ok(api.docker("image", "inspect", "apitest/imported:v1")))[0]["Config"]
        assert "IMPORTED=yes" in config["Env"]
    finally:
        api.docker("rmi", "apitest/imported:v1")


@pytest.mark.registry
def test_push_and_pull_with_the_test_registry(api, registry):
    ref = f"{registry.host}/apitest/busybox:v1"
    ok(api.docker("tag", IMG, ref))
    try:
        pushed = ok(api.docker("push", ref))
        assert "digest: sha256:" in pushed
        ok(api.docker("rmi", ref))
        pulled = ok(api.docker("pull", ref))
        assert "Pulling from apitest/busybox" in pulled and "sha256:" in pulled
        assert ref.rsplit(":", 1)[0] in ok(api.docker("images"))
        missing = api.docker("pull", f"{registry.host}/apitest/nothing:v1")
        assert missing.returncode != 0 and missing.stderr.decode().strip()
    finally:
        api.docker("rmi", ref)


@pytest.mark.registry
def test_docker_py_images_list_and_pull(api, registry):
    docker = pytest.importorskip("docker")
    client = docker.DockerClient(base_url=api.host, version="auto", timeout=300)
    ref = f"{registry.host}/apitest/pyimage"
    try:
        image = client.images.get(IMG)
        assert image.tag(ref, tag="v2")
        for line in client.images.push(ref, tag="v2", stream=True, decode=True):
            assert "error" not in line, line
        client.images.remove(f"{ref}:v2")
        pulled = client.images.pull(ref, tag="v2")
        assert pulled.id == image.id
        tags = {t for img in client.images.list() for t in img.tags}
        assert f"{ref}:v2" in tags and f"{IMG}:latest" in tags
        with pytest.raises(docker.errors.ImageNotFound):
            client.images.get("apitest/absent:v1")
    finally:
        try:
            client.images.remove(f"{ref}:v2")
        except docker.errors.APIError:
            pass
        client.close()


def test_pull_progress_stream_shape_and_in_band_errors(api, registry):
    """The raw stream: Docker's JSON messages, and an error after the stream began arrives in-band."""
    from tests.api.test_system import request
    ok(api.docker("tag", IMG, f"{registry.host}/apitest/raw:v1"))
    try:
        ok(api.docker("push", f"{registry.host}/apitest/raw:v1"))
        ok(api.docker("rmi", f"{registry.host}/apitest/raw:v1"))
        status, headers, body = request(api, "POST",
                                        f"/v1.44/images/create?fromImage={registry.host}/apitest/raw&tag=v1")
        assert status == 200 and headers["Content-Type"] == "application/json"
        messages = [json.loads(line) for line in body.splitlines() if line.strip()]
        assert messages[0]["status"].startswith("Pulling from apitest/raw")
        # the layers are in the store already (the image kept its other name): Docker says so per layer
        assert any(m.get("status") in ("Already exists", "Pull complete") and "progressDetail" in m
                   and m.get("id") for m in messages), messages
        assert messages[-1]["status"].startswith("Status: "), messages
        assert not any("error" in m for m in messages)
        status, _, body = request(api, "POST", f"/v1.44/images/create?fromImage={registry.host}/apitest/raw"
                                               "&tag=absent")
        assert status in (404, 500) and json.loads(body)["message"]
    finally:
        api.docker("rmi", f"{registry.host}/apitest/raw:v1")


def test_image_prune_removes_dangling_only(api):
    before = ok(api.docker("images", "-q"))
    proc = api.docker("image", "prune", "-f")
    assert proc.returncode == 0, proc.stderr.decode()
    assert "Total reclaimed space" in text(proc)
    assert ok(api.docker("images", "-q")) == before  # nothing dangling here: nothing tagged went


def test_registry_auth_header_is_decoded_and_never_logged(api, basic_registry):
    from tests.api.test_system import request
    import base64
    bad = base64.urlsafe_b64encode(json.dumps({"username": "u", "password": "sekrit-pw-123"}).encode()).decode()
    status, _, body = request(api, "POST", f"/v1.44/images/create?fromImage={basic_registry.host}/x/y&tag=v1",
                              headers={"X-Registry-Auth": bad})
    assert status >= 400 or b"error" in body
    status, _, body = request(api, "POST", "/v1.44/images/create?fromImage=x&tag=v1",
                              headers={"X-Registry-Auth": "%%%not-base64"})
    assert status == 400 and "X-Registry-Auth" in json.loads(body)["message"]
    assert "sekrit-pw-123" not in api.output()
    assert os.path.exists(api.socket)


@pytest.mark.registry
def test_a_client_leaving_mid_pull_leaves_no_broken_image(api, registry, tmp_path):
    """The client hangs up after the first progress message of a pull of a 24 MB layer; afterwards the image
    is either absent or whole, and a new pull gives a complete image (resumed or fetched again)."""
    import socket
    ref = f"{registry.host}/apitest/big:v1"
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w") as tar:
        info = tarfile.TarInfo("big.bin")
        info.size = 24 << 20
        tar.addfile(info, io.BytesIO(os.urandom(info.size)))
    (tmp_path / "big.tar").write_bytes(data.getvalue())
    ok(api.docker("import", str(tmp_path / "big.tar"), ref))
    try:
        ok(api.docker("push", ref))
        ok(api.docker("rmi", ref))
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(60)
            s.connect(api.socket)
            s.sendall(f"POST /v1.44/images/create?fromImage={registry.host}/apitest/big&tag=v1 HTTP/1.1\r\n"
                      "Host: docker\r\nContent-Length: 0\r\n\r\n".encode())
            assert s.recv(65536).startswith(b"HTTP/1.1 200")
        listed = ok(api.docker("images", "--format", "{{.Repository}}:{{.Tag}}"))
        if ref in listed:  # the pull finished before it noticed: then it is whole
            ok(api.docker("save", "-o", str(tmp_path / "early.tar"), ref))
        ok(api.docker("pull", ref))
        ok(api.docker("save", "-o", str(tmp_path / "out.tar"), ref))
        with tarfile.open(tmp_path / "out.tar") as tar:
            layers = json.load(tar.extractfile("manifest.json"))[0]["Layers"]
            assert len(layers) == 1 and tar.getmember(layers[0]).size >= 24 << 20
        assert ok(api.docker("images", "-q", ref)).strip()
    finally:
        api.docker("rmi", ref)
