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
