"""An aarch64 machine end to end (issue 18): what Apple silicon hosts run, here under TCG.

One machine for the session (tests/conftest.py ``aarch64_machine``, ``vm start --arch aarch64``); the contract
scenarios marked ``aarch64`` run on it too. Here: the architecture as the machine and its containers report
it, an amd64 image through the guest's qemu-user-static emulator (``--platform linux/amd64``), a multi-arch
pull choosing linux/arm64, and the machine surviving ``vm stop``/``vm start`` with its images (last: it
restarts the machine)."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

import pytest

from tests.helpers import cli, ok
from tests.platform_images import build_busybox, busybox_archive, layout_entry

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "registry"))
from tests.registry.conftest import registry, tmp_root  # noqa: E402,F401

pytestmark = pytest.mark.vm
AMD64_IMAGE = "localhost/busybox-amd64"


def text(proc) -> str:
    return proc.stdout.decode()


@pytest.fixture(scope="module")
def amd64_image(aarch64_machine, tmp_path_factory):
    tar = busybox_archive("amd64", AMD64_IMAGE, str(tmp_path_factory.mktemp("amd64") / "image.tar"))
    ok(aarch64_machine("load", "-i", tar))
    return AMD64_IMAGE


def test_the_machine_and_its_containers_are_aarch64(aarch64_machine):
    rn = aarch64_machine
    assert ok(rn("run", "--rm", "--network", "none", "localhost/busybox", "uname", "-m")) == "aarch64\n"
    status = json.loads(ok(rn("vm", "status", "--json")))
    assert (status["guest_arch"], status["state"]) == ("aarch64", "running")
    info = json.loads(ok(rn("info", "--format", "json")))
    assert (info["machine"]["guest_arch"], info["arch"]) == ("aarch64", "aarch64")
    image = json.loads(ok(rn("inspect", "localhost/busybox")))[0]
    assert image["Architecture"] == "arm64"  # the guest's default image, from arm64 busybox-static
    p = rn("run", "--rm", "--network", "none", "localhost/busybox", "sh", "-c",
           "grep Seccomp: /proc/self/status; unshare -U true")
    assert "Seccomp:\t2" in text(p) and p.returncode != 0 and "Operation not permitted" in p.stderr.decode()


def test_another_arch_of_an_existing_machine_is_refused(aarch64_machine):
    p = aarch64_machine("vm", "start", "--arch", "x86_64")
    assert p.returncode == 125
    lines = p.stderr.decode().splitlines()
    assert lines[0] == "Error: machine 'default' is an aarch64 machine, not x86_64", lines
    assert "runner vm start --name x86_64 --arch x86_64" in lines[1]


def test_amd64_image_runs_with_platform_and_reports_x86_64(aarch64_machine, amd64_image):
    rn = aarch64_machine
    out = ok(rn("run", "--rm", "--network", "none", "--platform", "linux/amd64", amd64_image, "sh", "-c",
                "uname -m; grep Seccomp: /proc/self/status"))
    assert out.split() == ["x86_64", "Seccomp:", "2"]
    p = rn("run", "--rm", "--pull", "never", "--platform", "linux/arm64", amd64_image, "true")
    assert p.returncode == 125 and "not the requested platform linux/arm64/v8" in p.stderr.decode()


def test_an_architecture_without_emulator_is_one_clear_error(aarch64_machine, tmp_path):
    """The guest registers one emulator (amd64): a riscv64 image is refused before anything is created."""
    rn = aarch64_machine
    name = "localhost/claims-riscv64"
    ok(rn("load", "-i", busybox_archive("amd64", name, str(tmp_path / "image.tar"), label="riscv64")))
    try:
        p = rn("run", "--name", "riscv", name, "true")
        assert p.returncode == 125
        lines = p.stderr.decode().splitlines()
        assert lines[0] == (f"Error: image {name} is linux/riscv64 and this machine (linux/arm64/v8) cannot run it: "
                            "no emulator for riscv64 is registered (binfmt_misc)"), lines
        assert "qemu-user-static" in lines[1]
        assert "riscv" not in ok(rn("ps", "-a"))
    finally:
        rn("rmi", name)


@pytest.mark.registry
def test_multi_arch_pull_chooses_arm64_and_platform_chooses_amd64(aarch64_machine, registry):
    from regtest_images import oci_layout, skopeo_copy

    from runner.images.store import Store

    rn = aarch64_machine
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(os.path.join(tmp, "store"))
        images = [layout_entry(store, build_busybox(store, arch, None, tmp), arch) for arch in ("amd64", "arm64")]
        layout = oci_layout(store, Path(tmp) / "layout", images)
        skopeo_copy(f"oci:{layout}:latest", f"docker://{registry.host}/multi/busybox:1", "--all")
    ref = f"{registry.host}/multi/busybox:1"
    try:
        ok(rn("pull", ref))
        assert json.loads(ok(rn("inspect", ref)))[0]["Architecture"] == "arm64"
        assert ok(rn("run", "--rm", "--network", "none", ref, "uname", "-m")) == "aarch64\n"
        # --platform with --pull missing: the local arm64 image is not it, so the amd64 one is pulled
        assert ok(rn("run", "--rm", "--network", "none", "--platform", "linux/amd64", ref, "uname", "-m")) == "x86_64\n"
        assert json.loads(ok(rn("inspect", ref)))[0]["Architecture"] == "amd64"
    finally:
        rn("rmi", ref)


def test_machine_survives_stop_and_start_with_its_images(aarch64_machine, amd64_image):
    rn = aarch64_machine
    assert ok(rn("vm", "stop")) == "machine 'default' stopped\n"
    started = ok(rn("vm", "start"))  # no --arch: the machine's own
    assert started.startswith("machine 'default' is running (aarch64, "), started
    status = json.loads(ok(rn("vm", "status", "--json")))
    assert (status["guest_arch"], status["boot"]) == ("aarch64", "resume")  # the snapshot fast start
    assert AMD64_IMAGE in ok(rn("images"))
    out = ok(rn("run", "--rm", "--network", "none", "--platform", "linux/amd64", amd64_image, "uname", "-m"))
    assert out == "x86_64\n"
    assert ok(rn("run", "--rm", "--network", "none", "localhost/busybox", "uname", "-m")) == "aarch64\n"
