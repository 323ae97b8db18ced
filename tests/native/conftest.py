"""Native tests share one engine state root per session (the default image is built once)."""

import shutil

import pytest

from tests.helpers import cli


@pytest.fixture(scope="session")
def native_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("runner-root"))
    try:
        # One real run up front: it creates the state layout and builds the offline default image.
        warm = cli(["run", "--rm", "localhost/busybox", "true"], root=root)
        assert warm.returncode == 0, warm.stderr.decode()
        yield root
    finally:  # also after a failed warm-up, which may have made the bridge already
        # Whatever a failed test left running is killed, so no container outlives the suite.
        proc = cli(["ps", "-a", "-q", "--no-trunc"], root=root)
        for cid in proc.stdout.decode().split():
            cli(["rm", "-f", cid], root=root)
        cli(["network", "rm", "bridge"], root=root)  # the default network's bridge and NAT table
        shutil.rmtree(root, ignore_errors=True)
