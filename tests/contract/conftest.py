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

from tests.helpers import cli

# The registry fixtures of tests/registry (a real docker-registry on 127.0.0.1), reused as they are.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "registry"))
from tests.registry.conftest import registry, tmp_root  # noqa: E402,F401


class Driver:
    def __init__(self, backend: str, root: str | None, env: dict | None = None):
        self.backend = backend
        self.root = root
        self.env = env or {}

    def __call__(self, *args: str, input: bytes | None = None, timeout: float = 180):
        return cli(list(args), root=self.root, backend=self.backend, input=input, timeout=timeout, env=self.env)

    def cleanup(self) -> None:
        proc = self("ps", "-a", "-q", "--no-trunc")
        for cid in proc.stdout.decode().split():
            self("rm", "-f", cid)
        self("network", "rm", "bridge")  # the default network's bridge and NAT table


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


@pytest.fixture(params=[pytest.param("native", marks=pytest.mark.root),
                        pytest.param("vm", marks=pytest.mark.vm)])
def rn(request):
    return request.getfixturevalue(f"{request.param}_driver")
