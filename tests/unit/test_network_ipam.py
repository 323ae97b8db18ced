"""runner.engine.network without root: subnet choice, leases (also across processes), rule text, the files
written into containers, and the port proxy on loopback."""

import ipaddress
import multiprocessing
import os
import socket
import sys
import threading
import types

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the engine is Linux-only")

from runner.cli import render  # noqa: E402
from runner.engine import network, views  # noqa: E402
from runner.engine.state import StateStore  # noqa: E402
from runner.errors import Conflict, UsageError  # noqa: E402

N = ipaddress.IPv4Network


# ------------------------------------------------------------------------------------------------ subnets

def test_default_subnet_is_10_88_when_free():
    assert network.choose_subnet([N("192.0.2.0/24"), N("127.0.0.0/8")]) == N("10.88.0.0/16")


def test_subnet_choice_skips_routes_addresses_and_resolvers():
    used = [N("10.88.0.0/16"), N("10.89.5.0/24"), N("10.90.0.1/32"), N("10.0.0.0/12")]
    assert network.choose_subnet(used) == N("10.91.0.0/16")


def test_subnet_choice_falls_through_to_smaller_pools_and_fails_clearly():
    used = [N("10.0.0.0/8"), N("172.16.0.0/12")]
    assert network.choose_subnet(used) == N("192.168.0.0/24")
    with pytest.raises(Conflict) as info:
        network.choose_subnet([N("0.0.0.0/1"), N("128.0.0.0/1")])
    assert "--subnet" in info.value.hint


def test_names_fit_the_kernel_limit_and_differ_per_root():
    assert network.root_tag("/var/lib/runner") == ""
    assert network.bridge_name("", 0) == "runner0"
    tag = network.root_tag("/tmp/some/root")
    assert len(tag) == 6 and tag != network.root_tag("/tmp/other/root")
    assert len(network.bridge_name(tag, 999)) <= 15
    assert len(network.veth_name("ab" * 32)) <= 15
    assert network.table_name(tag) == f"runner_{tag}"


def test_mac_is_derived_from_the_address():
    assert network.mac_for("10.88.0.2") == "02:42:0a:58:00:02"


# ------------------------------------------------------------------------------------------------ rule text

NETS = [{"Name": "bridge", "Subnet": "10.88.0.0/16", "Bridge": "runner0"},
        {"Name": "app", "Subnet": "10.89.0.0/16", "Bridge": "runner1"}]


def test_nft_script_replaces_the_whole_table_atomically():
    text = network.nft_script("runner", NETS)
    lines = text.splitlines()
    assert lines[:3] == ["add table ip runner", "delete table ip runner", "table ip runner {"]
    assert "type nat hook postrouting priority 100; policy accept;" in text
    assert 'ip saddr 10.88.0.0/16 oifname != "runner0" masquerade comment "runner network bridge"' in text
    assert 'ip saddr 10.89.0.0/16 oifname != "runner1" masquerade comment "runner network app"' in text
    assert text.count("{") == text.count("}")


def test_nft_script_without_networks_only_deletes():
    assert network.nft_script("runner_abc123", []) == \
        "add table ip runner_abc123\ndelete table ip runner_abc123\n"


def test_iptables_restore_script():
    text = network.iptables_restore_script("RUNNER-NAT", NETS[:1])
    assert text == ("*nat\n:RUNNER-NAT - [0:0]\n"
                    '-A RUNNER-NAT -s 10.88.0.0/16 ! -o runner0 -j MASQUERADE -m comment --comment '
                    '"runner network bridge"\nCOMMIT\n')


# ------------------------------------------------------------------------------------------------ files

def test_resolv_conf_drops_loopback_stubs_and_falls_back_to_upstreams():
    host = "nameserver 127.0.0.53\noptions edns0 trust-ad\nsearch example.test\n"
    upstream = "nameserver 192.0.2.53\nnameserver ::1\n"
    assert network.resolv_conf(host, upstream) == \
        "nameserver 192.0.2.53\noptions edns0 trust-ad\nsearch example.test\n"
    assert network.resolv_conf("nameserver 10.255.255.53\nnameserver 127.0.0.1\n", upstream) == \
        "nameserver 10.255.255.53\n"
    assert network.resolv_conf("nameserver 127.0.0.53\n", None) == ""


def test_hosts_file():
    text = network.hosts_file([("10.89.0.2", ["web", "abc"]), ("10.89.0.3", ["cli"])])
    assert text.startswith("127.0.0.1\tlocalhost\n")
    assert text.endswith("10.89.0.2\tweb abc\n10.89.0.3\tcli\n")


def test_effective_ports_adds_exposed_ports_once():
    ports = [{"container_port": 80, "host_port": 8080, "host_ip": "127.0.0.1", "protocol": "tcp"}]
    out = network.effective_ports(ports, True, {"80/tcp": {}, "53/udp": {}, "9000": {}, "bad/sctp": {}})
    assert [(p["container_port"], p["protocol"], p["host_port"]) for p in out] == \
        [(80, "tcp", 8080), (53, "udp", 0), (9000, "tcp", 0)]
    assert network.effective_ports(ports, False, {"53/udp": {}}) == ports


def test_docker_shapes():
    bound = [{"container_port": 80, "protocol": "tcp", "host_ip": "127.0.0.1", "host_port": 8080},
             {"container_port": 53, "protocol": "udp", "host_ip": "0.0.0.0", "host_port": 5353}]
    assert views.port_map(bound) == {"80/tcp": [{"HostIp": "127.0.0.1", "HostPort": "8080"}],
                                       "53/udp": [{"HostIp": "0.0.0.0", "HostPort": "5353"}]}
    assert render.ports_text(views.port_list(bound)) == "127.0.0.1:8080->80/tcp, 0.0.0.0:5353->53/udp"


def test_join_config_points_the_network_namespace_at_the_wired_one():
    config = {"linux": {"namespaces": [{"type": "pid"}, {"type": "network"}, {"type": "mount"}]}}
    network.join_config(config, "/proc/1/fd/7")
    assert config["linux"]["namespaces"][1] == {"type": "network", "path": "/proc/1/fd/7"}
    network.join_config(config, None)
    assert config["linux"]["namespaces"][1]["path"] == "/proc/1/fd/7"


# ------------------------------------------------------------------------------------------------ store + IPAM

@pytest.fixture
def store(tmp_path, monkeypatch):
    """A Networks store over a temp root with the host side (ip, nft, /run lock) stubbed out."""
    monkeypatch.setattr(network, "GLOBAL_LOCK", str(tmp_path / "global.lock"))
    monkeypatch.setattr(network, "host_used_networks", lambda: [N("10.88.0.0/16"), N("192.0.2.0/24")])
    monkeypatch.setattr(network, "sweep_stale_bridges", lambda: None)
    monkeypatch.setattr(network.Networks, "_bring_up", lambda self, record, nets: None)
    engine = types.SimpleNamespace(root=str(tmp_path / "root"), state=StateStore(str(tmp_path / "root")))
    return network.Networks(engine)


def _rec(cid: str, name: str):
    return types.SimpleNamespace(id=cid, name=name, spec={})


def test_create_chooses_free_subnets_and_indexes(store):
    a = store.create("a")
    b = store.create("b", "10.200.0.0/24")
    assert (a["Subnet"], a["Gateway"], a["Index"]) == ("10.89.0.0/16", "10.89.0.1", 1)
    assert (b["Subnet"], b["Index"]) == ("10.200.0.0/24", 2)
    assert store.create("c")["Subnet"] == "10.90.0.0/16"  # avoids the host's and runner's own networks
    assert store.names() == ["a", "b", "c"]


def test_the_default_network_keeps_index_0_and_10_88(store, monkeypatch):
    monkeypatch.setattr(network, "host_used_networks", lambda: [])
    assert store.create("first")["Subnet"] == "10.89.0.0/16"  # a user network created before it
    default = store.create(network.DEFAULT_NETWORK)
    assert (default["Subnet"], default["Index"]) == ("10.88.0.0/16", 0)
    assert default["Bridge"] == network.bridge_name(store.tag, 0)


def test_create_rejects_bad_names_duplicates_and_overlaps(store):
    store.create("a")
    with pytest.raises(Conflict):
        store.create("a")
    for bad in ("host", "none", "bad name", "-x"):
        with pytest.raises(UsageError):
            store.create(bad)
    with pytest.raises(Conflict, match="overlaps"):
        store.create("b", "10.89.1.0/24")
    with pytest.raises(UsageError):
        store.create("b", "10.1.2.3/24")  # host bits set
    with pytest.raises(UsageError):
        store.create("b", "10.1.2.0/30")


def test_lease_and_release(store, tmp_path):
    net = store.create("a", "10.200.0.0/29")
    ips = [store.lease(net, _rec(f"c{i}", f"n{i}"), f"h{i}") for i in range(5)]
    assert ips == ["10.200.0.2", "10.200.0.3", "10.200.0.4", "10.200.0.5", "10.200.0.6"]
    with pytest.raises(Conflict, match="no free address"):
        store.lease(net, _rec("c9", "n9"), "h9")
    store.release("c1")
    assert store.lease(net, _rec("c7", "n7"), "h7") == "10.200.0.3"
    assert sorted(lease["Id"] for lease in store.leases("a").values()) == ["c0", "c2", "c3", "c4", "c7"]


def test_hosts_files_of_peers_follow_joins_and_leaves(store):
    net = store.create("app")
    for cid in ("c1", "c2"):  # hosts files exist from create; leases only ever rewrite them
        os.makedirs(os.path.join(store.engine.state.dir(cid), "etc"))
        open(os.path.join(store.engine.state.dir(cid), "etc", "hosts"), "w").close()
    store.lease(net, _rec("c1", "web"), "c1host")
    store.lease(net, _rec("c2", "cli"), "c2host")
    hosts = open(store.engine.state.dir("c1") + "/etc/hosts").read()
    assert "10.89.0.2\tweb c1host\n10.89.0.3\tcli c2host\n" in hosts
    store.release("c2")
    assert "cli" not in open(store.engine.state.dir("c1") + "/etc/hosts").read()


def _lease_in_child(store, net, i, queue, done):
    ip = store.lease(net, _rec(f"c{i}", f"n{i}"), "h")
    queue.put(ip)
    done.wait(30)  # hold the lease (this process is its owner) until the parent has seen them all


def test_concurrent_processes_never_share_an_address(store):
    net = store.create("a")
    ctx = multiprocessing.get_context("fork")
    queue, done = ctx.Queue(), ctx.Event()
    procs = [ctx.Process(target=_lease_in_child, args=(store, net, i, queue, done)) for i in range(12)]
    for p in procs:
        p.start()
    try:
        ips = [queue.get(timeout=30) for _ in procs]
    finally:
        done.set()
        for p in procs:
            p.join(30)
    assert len(set(ips)) == 12
    # Their owners are gone now (and they have no container records): the leases are stale and reclaimed.
    assert store.lease(net, _rec("new", "new"), "h") == "10.89.0.2"
    assert list(store.leases("a")) == ["10.89.0.2"]


# ------------------------------------------------------------------------------------------------ port proxy

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_proxy_forwards_tcp_with_half_close():
    from runner.engine.portproxy import PortProxy
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def echo_upper():
        conn, _ = server.accept()
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
        conn.sendall(data.upper())
        conn.close()

    threading.Thread(target=echo_upper, daemon=True).start()
    proxy = PortProxy([{"container_port": port, "host_port": 0, "host_ip": "127.0.0.1", "protocol": "tcp"}])
    try:
        proxy.start("127.0.0.1")
        with socket.create_connection(("127.0.0.1", proxy.bound[0]["host_port"]), timeout=5) as c:
            c.sendall(b"x" * 300000)
            c.shutdown(socket.SHUT_WR)
            got = b""
            while chunk := c.recv(65536):
                got += chunk
        assert got == b"X" * 300000
    finally:
        proxy.close()
        server.close()


def test_proxy_conflict_binds_nothing():
    from runner.engine.portproxy import PortProxy
    free = _free_port()
    with socket.create_server(("127.0.0.1", 0)) as taken:
        ports = [{"container_port": 1, "host_port": free, "host_ip": "127.0.0.1", "protocol": "tcp"},
                 {"container_port": 2, "host_port": taken.getsockname()[1], "host_ip": "127.0.0.1",
                  "protocol": "tcp"}]
        with pytest.raises(Conflict, match="already in use"):
            PortProxy(ports)
    with socket.create_server(("127.0.0.1", free)):  # the first port was released again
        pass


def test_proxy_close_frees_the_ports_for_reuse():
    from runner.engine.portproxy import PortProxy
    spec = [{"container_port": 9, "host_port": 0, "host_ip": "127.0.0.1", "protocol": p} for p in ("tcp", "udp")]
    proxy = PortProxy(spec)
    proxy.start("127.0.0.1")
    bound = [(p["host_port"], p["protocol"]) for p in proxy.bound]
    proxy.close()
    for port, proto in bound:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", port))
