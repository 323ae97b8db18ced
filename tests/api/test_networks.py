"""Network routes with the docker CLI and docker-py, natively and through the VM: the pre-defined networks,
create/inspect/ls/rm, and containers on a user network reaching each other by name and by alias.

Containers are made with runner's own CLI on the same state (the API's container routes are another
branch's); the network they join is the one the docker CLI created through the API.
"""

from __future__ import annotations

import json

import pytest
from tests.helpers import ok

pytestmark = pytest.mark.network

IMG = "localhost/busybox"
HTTPD = ("sh", "-c", "mkdir -p /www && echo hello-from-peer > /www/index.html && exec httpd -f -p 80 -h /www")


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


def test_connect_is_refused_with_a_reason(api):
    proc = api.docker("network", "connect", "bridge", "whatever")
    assert proc.returncode != 0 and "not supported by runner" in proc.stderr.decode()


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
