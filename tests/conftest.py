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
