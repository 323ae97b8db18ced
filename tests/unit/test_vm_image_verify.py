"""Guest image artifacts are checked against manifest.json before QEMU ever sees them."""

from __future__ import annotations

import hashlib
import os
import json

import pytest

from runner.errors import PlatformError, VMError
from runner.vm import image


def _fake_image(directory, arch="x86_64"):
    directory.mkdir(parents=True, exist_ok=True)
    artifacts = {}
    for role, name, data in (("kernel", "kernel", b"K" * 4096), ("initrd", "initrd.img", b"I" * 1024),
                             ("rootfs", "rootfs.ext4", b"R" * 8192)):
        (directory / name).write_bytes(data)
        artifacts[role] = {"file": name, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (directory / "manifest.json").write_text(json.dumps({
        "image_version": image.IMAGE_VERSION, "arch": arch, "kernel_version": "6.1.0-test",
        "cmdline": "console=ttyS0 quiet panic=-1", "artifacts": artifacts}))
    return directory


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv(image.CACHE_ENV, str(tmp_path))
    return image.cache_dir("x86_64")


def test_cache_dir_is_versioned_per_arch(cache, tmp_path):
    assert cache == tmp_path / image.IMAGE_VERSION / "x86_64"


def test_verify_accepts_intact_image(cache):
    _fake_image(cache)
    art = image.verify(cache, "x86_64")
    assert art.kernel == cache / "kernel" and art.rootfs == cache / "rootfs.ext4"
    assert art.cmdline.startswith("console=ttyS0") and art.kernel_version == "6.1.0-test"


@pytest.mark.parametrize("name", ["kernel", "initrd.img", "rootfs.ext4"])
def test_one_flipped_byte_is_detected(cache, name):
    _fake_image(cache)
    path = cache / name
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(VMError, match=f"{name} is corrupt"):
        image.verify(cache, "x86_64")


def test_truncated_artifact_is_detected(cache):
    _fake_image(cache)
    (cache / "kernel").write_bytes(b"K" * 100)
    with pytest.raises(VMError, match="partial"):
        image.verify(cache, "x86_64")


def test_wrong_arch_manifest_is_refused(cache):
    _fake_image(cache, arch="aarch64")
    with pytest.raises(VMError, match="is for aarch64"):
        image.verify(cache, "x86_64")


def test_ensure_rebuilds_corrupt_image_on_linux(cache, monkeypatch):
    _fake_image(cache)
    (cache / "initrd.img").write_bytes(b"X" * 1024)
    calls = []

    def fake_build(arch, out_dir, force=False):
        calls.append((arch, out_dir, force))
        _fake_image(out_dir)
        return image.verify(out_dir, arch)

    monkeypatch.setattr(image.platform, "system", lambda: "Linux")
    monkeypatch.setattr(image, "build", fake_build)
    art = image.ensure("x86_64")
    assert calls == [("x86_64", cache, True)]
    assert art.initrd.read_bytes() == b"I" * 1024


def test_ensure_rebuilds_stale_recipe_on_linux(cache, monkeypatch):
    _fake_image(cache)
    calls = []
    monkeypatch.setattr(image.platform, "system", lambda: "Linux")
    monkeypatch.setattr(image, "_recipe_changed", lambda art: True)
    monkeypatch.setattr(image, "build", lambda arch, out, force=False: calls.append(force) or image.verify(out, arch))
    image.ensure("x86_64")
    assert calls == [False]  # not forced: the build's own cache check decides


def test_ensure_on_macos_explains_how_to_get_artifacts(cache, monkeypatch):
    _fake_image(cache)
    (cache / "kernel").write_bytes(b"Z" * 4096)
    monkeypatch.setattr(image.platform, "system", lambda: "Darwin")
    with pytest.raises(VMError) as exc:
        image.ensure("x86_64")
    assert "corrupt" in exc.value.message
    assert "runner vm image build" in exc.value.hint and str(cache) in exc.value.hint


def test_ensure_without_build_reports_missing_image(cache):
    with pytest.raises(VMError, match="manifest.json missing"):
        image.ensure("x86_64", build_if_missing=False)


def test_build_refused_off_linux(tmp_path, monkeypatch):
    monkeypatch.setattr(image.platform, "system", lambda: "Windows")
    with pytest.raises(PlatformError, match="only be built on Linux"):
        image.build("x86_64", tmp_path)


def test_unknown_arch(cache):
    with pytest.raises(VMError, match="unknown guest arch"):
        image.cache_dir("riscv64")


def test_verified_files_are_not_hashed_again_until_they_change(cache, monkeypatch):
    _fake_image(cache)
    image.verify(cache, "x86_64")  # hashes and remembers
    calls = []
    real = image._sha256
    monkeypatch.setattr(image, "_sha256", lambda p: calls.append(p.name) or real(p))
    image.verify(cache, "x86_64")
    assert calls == []
    path = cache / "kernel"
    st = path.stat()
    data = bytearray(path.read_bytes())
    data[0] ^= 1
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # same size and mtime: ctime still differs
    with pytest.raises(VMError, match="kernel is corrupt"):
        image.verify(cache, "x86_64")
