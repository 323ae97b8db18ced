"""The content store, its index, removal, rootfs import and archives (built here, no external tools)."""

import hashlib
import io
import json
import multiprocessing
import os
import tarfile

import pytest

from runner.errors import Conflict, ImageError, NotFound, UsageError
from runner.images import archive
from runner.images.dockerfile import apply_change
from runner.images.rootfs import import_rootfs
from runner.images.store import MEDIA_DOCKER_LAYER_GZIP, Store, validate_digest


def rootfs_tar(files):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    buf.seek(0)
    return buf


@pytest.fixture
def store(tmp_path):
    return Store(str(tmp_path / "images"))


def blobs(store):
    return sorted(os.listdir(os.path.join(store.root, "blobs", "sha256")))


@pytest.mark.parametrize("bad", ["sha256:../../etc/passwd", "sha256:" + "A" * 64, "sha512:" + "a" * 64,
                                 "sha256:" + "a" * 63, "", None, "sha256:" + "a" * 64 + "\n"])
def test_validate_digest_refuses_anything_odd(store, bad):
    with pytest.raises(ImageError):
        validate_digest(bad)
    with pytest.raises(ImageError):
        store.blob_path(bad)


def test_ingest_verifies_and_stores(store):
    data = b"hello" * 1000
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    assert store.ingest(io.BytesIO(data), digest, len(data)) == (digest, len(data))
    assert store.has_blob(digest)
    with store.open_blob(digest) as f:
        assert f.read() == data
    assert store.put_bytes(data) == digest


@pytest.mark.parametrize("expected", [dict(expected_digest="sha256:" + "0" * 64), dict(expected_size=3),
                                      dict(expected_size=10 ** 6)])
def test_ingest_mismatch_leaves_store_unchanged(store, expected):
    before = (blobs(store), os.listdir(os.path.join(store.root, "tmp")))
    with pytest.raises(ImageError):
        store.ingest(io.BytesIO(b"some content"), **expected)
    assert (blobs(store), os.listdir(os.path.join(store.root, "tmp"))) == before


def test_open_missing_blob(store):
    with pytest.raises(NotFound):
        store.open_blob("sha256:" + "1" * 64)


def test_import_resolve_tag_list(store):
    image = import_rootfs(store, rootfs_tar({"bin/sh": b"x"}), "localhost/base", changes=["ENV A=1", "WORKDIR /w"])
    assert image.names == ["localhost/base:latest"]
    assert image.config["config"]["Cmd"] == ["/bin/sh"]
    assert image.config["config"]["WorkingDir"] == "/w"
    assert "A=1" in image.config["config"]["Env"]
    assert image.config["os"] == "linux" and image.config["rootfs"]["diff_ids"] == [image.layers[0].diff_id]
    for ref in ("localhost/base", "localhost/base:latest", image.id, image.id[7:19], image.short_id,
                "localhost/base@" + image.manifest_digest):
        assert store.resolve(ref).manifest_digest == image.manifest_digest
    store.tag("localhost/base", "busybox:mine")
    assert store.resolve("docker.io/library/busybox:mine").id == image.id
    assert store.resolve(image.id).repo_tags == ["busybox:mine", "localhost/base:latest"]
    assert [i.id for i in store.list()] == [image.id]
    with pytest.raises(NotFound, match="image nothere not found"):
        store.resolve("nothere")
    with pytest.raises(UsageError):
        store.resolve("Bad Name")
    with pytest.raises(UsageError):
        store.tag("localhost/base", "x@sha256:" + "a" * 64)


def test_not_a_tar_import_is_refused_and_leaves_nothing(store):
    with pytest.raises(ImageError, match="not a tar"):
        import_rootfs(store, io.BytesIO(b"garbage" * 200), "localhost/x")
    assert blobs(store) == []


def test_pull_by_index_digest_is_remembered_as_repo_digest(store):
    image = import_rootfs(store, rootfs_tar({"a": b"1"}), None)
    assert image.names == []
    index_digest = "sha256:" + "e" * 64  # e.g. the multi-platform index the platform manifest came from
    store.add("localhost/x@" + index_digest, image.manifest_digest)
    found = store.resolve("localhost/x@" + index_digest)
    assert found.id == image.id and found.repo_digests == ["localhost/x@" + index_digest]
    with pytest.raises(NotFound):
        store.resolve("localhost/other@" + index_digest)
    assert store.remove("localhost/x@" + index_digest) == [f"Deleted: {image.id}"]
    assert json.load(open(os.path.join(store.root, "index.json")))["digests"] == {}


def test_retag_leaves_old_image_untagged(store):
    first = import_rootfs(store, rootfs_tar({"a": b"1"}), "localhost/x")
    second = import_rootfs(store, rootfs_tar({"a": b"2"}), "localhost/x")
    assert store.resolve("localhost/x").id == second.id
    assert store.resolve(first.id).names == []
    assert len(store.list()) == 2


def test_remove_untags_then_deletes_unshared_content(store):
    image = import_rootfs(store, rootfs_tar({"a": b"1"}), "localhost/x")
    store.tag("localhost/x", "localhost/y")
    store.layer_dirs(image)
    assert store.remove("localhost/x") == ["Untagged: localhost/x:latest"]
    assert store.has_blob(image.manifest_digest)
    assert store.remove("localhost/y") == ["Untagged: localhost/y:latest", f"Deleted: {image.id}"]
    assert blobs(store) == []
    assert os.listdir(store.layers_root) == []
    with pytest.raises(NotFound):
        store.resolve(image.id)


def test_remove_keeps_shared_layers(store):
    a = import_rootfs(store, rootfs_tar({"a": b"1"}), "localhost/a")
    b = import_rootfs(store, rootfs_tar({"a": b"1"}), "localhost/b", changes=["CMD [\"true\"]"])
    assert a.layers == b.layers and a.id != b.id
    store.layer_dirs(a)
    store.remove("localhost/a")
    assert store.has_blob(b.layers[0].digest) and not store.has_blob(a.id)
    assert os.path.isdir(store.layer_dirs(b)[0])


def test_remove_by_id_with_several_names_needs_force(store):
    image = import_rootfs(store, rootfs_tar({"a": b"1"}), "localhost/x")
    store.tag("localhost/x", "localhost/y")
    with pytest.raises(Conflict, match="several names"):
        store.remove(image.short_id)
    assert store.remove(image.short_id, force=True)[-1] == f"Deleted: {image.id}"


def test_remove_in_use_conflicts_and_force_only_untags(tmp_path):
    used = set()
    store = Store(str(tmp_path / "images"), in_use=lambda image_id: image_id in used)
    image = import_rootfs(store, rootfs_tar({"a": b"1"}), "localhost/x")
    used.add(image.id)
    with pytest.raises(Conflict, match="used by a container"):
        store.remove("localhost/x")
    assert store.remove("localhost/x", force=True) == ["Untagged: localhost/x:latest"]
    assert store.resolve(image.id).names == []
    used.clear()
    assert store.remove(image.id) == [f"Deleted: {image.id}"]


def test_add_refuses_index_and_missing_blobs(store):
    index = store.put_bytes(json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                                        "manifests": []}).encode())
    with pytest.raises(ImageError, match="index"):
        store.add("localhost/i", index)
    config = store.put_bytes(json.dumps({"rootfs": {"type": "layers", "diff_ids": ["sha256:" + "2" * 64]}}).encode())
    manifest = store.put_bytes(json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": 1},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": "sha256:" + "3" * 64,
                    "size": 1}]}).encode())
    with pytest.raises(ImageError, match="missing"):
        store.add("localhost/m", manifest)
    with pytest.raises(NotFound):
        store.add("localhost/m", "sha256:" + "4" * 64)


def test_layer_dirs_top_most_first_short_and_shared(tmp_path):
    store = Store(str(tmp_path / "images"))
    base = import_rootfs(store, rootfs_tar({"etc/a": b"1"}), "localhost/base")
    dirs = store.layer_dirs(base)
    assert dirs == [os.path.join(store.layers_root, base.layers[0].diff_id[7:19], "d")]
    assert open(os.path.join(dirs[0], "etc/a"), "rb").read() == b"1"
    again = import_rootfs(store, rootfs_tar({"etc/a": b"1"}), "localhost/other", changes=["USER nobody"])
    assert store.layer_dirs(again) == dirs  # unpacked once, shared by diff_id
    assert os.listdir(os.path.join(store.root, "tmp")) == []


def test_layer_dir_prefix_collision_uses_a_longer_prefix(store):
    image = import_rootfs(store, rootfs_tar({"a": b"1"}), "localhost/x")
    hex_ = image.layers[0].diff_id[7:]
    squatter = os.path.join(store.layers_root, hex_[:12])
    os.makedirs(os.path.join(squatter, "d"))
    with open(os.path.join(squatter, "diff_id"), "w") as f:
        f.write("sha256:" + hex_[:12] + "0" * 52)
    assert store.layer_dirs(image) == [os.path.join(store.layers_root, hex_[:16], "d")]


def test_layer_with_wrong_diff_id_is_not_kept(store):
    good = import_rootfs(store, rootfs_tar({"a": b"1"}), "localhost/x")
    bad_config = dict(good.config, rootfs={"type": "layers", "diff_ids": ["sha256:" + "9" * 64]})
    config = store.put_bytes(json.dumps(bad_config).encode())
    manifest = store.put_bytes(json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": 1},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": good.layers[0].digest,
                    "size": good.layers[0].size}]}).encode())
    with pytest.raises(ImageError, match="diff_id"):
        store.layer_dirs(store.add("localhost/bad", manifest))
    assert not os.path.exists(os.path.join(store.layers_root, "9" * 12))
    assert os.listdir(os.path.join(store.root, "tmp")) == []


def _add_names(root, manifest_digest, worker, count):
    store = Store(root)
    for i in range(count):
        store.add(f"localhost/w{worker}:t{i}", manifest_digest)


def test_concurrent_adds_keep_the_index_valid(store):
    image = import_rootfs(store, rootfs_tar({"a": b"1"}), "localhost/x")
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_add_names, args=(store.root, image.manifest_digest, w, 15)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    with open(os.path.join(store.root, "index.json")) as f:
        index = json.load(f)
    assert len(index["names"]) == 1 + 4 * 15
    assert len(store.resolve(image.id).names) == 61


@pytest.mark.parametrize("change, key, value", [
    ('CMD ["a", "b"]', "Cmd", ["a", "b"]),
    ("CMD echo hi", "Cmd", ["/bin/sh", "-c", "echo hi"]),
    ('ENTRYPOINT ["/e"]', "Entrypoint", ["/e"]),
    ("EXPOSE 80 53/udp", "ExposedPorts", {"80/tcp": {}, "53/udp": {}}),
    ('LABEL a=1 b="two words"', "Labels", {"a": "1", "b": "two words"}),
    ("ENV K some value", "Env", ["K=some value"]),
    ('VOLUME ["/data"]', "Volumes", {"/data": {}}),
    ("user 1000:1000", "User", "1000:1000"),
])
def test_apply_change(change, key, value):
    config = {}
    apply_change(config, change)
    assert config[key] == value


@pytest.mark.parametrize("change", ["RUN make", "CMD", "ENV =x", "LABEL a"])
def test_apply_change_refuses(change):
    with pytest.raises(UsageError):
        apply_change({}, change)


# -- archives -----------------------------------------------------------------------------------
def docker_archive(layer_tar: bytes, config: dict, tags, legacy=True, gzip_layer=False):
    """A docker-save archive written by hand, legacy layout with a symlinked repeated layer."""
    import gzip
    layer_file = gzip.compress(layer_tar, mtime=0) if gzip_layer else layer_tar
    config_bytes = json.dumps(config).encode()
    config_name = hashlib.sha256(config_bytes).hexdigest() + ".json"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        def add(name, data):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        add("aaa/layer.tar", layer_file)
        link = tarfile.TarInfo("bbb/layer.tar")
        link.type, link.linkname = tarfile.SYMTYPE, "../aaa/layer.tar"
        tar.addfile(link)
        add(config_name, config_bytes)
        add("manifest.json", json.dumps([{"Config": config_name, "RepoTags": tags,
                                          "Layers": ["aaa/layer.tar", "bbb/layer.tar"]}]).encode())
        add("repositories", b"{}")
    buf.seek(0)
    return buf


def test_docker_archive_load_save_round_trip(tmp_path):
    layer = rootfs_tar({"hello": b"world"}).getvalue()
    diff_id = "sha256:" + hashlib.sha256(layer).hexdigest()
    config = {"architecture": "amd64", "os": "linux", "config": {"Cmd": ["sh"]},
              "rootfs": {"type": "layers", "diff_ids": [diff_id, diff_id]}}
    store = Store(str(tmp_path / "one"))
    assert archive.load(store, docker_archive(layer, config, ["demo:1", "localhost/demo:2"])) == [
        "demo:1", "localhost/demo:2"]
    image = store.resolve("demo:1")
    assert image.id == "sha256:" + hashlib.sha256(json.dumps(config).encode()).hexdigest()
    assert [l.diff_id for l in image.layers] == [diff_id, diff_id]
    assert len(blobs(store)) == 3  # layer, config, manifest: no leftovers from manifest.json or repositories
    first, second = io.BytesIO(), io.BytesIO()
    archive.save(store, ["demo:1", "localhost/demo:2"], first)
    archive.save(store, ["demo:1", "localhost/demo:2"], second)
    assert first.getvalue() == second.getvalue()
    with tarfile.open(fileobj=io.BytesIO(first.getvalue())) as tar:
        names = tar.getnames()
        saved_manifest = json.load(tar.extractfile("manifest.json"))
    assert {"oci-layout", "index.json", "manifest.json", "repositories"} <= set(names)
    assert saved_manifest[0]["RepoTags"] == ["demo:1", "localhost/demo:2"]
    other = Store(str(tmp_path / "two"))
    first.seek(0)
    assert archive.load(other, first) == ["demo:1", "localhost/demo:2"]
    again = other.resolve("localhost/demo:2")
    assert (again.id, again.manifest_digest, again.layers) == (image.id, image.manifest_digest, image.layers)


def test_docker_archive_with_gzip_layer(store):
    layer = rootfs_tar({"a": b"b"}).getvalue()
    diff_id = "sha256:" + hashlib.sha256(layer).hexdigest()
    config = {"os": "linux", "rootfs": {"type": "layers", "diff_ids": [diff_id, diff_id]}}
    archive.load(store, docker_archive(layer, config, ["z"], gzip_layer=True))
    assert store.resolve("z").layers[0].media_type == MEDIA_DOCKER_LAYER_GZIP


def test_docker_archive_wrong_diff_id_is_refused(store):
    layer = rootfs_tar({"a": b"b"}).getvalue()
    config = {"os": "linux", "rootfs": {"type": "layers", "diff_ids": ["sha256:" + "5" * 64] * 2}}
    with pytest.raises(ImageError, match="diff_id"):
        archive.load(store, docker_archive(layer, config, ["z"]))
    assert blobs(store) == [] and store.list() == []


@pytest.mark.parametrize("member", ["../evil", "/etc/evil", "a/../../evil"])
def test_archive_members_with_unsafe_names_are_refused(store, member):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo(member)
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    buf.seek(0)
    with pytest.raises(ImageError, match="unsafe archive member"):
        archive.load(store, buf)
    assert blobs(store) == []


def test_archive_symlink_leaving_the_archive_is_refused(store):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("x/layer.tar")
        info.type, info.linkname = tarfile.SYMTYPE, "../../etc/passwd"
        tar.addfile(info)
    buf.seek(0)
    with pytest.raises(ImageError, match="unsafe archive member"):
        archive.load(store, buf)


def test_oci_layout_blob_with_wrong_content_is_refused(store, tmp_path):
    image = import_rootfs(store, rootfs_tar({"a": b"1"}), "localhost/x")
    saved = io.BytesIO()
    archive.save(store, ["localhost/x"], saved)
    tampered = io.BytesIO()
    with tarfile.open(fileobj=io.BytesIO(saved.getvalue())) as src, tarfile.open(fileobj=tampered, mode="w") as dst:
        for info in src:
            data = src.extractfile(info).read() if info.isreg() else None
            if info.name.endswith(image.layers[0].digest[7:]):
                data = data[:-1] + b"!"
            dst.addfile(info, io.BytesIO(data) if data is not None else None)
    tampered.seek(0)
    other = Store(str(tmp_path / "other"))
    with pytest.raises(ImageError, match="does not match its content"):
        archive.load(other, tampered)
    assert other.list() == [] and blobs(other) == []


def test_load_refuses_unknown_archives(store):
    with pytest.raises(ImageError, match="neither"):
        archive.load(store, rootfs_tar({"hello": b"x"}))
    with pytest.raises(ImageError, match="not a valid tar"):
        archive.load(store, io.BytesIO(b"nope" * 300))


def test_intermediate_build_images_are_hidden_until_named(tmp_path):
    """A build's step images stay in the store for its cache but out of `images`; the result is shown."""
    import io
    import tarfile

    from runner.images.rootfs import import_rootfs
    store = Store(str(tmp_path / "store"))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("f")
        tar.addfile(info, io.BytesIO(b""))
    shown = import_rootfs(store, io.BytesIO(buf.getvalue()), None)
    step = store.add(None, shown.manifest_digest, intermediate=True)  # already known: stays visible
    assert [i.id for i in store.list()] == [step.id]
    from runner.images.rootfs import canonical_json
    manifest = store.read_json(shown.manifest_digest)
    manifest["annotations"] = {"step": "2"}  # another manifest of the same config: a build step's image
    other = store.add(None, store.put_bytes(canonical_json(manifest)), intermediate=True)
    assert [i.manifest_digest for i in store.list()] == [shown.manifest_digest] and len(store.list(all=True)) == 2
    assert store.intermediates() == [other.manifest_digest]
    store.add("named:1", other.manifest_digest, intermediate=False)
    assert len(store.list()) == 2 and store.intermediates() == []
