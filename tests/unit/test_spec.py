"""ContainerSpec and friends: parsing of user input and validation of what crosses the wire."""

import pytest

from runner.errors import UsageError
from runner.spec import ContainerSpec, ExecSpec, Limits, Mount, PortMapping, parse_size


@pytest.mark.parametrize("text, value", [("32m", 32 << 20), ("1g", 1 << 30), ("512k", 512 << 10),
                                         ("1024", 1024), ("1.5g", int(1.5 * (1 << 30))), ("64MB", 64 << 20)])
def test_parse_size(text, value):
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["lots", "-1m", "0", "1x", ""])
def test_parse_size_rejects(text):
    with pytest.raises(UsageError):
        parse_size(text)


def test_mount_parse():
    assert Mount.parse("/a:/b") == Mount("/a", "/b", False)
    assert Mount.parse("/a:/b:ro") == Mount("/a", "/b", True)
    for bad in ("r:/b", "bad name:/b", "-x:/b", "/a:/b:zz", ":/b", "/a:/b:ro:x", ""):
        with pytest.raises(UsageError):
            Mount.parse(bad)


def test_port_parse():
    assert PortMapping.parse("8080:80") == PortMapping(80, 8080, "127.0.0.1", "tcp")
    assert PortMapping.parse("80") == PortMapping(80, 0)
    assert PortMapping.parse("0.0.0.0:53:53/udp") == PortMapping(53, 53, "0.0.0.0", "udp")
    for bad in ("x:80", "70000:80", "80/sctp", "1:2:3:4"):
        with pytest.raises(UsageError):
            PortMapping.parse(bad)


def test_validate_reports_every_problem_at_once():
    spec = ContainerSpec(image="img", workdir="rel", name="bad name!", network="bogus net!",
                         limits=Limits(memory=1024, cpus=0.0001))
    with pytest.raises(UsageError) as info:
        spec.validate()
    msg = info.value.message
    for needle in ("working directory", "container name", "network mode", "memory limit", "--cpus"):
        assert needle in msg


def test_round_trip_and_untrusted_input():
    spec = ContainerSpec(image="img", command=["sh"], mounts=[Mount("/a", "/b", True)],
                         ports=[PortMapping(80, 8080)], limits=Limits(memory=64 << 20, pids=10))
    assert ContainerSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(UsageError):
        ContainerSpec.from_dict({"image": "x", "evil": 1})
    with pytest.raises(UsageError):
        ContainerSpec.from_dict({"image": "x", "mounts": [{"nope": 1}]})
    with pytest.raises(UsageError):
        ContainerSpec(image="x", mounts=[Mount("/a", "/../etc")]).validate()
    with pytest.raises(UsageError):
        ContainerSpec(image="x", command=["a\0b"]).validate()


def test_exec_spec():
    assert ExecSpec(["ls"]).validate().command == ["ls"]
    with pytest.raises(UsageError):
        ExecSpec([]).validate()
    with pytest.raises(UsageError):
        ExecSpec.from_dict({"command": ["ls"], "bogus": True})


def test_runtime_names_are_validated():
    assert ContainerSpec("img", runtime="runc").validate().runtime == "runc"
    assert ContainerSpec("img").validate().runtime is None  # the engine's default
    with pytest.raises(UsageError, match="unknown or invalid runtime name: crun"):
        ContainerSpec("img", runtime="crun").validate()
