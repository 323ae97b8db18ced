"""runner.engine.views: the Docker Engine API 1.44 shapes every caller (CLI, VM backend, API server) reads."""

from __future__ import annotations

from runner.engine import views
from runner.engine.state import ContainerRecord
from runner.images.store import Image
from runner.spec import ContainerSpec, Limits, Mount, PortMapping

BOUND = [{"container_port": 80, "protocol": "tcp", "host_ip": "127.0.0.1", "host_port": 8080}]
NET = {"Network": "bridge", "NetworkID": "n1", "IPAddress": "10.88.0.2", "IPPrefixLen": 16,
       "Gateway": "10.88.0.1", "MacAddress": "02:42:0a:58:00:02", "Bridge": "runner0", "Ports": BOUND}


def _record(**kw) -> ContainerRecord:
    spec = ContainerSpec("busybox", command=["sleep", "9"], name="web", network="bridge",
                         ports=[PortMapping(80)], mounts=[Mount("/srv", "/data", True)], labels={"a": "b"},
                         limits=Limits(memory=1 << 20))
    base = dict(id="c" * 64, name="web", spec=spec.to_dict(), image_id="sha256:" + "i" * 64,
                image_ref="busybox", created=1000.5, status="running", pid=42, started_at=1000.0,
                runtime="runc", extra={"hostname": "h", "network": NET})
    return ContainerRecord(**{**base, **kw})


def test_container_summary_is_dockers_list_entry():
    c = views.container_summary(_record(), now=1000.0 + 125)
    assert c["Names"] == ["/web"] and c["Created"] == 1000 and isinstance(c["Created"], int)
    assert c["Ports"] == [{"IP": "127.0.0.1", "PrivatePort": 80, "PublicPort": 8080, "Type": "tcp"}]
    assert c["State"] == "running" and c["Status"] == "Up 2 minutes"
    assert c["Command"] == "sleep 9" and c["Labels"] == {"a": "b"} and c["ImageID"].startswith("sha256:")
    assert c["HostConfig"] == {"NetworkMode": "bridge"}
    assert c["NetworkSettings"]["Networks"]["bridge"]["IPAddress"] == "10.88.0.2"
    assert c["Mounts"][0]["Source"] == "/srv" and c["Mounts"][0]["RW"] is False


def test_status_texts():
    assert views.status_text("exited", 0, 90.0, 3, now=100.0) == "Exited (3) 10 seconds ago"
    assert views.status_text("created", None, None, None) == "Created"
    assert views.status_text("running", 0.0 + 1, None, None, now=1 + 2 * 86400) == "Up 2 days"


def test_container_inspect_shape():
    rec = _record()
    spec = ContainerSpec.from_dict(rec.spec)
    config = {"process": {"args": ["sleep", "9"], "env": ["PATH=/bin"], "cwd": "/"}}
    info = views.container_inspect(rec, spec, config, {"LogPath": "/l"})
    assert info["Name"] == "/web" and info["Path"] == "sleep" and info["Args"] == ["9"]
    assert info["LogPath"] == "/l" and info["State"]["Pid"] == 42 and info["State"]["Running"] is True
    assert info["State"]["StartedAt"].startswith("1970-01-01T00:16:40.") and info["State"]["Paused"] is False
    assert info["HostConfig"]["Runtime"] == "runc" and info["HostConfig"]["Memory"] == 1 << 20
    assert info["HostConfig"]["PortBindings"] == {"80/tcp": [{"HostIp": "127.0.0.1", "HostPort": ""}]}
    assert info["NetworkSettings"]["Ports"] == {"80/tcp": [{"HostIp": "127.0.0.1", "HostPort": "8080"}]}
    assert info["NetworkSettings"]["Networks"]["bridge"]["Gateway"] == "10.88.0.1"
    assert info["Config"]["Env"] == ["PATH=/bin"] and info["Config"]["Hostname"] == "h"
    stopped = views.container_inspect(_record(status="exited", extra={}), spec, {}, {})
    assert stopped["NetworkSettings"]["Ports"] == {} and stopped["NetworkSettings"]["IPAddress"] == ""
    assert stopped["Path"] == "sleep"  # before a start there is no config.json: the spec's command


def test_image_shapes():
    img = Image("sha256:" + "1" * 64, ["docker.io/library/busybox:latest"], "sha256:" + "m" * 64,
                "application/vnd.oci.image.manifest.v1+json",
                {"architecture": "amd64", "os": "linux", "config": {"Cmd": ["sh"], "Labels": {"x": "y"}},
                 "rootfs": {"type": "layers", "diff_ids": ["sha256:" + "d" * 64]}}, [], 1234, "2024-01-02T03:04:05.123456789Z")
    s = views.image_summary(img)
    assert s["Created"] == 1704164645 and s["Size"] == 1234 and s["Labels"] == {"x": "y"}
    assert s["RepoTags"] == ["busybox:latest"] and s["RepoDigests"] == ["busybox@sha256:" + "m" * 64]
    i = views.image_inspect(img)
    assert i["Created"] == "2024-01-02T03:04:05.123456789Z" and i["Config"] == {"Cmd": ["sh"], "Labels": {"x": "y"}}
    assert i["Architecture"] == "amd64" and i["Os"] == "linux" and i["RootFS"] == {"Type": "layers", "Layers": ["sha256:" + "d" * 64]}


def test_network_shape():
    record = {"Name": "n", "Id": "f" * 64, "Created": 0.5, "Subnet": "10.1.0.0/24", "Gateway": "10.1.0.1",
              "Bridge": "runner1"}
    leases = {"10.1.0.2": {"Id": "c1", "Name": "web", "Hostname": "web"}}
    n = views.network(record, leases, 24, lambda ip: "02:42:" + ip)
    assert n["Containers"] == {"c1": {"Name": "web", "EndpointID": "", "MacAddress": "02:42:10.1.0.2",
                                      "IPv4Address": "10.1.0.2/24", "IPv6Address": ""}}
    assert n["IPAM"]["Config"] == [{"Subnet": "10.1.0.0/24", "Gateway": "10.1.0.1"}] and n["Scope"] == "local"
    assert n["Options"]["com.docker.network.bridge.name"] == "runner1"
    assert n["Created"] == "1970-01-01T00:00:00.500000000Z"
