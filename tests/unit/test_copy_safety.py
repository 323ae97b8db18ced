"""Copying never crosses a root: a volume's copy-up reads the image only, and a tar from a container never
writes outside the destination (runner.engine.volumes.copy_up, runner.cli.cp.safe_extract). No root needed."""

import io
import os
import tarfile

import pytest

from runner.cli.cp import safe_extract, split
from runner.engine.volumes import copy_up, is_empty
from runner.errors import UsageError


def test_copy_up_copies_links_as_links_and_keeps_modes(tmp_path):
    rootfs, dest, outside = tmp_path / "rootfs", tmp_path / "vol", tmp_path / "outside"
    (rootfs / "data/sub").mkdir(parents=True)
    outside.mkdir()
    (outside / "secret").write_text("host\n")
    (rootfs / "data/sub/f").write_text("image\n")
    os.chmod(rootfs / "data/sub/f", 0o640)
    os.symlink(str(outside / "secret"), rootfs / "data/abs-link")
    os.symlink("../../../outside", rootfs / "data/rel-link")
    os.symlink(str(outside), rootfs / "escape")  # the mount point itself is a link out of the rootfs
    dest.mkdir()
    assert is_empty(str(dest))
    assert copy_up(str(rootfs), "/data", str(dest))
    assert (dest / "sub/f").read_text() == "image\n" and oct((dest / "sub/f").stat().st_mode & 0o777) == "0o640"
    assert os.readlink(dest / "abs-link") == str(outside / "secret")
    assert os.readlink(dest / "rel-link") == "../../../outside"
    other = tmp_path / "vol2"
    other.mkdir()
    assert not copy_up(str(rootfs), "/escape", str(other))  # resolved inside the rootfs: nothing there
    assert is_empty(str(other))
    assert not copy_up(str(rootfs), "/missing", str(other))


def _tar(*members) -> io.BytesIO:
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w") as tar:
        for name, kind, extra in members:
            info = tarfile.TarInfo(name)
            if kind == "file":
                info.size = len(extra)
                tar.addfile(info, io.BytesIO(extra))
            else:
                info.type = kind
                info.linkname = extra
                tar.addfile(info)
    data.seek(0)
    return data


@pytest.mark.parametrize("members", [
    [("top/../../evil", "file", b"x")],
    [("top/link", tarfile.SYMTYPE, "/"), ("top/link/evil", "file", b"x")],
    [("top/hard", tarfile.LNKTYPE, "../../etc/passwd")],
])
def test_untrusted_tar_never_writes_outside(tmp_path, members):
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(UsageError):
        with tarfile.open(fileobj=_tar(*members), mode="r|") as tar:
            safe_extract(tar, str(dest), "top", "renamed", keep_owner=False)
    assert not (tmp_path / "evil").exists()


def test_untrusted_tar_renames_top_and_replaces_links(tmp_path):
    dest = tmp_path / "dest"
    dest.mkdir()
    target = tmp_path / "victim"
    target.write_text("keep\n")
    os.symlink(str(target), dest / "renamed")  # a link where the copy goes: replaced, not written through
    with tarfile.open(fileobj=_tar(("top", "file", b"new\n"), ("dev", tarfile.CHRTYPE, "")), mode="r|") as tar:
        safe_extract(tar, str(dest), "top", "renamed", keep_owner=False)
    assert (dest / "renamed").read_text() == "new\n" and not os.path.islink(dest / "renamed")
    assert target.read_text() == "keep\n" and not (dest / "dev").exists()


def test_cp_argument_forms():
    assert split("web:/etc/hosts") == ("web", "/etc/hosts")
    assert split("web:") == ("web", "/")
    assert split("./a:b") == (None, "./a:b") and split("/abs:x") == (None, "/abs:x") and split("plain") == (None, "plain")
    with pytest.raises(UsageError):
        split(":/x")
