"""Images against independent tools and the real kernel: skopeo-made archives, overlayfs, the default image."""

import glob
import io
import json
import os
import shutil
import subprocess
import tarfile

import pytest

from runner.images import archive
from runner.images.default import DEFAULT_IMAGE, build_default_image, busybox_from_deb, ensure_default_image
from runner.images.rootfs import canonical_json
from runner.images.store import MEDIA_OCI_CONFIG, MEDIA_OCI_LAYER, MEDIA_OCI_MANIFEST, Store

pytestmark = pytest.mark.root
needs_skopeo = pytest.mark.skipif(not shutil.which("skopeo"), reason="needs skopeo (apt-get install skopeo)")
needs_busybox = pytest.mark.skipif(not os.path.exists("/bin/busybox"), reason="needs busybox-static")


@pytest.fixture
def default_archive(tmp_path):
    """The default image saved by runner, as a file skopeo can read."""
    store = Store(str(tmp_path / "source"))
    image = build_default_image(store)
    path = tmp_path / "default.tar"
    with open(path, "wb") as out:
        archive.save(store, [DEFAULT_IMAGE], out)
    return image, str(path)


def skopeo(*args):
    subprocess.run(["skopeo", "--insecure-policy", *args], check=True, capture_output=True, timeout=120)


def tar_dir(directory, path):
    with tarfile.open(path, "w") as tar:
        for name in sorted(os.listdir(directory)):
            tar.add(os.path.join(directory, name), arcname=name)


def load_and_round_trip(tmp_path, archive_path):
    """Load ``archive_path``; save and load again into a fresh store; both images must be the same."""
    first = Store(str(tmp_path / "first"))
    with open(archive_path, "rb") as f:
        names = archive.load(first, f)
    image = first.resolve(names[0])
    saved = io.BytesIO()
    archive.save(first, names, saved)
    saved.seek(0)
    second = Store(str(tmp_path / "second"))
    assert archive.load(second, saved) == names
    again = second.resolve(names[0])
    assert (again.id, [l.diff_id for l in again.layers]) == (image.id, [l.diff_id for l in image.layers])
    return names, image


@needs_busybox
@needs_skopeo
def test_skopeo_reads_runner_saves_as_docker_archive_and_oci(default_archive, tmp_path):
    image, path = default_archive
    skopeo("copy", f"docker-archive:{path}", f"dir:{tmp_path / 'dir'}")
    layout = tmp_path / "layout"
    layout.mkdir()
    with tarfile.open(path) as tar:
        # tarfile's filters arrived in 3.11.4 (Debian 12 has 3.11.2): there, the members are checked here.
        for member in tar.getmembers():
            assert (member.isfile() or member.isdir()) and not os.path.isabs(member.name) \
                and ".." not in member.name.split("/"), member.name
        tar.extractall(layout, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    skopeo("copy", f"oci:{layout}", f"dir:{tmp_path / 'dir2'}")
    for copied in ("dir", "dir2"):
        manifest = json.loads((tmp_path / copied / "manifest.json").read_text())
        assert manifest["config"]["digest"] == image.id


@needs_busybox
@needs_skopeo
def test_load_skopeo_docker_archive_round_trip(default_archive, tmp_path):
    image, path = default_archive
    skopeo_archive = str(tmp_path / "skopeo.tar")
    skopeo("copy", f"docker-archive:{path}", f"docker-archive:{skopeo_archive}:localhost/busybox:skopeo")
    names, loaded = load_and_round_trip(tmp_path, skopeo_archive)
    assert names == ["localhost/busybox:skopeo"]
    assert [l.diff_id for l in loaded.layers] == [l.diff_id for l in image.layers]


@needs_busybox
@needs_skopeo
def test_load_skopeo_oci_layout_round_trip(default_archive, tmp_path):
    image, path = default_archive
    layout = tmp_path / "oci"
    skopeo("copy", f"docker-archive:{path}", f"oci:{layout}:localhost/busybox:oci")
    tar_dir(layout, tmp_path / "oci.tar")
    names, loaded = load_and_round_trip(tmp_path, str(tmp_path / "oci.tar"))
    assert names == ["localhost/busybox:oci"]
    assert [l.diff_id for l in loaded.layers] == [l.diff_id for l in image.layers]
    assert loaded.layers[0].media_type.endswith("+gzip")  # skopeo compressed it; stored as it came


@needs_busybox
def test_default_image_is_reproducible_and_runs(tmp_path):
    one = ensure_default_image(Store(str(tmp_path / "a")))
    two_store = Store(str(tmp_path / "b"))
    two = build_default_image(two_store)
    assert (one.id, one.manifest_digest) == (two.id, two.manifest_digest)
    assert ensure_default_image(two_store).manifest_digest == two.manifest_digest
    assert two.config["config"]["Cmd"] == ["sh"]
    [layer] = two_store.layer_dirs(two)
    assert oct(os.stat(os.path.join(layer, "tmp")).st_mode & 0o7777) == "0o1777"
    assert os.stat(os.path.join(layer, "home/user")).st_uid == 1000
    out = subprocess.run(["chroot", layer, "/bin/sh", "-c", "id -u; ls /bin/ls; grep user /etc/passwd"],
                         capture_output=True, check=True, timeout=30).stdout.decode()
    assert out.split("\n")[:2] == ["0", "/bin/ls"] and "user:x:1000" in out


@needs_busybox
def test_default_image_from_the_deb_matches_the_installed_binary(tmp_path):
    debs = glob.glob("/var/cache/apt/archives/busybox-static_*.deb")
    if not debs:
        pytest.skip("no busybox-static .deb in the apt cache")
    extracted = busybox_from_deb(debs[0], str(tmp_path))
    with open(extracted, "rb") as a, open("/bin/busybox", "rb") as b:
        if a.read() != b.read():
            pytest.skip("the cached .deb is another busybox-static version than the installed one")
    from_deb = build_default_image(Store(str(tmp_path / "a")), extracted)
    assert from_deb.id == build_default_image(Store(str(tmp_path / "b"))).id


def two_layer_image(store):
    """An image whose upper layer deletes a file and makes a directory opaque."""
    def layer(entries):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            for name, data in entries:
                info = tarfile.TarInfo(name)
                if data is None:
                    info.type, info.mode = tarfile.DIRTYPE, 0o755
                    tar.addfile(info)
                else:
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        return buf.getvalue()

    lower = layer([("etc", None), ("etc/keep", b"k"), ("etc/gone", b"g"), ("opq", None), ("opq/old", b"o")])
    upper = layer([("etc", None), ("etc/.wh.gone", b""), ("opq", None), ("opq/.wh..wh..opq", b""),
                   ("opq/new", b"n")])
    descriptors = []
    for data in (lower, upper):
        digest = store.put_bytes(data)
        descriptors.append({"mediaType": MEDIA_OCI_LAYER, "digest": digest, "size": len(data)})
    config = canonical_json({"architecture": "amd64", "os": "linux", "config": {},
                             "rootfs": {"type": "layers", "diff_ids": [d["digest"] for d in descriptors]}})
    manifest = {"schemaVersion": 2, "mediaType": MEDIA_OCI_MANIFEST,
                "config": {"mediaType": MEDIA_OCI_CONFIG, "digest": store.put_bytes(config), "size": len(config)},
                "layers": descriptors}
    return store.add("localhost/two", store.put_bytes(canonical_json(manifest)))


def test_overlay_mount_of_layer_dirs_honours_whiteouts(tmp_path):
    store = Store(str(tmp_path / "images"))
    dirs = store.layer_dirs(two_layer_image(store))
    assert dirs[0].startswith(store.layers_root)  # top-most first
    merged = tmp_path / "merged"
    merged.mkdir()
    lowerdir = ":".join(os.path.relpath(d, store.layers_root) for d in dirs)
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o", f"lowerdir={lowerdir}", str(merged)],
                   cwd=store.layers_root, check=True, capture_output=True)
    try:
        assert sorted(os.listdir(merged / "etc")) == ["keep"]
        assert sorted(os.listdir(merged / "opq")) == ["new"]
    finally:
        subprocess.run(["umount", str(merged)], check=True)
