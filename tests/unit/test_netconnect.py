"""runner.engine.netconnect's pure part: how a connect or disconnect changes a container's spec and its recorded
endpoints, and how views show a container whose last network was taken away. The wiring itself (veths, leases,
hosts files, routes) is tested for real in tests/native/test_netconnect.py and through the API."""

from __future__ import annotations

import pytest

from runner.engine import netconnect, views
from runner.engine.state import ContainerRecord
from runner.errors import Conflict, UsageError
from runner.spec import ContainerSpec

EP0 = {"Network": "front", "Interface": "eth0", "Veth": "vrcccc", "Gateway": "10.90.0.1", "IPAddress": "10.90.0.2"}
EP1 = {"Network": "back", "Interface": "eth1", "Veth": "vx1cccc", "Gateway": "10.91.0.1", "IPAddress": "10.91.0.2"}


def test_networks_of_a_spec_first_one_first_and_none_for_builtin_modes():
    assert netconnect.networks_of({"network": "front", "extra_networks": [{"name": "back"}]}) == ["front", "back"]
    assert netconnect.networks_of({"network": "none"}) == []
    assert netconnect.networks_of({"network": "host"}) == []
    assert netconnect.networks_of({}) == []


def test_live_endpoints_and_the_next_free_interface():
    settings = {**EP0, "Ports": [], "Extra": [EP1]}
    assert netconnect.live_endpoints(settings) == [settings, EP1]
    assert netconnect.free_index(netconnect.live_endpoints(settings)) == 2
    assert netconnect.free_index([EP0, {"Interface": "eth2"}]) == 1  # a gap left by a disconnect is reused
    assert netconnect.live_endpoints({"Ports": [], "Extra": []}) == []  # running on no network
    with pytest.raises(Conflict):
        netconnect.free_index([{"Interface": f"eth{i}"} for i in range(100)])


def test_connect_adds_an_extra_network_or_the_first_one_after_all_were_disconnected():
    spec = {"network": "front", "aliases": ["f"], "extra_networks": []}
    netconnect.add_to_spec(spec, "back", ["b1"])
    assert spec["network"] == "front" and spec["extra_networks"] == [{"name": "back", "aliases": ["b1"]}]
    emptied = {"network": "none", "aliases": [], "extra_networks": []}
    netconnect.add_to_spec(emptied, "back", ["b1"])
    assert emptied["network"] == "back" and emptied["aliases"] == ["b1"]


def test_disconnect_moves_the_next_network_up_and_remembers_the_mode_when_none_is_left():
    spec = {"network": "front", "aliases": ["f"], "extra_networks": [{"name": "back", "aliases": ["b"]},
                                                                      {"name": "third", "aliases": []}]}
    extra: dict = {}
    netconnect.remove_from_spec(spec, extra, "back")
    assert spec["network"] == "front" and [n["name"] for n in spec["extra_networks"]] == ["third"]
    netconnect.remove_from_spec(spec, extra, "front")
    assert spec["network"] == "third" and spec["aliases"] == [] and spec["extra_networks"] == []
    assert extra == {"network_mode": "front"}
    netconnect.remove_from_spec(spec, extra, "third")
    assert spec["network"] == "none" and extra == {"network_mode": "front"}  # the mode the user chose first
    ContainerSpec.from_dict({**ContainerSpec("busybox").to_dict(), **spec}).validate()  # still a valid spec


def test_aliases_are_names_on_user_networks_only():
    assert netconnect.check_aliases("back", ["a", "b", "a"]) == ["a", "b"]
    with pytest.raises(UsageError, match="network-scoped alias is supported only for containers in user defined"):
        netconnect.check_aliases("bridge", ["a"])
    with pytest.raises(UsageError):
        netconnect.check_aliases("back", "a")
    assert netconnect.check_aliases("bridge", []) == []


def test_a_container_disconnected_from_every_network_shows_its_mode_and_no_networks():
    spec = ContainerSpec("busybox", name="web", network="none")
    rec = ContainerRecord(id="c" * 64, name="web", spec=spec.to_dict(), image_id="sha256:" + "i" * 64,
                          image_ref="busybox", created=1.0, status="exited",
                          extra={"hostname": "h", "network_mode": "front"})
    info = views.container_inspect(rec, spec, {}, {})
    assert info["HostConfig"]["NetworkMode"] == "front" and info["NetworkSettings"]["Networks"] == {}
    summary = views.container_summary(rec, now=2.0)
    assert summary["HostConfig"]["NetworkMode"] == "front" and summary["NetworkSettings"]["Networks"] == {}
    plain = ContainerRecord(**{**rec.to_dict(), "extra": {"hostname": "h"}})  # created with --network none
    assert list(views.container_inspect(plain, spec, {}, {})["NetworkSettings"]["Networks"]) == ["none"]
