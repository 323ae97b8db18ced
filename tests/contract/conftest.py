"""The contract suite: the same user-level scenarios against every backend, same assertions.

``rn`` is a tiny driver for the real CLI bound to one backend. The native backend runs with a private state
root; the VM backend boots one real guest (TCG here) for the whole session in a private state directory and
stops it at the end, even when tests fail.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile

import pytest

from tests.helpers import Driver, cli

# The registry fixtures of tests/registry (a real docker-registry on 127.0.0.1), reused as they are.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "registry"))
from tests.registry.conftest import registry, tmp_root  # noqa: E402,F401


@pytest.fixture(scope="session")
def native_driver():
    root = tempfile.mkdtemp(prefix="runner-contract-")
    d = Driver("native", root)
    yield d
    d.cleanup()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def vm_driver(guest_image):
    state = tempfile.mkdtemp(prefix="runner-vm-contract-")
    env = {"RUNNER_VM_STATE_DIR": state}
    d = Driver("vm", None, env)
    try:
        yield d
    finally:
        d.cleanup()
        cli(["vm", "stop"], backend="vm", env=env, timeout=120)
        cli(["vm", "rm", "-f"], backend="vm", env=env, timeout=60)
        shutil.rmtree(state, ignore_errors=True)


@pytest.fixture(scope="session")
def vm_aarch64_driver(aarch64_machine):
    """The aarch64 machine (tests/conftest.py) for the scenarios marked ``aarch64``."""
    return aarch64_machine


def pytest_generate_tests(metafunc):
    """Every scenario runs natively and on the host-arch VM; those marked ``aarch64`` also on an aarch64
    machine (under TCG on x86_64 hosts, so a subset: see the marker's note in pyproject.toml)."""
    if "rn" not in metafunc.fixturenames:
        return
    params = [pytest.param("native", marks=pytest.mark.root), pytest.param("vm", marks=pytest.mark.vm)]
    if metafunc.definition.get_closest_marker("aarch64"):
        params.append(pytest.param("vm_aarch64", marks=pytest.mark.vm, id="vm-aarch64"))
    metafunc.parametrize("rn", params, indirect=True)


@pytest.fixture
def rn(request):
    return request.getfixturevalue(f"{request.param}_driver")
