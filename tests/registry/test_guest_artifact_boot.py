"""Issue 17 end to end: the real guest image built -> pushed to a loopback registry -> empty cache ->
`runner --vm run --rm localhost/busybox echo` pulls, verifies and boots it; the second start downloads nothing.

Slow (a gzip of ~400 MB, then a TCG boot). The built artifacts are hardlinked from the normal cache into a
publisher cache of this test's own; the user's cache, the machine state and the registry are temporary.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from runner.vm import artifact, artifact_push, image
from tests.helpers import cli

pytestmark = [pytest.mark.registry, pytest.mark.vm]


def link_tree(src: Path, dst: Path) -> None:
    dst.mkdir(parents=True)
    for name in ("kernel", "initrd.img", "rootfs.ext4", "manifest.json"):
        if (src / name).exists():
            try:
                os.link(src / name, dst / name)
            except OSError:  # another filesystem: a copy
                shutil.copy2(src / name, dst / name)


@pytest.fixture
def published(registry, guest_image, monkeypatch):
    """Both arches' real guest images pushed as one index (arches without a local build are left out)."""
    publisher = Path(tempfile.mkdtemp(prefix="runner-guest-pub-"))
    try:
        shared = guest_image.manifest.parent.parent
        arches = []
        for arch in image.ARCHES:
            try:
                image.verify(shared / arch, arch)
            except Exception:
                continue
            link_tree(shared / arch, publisher / image.IMAGE_VERSION / arch)
            arches.append(arch)
        monkeypatch.setenv(image.CACHE_ENV, str(publisher))
        ref = f"{registry.host}/runner/guest:{image.IMAGE_VERSION}"
        digest = artifact_push.push(ref, arches)
        yield f"{ref}@{digest}", arches
    finally:
        shutil.rmtree(publisher, ignore_errors=True)


def test_an_empty_cache_pulls_verifies_and_boots_then_never_downloads_again(published, tmp_path, guest_image):
    ref, arches = published
    assert guest_image.arch in arches
    user = tmp_path / "cache"
    env = {image.CACHE_ENV: str(user), artifact.ENV: ref, "RUNNER_VM_STATE_DIR": str(tmp_path / "state"),
           "RUNNER_CONFIG": str(tmp_path / "config.json")}
    try:
        first = cli(["--vm", "run", "--rm", "localhost/busybox", "echo", "hello from a pulled guest"],
                    backend="vm", env=env, timeout=600)
        assert first.returncode == 0, first.stderr.decode()
        assert first.stdout.decode() == "hello from a pulled guest\n"
        said = first.stderr.decode()
        assert f"Pulling guest image {ref} for {guest_image.arch}" in said and "MB/s" in said, said
        assert sorted(p.name for p in (user / image.IMAGE_VERSION).iterdir()) == \
            [f".pull-{guest_image.arch}.lock", guest_image.arch]
        assert (user / image.IMAGE_VERSION / guest_image.arch / "rootfs.ext4").read_bytes()[:4096] == \
            guest_image.rootfs.read_bytes()[:4096]
        # A second start (machine stopped: a real start again) finds the verified cache: no pull.
        assert cli(["vm", "stop"], backend="vm", env=env, timeout=120).returncode == 0
        second = cli(["--vm", "run", "--rm", "localhost/busybox", "echo", "again"], backend="vm", env=env,
                     timeout=600)
        assert second.returncode == 0 and second.stdout == b"again\n", second.stderr.decode()
        assert "Pulling guest image" not in second.stderr.decode()
    finally:
        cli(["vm", "stop"], backend="vm", env=env, timeout=120)
        cli(["vm", "rm", "-f"], backend="vm", env=env, timeout=60)
