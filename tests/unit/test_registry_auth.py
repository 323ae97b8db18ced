"""Challenge parsing, token fetch and cache, credentials file and helpers (no network)."""

import base64
import json
import os
import stat
import urllib.parse

import pytest

from runner.errors import RegistryError
from runner.images import auth, credentials
from runner.images.registry import (DOCKER_LIST, DOCKER_MANIFEST, DOCKER_V1, OCI_INDEX, OCI_MANIFEST,
                                    _origin, is_loopback, media_type_of)


def test_parse_bearer_with_quoted_commas():
    [c] = auth.parse_challenges('Bearer realm="https://auth.test/token",service="reg.test",'
                                'scope="repository:a/b:pull,push"')
    assert c.scheme == "bearer"
    assert c.params == {"realm": "https://auth.test/token", "service": "reg.test",
                        "scope": "repository:a/b:pull,push"}


def test_parse_several_challenges_escapes_and_tokens():
    cs = auth.parse_challenges('Basic realm="say \\"hi\\", ok", Bearer realm=https://t/x , error=insufficient_scope')
    assert [c.scheme for c in cs] == ["basic", "bearer"]
    assert cs[0].realm == 'say "hi", ok'
    assert cs[1].params == {"realm": "https://t/x", "error": "insufficient_scope"}


def test_remember_prefers_bearer():
    a = auth.Authenticator("r.test", None, None)
    a.remember('Basic realm="x", Bearer realm="https://t/token"')
    assert a.challenge.scheme == "bearer"


class FakeTokenServer:
    def __init__(self, replies):
        self.replies = list(replies)
        self.calls = []

    def __call__(self, method, url, headers, body):
        self.calls.append((method, url, dict(headers), body))
        status, payload = self.replies.pop(0) if len(self.replies) > 1 else self.replies[0]
        return status, json.dumps(payload).encode()


@pytest.fixture(autouse=True)
def clear_token_cache():
    auth._TOKENS.clear()
    yield
    auth._TOKENS.clear()


def bearer(creds, fetch):
    a = auth.Authenticator("r.test", creds, fetch)
    a.remember('Bearer realm="https://t.test/token?x=1",service="svc"')
    return a


def test_token_anonymous_and_cached():
    fetch = FakeTokenServer([(200, {"token": "T1", "expires_in": 300})])
    a = bearer(None, fetch)
    assert a.header(("repository:a:pull",)) == "Bearer T1"
    assert a.header(("repository:a:pull",)) == "Bearer T1"
    assert len(fetch.calls) == 1
    method, url, headers, _ = fetch.calls[0]
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)
    assert method == "GET" and query == {"x": ["1"], "service": ["svc"], "scope": ["repository:a:pull"]}
    assert "Authorization" not in headers
    # Another scope is another token.
    a.header(("repository:b:pull",))
    assert len(fetch.calls) == 2


def test_token_with_credentials_uses_basic_and_access_token():
    fetch = FakeTokenServer([(200, {"access_token": "A1"})])
    a = bearer({"username": "u", "password": "p:w"}, fetch)
    assert a.header(("repository:a:pull",)) == "Bearer A1"
    assert fetch.calls[0][2]["Authorization"] == "Basic " + base64.b64encode(b"u:p:w").decode()


def test_token_expiry_from_issued_at(monkeypatch):
    fetch = FakeTokenServer([(200, {"token": "OLD", "expires_in": 60,
                                    "issued_at": "2000-01-01T00:00:00.123456789Z"}),
                             (200, {"token": "NEW", "expires_in": 60})])
    a = bearer(None, fetch)
    assert a.header(("s",)) == "Bearer OLD"
    # Issued long ago: already expired, so the next request fetches again.
    assert a.header(("s",)) == "Bearer NEW"
    assert a.header(("s",)) == "Bearer NEW"
    assert len(fetch.calls) == 2


def test_token_expires_in_short_lifetime(monkeypatch):
    fetch = FakeTokenServer([(200, {"token": "T", "expires_in": 5})])
    a = bearer(None, fetch)
    a.header(("s",))
    a.header(("s",))  # 5 s lifetime is inside the renewal margin: refetched
    assert len(fetch.calls) == 2
    fetch2 = FakeTokenServer([(200, {"token": "T"})])  # no expires_in: 60 s by the spec
    a2 = bearer({"username": "x", "password": "y"}, fetch2)
    a2.header(("s",))
    a2.header(("s",))
    assert len(fetch2.calls) == 1


def test_refresh_forces_new_token():
    fetch = FakeTokenServer([(200, {"token": "T", "expires_in": 300})])
    a = bearer(None, fetch)
    a.header(("s",))
    a.header(("s",), refresh=True)
    assert len(fetch.calls) == 2


def test_identity_token_uses_oauth_refresh_grant():
    fetch = FakeTokenServer([(200, {"access_token": "A"})])
    a = bearer({"identitytoken": "IDT"}, fetch)
    assert a.header(("repository:a:pull",)) == "Bearer A"
    method, url, headers, body = fetch.calls[0]
    form = urllib.parse.parse_qs(body.decode())
    assert method == "POST" and form["grant_type"] == ["refresh_token"] and form["refresh_token"] == ["IDT"]


def test_wrong_password_message_and_no_secret():
    fetch = FakeTokenServer([(401, {"details": "bad"})])
    a = bearer({"username": "u", "password": "hunter2"}, fetch)
    with pytest.raises(RegistryError) as err:
        a.header(("s",))
    assert str(err.value) == "unauthorized: authentication required for r.test"
    assert err.value.hint == "runner login r.test"
    assert "hunter2" not in repr(a) + str(err.value) + str(err.value.to_dict())


def test_basic_challenge_needs_credentials():
    a = auth.Authenticator("r.test", None, None)
    a.remember('Basic realm="r"')
    with pytest.raises(RegistryError, match="unauthorized"):
        a.header(())
    b = auth.Authenticator("r.test", {"username": "u", "password": "p"}, None)
    b.remember('Basic realm="r"')
    assert b.header(()) == "Basic dTpw"


def test_token_server_without_token_is_an_error():
    a = bearer(None, FakeTokenServer([(200, {"nothing": 1})]))
    with pytest.raises(RegistryError, match="sent no token"):
        a.header(("s",))


@pytest.mark.parametrize("content_type,body,expected", [
    ("application/json", {"mediaType": DOCKER_MANIFEST, "config": {}, "layers": []}, DOCKER_MANIFEST),
    (OCI_MANIFEST, {"schemaVersion": 2, "config": {}, "layers": []}, OCI_MANIFEST),  # skopeo: no mediaType
    (OCI_INDEX, {"schemaVersion": 2, "manifests": []}, OCI_INDEX),
    ("application/json", {"schemaVersion": 2, "manifests": []}, OCI_INDEX),
    ("application/json", {"schemaVersion": 2, "config": {}, "layers": []}, OCI_MANIFEST),
    ("text/plain", {"schemaVersion": 1, "fsLayers": []}, DOCKER_V1),
    (OCI_INDEX, {"mediaType": DOCKER_LIST, "manifests": []}, DOCKER_LIST),  # the signed body wins
])
def test_media_type_dispatch(content_type, body, expected):
    assert media_type_of(json.dumps(body).encode(), content_type + "; charset=utf-8") == expected


def test_origin_and_loopback():
    assert _origin("https://a.test/x") == _origin("https://A.test:443/y")
    assert _origin("http://127.0.0.1:5000/a") != _origin("http://127.0.0.1:5001/a")
    assert _origin("http://a.test/") != _origin("https://a.test/")
    assert all(map(is_loopback, ["localhost", "127.0.0.1", "127.1.2.3", "::1", "[::1]"]))
    assert not any(map(is_loopback, ["10.0.0.1", "example.invalid", "localhost.evil.test"]))


# -- credentials file ---------------------------------------------------------------------------

@pytest.fixture
def docker_config(tmp_path, monkeypatch):
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "cfg"))
    return tmp_path / "cfg" / "config.json"


def test_store_get_erase_roundtrip(docker_config):
    credentials.store("127.0.0.1:5000", "alice", "pa:ss")
    assert stat.S_IMODE(os.stat(docker_config).st_mode) == 0o600
    data = json.loads(docker_config.read_text())
    assert base64.b64decode(data["auths"]["127.0.0.1:5000"]["auth"]) == b"alice:pa:ss"
    assert credentials.get("127.0.0.1:5000") == {"username": "alice", "password": "pa:ss"}
    assert credentials.credentials_for("127.0.0.1:5000", "other.test") == {
        "127.0.0.1:5000": {"username": "alice", "password": "pa:ss"}}
    assert credentials.erase("127.0.0.1:5000") is True
    assert credentials.get("127.0.0.1:5000") is None
    assert credentials.erase("127.0.0.1:5000") is False


def test_existing_keys_and_other_settings_preserved(docker_config):
    docker_config.parent.mkdir()
    docker_config.write_text(json.dumps({
        "auths": {"https://reg.test:5000/v1/": {"auth": base64.b64encode(b"bob:pw").decode()},
                  "tok.test": {"identitytoken": "IDT"}},
        "psFormat": "table {{.ID}}"}))
    assert credentials.get("reg.test:5000") == {"username": "bob", "password": "pw"}
    assert credentials.get("tok.test") == {"identitytoken": "IDT"}
    credentials.store("reg.test:5000", "bob", "new")
    data = json.loads(docker_config.read_text())
    assert data["psFormat"] == "table {{.ID}}"
    assert list(data["auths"]) == ["https://reg.test:5000/v1/", "tok.test"]  # the existing key is reused


def test_credential_helper(docker_config, tmp_path, monkeypatch):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    state = tmp_path / "helper-state.json"
    helper = bindir / "docker-credential-fake"
    helper.write_text(f"""#!/usr/bin/env python3
import json, sys
path = {str(state)!r}
try:
    db = json.load(open(path))
except FileNotFoundError:
    db = {{}}
action, data = sys.argv[1], sys.stdin.read()
if action == "store":
    item = json.loads(data); db[item["ServerURL"]] = item
elif action == "get":
    if data.strip() not in db:
        print("credentials not found in native keychain"); sys.exit(1)
    print(json.dumps(db[data.strip()]))
elif action == "erase":
    db.pop(data.strip(), None)
json.dump(db, open(path, "w"))
""")
    helper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    docker_config.parent.mkdir()
    docker_config.write_text(json.dumps({"credsStore": "fake"}))
    assert credentials.get("reg.test") is None
    credentials.store("reg.test", "carol", "pw")
    assert json.loads(docker_config.read_text())["auths"] == {"reg.test": {}}  # no secret in the file
    assert credentials.get("reg.test") == {"username": "carol", "password": "pw"}
    assert credentials.erase("reg.test") is True
    assert json.loads(state.read_text()) == {}


def test_missing_helper_is_a_clear_error(docker_config):
    docker_config.parent.mkdir()
    docker_config.write_text(json.dumps({"credHelpers": {"reg.test": "absent-xyz"}}))
    with pytest.raises(RegistryError, match="docker-credential-absent-xyz is not installed"):
        credentials.get("reg.test")
    assert credentials.get("other.test") is None
