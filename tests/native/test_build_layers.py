"""Layers from an overlay upper directory and the merged view over real overlay-format layer directories: the
parts of `runner build` that need root (0:0 character-device whiteouts, trusted.overlay.* xattrs)."""

from __future__ import annotations

import os
import tarfile

import pytest

from runner.images.fsview import MergedView
from runner.images.layers import WHITEOUT_FLAT, unpack
from runner.images.layertar import LayerWriter, write_upper
from runner.images.store import Store

pytestmark = pytest.mark.root


def whiteout(path: str) -> None:
    os.mknod(path, 0o600 | 0o020000, os.makedev(0, 0))


def test_upper_dir_becomes_an_oci_layer(tmp_path):
    upper = tmp_path / "upper"
    (upper / "etc").mkdir(parents=True)
    (upper / "etc" / "hosts").write_text("")  # a bind mount's mount point: never part of the layer
    (upper / "app" / "new").mkdir(parents=True)
    (upper / "app" / "new" / "file").write_text("data")
    os.link(upper / "app" / "new" / "file", upper / "app" / "hardlink")
    os.symlink("new/file", upper / "app" / "link")
    whiteout(str(upper / "app" / "gone"))
    (upper / "replaced").mkdir()
    os.setxattr(upper / "replaced", "trusted.overlay.opaque", b"y")
    os.setxattr(upper / "app" / "new" / "file", "trusted.overlay.origin", b"x")  # overlay's own: dropped
    store = Store(str(tmp_path / "store"))
    writer = LayerWriter(store)
    write_upper(writer, str(upper), frozenset({"etc/hosts"}))
    diff_id, size = writer.commit()
    assert not os.listdir(tmp_path / "store" / "tmp")  # the temp tar is gone
    with store.open_blob(diff_id) as f:
        members = {m.name: m for m in tarfile.open(fileobj=f)}
    assert "etc/hosts" not in members and "etc" in members
    assert members["app/.wh.gone"].isfile() and members["replaced/.wh..wh..opq"].isfile()
    assert members["app/link"].issym() and members["app/link"].linkname == "new/file"
    linked = [n for n in ("app/hardlink", "app/new/file") if members[n].islnk()]
    assert len(linked) == 1  # the second name of the inode is a hard link to the first
    assert not [k for m in members.values() for k in m.pax_headers if "overlay" in k]
    flat = tmp_path / "flat"
    (flat / "app").mkdir(parents=True)
    (flat / "app" / "gone").write_text("old")
    (flat / "replaced").mkdir()
    (flat / "replaced" / "old").write_text("old")
    with store.open_blob(diff_id) as f:
        unpack(f, str(flat), whiteouts=WHITEOUT_FLAT)
    assert not (flat / "app" / "gone").exists() and os.listdir(flat / "replaced") == []
    assert (flat / "app" / "hardlink").read_text() == "data"


def test_merged_view_honours_whiteouts_and_opaque_directories(tmp_path):
    low, mid, top = (tmp_path / n for n in ("low", "mid", "top"))
    for layer in (low, mid, top):
        layer.mkdir()
    (low / "dir").mkdir()
    (low / "dir" / "a").write_text("low a")
    (low / "dir" / "b").write_text("low b")
    (low / "opq").mkdir()
    (low / "opq" / "hidden").write_text("x")
    (mid / "dir").mkdir()
    whiteout(str(mid / "dir" / "a"))
    (mid / "opq").mkdir()
    os.setxattr(mid / "opq", "trusted.overlay.opaque", b"y")
    (mid / "opq" / "visible").write_text("y")
    (top / "dir").mkdir()
    (top / "dir" / "c").write_text("top c")
    view = MergedView([str(top), str(mid), str(low)])
    assert view.listdir(("dir",)) == ["b", "c"]
    assert view.lstat(("dir", "a")) is None
    assert view.listdir(("opq",)) == ["visible"] and view.lstat(("opq", "hidden")) is None
    assert [rel for rel, _, _ in view.walk(())] == [("dir",), ("dir", "b"), ("dir", "c"), ("opq",),
                                                     ("opq", "visible")]
