"""Safe layer unpacking: hostile tars write nothing outside the target; whiteouts are honoured."""

import gzip
import io
import os
import stat
import tarfile

import pytest

from runner.errors import ImageError
from runner.images import layers

def make_tar(*entries, compress=False):
    """Entries: (name, kind, arg): 'f' data, 'd', 's' symlink target, 'h' hardlink target, 'c' (major, minor)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, kind, *rest in entries:
            info = tarfile.TarInfo(name)
            info.mtime = 1_000_000
            arg = rest[0] if rest else None
            if kind == "f":
                data = arg or b""
                info.size, info.mode = len(data), 0o644
                tar.addfile(info, io.BytesIO(data))
                continue
            if kind == "d":
                info.type, info.mode = tarfile.DIRTYPE, arg or 0o755
            elif kind == "s":
                info.type, info.linkname = tarfile.SYMTYPE, arg
            elif kind == "h":
                info.type, info.linkname = tarfile.LNKTYPE, arg
            elif kind == "c":
                info.type, (info.devmajor, info.devminor) = tarfile.CHRTYPE, arg
            elif kind == "p":
                info.type = tarfile.FIFOTYPE
            tar.addfile(info)
    data = buf.getvalue()
    return io.BytesIO(gzip.compress(data, mtime=0) if compress else data)


@pytest.fixture
def box(tmp_path):
    """A target dir and a sentinel dir beside it that nothing may touch."""
    target = tmp_path / "target"
    outside = tmp_path / "outside"
    target.mkdir()
    outside.mkdir()
    (outside / "passwd").write_text("sentinel")
    return target, outside


def snapshot(path):
    return sorted((p.relative_to(path).as_posix(), p.lstat().st_mode, p.read_bytes() if p.is_file() else b"")
                  for p in path.rglob("*"))


def unpack(tar, target, **kw):
    return layers.unpack(tar, str(target), **kw)


def test_plain_layer_keeps_modes_links_and_mtimes(box):
    target, _ = box
    diff_id = unpack(make_tar(("bin", "d"), ("bin/tool", "f", b"#!x"), ("bin/alias", "s", "tool"),
                              ("bin/hard", "h", "bin/tool"), ("secret", "d", 0o700), ("/abs/file", "f", b"a")), target)
    assert diff_id.startswith("sha256:")
    assert (target / "bin/tool").read_bytes() == b"#!x"
    assert os.readlink(target / "bin/alias") == "tool"
    assert (target / "bin/hard").stat().st_ino == (target / "bin/tool").stat().st_ino
    assert stat.S_IMODE((target / "secret").stat().st_mode) == 0o700
    assert (target / "bin").stat().st_mtime == 1_000_000
    assert (target / "abs/file").read_bytes() == b"a"  # a leading '/' is made relative


def test_gzip_and_plain_give_the_same_diff_id(tmp_path):
    entries = (("a", "f", b"1"), ("b", "d"))
    (tmp_path / "x").mkdir()
    (tmp_path / "y").mkdir()
    assert unpack(make_tar(*entries), tmp_path / "x") == unpack(make_tar(*entries, compress=True), tmp_path / "y")


def test_diff_id_mismatch_is_refused(box):
    target, _ = box
    with pytest.raises(ImageError, match="diff_id"):
        unpack(make_tar(("a", "f", b"1")), target, expected_diff_id="sha256:" + "0" * 64)


def test_not_a_tar_is_refused(box):
    with pytest.raises(ImageError, match="not a valid tar"):
        unpack(io.BytesIO(b"hello world, no tar here" * 50), box[0])


def test_zstd_is_refused_clearly(box):
    try:
        from compression import zstd  # noqa: F401
        pytest.skip("this Python has zstd")
    except ImportError:
        pass
    with pytest.raises(ImageError, match="zstd"):
        unpack(io.BytesIO(b"\x28\xb5\x2f\xfd" + b"\0" * 100), box[0])


@pytest.mark.parametrize("entries, message", [
    ((("../x", "f", b"evil"),), "'..'"),
    ((("a/../../outside/passwd", "f", b"evil"),), "'..'"),
    ((("link", "s", "OUTSIDE"), ("link/passwd", "f", b"evil")), "symlink"),
    ((("l1", "s", "l2"), ("l2", "s", "OUTSIDE"), ("l1/passwd", "f", b"evil")), "symlink"),
    ((("d", "d"), ("d/up", "s", "../.."), ("d/up/outside/passwd", "f", b"evil")), "symlink"),
    ((("h", "h", "/etc/passwd"),), "hard link"),
    ((("link", "s", "OUTSIDE"), ("h", "h", "link/passwd")), "symlink"),
    ((("link", "s", "OUTSIDE"), ("link/.wh.passwd", "f"),), "symlink"),
    ((("link", "s", "OUTSIDE"), ("link/.wh..wh..opq", "f"),), "symlink"),
    ((("h", "h", "../outside/passwd"),), "'..'"),
])
@pytest.mark.parametrize("mode", [layers.WHITEOUT_OVERLAY, layers.WHITEOUT_FLAT])
def test_malicious_tars_write_nothing_outside(box, entries, message, mode):
    target, outside = box
    entries = tuple((n, k, *[str(outside) if a == "OUTSIDE" else a for a in rest]) for n, k, *rest in entries)
    before = snapshot(outside)
    with pytest.raises(ImageError, match=message) as info:
        unpack(make_tar(*entries), target, whiteouts=mode)
    assert "\n" not in info.value.message
    assert snapshot(outside) == before


def test_existing_symlink_is_replaced_not_followed(box):
    target, outside = box
    os.symlink(outside / "passwd", target / "passwd")
    unpack(make_tar(("passwd", "f", b"mine")), target, whiteouts=layers.WHITEOUT_FLAT)
    assert (outside / "passwd").read_text() == "sentinel"
    assert not (target / "passwd").is_symlink() and (target / "passwd").read_bytes() == b"mine"


def test_devices_skipped_without_permission(box):
    target, outside = box
    unpack(make_tar(("null", "c", (1, 3)), ("fifo", "p"), ("ok", "f", b"")), target, allow_devices=False)
    assert sorted(os.listdir(target)) == ["ok"]
    assert snapshot(outside) == [("passwd", (outside / "passwd").lstat().st_mode, b"sentinel")]


@pytest.mark.root
def test_devices_created_with_permission(box):
    target, _ = box
    unpack(make_tar(("null", "c", (1, 3)), ("fifo", "p")), target, allow_devices=True)
    assert stat.S_ISCHR((target / "null").lstat().st_mode)
    assert os.major((target / "null").lstat().st_rdev) == 1
    assert stat.S_ISFIFO((target / "fifo").lstat().st_mode)


def test_flat_whiteouts_delete_lower_content(tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    unpack(make_tar(("etc", "d"), ("etc/keep", "f", b"k"), ("etc/gone", "f", b"g"), ("opq", "d"),
                    ("opq/old", "f", b"o"), ("tree", "d"), ("tree/sub", "d"), ("tree/sub/x", "f")), flat,
           whiteouts=layers.WHITEOUT_FLAT)
    unpack(make_tar(("etc/.wh.gone", "f"), ("opq", "d"), ("opq/.wh..wh..opq", "f"), ("opq/new", "f", b"n"),
                    (".wh.tree", "f"), ("nodir/.wh.nothing", "f")), flat, whiteouts=layers.WHITEOUT_FLAT)
    assert sorted(os.listdir(flat / "etc")) == ["keep"]
    assert sorted(os.listdir(flat / "opq")) == ["new"]
    assert not (flat / "tree").exists()
    assert not (flat / "nodir").exists()


def test_flat_opaque_keeps_entries_of_the_same_layer(tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    unpack(make_tar(("d", "d"), ("d/old", "f")), flat, whiteouts=layers.WHITEOUT_FLAT)
    unpack(make_tar(("d", "d"), ("d/new", "f"), ("d/.wh..wh..opq", "f")), flat, whiteouts=layers.WHITEOUT_FLAT)
    assert os.listdir(flat / "d") == ["new"]


@pytest.mark.root
def test_overlay_whiteouts_become_overlayfs_markers(tmp_path):
    target = tmp_path / "layer"
    target.mkdir()
    unpack(make_tar(("etc", "d"), ("etc/.wh.gone", "f"), ("opq", "d"), ("opq/.wh..wh..opq", "f"),
                    ("opq/new", "f")), target, whiteouts=layers.WHITEOUT_OVERLAY)
    st = (target / "etc/gone").lstat()
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0
    assert os.getxattr(target / "opq", "trusted.overlay.opaque") == b"y"
    assert os.listdir(target / "opq") == ["new"]


@pytest.mark.root
def test_overlay_control_xattrs_from_the_tar_are_ignored(tmp_path):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("d")
        info.type = tarfile.DIRTYPE
        info.pax_headers = {"SCHILY.xattr.trusted.overlay.redirect": "/etc", "SCHILY.xattr.user.note": "hi"}
        tar.addfile(info)
    buf.seek(0)
    target = tmp_path / "layer"
    target.mkdir()
    unpack(buf, target)
    assert "trusted.overlay.redirect" not in os.listxattr(target / "d")


@pytest.mark.root
def test_owner_and_setuid_preserved_as_root(tmp_path):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("su")
        info.uid, info.gid, info.mode, info.size = 1000, 1001, 0o4755, 1
        tar.addfile(info, io.BytesIO(b"x"))
    buf.seek(0)
    target = tmp_path / "layer"
    target.mkdir()
    unpack(buf, target)
    st = (target / "su").stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1000, 1001, 0o4755)


@pytest.mark.parametrize("cut", [30, -5])
def test_corrupt_gzip_is_refused(box, cut):
    data = make_tar(("a", "f", b"x" * 5000), compress=True).getvalue()
    data = data[:cut] if cut > 0 else data[:cut] + b"zzzzz"
    with pytest.raises(ImageError, match="corrupt"):
        unpack(io.BytesIO(data), box[0])
