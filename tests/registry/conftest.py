"""Real registries on loopback for the registry tests (and, later, the VM contract suite).

Each fixture starts Debian's ``docker-registry`` (CNCF distribution) with a generated config on
127.0.0.1 and a free port, and stops exactly that process (by PID) and removes its storage at
teardown, even when the test failed:

* ``registry``        anonymous, no auth;
* ``basic_registry``  ``auth: htpasswd`` with a bcrypt entry made by ``htpasswd -Bbn``;
* ``token_registry``  ``auth: token``: the registry trusts a self-signed certificate whose key signs
  the JWTs issued by a small token server run by the fixture (``x5c`` header, RS256, ``access`` claim,
  as distribution's token verifier expects).

Tests using them are marked ``registry``; fixtures skip with a reason when the binaries are missing.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from regtest_servers import ISSUER, PASSWORD, SERVICE, USER, RegistryServer, TokenServer


@pytest.fixture
def tmp_root():
    path = Path(tempfile.mkdtemp(prefix="runner-reg-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def registry(tmp_root):
    """An anonymous registry."""
    server = RegistryServer(tmp_root / "anon")
    server.root.mkdir()
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture
def basic_registry(tmp_root):
    """A registry with htpasswd (basic) auth for USER/PASSWORD."""
    htpasswd = shutil.which("htpasswd")
    if htpasswd is None:
        pytest.skip("htpasswd is not installed (apt install apache2-utils)")
    root = tmp_root / "basic"
    root.mkdir()
    entry = subprocess.run([htpasswd, "-Bbn", USER, PASSWORD], capture_output=True, text=True, check=True)
    (root / "htpasswd").write_text(entry.stdout.strip() + "\n")
    server = RegistryServer(root, auth={"htpasswd": {"realm": "runner-test", "path": str(root / "htpasswd")}})
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture
def token_server(tmp_root):
    pytest.importorskip("cryptography")
    server = TokenServer(tmp_root)
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def token_registry(tmp_root, token_server):
    """A registry with ``auth: token`` trusting ``token_server``; ``.token_server`` is attached."""
    root = tmp_root / "token"
    root.mkdir()
    server = RegistryServer(root, auth={"token": {
        "realm": token_server.url, "service": SERVICE, "issuer": ISSUER,
        "rootcertbundle": str(token_server.cert_path)}})
    server.token_server = token_server
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture
def store(tmp_root):
    from runner.images.store import Store
    return Store(str(tmp_root / "store"))


@pytest.fixture
def other_store(tmp_root):
    from runner.images.store import Store
    return Store(str(tmp_root / "store2"))
