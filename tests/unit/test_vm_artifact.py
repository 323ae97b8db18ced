"""The guest artifact's format and checks (runner.vm.artifact), the gzip layer bounds (artifact_pull._gunzip),
the reference's sources, and the speed on the progress line. Pure: no registry (tests/registry has those)."""

from __future__ import annotations

import io
import json
import zlib

import pytest

from runner.cli.progress import render_line
from runner.errors import ImageError, VMError
from runner.vm import artifact, artifact_pull, artifact_push

D = "sha256:" + "a" * 64
GUEST = {"image_version": artifact.IMAGE_VERSION, "arch": "x86_64", "kernel_version": "6.1.0-9-amd64",
         "recipe": "cd" * 32, "artifacts": {"kernel": {"file": "kernel", "size": 10, "sha256": "0" * 64},
                                           "initrd": {"file": "initrd.img", "size": 5, "sha256": "1" * 64}}}


def manifest(guest=GUEST) -> dict:
    layers = {role: artifact.descriptor(artifact.LAYER_TYPES[role], D, 3) for role in ("kernel", "initrd")}
    return json.loads(artifact.build_manifest(guest, artifact.descriptor(artifact.CONFIG_TYPE, D, 9), layers))


def test_manifest_and_index_carry_runner_types_platforms_and_annotations():
    body = manifest()
    assert body["mediaType"] == artifact.OCI_MANIFEST and body["artifactType"] == "application/vnd.runner.guest.v1"
    assert body["annotations"][artifact.ANN_KERNEL] == "6.1.0-9-amd64"
    assert body["annotations"][artifact.ANN_RECIPE] == "cd" * 32
    assert body["annotations"]["org.opencontainers.image.version"] == artifact.IMAGE_VERSION
    index = json.loads(artifact.build_index([("x86_64", D, 100, GUEST), ("aarch64", D, 101, GUEST)]))
    assert [m["platform"] for m in index["manifests"]] == [{"os": "linux", "architecture": "amd64"},
                                                         {"os": "linux", "architecture": "arm64"}]
    assert artifact.choose(index, "aarch64", "r")["size"] == 101
    assert artifact.check_manifest(body, "r")[1].keys() == {"kernel", "initrd"}


def test_foreign_artifacts_other_versions_and_missing_arches_are_refused():
    index = json.loads(artifact.build_index([("x86_64", D, 100, GUEST)]))
    with pytest.raises(VMError, match="no guest image for linux/arm64"):
        artifact.choose(index, "aarch64", "r")
    with pytest.raises(VMError, match="not a runner guest image"):
        artifact.choose({**index, "artifactType": None}, "x86_64", "r")
    old = {**index, "annotations": {artifact.ANN_IMAGE_VERSION: "0", artifact.ANN_RUNNER: "0.0.1"}}
    with pytest.raises(VMError, match="guest image version 0 \\(made by runner 0.0.1\\)"):
        artifact.choose(old, "x86_64", "r")
    body = manifest()
    body["layers"][0]["mediaType"] = "application/vnd.oci.image.layer.v1.tar+gzip"
    with pytest.raises(VMError, match="unknown guest layer type"):
        artifact.check_manifest(body, "r")
    body = manifest()
    body["layers"][1]["digest"] = "sha256:../../x"
    with pytest.raises(ImageError, match="invalid digest"):
        artifact.check_manifest(body, "r")


@pytest.mark.parametrize("name", ["../kernel", "/etc/passwd", "a/b", "", ".."])
def test_a_guest_manifest_cannot_name_a_path_outside_the_cache(name):
    guest = json.loads(json.dumps(GUEST))
    guest["artifacts"]["kernel"]["file"] = name
    _, layers = artifact.check_manifest(manifest(), "r")
    with pytest.raises(VMError, match="no valid file for its kernel layer"):
        artifact.check_config(guest, "x86_64", layers, "r")
    for bad in ({"size": "10"}, {"size": -1}, {"sha256": "xyz"}):
        broken = json.loads(json.dumps(GUEST))
        broken["artifacts"]["kernel"].update(bad)
        with pytest.raises(VMError, match="no valid size and sha256 for its kernel"):
            artifact.check_config(broken, "x86_64", layers, "r")
    with pytest.raises(VMError, match="holds a guest for 'x86_64'"):
        artifact.check_config(GUEST, "aarch64", layers, "r")


def test_gunzip_refuses_more_than_declared_and_broken_data(tmp_path):
    data = bytes(5 << 20)
    src = tmp_path / "f"
    src.write_bytes(data)
    artifact_push.gzip_file(src, tmp_path / "f.gz")
    packed = (tmp_path / "f.gz").read_bytes()
    assert packed[4:8] == b"\0\0\0\0"  # gzip mtime 0: reproducible digests
    out = io.BytesIO()
    artifact_pull._gunzip(io.BytesIO(packed), out, len(data), "x")
    assert out.getvalue() == data
    with pytest.raises(VMError, match="unpacks to more than the 1000 bytes"):
        artifact_pull._gunzip(io.BytesIO(packed), io.BytesIO(), 1000, "x")
    with pytest.raises(VMError, match="truncated"):
        artifact_pull._gunzip(io.BytesIO(packed[: len(packed) // 2]), io.BytesIO(), len(data), "x")
    with pytest.raises(VMError, match="not valid gzip"):
        artifact_pull._gunzip(io.BytesIO(b"not gzip at all"), io.BytesIO(), 100, "x")
    assert zlib.decompress(packed, 31) == data


def test_the_reference_comes_from_env_then_config_then_the_release(tmp_path, monkeypatch):
    config = tmp_path / "config.json"
    monkeypatch.setenv("RUNNER_CONFIG", str(config))
    monkeypatch.setattr("runner.vm.release.GUEST_IMAGE", "")
    assert artifact.configured_ref({}) is None
    monkeypatch.setattr("runner.vm.release.GUEST_IMAGE", "reg.example/guest:1@" + D)
    assert artifact.configured_ref({}) == ("reg.example/guest:1@" + D, "this runner release")
    config.write_text(json.dumps({"vm": {"image": "cfg/guest:1"}}))
    assert artifact.configured_ref({}) == ("cfg/guest:1", "vm.image in the config file")
    config.write_text(json.dumps({"vm.image": "flat/guest:1"}))
    assert artifact.configured_ref({})[0] == "flat/guest:1"
    assert artifact.configured_ref({"RUNNER_GUEST_IMAGE": "env/guest:1"})[0] == "env/guest:1"
    config.write_text(json.dumps({"vm": {"image": 3}}))
    with pytest.raises(Exception, match="must be a string"):
        artifact.configured_ref({})


def test_the_progress_line_shows_sizes_and_speed():
    line = render_line({"id": "abc", "status": "Downloading", "current": 12_300_000, "total": 45_600_000,
                        "speed": 8_100_000})
    assert line.endswith("12.3MB/45.6MB 8.1MB/s")


def test_a_first_start_reports_a_slow_download_every_few_seconds():
    said, now = [], [0.0]
    sink = artifact_pull.status_lines(said.append, interval=3, clock=lambda: now[0])
    sink({"status": "Pulling guest image r for x86_64: 55.9MB"})
    for second in range(7):
        now[0] = float(second)
        sink({"id": "a", "status": "Downloading", "current": second * 2_000_000, "total": 40_000_000})
        sink({"id": "b", "status": "Downloading", "current": second * 1_000_000, "total": 15_900_000})
    sink({"id": "a", "status": "Download complete"})
    assert said == ["Pulling guest image r for x86_64: 55.9MB",
                    "guest image: 8.0MB of 55.9MB, 2.7MB/s", "guest image: 17.0MB of 55.9MB, 2.8MB/s"]
