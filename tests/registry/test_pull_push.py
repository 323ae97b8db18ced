"""Pull and push against real ``docker-registry`` instances (and a fake one for hostile replies)."""

from __future__ import annotations

import json
import os

import pytest

from regtest_servers import PASSWORD, USER
from regtest_fakes import FakeRegistry
from regtest_images import OCI_CONFIG, build_image, oci_layout, skopeo_copy
from runner.errors import ImageError, NotFound, RegistryError
from runner.images import push as push_mod
from runner.images.pull import pull
from runner.images.push import push
from runner.images.registry import (DOCKER_LIST, DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST, RegistryClient)

pytestmark = pytest.mark.registry

LAYERS = [{"etc/hello": b"hello\n"}, {"usr/share/data.bin": os.urandom(300_000)}]


def store_files(store) -> set[str]:
    """Every file under the store (to prove a refused pull changed nothing)."""
    found = set()
    for dirpath, _, files in os.walk(store.root):
        found.update(os.path.relpath(os.path.join(dirpath, f), store.root) for f in files)
    return found


@pytest.mark.parametrize("docker", [False, True], ids=["oci", "docker"])
def test_push_pull_roundtrip_keeps_digest(registry, store, other_store, docker):
    name = f"{registry.host}/test/round:v1"
    built = build_image(store, name, LAYERS, docker=docker)
    events = []
    assert push(store, name, progress=events.append) == built["digest"]
    assert {"Pushed"} <= {e["status"] for e in events if "id" in e}
    json.dumps(events)  # progress events must be JSON for the agent wire

    image = pull(other_store, name, progress=events.append)
    assert image.manifest_digest == built["digest"]
    assert image.media_type == (DOCKER_MANIFEST if docker else OCI_MANIFEST)
    assert [layer.digest for layer in image.layers] == built["layers"]
    assert image.names == [name]
    json.dumps(events)

    # By digest too; a second pull downloads nothing.
    events.clear()
    again = pull(other_store, f"{registry.host}/test/round@{built['digest']}", progress=events.append)
    assert again.manifest_digest == built["digest"]
    layer_statuses = {e["status"] for e in events if "id" in e and not e["status"].startswith("Pulling from")}
    assert layer_statuses <= {"Pulling fs layer", "Already exists"}
    assert events[-1]["status"].startswith("Image is up to date")


@pytest.mark.parametrize("fmt,media_type", [("oci", OCI_MANIFEST), ("v2s2", DOCKER_MANIFEST)])
def test_pull_what_skopeo_pushed(registry, store, other_store, tmp_root, fmt, media_type):
    built = build_image(store, None, LAYERS)
    layout = oci_layout(store, tmp_root / f"layout-{fmt}", [built])
    skopeo_copy(f"oci:{layout}:latest", f"docker://{registry.host}/sk/img:1", "--format", fmt)
    image = pull(other_store, f"{registry.host}/sk/img:1")
    assert image.media_type == media_type
    served = RegistryClient(registry.host).get_manifest("sk/img", "1")
    assert image.manifest_digest == served.digest
    assert len(image.layers) == 2 and all(other_store.has_blob(layer.digest) for layer in image.layers)


def push_index(store, registry, tmp_root, repo, docker_list=False, docker_children=False):
    """Push a two-platform index with skopeo; with ``docker_list`` retag it as a Docker manifest list
    (an OCI layout cannot hold one, so the list is PUT by our client over the pushed children)."""
    amd = build_image(store, None, [{"arch": b"amd64\n"}], arch="amd64", docker=docker_children)
    arm = build_image(store, None, [{"arch": b"arm64\n"}], arch="arm64", variant="v8")
    layout = oci_layout(store, tmp_root / f"layout-{repo.replace('/', '-')}", [amd, arm])
    skopeo_copy(f"oci:{layout}:latest", f"docker://{registry.host}/{repo}:multi", "--all")
    if docker_list:
        client = RegistryClient(registry.host)
        index = client.get_manifest(repo, "multi").json()
        index["mediaType"] = DOCKER_LIST
        client.put_manifest(repo, "multi", json.dumps(index).encode(), DOCKER_LIST)
    return amd, arm


def test_multi_arch_index_selects_platform(registry, store, tmp_root, tmp_path):
    from runner.images.store import Store
    amd, arm = push_index(store, registry, tmp_root, "multi/oci", docker_children=True)  # a mixed index
    ref = f"{registry.host}/multi/oci:multi"
    got_amd = pull(Store(str(tmp_path / "a")), ref, platform="linux/amd64")
    got_arm = pull(Store(str(tmp_path / "b")), ref, platform="linux/arm64")
    assert got_amd.manifest_digest == amd["digest"] and got_amd.config["architecture"] == "amd64"
    assert got_arm.manifest_digest == arm["digest"] and got_arm.config["architecture"] == "arm64"
    assert RegistryClient(registry.host).get_manifest("multi/oci", "multi").media_type == OCI_INDEX

    with pytest.raises(NotFound) as err:
        pull(Store(str(tmp_path / "c")), ref, platform="linux/s390x")
    assert "available platforms: linux/amd64, linux/arm64/v8" in str(err.value)


def test_docker_manifest_list_and_nested_index(registry, store, tmp_root, tmp_path):
    from runner.images.store import Store
    amd, arm = push_index(store, registry, tmp_root, "multi/docker", docker_list=True, docker_children=True)
    client = RegistryClient(registry.host)
    top = client.get_manifest("multi/docker", "multi")
    assert top.media_type == DOCKER_LIST
    got = pull(Store(str(tmp_path / "a")), f"{registry.host}/multi/docker:multi", platform="linux/arm64/v8")
    assert got.manifest_digest == arm["digest"]

    # An OCI index whose only entry is the Docker list (no platform): pull descends into it.
    nested = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        {"mediaType": DOCKER_LIST, "digest": top.digest, "size": len(top.data)}]}).encode()
    client.put_manifest("multi/docker", "nested", nested, OCI_INDEX)
    got = pull(Store(str(tmp_path / "b")), f"{registry.host}/multi/docker:nested", platform="linux/amd64")
    assert got.manifest_digest == amd["digest"]


def test_explicit_platform_must_match_single_image(registry, store, other_store):
    name = f"{registry.host}/single/img:1"
    build_image(store, name, LAYERS, arch="amd64")
    push(store, name)
    with pytest.raises(ImageError, match="does not match the specified platform: wanted linux/arm64/v8"):
        pull(other_store, name, platform="linux/arm64")


def test_uncompressed_layers(registry, store, other_store):
    name = f"{registry.host}/plain/img:1"
    built = build_image(store, name, LAYERS, compress=False)
    push(store, name)
    assert pull(other_store, name).manifest_digest == built["digest"]


def test_zstd_layers_refused_clearly(registry, store, other_store):
    name = f"{registry.host}/zstd/img:1"
    built = build_image(store, name, LAYERS)
    push(store, name)
    manifest = json.loads(built["manifest"])
    for layer in manifest["layers"]:
        layer["mediaType"] = "application/vnd.oci.image.layer.v1.tar+zstd"
    RegistryClient(registry.host).put_manifest("zstd/img", "2", json.dumps(manifest).encode(), OCI_MANIFEST)
    with pytest.raises(ImageError, match="zstd-compressed layers"):
        pull(other_store, f"{registry.host}/zstd/img:2")


def test_not_found(registry, other_store):
    with pytest.raises(NotFound) as err:
        pull(other_store, f"{registry.host}/nope/missing:1")
    assert str(err.value) == f"image {registry.host}/nope/missing:1 not found in {registry.host}"
    with pytest.raises(NotFound):
        pull(other_store, f"{registry.host}/nope/missing@sha256:{'0' * 64}")


def test_tampered_blob_refused_store_unchanged(registry, store, other_store):
    name = f"{registry.host}/tamper/img:1"
    built = build_image(store, name, LAYERS)
    push(store, name)
    target = registry.blob_file(built["layers"][1])
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, different content
    target.write_bytes(bytes(data))
    before = store_files(other_store)
    with pytest.raises(ImageError, match="does not match its digest"):
        pull(other_store, name)
    after = store_files(other_store)
    # The untouched layer and the config may have landed (they are valid); the bad one never does, and
    # no name or manifest was recorded. In tmp at most the partial of a good layer whose download the
    # failure cancelled may stay (to be resumed), never anything of the bad one.
    assert not other_store.has_blob(built["layers"][1])
    assert not other_store.has_blob(built["digest"])
    good = {"tmp/" + os.path.basename(other_store.partial_path(d)) for d in built["layers"] if d != built["layers"][1]}
    assert {f for f in after - before if f.startswith("tmp/")} <= good
    with pytest.raises(NotFound):
        other_store.resolve(name)


def test_oversized_blob_refused(store, other_store):
    fake = FakeRegistry()
    try:
        built = build_image(store, None, LAYERS)
        manifest = json.loads(built["manifest"])
        for digest in [built["config"], *built["layers"]]:
            fake.blobs[digest] = open(store.blob_path(digest), "rb").read()
        fake.blobs[built["layers"][1]] += b"extra bytes"
        fake.add_manifest("o/img", "1", manifest, OCI_MANIFEST)
        with pytest.raises(ImageError, match="larger than"):
            pull(other_store, f"{fake.host}/o/img:1")
        assert not other_store.has_blob(built["layers"][1])
        # Nothing of the oversized blob is kept; a layer whose parallel download the failure cancelled may
        # keep its partial (to be resumed by the next pull), as in the test above.
        left = set(os.listdir(os.path.join(other_store.root, "tmp")))
        assert os.path.basename(other_store.partial_path(built["layers"][1])) not in left
        good = {os.path.basename(other_store.partial_path(d)) for d in built["layers"] if d != built["layers"][1]}
        assert left <= good, left
    finally:
        fake.close()


def serve_image(fake: FakeRegistry, store, repo="f/img", tag="1"):
    built = build_image(store, None, LAYERS)
    for digest in [built["config"], *built["layers"]]:
        with open(store.blob_path(digest), "rb") as handle:
            fake.blobs[digest] = handle.read()
    fake.add_manifest(repo, tag, built["manifest"], OCI_MANIFEST)
    return built


def test_cut_connection_is_retried_once(store, other_store):
    fake = FakeRegistry()
    try:
        built = serve_image(fake, store)
        fake.truncate[built["layers"][1]] = 1
        events = []
        image = pull(other_store, f"{fake.host}/f/img:1", progress=events.append)
        assert image.manifest_digest == built["digest"]
        assert any(e.get("status") == "Retrying" for e in events)
    finally:
        fake.close()


def test_cut_connection_twice_fails_cleanly(store, other_store):
    fake = FakeRegistry()
    try:
        built = serve_image(fake, store)
        fake.truncate[built["layers"][1]] = 2
        with pytest.raises(RegistryError, match="interrupted"):
            pull(other_store, f"{fake.host}/f/img:1")
        assert not other_store.has_blob(built["layers"][1])
        # Only the blob's partial download is left, to be resumed (this fake ignores Range: it starts over).
        assert os.listdir(os.path.join(other_store.root, "tmp")) == \
            [os.path.basename(other_store.partial_path(built["layers"][1]))]
        # A later pull succeeds and leaves no temp file.
        assert pull(other_store, f"{fake.host}/f/img:1").manifest_digest == built["digest"]
        assert os.listdir(os.path.join(other_store.root, "tmp")) == []
    finally:
        fake.close()


def test_hostile_digest_refused_before_any_path(other_store):
    fake = FakeRegistry()
    try:
        manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                    "config": {"mediaType": OCI_CONFIG, "digest": "sha256:../../x", "size": 2},
                    "layers": []}
        fake.add_manifest("h/img", "1", manifest, OCI_MANIFEST)
        before = store_files(other_store)
        with pytest.raises(ImageError, match="invalid digest"):
            pull(other_store, f"{fake.host}/h/img:1")
        assert store_files(other_store) == before
        assert not [r for r in fake.requests if "/blobs/" in r[1]]
        index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
            {"mediaType": OCI_MANIFEST, "digest": "sha256:../../../etc", "size": 1,
             "platform": {"os": "linux", "architecture": "amd64"}}]}
        fake.add_manifest("h/idx", "1", index, OCI_INDEX)
        with pytest.raises(ImageError, match="invalid digest"):
            pull(other_store, f"{fake.host}/h/idx:1", platform="linux/amd64")
    finally:
        fake.close()


def test_manifest_digest_verified_when_pulling_by_digest(store, other_store):
    fake = FakeRegistry()
    try:
        built = serve_image(fake, store)
        wrong = "sha256:" + "1" * 64
        fake.manifests[("f/img", wrong)] = fake.manifests[("f/img", "1")]
        with pytest.raises(ImageError, match="does not match its digest"):
            pull(other_store, f"{fake.host}/f/img@{wrong}")
        assert not other_store.has_blob(built["layers"][0])
    finally:
        fake.close()


def test_redirect_to_other_port_gets_no_authorization(store, other_store):
    fake, storage = FakeRegistry(), FakeRegistry()
    try:
        built = serve_image(fake, store)
        storage.blobs.update(fake.blobs)
        fake.basic = (USER, PASSWORD)
        fake.redirect_blobs_to = storage.url
        image = pull(other_store, f"{fake.host}/f/img:1",
                     credentials={fake.host: {"username": USER, "password": PASSWORD}})
        assert image.manifest_digest == built["digest"]
        blob_gets = [r for r in fake.requests if "/blobs/" in r[1]]
        assert blob_gets and all(r[2].get("Authorization", "").startswith("Basic ") for r in blob_gets)
        assert storage.requests and all("Authorization" not in r[2] for r in storage.requests)
    finally:
        fake.close()
        storage.close()


def test_cross_repo_mount_and_chunked_upload(registry, store, other_store, monkeypatch):
    first = f"{registry.host}/mount/a:1"
    built = build_image(store, first, LAYERS)
    push(store, first)
    store.tag(first, f"{registry.host}/mount/b:1")
    events = []
    assert push(store, f"{registry.host}/mount/b:1", progress=events.append) == built["digest"]
    assert {e["status"] for e in events if "id" in e} >= {"Mounted from mount/a"}

    monkeypatch.setattr(push_mod, "CHUNK_SIZE", 64 * 1024)  # the 300 kB layer goes in 5 PATCHes
    big = f"{registry.host}/chunked/c:1"
    built2 = build_image(store, big, [{"x.bin": os.urandom(400_000)}])
    assert push(store, big) == built2["digest"]
    assert pull(other_store, big).manifest_digest == built2["digest"]


def test_basic_auth_registry(basic_registry, store, other_store):
    name = f"{basic_registry.host}/auth/img:1"
    built = build_image(store, name, LAYERS)
    good = {basic_registry.host: {"username": USER, "password": PASSWORD}}
    with pytest.raises(RegistryError) as err:
        push(store, name)
    assert str(err.value) == f"unauthorized: authentication required for {basic_registry.host}"
    assert push(store, name, credentials=good) == built["digest"]
    assert pull(other_store, name, credentials=good).manifest_digest == built["digest"]
    bad = {basic_registry.host: {"username": USER, "password": "wrong"}}
    with pytest.raises(RegistryError) as err:
        pull(other_store, name, credentials=bad)
    assert str(err.value) == f"unauthorized: authentication required for {basic_registry.host}"
    assert err.value.hint == f"runner login {basic_registry.host}"
    assert "wrong" not in str(err.value.to_dict())


def test_token_auth_registry(token_registry, store, other_store):
    from runner.images import auth
    auth._TOKENS.clear()
    host = token_registry.host
    tokens = token_registry.token_server
    name = f"{host}/tok/img:1"
    built = build_image(store, name, LAYERS)
    good = {host: {"username": USER, "password": PASSWORD}}
    assert push(store, name, credentials=good) == built["digest"]
    tokens.requests.clear()
    assert pull(other_store, name, credentials=good).manifest_digest == built["digest"]
    # One token for the pull scope, reused for the manifest and all three blobs.
    assert [r["query"].get("scope") for r in tokens.requests] == [["repository:tok/img:pull"]]
    assert tokens.requests[0]["user"] == USER

    with pytest.raises(RegistryError) as err:
        pull(other_store, name, credentials={host: {"username": USER, "password": "wrong"}})
    assert str(err.value) == f"unauthorized: authentication required for {host}"
    assert err.value.hint == f"runner login {host}"
    with pytest.raises(RegistryError, match="unauthorized"):
        pull(other_store, name)  # anonymous gets no pull access here


def test_token_auth_anonymous_pull(token_registry, store, other_store):
    host = token_registry.host
    name = f"{host}/pub/img:1"
    built = build_image(store, name, LAYERS)
    push(store, name, credentials={host: {"username": USER, "password": PASSWORD}})
    token_registry.token_server.anonymous_pull = True
    assert pull(other_store, name).manifest_digest == built["digest"]
    assert all(r["user"] is None for r in token_registry.token_server.requests[-1:])


def test_unreachable_registry_is_one_line(other_store):
    from regtest_servers import free_port
    with pytest.raises(RegistryError) as err:
        pull(other_store, f"127.0.0.1:{free_port()}/x/y:1")
    assert "\n" not in str(err.value)
    assert "connection refused" in str(err.value) or "failed" in str(err.value)


def test_http_proxy_from_environment(store, other_store, monkeypatch):
    """A non-loopback registry goes through HTTP_PROXY (the fake answers as the proxy); NO_PROXY and
    loopback bypass it."""
    fake = FakeRegistry()
    try:
        built = serve_image(fake, store)
        monkeypatch.setenv("HTTP_PROXY", fake.url)
        monkeypatch.setenv("HTTPS_PROXY", fake.url)
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        image = pull(other_store, "registry.invalid:5000/f/img:1", insecure=["registry.invalid:5000"])
        assert image.manifest_digest == built["digest"]
        assert any(r[1].startswith("http://registry.invalid:5000/v2/") for r in fake.requests)

        monkeypatch.setenv("NO_PROXY", "registry.invalid")
        with pytest.raises(RegistryError, match="cannot resolve"):
            pull(other_store, "registry.invalid:5000/f/img:1", insecure=["registry.invalid:5000"])

        # Loopback is never proxied: a dead proxy does not matter.
        from regtest_servers import free_port
        monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{free_port()}")
        monkeypatch.delenv("NO_PROXY")
        assert pull(other_store, f"{fake.host}/f/img:1").manifest_digest == built["digest"]
    finally:
        fake.close()
