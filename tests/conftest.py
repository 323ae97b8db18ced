"""Markers make a skipped test say why: root tests need root on Linux, VM tests need QEMU."""

import os
import shutil
import sys

import pytest


def pytest_collection_modifyitems(config, items):
    not_root = os.name != "posix" or os.geteuid() != 0 or not sys.platform.startswith("linux")
    for item in items:
        if "root" in item.keywords and not_root:
            item.add_marker(pytest.mark.skip(reason="needs root on Linux (run the suite with sudo)"))
        if "vm" in item.keywords and not shutil.which("qemu-system-x86_64"):
            item.add_marker(pytest.mark.skip(reason="needs qemu-system-x86_64 (scripts/setup installs it)"))


@pytest.fixture(scope="session")
def guest_image():
    """The host arch's guest image artifacts, built now if missing (CI starts with an empty cache).

    Only a missing QEMU may skip (the ``vm`` marker does that above); on Linux a build that fails FAILS the
    test, because skipping would hide a broken image build. Elsewhere (macOS/Windows cannot build) a missing
    image skips with the reason.
    """
    import platform

    from runner.errors import PlatformError, VMError
    from runner.vm import image
    from runner.vm.accel import host_arch

    arch = host_arch()
    try:
        return image.ensure(arch, build_if_missing=platform.system() == "Linux")
    except (PlatformError, VMError) as exc:
        if platform.system() == "Linux":
            pytest.fail(f"cannot build the {arch} guest image: {exc}", pytrace=False)
        pytest.skip(f"no {arch} guest image on this host: {exc}")


@pytest.fixture(scope="session")
def aarch64_image():
    """The aarch64 guest image (what Apple silicon hosts run), built now if missing, as ``guest_image``."""
    import platform

    from runner.errors import PlatformError, VMError
    from runner.vm import image

    try:
        return image.ensure("aarch64", build_if_missing=platform.system() == "Linux")
    except (PlatformError, VMError) as exc:
        if platform.system() == "Linux":
            pytest.fail(f"cannot build the aarch64 guest image: {exc}", pytrace=False)
        pytest.skip(f"no aarch64 guest image on this host: {exc}")


@pytest.fixture(scope="session")
def aarch64_machine(aarch64_image):
    """One aarch64 machine (``vm start --arch aarch64``) in a private state dir for the session, as a CLI
    driver; stopped and removed at the end, even when tests fail."""
    import tempfile

    from tests.helpers import Driver, cli

    if not shutil.which("qemu-system-aarch64"):
        pytest.fail("qemu-system-aarch64 is missing (scripts/setup installs qemu-system-arm)", pytrace=False)
    state = tempfile.mkdtemp(prefix="runner-vm-aarch64-")
    env = {"RUNNER_VM_STATE_DIR": state}
    d = Driver("vm", None, env, name="vm-aarch64")
    try:
        started = cli(["vm", "start", "--arch", "aarch64"], backend="vm", env=env, timeout=600)
        assert started.returncode == 0, started.stderr.decode()
        yield d
    finally:
        d.cleanup()
        cli(["vm", "stop"], backend="vm", env=env, timeout=120)
        cli(["vm", "rm", "-f"], backend="vm", env=env, timeout=60)
        shutil.rmtree(state, ignore_errors=True)
