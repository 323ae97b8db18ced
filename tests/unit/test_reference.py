"""Reference parsing follows Docker's normalisation table (distribution/reference's own examples)."""

import pytest

from runner.errors import UsageError
from runner.images.reference import Reference, api_host

D = "sha256:" + "ab" * 32


@pytest.mark.parametrize("text, registry, repository, tag, digest, name, familiar", [
    ("busybox", "docker.io", "library/busybox", "latest", None, "docker.io/library/busybox:latest", "busybox:latest"),
    ("busybox:1.36", "docker.io", "library/busybox", "1.36", None, "docker.io/library/busybox:1.36", "busybox:1.36"),
    ("library/busybox", "docker.io", "library/busybox", "latest", None, "docker.io/library/busybox:latest",
     "busybox:latest"),
    ("docker.io/busybox", "docker.io", "library/busybox", "latest", None, "docker.io/library/busybox:latest",
     "busybox:latest"),
    ("index.docker.io/user/app:v2", "docker.io", "user/app", "v2", None, "docker.io/user/app:v2", "user/app:v2"),
    ("user/app", "docker.io", "user/app", "latest", None, "docker.io/user/app:latest", "user/app:latest"),
    ("localhost/busybox", "localhost", "busybox", "latest", None, "localhost/busybox:latest",
     "localhost/busybox:latest"),
    ("localhost:5000/a/b/c:v1.0-rc_1", "localhost:5000", "a/b/c", "v1.0-rc_1", None,
     "localhost:5000/a/b/c:v1.0-rc_1", "localhost:5000/a/b/c:v1.0-rc_1"),
    ("quay.io/org/img@" + D, "quay.io", "org/img", None, D, "quay.io/org/img@" + D, "quay.io/org/img@" + D),
    ("busybox:musl@" + D, "docker.io", "library/busybox", "musl", D, "docker.io/library/busybox:musl@" + D,
     "busybox:musl@" + D),
    ("127.0.0.1:5000/x", "127.0.0.1:5000", "x", "latest", None, "127.0.0.1:5000/x:latest", "127.0.0.1:5000/x:latest"),
    ("[::1]:5000/x:t", "[::1]:5000", "x", "t", None, "[::1]:5000/x:t", "[::1]:5000/x:t"),
    ("Registry.Example/x", "Registry.Example", "x", "latest", None, "Registry.Example/x:latest",
     "Registry.Example/x:latest"),
    ("foo:5000", "docker.io", "library/foo", "5000", None, "docker.io/library/foo:5000", "foo:5000"),
    ("u/a__b.c-d---e/f_g", "docker.io", "u/a__b.c-d---e/f_g", "latest", None, "docker.io/u/a__b.c-d---e/f_g:latest",
     "u/a__b.c-d---e/f_g:latest"),
    ("a.b/c", "a.b", "c", "latest", None, "a.b/c:latest", "a.b/c:latest"),
])
def test_parse(text, registry, repository, tag, digest, name, familiar):
    ref = Reference.parse(text)
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == (registry, repository, tag, digest)
    assert ref.name == name
    assert ref.familiar == familiar
    assert Reference.parse(ref.name) == ref  # the canonical form parses back to itself


@pytest.mark.parametrize("text, reason", [
    ("", "empty"),
    ("Busybox", "lowercase"),
    ("user/Repo", "lowercase"),
    ("busybox:", "invalid tag"),
    ("busybox:-x", "invalid tag"),
    ("busybox:" + "t" * 129, "invalid tag"),
    ("busybox@sha256:abc", "digest"),
    ("busybox@md5:" + "a" * 32, "digest"),
    ("busybox@sha256:" + "A" * 64, "digest"),
    ("a" * 64, "image ID"),
    ("-busybox", "repository name"),
    ("busy..box", "repository name"),
    ("busybox/", "repository name"),
    ("a//b", "repository name"),
    ("localhost:port/x", "invalid registry"),
    ("ex-.com/x", "invalid registry"),
    ("x/" + "a" * 260, "255"),
    ("has space", "repository name"),
])
def test_invalid(text, reason):
    with pytest.raises(UsageError) as info:
        Reference.parse(text)
    assert reason in info.value.message
    assert "\n" not in info.value.message


def test_api_host_is_the_one_place_docker_hub_differs():
    assert api_host("docker.io") == "registry-1.docker.io"
    assert api_host("quay.io") == "quay.io"
    assert api_host("localhost:5000") == "localhost:5000"


def test_with_tag_and_familiar_base():
    ref = Reference.parse("busybox@" + D)
    assert ref.with_tag("1").name == "docker.io/library/busybox:1"
    assert ref.familiar_base == "busybox"
    assert Reference.parse("localhost/x").familiar_base == "localhost/x"
