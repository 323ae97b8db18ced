"""Network routes with the docker CLI and docker-py, natively and through the VM: the pre-defined networks,
create/inspect/ls/rm, containers on a user network reaching each other by name and by alias, and connect /
disconnect of a running and of a stopped container.

Containers are made with runner's own CLI on the same state (the API's container routes are another
branch's); the network they join is the one the docker CLI created through the API.
"""

from __future__ import annotations

import contextlib
import json

import pytest
from tests.helpers import ok

pytestmark = pytest.mark.network

IMG = "localhost/busybox"
HTTPD = ("sh", "-c", "mkdir -p /www && echo hello-from-peer > /www/index.html && exec httpd -f -p 80 -h /www")
WGET = "for i in $(seq 100); do wget -qO- http://{}/ && exit 0; sleep 0.1; done; exit 1"


def test_predefined_networks_are_listed_and_cannot_be_removed(api):
    names = ok(api.docker("network", "ls", "--format", "{{.Name}} {{.Driver}}")).splitlines()
    assert {"bridge bridge", "host host", "none null"} <= set(names)
    proc = api.docker("network", "rm", "host")
    assert proc.returncode != 0 and "pre-defined network and cannot be removed" in proc.stderr.decode()
    only = ok(api.docker("network", "ls", "--filter", "type=builtin", "--format", "{{.Name}}")).split()
    assert sorted(only) == ["bridge", "host", "none"]


def test_create_inspect_remove(api):
    net_id = ok(api.docker("network", "create", "--subnet", "10.211.0.0/24", "--label", "tier=back",
                           "apinet1")).strip()
    try:
        info = json.loads(ok(api.docker("network", "inspect", "apinet1")))[0]
        assert info["Id"] == net_id and info["Driver"] == "bridge" and info["Labels"] == {"tier": "back"}
        assert ok(api.docker("network", "ls", "--filter", "label=tier=back", "--format", "{{.Name}}")).split() == \
            ["apinet1"]
        assert not ok(api.docker("network", "ls", "--filter", "label=tier=front", "-q")).strip()
        assert info["IPAM"]["Config"][0]["Subnet"] == "10.211.0.0/24"
        assert json.loads(ok(api.docker("network", "inspect", net_id[:12])))[0]["Name"] == "apinet1"
        dup = api.docker("network", "create", "apinet1")
        assert dup.returncode != 0 and "already exists" in dup.stderr.decode()
        assert "apinet1" in ok(api.docker("network", "ls", "--filter", "name=apinet", "--format", "{{.Name}}"))
    finally:
        ok(api.docker("network", "rm", "apinet1"))
    assert "apinet1" not in ok(api.docker("network", "ls"))
    missing = api.docker("network", "inspect", "apinet1")
    assert missing.returncode != 0 and "No such network: apinet1" in missing.stderr.decode()


def test_containers_reach_each_other_by_name_and_alias(api, rn):
    ok(api.docker("network", "create", "apinet2"))
    peer = None
    try:
        peer = ok(rn("run", "-d", "--name", "apipeer", "--network", "apinet2", "--network-alias", "web-alias",
                     IMG, *HTTPD)).strip()
        for target in ("apipeer", "web-alias"):
            proc = rn("run", "--rm", "--network", "apinet2", IMG, "sh", "-c",
                      f"for i in $(seq 100); do wget -qO- http://{target}/ && exit 0; sleep 0.1; done; exit 1")
            assert proc.returncode == 0 and b"hello-from-peer" in proc.stdout, (target, proc.stderr)
        info = json.loads(ok(api.docker("network", "inspect", "apinet2")))[0]
        assert [c["Name"] for c in info["Containers"].values()] == ["apipeer"]
        ok(api.docker("rename", "apipeer", "apipeer2"))  # its peers know it by the new name at once
        proc = rn("run", "--rm", "--network", "apinet2", IMG, "wget", "-qO-", "http://apipeer2/")
        assert proc.returncode == 0 and b"hello-from-peer" in proc.stdout, proc.stderr
        assert [c["Name"] for c in json.loads(ok(api.docker("network", "inspect", "apinet2")))[0]
                ["Containers"].values()] == ["apipeer2"]
        # the peer is in use: removing the network is refused until it is gone
        busy = api.docker("network", "rm", "apinet2")
        assert busy.returncode != 0 and "apipeer2" in busy.stderr.decode()
    finally:
        if peer:
            rn("rm", "-f", peer)
        api.docker("network", "rm", "apinet2")


def test_docker_cli_connects_and_disconnects_a_running_container(api, rn):
    ok(api.docker("network", "create", "apinet4"))
    cids = []
    try:
        cids.append(ok(rn("run", "-d", "--name", "apiweb", "--network", "apinet4", IMG, *HTTPD)).strip())
        cids.append(ok(rn("run", "-d", "--name", "apicli", IMG, "sleep", "300")).strip())
        assert ok(api.docker("network", "connect", "--alias", "cli-alias", "apinet4", "apicli")) == ""
        proc = rn("exec", "apicli", "sh", "-c", WGET.format("apiweb"))
        assert proc.returncode == 0 and b"hello-from-peer" in proc.stdout, proc.stderr
        ok(rn("exec", "apiweb", "ping", "-c", "1", "-W", "5", "cli-alias"))  # the peer reaches it by its alias
        nets = json.loads(ok(api.docker("inspect", "apicli")))[0]["NetworkSettings"]["Networks"]
        assert sorted(nets) == ["apinet4", "bridge"] and nets["apinet4"]["Aliases"] == ["cli-alias"]
        assert nets["apinet4"]["IPAddress"]
        members = json.loads(ok(api.docker("network", "inspect", "apinet4")))[0]["Containers"]
        assert sorted(c["Name"] for c in members.values()) == ["apicli", "apiweb"]

        again = api.docker("network", "connect", "apinet4", "apicli")
        assert again.returncode != 0 and \
            "endpoint with name apicli already exists in network apinet4" in again.stderr.decode()
        assert ok(api.docker("network", "disconnect", "apinet4", "apicli")) == ""
        gone = rn("exec", "apicli", "ping", "-c", "1", "-W", "2", "apiweb")
        assert gone.returncode != 0 and b"bad address" in gone.stderr
        twice = api.docker("network", "disconnect", "apinet4", "apicli")
        assert twice.returncode != 0 and f"container {cids[1]} is not connected to network apinet4" in \
            twice.stderr.decode()
        for args, text in ((("connect", "apinet4", "nosuchbox"), "No such container: nosuchbox"),
                           (("connect", "nosuchnet", "apicli"), "network nosuchnet not found"),
                           (("disconnect", "host", "apicli"), "is not connected to network host")):
            proc = api.docker("network", *args)
            assert proc.returncode != 0 and text in proc.stderr.decode(), (args, proc.stderr)
    finally:
        for cid in cids:
            rn("rm", "-f", cid)
        api.docker("network", "rm", "apinet4")


def test_docker_py_connects_a_stopped_container_and_disconnects_it(api, rn):
    docker = pytest.importorskip("docker")
    client = docker.DockerClient(base_url=api.host, version="auto", timeout=120)
    box = None
    try:
        net = client.networks.create("apinet5", driver="bridge")
        box = ok(rn("create", "--name", "apibox", IMG, "sleep", "300")).strip()
        container = client.containers.get("apibox")
        net.connect(container, aliases=["box-alias"])  # stopped: recorded, wired at its start
        container.reload()
        assert container.attrs["NetworkSettings"]["Networks"]["apinet5"]["Aliases"] == ["box-alias"]
        container.start()
        container.reload()
        address = container.attrs["NetworkSettings"]["Networks"]["apinet5"]["IPAddress"]
        assert address and address in ok(rn("exec", "apibox", "ip", "-o", "-4", "addr"))
        with pytest.raises(docker.errors.APIError) as twice:
            net.connect(container)
        assert twice.value.status_code == 403
        with pytest.raises(docker.errors.NotFound, match="No such container: nosuchbox"):
            net.connect("nosuchbox")
        net.disconnect(container)
        container.reload()
        assert sorted(container.attrs["NetworkSettings"]["Networks"]) == ["bridge"]
        assert net.attrs["Name"] == "apinet5" and not client.networks.get(net.id).attrs["Containers"]
    finally:
        if box:
            rn("rm", "-f", box)
        with contextlib.suppress(Exception):
            client.networks.get("apinet5").remove()
        client.close()


def test_docker_py_networks(api):
    docker = pytest.importorskip("docker")
    client = docker.DockerClient(base_url=api.host, version="auto", timeout=120)
    try:
        net = client.networks.create("apinet3", driver="bridge")
        try:
            assert client.networks.get(net.id).name == "apinet3"
            assert "apinet3" in [n.name for n in client.networks.list(names=["apinet3"])]
        finally:
            net.remove()
        with pytest.raises(docker.errors.NotFound):
            client.networks.get("apinet3")
    finally:
        client.close()
