"""Pure parts of the image, event and inspection routes: time values, event filters, progress messages,
reference filters, X-Registry-Auth decoding, image history rows and diff classification."""

import base64
import json
import os
import types

import pytest

from runner.api import images
from runner.api.timefilter import parse_time
from runner.engine import events, observe, views
from runner.errors import UsageError


def test_docker_time_values():
    assert parse_time("1700000000") == 1700000000.0
    assert parse_time("1700000000", end_of_second=True) == 1700000001.0  # dockerd's reading of until
    assert parse_time("1700000000.5") == 1700000000.5
    assert parse_time("10m", now=1000.0) == 400.0
    assert parse_time("1h30m", now=10000.0) == 10000.0 - 5400
    assert parse_time("2023-11-14T22:13:20Z") == 1700000000.0
    with pytest.raises(UsageError):
        parse_time("yesterday")


def _event(kind="container", action="start", actor="abc123", **attrs):
    return {"Type": kind, "Action": action, "Actor": {"ID": actor, "Attributes": attrs}, "timeNano": 1}


def test_event_filters_and_across_keys_or_within():
    e = _event(name="web", image="busybox", tier="front")
    assert events.matches(e, {})
    assert events.matches(e, {"type": ["container"], "event": ["die", "start"]})
    assert not events.matches(e, {"type": ["image"]})
    assert events.matches(e, {"container": ["web"]}) and events.matches(e, {"container": ["abc"]})
    assert events.matches(e, {"label": ["tier=front"]}) and not events.matches(e, {"label": ["tier=back"]})
    assert events.matches(_event(action="exec_start: ls -l"), {"event": ["exec_start"]})
    assert events.matches(e, {"image": ["busybox"]}) and not events.matches(e, {"image": ["alpine"]})


def test_event_journal_round_trip_rotation_and_torn_lines(tmp_path, monkeypatch):
    root = str(tmp_path)
    events.record(root, "container", "create", "c1", {"name": "a", "image": "busybox"})
    with open(events.path_of(root), "ab") as f:
        f.write(b'{"Type": "contai')  # a writer that crashed mid-line
        f.write(b"\n")
    events.record(root, "network", "create", "n1", {"name": "net"})
    found = events.read(root)
    assert [e["Action"] for e in found] == ["create", "create"]
    assert found[0]["status"] == "create" and found[0]["from"] == "busybox" and "status" not in found[1]
    assert events.read(root, after=found[0]["timeNano"]) == found[1:]
    monkeypatch.setattr(events, "MAX_BYTES", 200)
    for i in range(5):
        events.record(root, "image", "tag", f"i{i}", {"name": f"x:{i}"})
    kept = [p for p in (events.path_of(root), events.path_of(root) + ".1") if os.path.exists(p)]
    assert kept and sum(os.path.getsize(p) for p in kept) <= 2 * 400  # two files at most, each bounded
    assert [e["Actor"]["ID"] for e in events.read(root)][-1] == "i4"


def test_progress_messages_in_docker_shape():
    assert images.progress_event({"id": "abc", "status": "Downloading", "current": 5, "total": 10}) == \
        {"status": "Downloading", "progressDetail": {"current": 5, "total": 10}, "id": "abc"}
    assert images.progress_event({"id": "abc", "status": "Pull complete"}) == \
        {"status": "Pull complete", "progressDetail": {}, "id": "abc"}
    assert images.progress_event({"status": "Image is up to date for x"}) == \
        {"status": "Status: Image is up to date for x"}


def test_reference_filter_globs_names_and_tags():
    summary = {"RepoTags": ["localhost/busybox:latest", "apitest/x:v1"],
               "RepoDigests": ["localhost/busybox@sha256:1", "apitest/x@sha256:1"]}
    assert images._only_matching(summary, ["apitest/*"]) == {"RepoTags": ["apitest/x:v1"],
                                                             "RepoDigests": ["apitest/x@sha256:1"]}
    assert images._matching_tags(summary, ["*:latest"]) == ["localhost/busybox:latest"]
    assert images._matching_tags(summary, ["busybox"]) == []


def test_registry_auth_header():
    def req(value):
        return types.SimpleNamespace(headers={"X-Registry-Auth": value} if value is not None else {})

    def enc(obj):
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")

    assert images.registry_auth(req(None), "busybox") is None
    assert images.registry_auth(req(enc({})), "busybox") is None
    got = images.registry_auth(req(enc({"username": "u", "password": "p", "serveraddress": "x"})),
                               "127.0.0.1:5000/a/b:1")
    assert got == {"127.0.0.1:5000": {"username": "u", "password": "p"}}
    with pytest.raises(UsageError):
        images.registry_auth(req("%%%"), "busybox")


def test_history_rows_newest_first_with_layer_sizes():
    layer = types.SimpleNamespace(size=100)
    img = types.SimpleNamespace(id="sha256:abc", repo_tags=["x:1"], created="2024-01-01T00:00:00Z",
                                layers=[layer, types.SimpleNamespace(size=7)],
                                config={"history": [{"created": "2024-01-01T00:00:00Z", "created_by": "ADD a"},
                                                    {"created": "2024-01-01T00:00:00Z", "created_by": "ENV x",
                                                     "empty_layer": True},
                                                    {"created": "2024-01-01T00:00:00Z", "created_by": "RUN b"}]})
    rows = views.image_history(img)
    assert [(r["Id"], r["CreatedBy"], r["Size"]) for r in rows] == [
        ("sha256:abc", "RUN b", 7), ("<missing>", "ENV x", 0), ("<missing>", "ADD a", 100)]
    assert rows[0]["Tags"] == ["x:1"] and rows[1]["Tags"] is None


def test_diff_kinds_and_hidden_mount_points(tmp_path):
    upper, lower = tmp_path / "upper", tmp_path / "lower"
    (lower / "etc").mkdir(parents=True)
    (lower / "etc" / "passwd").write_text("root\n")
    (lower / "bin").mkdir()
    (upper / "etc").mkdir(parents=True)
    (upper / "etc" / "hosts").write_text("")  # runner's bind-mount target: not a change
    (upper / "new").mkdir()
    (upper / "new" / "f").write_text("x")
    found = observe.classify(observe.changes(str(upper)), [str(lower)])
    assert found == [{"Path": "/new", "Kind": 1}, {"Path": "/new/f", "Kind": 1}]
    (upper / "etc" / "passwd").write_text("root\nx\n")
    found = observe.classify(observe.changes(str(upper)), [str(lower)])
    assert {"Path": "/etc", "Kind": 0} in found and {"Path": "/etc/passwd", "Kind": 0} in found
