"""The container API's pure parts: the create body → ContainerSpec mapping and the list filters.
(The real paths are tested with the docker CLI, docker-py and testcontainers in tests/api/.)"""

from __future__ import annotations

import pytest

from runner.api.createspec import container_spec
from runner.errors import UsageError
from runner.spec import ContainerSpec

# What the docker CLI 20.10 sends for `docker run --rm -it -p 127.0.0.1::80 -e A=1 --name web busybox sh`
# (zero values included: they must not be mistaken for requests).
CLI_BODY = {
    "Hostname": "", "Domainname": "", "User": "", "AttachStdin": True, "AttachStdout": True, "AttachStderr": True,
    "ExposedPorts": {"80/tcp": {}}, "Tty": True, "OpenStdin": True, "StdinOnce": True, "Env": ["A=1"],
    "Cmd": ["sh"], "Image": "busybox", "Volumes": {}, "WorkingDir": "", "Entrypoint": None, "OnBuild": None,
    "Labels": {},
    "HostConfig": {"Binds": None, "ContainerIDFile": "", "LogConfig": {"Type": "", "Config": {}},
                   "NetworkMode": "default", "PortBindings": {"80/tcp": [{"HostIp": "127.0.0.1", "HostPort": ""}]},
                   "RestartPolicy": {"Name": "no", "MaximumRetryCount": 0}, "AutoRemove": True,
                   "VolumeDriver": "", "VolumesFrom": None, "CapAdd": None, "CapDrop": None, "CgroupnsMode": "",
                   "Dns": [], "DnsOptions": [], "DnsSearch": [], "ExtraHosts": None, "GroupAdd": None,
                   "IpcMode": "", "Cgroup": "", "Links": None, "OomScoreAdj": 0, "PidMode": "", "Privileged": False,
                   "PublishAllPorts": False, "ReadonlyRootfs": False, "SecurityOpt": None, "UTSMode": "",
                   "UsernsMode": "", "ShmSize": 0, "ConsoleSize": [0, 0], "Isolation": "", "CpuShares": 0,
                   "Memory": 0, "NanoCpus": 0, "CgroupParent": "", "BlkioWeight": 0, "CpuPeriod": 0,
                   "CpuQuota": 0, "CpusetCpus": "", "CpusetMems": "", "Devices": [], "DeviceCgroupRules": None,
                   "DeviceRequests": None, "KernelMemory": 0, "MemoryReservation": 0, "MemorySwap": 0,
                   "MemorySwappiness": -1, "OomKillDisable": False, "PidsLimit": None, "Ulimits": None,
                   "MaskedPaths": None, "ReadonlyPaths": None},
    "NetworkingConfig": {"EndpointsConfig": {}},
}


def test_the_docker_cli_body_maps_onto_runner_run_fields():
    spec = container_spec(CLI_BODY, "web")
    ContainerSpec.from_dict(spec).validate()  # what the engine will check
    assert spec["image"] == "busybox" and spec["command"] == ["sh"] and spec["entrypoint"] is None
    assert spec["env"] == ["A=1"] and spec["tty"] and spec["interactive"] and spec["auto_remove"]
    assert spec["name"] == "web" and spec["network"] == "bridge" and spec["hostname"] is None
    assert spec["ports"] == [{"container_port": 80, "host_port": 0, "host_ip": "127.0.0.1", "protocol": "tcp"}]
    assert spec["limits"] == {"memory": None, "cpus": None, "pids": None} and spec["log_opts"] == {}


def test_resources_security_mounts_and_networks():
    body = {"Image": "i", "Entrypoint": [""], "Cmd": "echo", "NetworkDisabled": False,
            "ExposedPorts": {"53/udp": {}, "80/tcp": {}},
            "HostConfig": {"Memory": 64 * 1024 * 1024, "CpuQuota": 50000, "CpuPeriod": 100000, "PidsLimit": -1,
                           "Binds": ["/srv:/data:ro"], "Mounts": [{"Type": "bind", "Source": "/a", "Target": "/b"}],
                           "PublishAllPorts": True, "PortBindings": {"80/tcp": None},
                           "CapAdd": ["NET_ADMIN"], "Devices": [{"PathOnHost": "/dev/fuse", "PathInContainer": "",
                                                                 "CgroupPermissions": "rw"}],
                           "LogConfig": {"Type": "json-file", "Config": {"max-size": "1m"}}, "Runtime": "runc"},
            "NetworkingConfig": {"EndpointsConfig": {"backend": {"Aliases": ["db"]}}}}
    spec = container_spec(body, None)
    assert spec["entrypoint"] == [] and spec["command"] == ["echo"]
    assert spec["limits"] == {"memory": 64 * 1024 * 1024, "cpus": 0.5, "pids": None}
    assert [(m["source"], m["target"], m["readonly"]) for m in spec["mounts"]] == \
        [("/srv", "/data", True), ("/a", "/b", False)]
    assert sorted((p["container_port"], p["protocol"]) for p in spec["ports"]) == [(53, "udp"), (80, "tcp")]
    assert spec["network"] == "backend" and spec["aliases"] == ["db"]
    assert spec["devices"] == ["/dev/fuse:/dev/fuse:rw"] and spec["cap_add"] == ["NET_ADMIN"]
    assert spec["log_opts"] == {"max-size": "1m"} and spec["runtime"] == "runc"
    assert container_spec({"Image": "i", "NetworkDisabled": True}, None)["network"] == "none"
    assert container_spec({"Image": "i", "HostConfig": {"NetworkMode": "host"}}, None)["network"] == "host"


def test_compose_fields_map_to_volumes_restart_and_health():
    """What compose sends: HostConfig.Mounts of a named volume, Tmpfs, Config.Volumes (anonymous), a restart
    policy and a healthcheck (durations in ns; zero fields mean "the image's", StartInterval is API 1.44's)."""
    body = {"Image": "i", "Volumes": {"/data": {}, "/anon": {}},
            "Healthcheck": {"Test": ["CMD-SHELL", "true"], "Interval": 500_000_000, "Timeout": 0,
                            "Retries": 3, "StartInterval": 0},
            "HostConfig": {"Mounts": [{"Type": "volume", "Source": "p_data", "Target": "/data",
                                       "VolumeOptions": {}}], "Tmpfs": {"/t": "size=1m"},
                           "RestartPolicy": {"Name": "on-failure", "MaximumRetryCount": 2}}}
    spec = container_spec(body, None)
    assert [(m["type"], m["source"], m["target"]) for m in spec["mounts"]] == \
        [("volume", "p_data", "/data"), ("tmpfs", "", "/t"), ("volume", "", "/anon")]
    assert spec["mounts"][1]["size"] == 1024 * 1024
    assert spec["restart"] == "on-failure:2"
    assert spec["healthcheck"] == {"Test": ["CMD-SHELL", "true"], "Interval": 500_000_000, "Retries": 3}
    plain = container_spec({"Image": "i", "HostConfig": {"RestartPolicy": {"Name": "", "MaximumRetryCount": 0}}}, None)
    assert plain["restart"] == "no" and plain["healthcheck"] is None


def test_every_named_network_is_joined_none_dropped():
    """compose (API 1.44) names all of a service's networks at create: the mode's is the first, the others
    are extra networks with their own aliases."""
    two = {"Image": "i", "HostConfig": {"NetworkMode": "p_n2"},
           "NetworkingConfig": {"EndpointsConfig": {"p_n1": {"Aliases": ["x"]}, "p_n2": {"Aliases": ["y"]}}}}
    spec = container_spec(two, None)
    assert spec["network"] == "p_n2" and spec["aliases"] == ["y"]
    assert spec["extra_networks"] == [{"name": "p_n1", "aliases": ["x"]}]
    default = container_spec({**two, "HostConfig": {}}, None)
    assert default["network"] == "p_n1" and default["extra_networks"] == [{"name": "p_n2", "aliases": ["y"]}]
    assert "extra_networks" not in container_spec(
        {"Image": "i", "NetworkingConfig": {"EndpointsConfig": {"default": {}}}}, None)


def test_extra_networks_are_validated():
    from runner.spec import ContainerSpec
    for extra, network in (([{"name": "host"}], "n"), ([{"name": "a"}, {"name": "a"}], "n"),
                           ([{"name": "a", "aliases": ["bad name"]}], "n"), ([{"name": "a"}], "none"),
                           ([{"name": "a", "x": 1}], "n")):
        with pytest.raises(UsageError):
            ContainerSpec(image="i", network=network, extra_networks=extra).validate()
    ContainerSpec(image="i", network="n", extra_networks=[{"name": "a", "aliases": ["db"]}]).validate()


@pytest.mark.parametrize("body", [{"HostConfig": {"RestartPolicy": {"Name": "sometimes"}}},
                                  {"HostConfig": {"RestartPolicy": "always"}},
                                  {"HostConfig": {"Mounts": [{"Type": "nfs", "Target": "/v"}]}},
                                  {"HostConfig": {"Mounts": {"Type": "volume"}}},
                                  {"HostConfig": {"Tmpfs": {"/t": 1}}}, {"Healthcheck": ["CMD", "true"]}])
def test_bad_compose_fields_are_usage_errors(body):
    with pytest.raises(UsageError):
        container_spec({"Image": "i", **body}, None)


@pytest.mark.parametrize("body, field", [
    ({"HostConfig": {"VolumesFrom": ["x"]}}, "HostConfig.VolumesFrom"),
    ({"HostConfig": {"NetworkMode": "container:other"}}, "HostConfig.NetworkMode"),
    ({"HostConfig": {"LogConfig": {"Type": "syslog"}}}, "LogConfig.Type"),
    ({"StopSignal": "SIGUSR1"}, "Config.StopSignal"),
])
def test_meaningful_unsupported_fields_are_refused_by_name(body, field):
    with pytest.raises(UsageError) as info:
        container_spec({"Image": "i", **body}, None)
    assert field in info.value.message


def test_volumes_tmpfs_restart_and_healthcheck_map_to_the_spec():
    """What compose and docker send for volumes, restart policies and healthchecks (runner.engine.volumes,
    restart, health do the work)."""
    spec = container_spec({"Image": "i", "Volumes": {"/anon": {}, "/data": {}},
                           "Healthcheck": {"Test": ["CMD-SHELL", "true"], "Interval": 10 ** 9, "Retries": 0},
                           "HostConfig": {"Binds": ["named:/data:ro", "/h:/b"], "Tmpfs": {"/t": "size=1m"},
                                          "Mounts": [{"Type": "volume", "Source": "v2", "Target": "/v"}],
                                          "RestartPolicy": {"Name": "on-failure", "MaximumRetryCount": 2}}}, None)
    assert [(m["type"], m["source"], m["target"], m["readonly"]) for m in spec["mounts"]] == [
        ("volume", "named", "/data", True), ("bind", "/h", "/b", False), ("volume", "v2", "/v", False),
        ("tmpfs", "", "/t", False), ("volume", "", "/anon", False)]
    assert spec["restart"] == "on-failure:2"
    assert spec["healthcheck"] == {"Test": ["CMD-SHELL", "true"], "Interval": 10 ** 9}
    assert container_spec({"Image": "i"}, None)["restart"] == "no"
    for bad in ({"HostConfig": {"RestartPolicy": {"Name": "sometimes"}}},
                {"HostConfig": {"Mounts": [{"Type": "npipe", "Target": "/x"}]}}, {"Healthcheck": "x"}):
        with pytest.raises(UsageError):
            container_spec({"Image": "i", **bad}, None)


@pytest.mark.parametrize("body", [{}, {"Image": ""}, {"Image": "i", "Cmd": [1]}, {"Image": "i", "HostConfig": []},
                                  {"Image": "i", "HostConfig": {"PortBindings": {"8000-8010/tcp": None}}},
                                  {"Image": "i", "HostConfig": {"Memory": "lots"}}])
def test_malformed_bodies_are_usage_errors(body):
    with pytest.raises(UsageError):
        container_spec(body, None)


class _Store:
    """Images as runner.images.store.Store lists and resolves them (what ancestor_ids asks of it)."""

    def __init__(self, images: dict, names: dict):
        self.images, self.names = images, names

    def list(self, all=False):
        return list(self.images.values())

    def resolve(self, ref):
        from runner.errors import ImageNotFound
        key = self.names.get(ref, ref)
        if key not in self.images:
            raise ImageNotFound(f"image {ref} not found")
        return self.images[key]


def _image(image_id: str, layers: list[str], history: list[str]):
    from types import SimpleNamespace
    return SimpleNamespace(id=image_id, config={"rootfs": {"diff_ids": layers},
                                                "history": [{"created_by": h} for h in history]})


def test_list_filters_as_dockerd():
    """The one implementation of Docker's container filters (runner.engine.filters), which the API's
    GET /containers/json and `runner ps` both use: dockerd's meaning, not a second one."""
    from runner.engine import filters as flt
    c = {"Id": "abc123", "Names": ["/web-1"], "State": "running", "Image": "busybox:latest",
         "ImageID": "sha256:feed", "Labels": {"app": "web", "tier": "front"}}

    def matches(f, ancestors=None):
        return flt.container_match(c, flt.normalize(f, flt.CONTAINER_KEYS), ancestors)
    assert matches({}) and matches({"id": ["abc"]}) and not matches({"id": ["bc"]})
    assert matches({"name": ["web"]}) and matches({"name": ["^web-1$"]}) and not matches({"name": ["db"]})
    assert matches({"name": ["^/web"]}) and matches({"name": ["/web-1"]})  # with and without the slash
    assert not matches({"name": ["("]}) and not matches({"name": ["[", "db"]})  # skipped, as dockerd: no error
    assert matches({"name": ["[", "web"]})
    assert matches({"status": ["exited", "running"]}) and not matches({"status": ["exited"]})
    assert matches({"label": ["app=web", "tier"]}) and not matches({"label": ["app=web", "tier=back"]})
    assert matches({"ancestor": ["busybox"]}, {"sha256:feed"}) and not matches({"ancestor": ["x"]}, set())
    with pytest.raises(UsageError, match="invalid filter 'colour'"):
        matches({"colour": ["red"]})


def test_ancestor_is_the_resolved_image_and_every_image_built_on_it():
    """As dockerd: the value is resolved (a name, an ID, a short ID of any length) and images made from it
    count (a build's RUN adds a layer, a LABEL only history); a sibling or the image's own base do not; a name
    that was moved to another image follows it; a missing image matches nothing."""
    from runner.engine.filters import ancestor_ids
    base = _image("sha256:" + "a" * 64, ["l1"], ["ADD"])
    run = _image("sha256:" + "b" * 64, ["l1", "l2"], ["ADD", "RUN"])
    label = _image("sha256:" + "c" * 64, ["l1"], ["ADD", "LABEL"])
    other = _image("sha256:" + "d" * 64, ["l9"], ["ADD"])
    store = _Store({i.id: i for i in (base, run, label, other)},
                   {"busybox": base.id, "child": run.id, "docker.io/library/busybox:latest": base.id})
    assert ancestor_ids(store, ["busybox"]) == {base.id, run.id, label.id}
    assert ancestor_ids(store, ["docker.io/library/busybox:latest"]) == ancestor_ids(store, ["busybox"])
    assert ancestor_ids(store, ["child"]) == {run.id}
    assert ancestor_ids(store, ["aaaaaaaa"]) == {base.id, run.id, label.id}  # 8 hex digits, as dockerd takes
    assert ancestor_ids(store, ["nothing"]) == set() and ancestor_ids(store, ["d" * 64, "child"]) == {other.id,
                                                                                                      run.id}
    store.names["busybox"] = label.id  # re-tagged: the name now means the other image
    assert ancestor_ids(store, ["busybox"]) == {label.id}
