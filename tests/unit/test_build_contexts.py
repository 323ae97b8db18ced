"""The unpacked build contexts kept by runner.images.build: reused for the same tar, private with --no-cache,
pruned to the newest few that no running build holds; the Dockerfile read and dropped when .dockerignore says so."""

from __future__ import annotations

import fcntl
import io
import os
import tarfile

import pytest

from runner.errors import BuildError
from runner.images import build as build_mod
from runner.images.store import Store


def context_tar(files: dict[str, str]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, text in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(text.encode())
            tar.addfile(info, io.BytesIO(text.encode()))
    return buf.getvalue()


@pytest.fixture
def store(tmp_path):
    return Store(str(tmp_path / "store"))


def spool(store, data: bytes) -> str:
    path = os.path.join(store.root, "tmp", "spool")
    with open(path, "wb") as f:
        f.write(data)
    return path


def test_the_same_tar_reuses_its_unpacked_context(store, monkeypatch):
    path = spool(store, context_tar({"Dockerfile": "FROM x\n", "a.txt": "a", ".dockerignore": "Dockerfile\n"}))
    calls = []
    real = build_mod.unpack_context
    monkeypatch.setattr(build_mod, "unpack_context", lambda *a: calls.append(a) or real(*a))
    with build_mod._context(store, path, "Dockerfile", "k1", fresh=False) as where:
        assert open(os.path.join(where, "dockerfile")).read() == "FROM x\n"
        assert sorted(os.listdir(os.path.join(where, "ctx"))) == [".dockerignore", "a.txt"]  # ignored: dropped
    with build_mod._context(store, path, "Dockerfile", "k1", fresh=False) as again:
        assert again == where
    assert len(calls) == 1
    with build_mod._context(store, path, "Dockerfile", "k1", fresh=True) as private:
        assert private != where and os.path.isdir(private)
    assert not os.path.exists(private) and len(calls) == 2
    assert os.listdir(os.path.join(store.root, "tmp")) == ["spool"]


def test_a_missing_dockerfile_is_a_build_error_and_leaves_nothing(store):
    path = spool(store, context_tar({"a.txt": "a"}))
    with pytest.raises(BuildError, match="Cannot locate specified Dockerfile: sub/Dockerfile"):
        with build_mod._context(store, path, "sub/Dockerfile", "k2", fresh=False):
            pass
    assert os.listdir(os.path.join(store.root, "tmp")) == ["spool"]
    assert os.listdir(os.path.join(store.root, build_mod.CONTEXTS)) == []


def test_only_the_newest_contexts_nobody_holds_are_kept(store):
    path = spool(store, context_tar({"Dockerfile": "FROM x\n"}))
    root = os.path.join(store.root, build_mod.CONTEXTS)
    os.makedirs(root)
    for n in range(5):  # contexts of earlier builds, oldest first
        os.mkdir(os.path.join(root, f"old{n}"))
        os.utime(os.path.join(root, f"old{n}"), (1000 + n, 1000 + n))
    held = os.open(os.path.join(root, "old0"), os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(held, fcntl.LOCK_SH)  # a build still using the oldest one
    try:
        with build_mod._context(store, path, "Dockerfile", "new", fresh=False):
            pass
    finally:
        os.close(held)
    assert sorted(os.listdir(root)) == ["new", "old0", "old3", "old4"]
