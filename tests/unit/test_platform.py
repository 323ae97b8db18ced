"""Platform names and index selection (pure; no registry)."""

import pytest

from runner.errors import NotFound, UsageError
from runner.images import platform as p
from runner.images.registry import DOCKER_LIST, DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST


def entry(arch, os_name="linux", variant=None, media=OCI_MANIFEST, digest="d"):
    plat = {"os": os_name, "architecture": arch}
    if variant:
        plat["variant"] = variant
    return {"mediaType": media, "digest": f"sha256:{digest * 64}"[:71], "size": 1, "platform": plat}


@pytest.mark.parametrize("machine,expected", [
    ("x86_64", "linux/amd64"), ("AMD64", "linux/amd64"), ("aarch64", "linux/arm64/v8"),
    ("arm64", "linux/arm64/v8"), ("armv7l", "linux/arm/v7"), ("armv6l", "linux/arm/v6"),
])
def test_host_platform(monkeypatch, machine, expected):
    monkeypatch.setattr(p._platform, "machine", lambda: machine)
    assert str(p.host_platform()) == expected


@pytest.mark.parametrize("text,expected", [
    ("linux/amd64", "linux/amd64"), ("linux/arm64", "linux/arm64/v8"), ("linux/arm64/v8", "linux/arm64/v8"),
    ("arm64", "linux/arm64/v8"), ("linux/aarch64", "linux/arm64/v8"), ("Linux/X86_64", "linux/amd64"),
    ("linux/arm", "linux/arm/v7"), ("linux/arm/v6", "linux/arm/v6"),
])
def test_parse_platform(text, expected):
    assert str(p.parse_platform(text)) == expected


@pytest.mark.parametrize("text", ["", "/", "linux//", "a/b/c/d", "linux/sparcv42"])
def test_parse_platform_rejects(text):
    with pytest.raises(UsageError):
        p.parse_platform(text)


def test_choose_by_arch_and_variant():
    index = {"manifests": [entry("amd64", digest="a"), entry("arm", variant="v7", digest="b"),
                           entry("arm64", variant="v8", digest="c")]}
    assert p.choose(index, p.parse_platform("linux/arm64"))["digest"].startswith("sha256:c")
    assert p.choose(index, p.parse_platform("linux/amd64"))["digest"].startswith("sha256:a")
    assert p.choose(index, p.parse_platform("linux/arm/v7"))["digest"].startswith("sha256:b")


def test_arm64_without_variant_matches_v8():
    index = {"manifests": [entry("arm64", digest="c")]}
    assert p.choose(index, p.parse_platform("linux/arm64/v8"))["digest"].startswith("sha256:c")


def test_exact_amd64_preferred_over_cpu_level_variant():
    index = {"manifests": [entry("amd64", variant="v3", digest="a"), entry("amd64", digest="b")]}
    assert p.choose(index, p.parse_platform("linux/amd64"))["digest"].startswith("sha256:b")


def test_mixed_index_media_types():
    index = {"mediaType": OCI_INDEX, "manifests": [entry("amd64", media=DOCKER_MANIFEST, digest="a"),
                                                   entry("arm64", media=OCI_MANIFEST, digest="b")]}
    assert p.choose(index, p.parse_platform("linux/arm64"))["mediaType"] == OCI_MANIFEST
    assert p.choose(index, p.parse_platform("linux/amd64"))["mediaType"] == DOCKER_MANIFEST


def test_no_match_lists_available_and_skips_attestations():
    index = {"manifests": [entry("amd64"), entry("arm64", variant="v8"), entry("unknown", os_name="unknown")]}
    with pytest.raises(NotFound) as err:
        p.choose(index, p.parse_platform("linux/s390x"), name="img:1")
    assert str(err.value) == ("no matching manifest for linux/s390x in img:1 "
                              "(available platforms: linux/amd64, linux/arm64/v8)")
    assert "--platform" in err.value.hint


def test_nested_index_without_platform_is_descended():
    nested = {"mediaType": DOCKER_LIST, "digest": "sha256:" + "e" * 64, "size": 1}
    index = {"manifests": [entry("s390x"), nested]}
    assert p.choose(index, p.parse_platform("linux/amd64")) is nested
