"""Bridge networking through the real CLI: real namespaces, bridges, NAT rules and traffic (loopback and
addresses on bridges these tests create only).

The module uses its own engine root, so its bridges (``rn<tag><n>``) and nftables table (``runner_<tag>``)
are its own; the teardown removes every container and network and then checks that no bridge, veth,
rule or lease of this root is left.
"""

import concurrent.futures
import contextlib
import errno
import io
import ipaddress
import json
import os
import shutil
import signal
import socket
import subprocess
import tarfile
import threading
import time
import types
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from runner.engine import netlink, network
from runner.engine.engine import Engine
from runner.errors import ContainerStartError
from runner.images.rootfs import import_rootfs
from runner.images.store import Store
from tests.helpers import cli, err, out, wait_for

pytestmark = [pytest.mark.root, pytest.mark.network]

IMAGE = "localhost/busybox"
HTTPD = ["sh", "-c", "mkdir -p /www && echo hello-$HOSTNAME > /www/index.html && exec httpd -f -p 80 -h /www"]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("runner-net-root"))
    try:
        warm = cli(["run", "--rm", IMAGE, "true"], root=path)  # builds the image and the default network
        assert warm.returncode == 0, err(warm)
        yield path
    finally:
        _teardown(path)


def _teardown(path):
    """Remove every container and network of the root (even after a failed warm-up), then check."""
    for cid in out(cli(["ps", "-a", "-q", "--no-trunc"], root=path)).split():
        cli(["rm", "-f", cid], root=path)
    names = out(cli(["network", "ls", "-q"], root=path)).split()
    nets = json.loads(out(cli(["network", "inspect", *names], root=path))) if names else []
    bridges = [n["Options"]["bridge"] for n in nets]
    for n in nets:
        cli(["network", "rm", n["Name"]], root=path)
    left = [b for b in bridges if os.path.exists(f"/sys/class/net/{b}")]
    rules = network.nat_rules(network.root_tag(path))
    shutil.rmtree(path, ignore_errors=True)
    assert not left, f"bridges left behind: {left}"
    assert not rules, f"{network.firewall()} rules left behind: {rules}"


def run(root, *args, check=True, **kw):
    proc = cli(list(args), root=root, **kw)
    if check:
        assert proc.returncode == 0, f"runner {' '.join(args)}: {err(proc)}"
    return proc


def inspect(root, ref):
    return json.loads(out(run(root, "inspect", ref)))[0]


def bridges(root):
    names = out(run(root, "network", "ls", "-q")).split()
    return {n["Name"]: n for n in json.loads(out(run(root, "network", "inspect", *names)))} if names else {}


def footprint(root):
    """What this root has in the kernel and on disk: bridge ports (veths), NAT rules, netns, leases."""
    nets = bridges(root)
    ports = sorted(p for n in nets.values() for p in os.listdir(f"/sys/class/net/{n['Options']['bridge']}/brif"))
    rules = network.nat_rules(network.root_tag(root))  # from whichever firewall the engine uses here
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout  # must stay as it was
    leases = {}
    for name in nets:
        path = os.path.join(root, "networks", name + ".leases.json")
        leases[name] = {}
        if os.path.exists(path):
            with open(path) as f:
                leases[name] = json.load(f)
    return {"veths": ports, "rules": rules, "netns": netns, "leases": leases}


def http_get(url, timeout=10.0):
    """GET with retries while the server in the container starts."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=3) as resp:
                return resp.read().decode()
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_http_through_a_published_port(root):
    cid = out(run(root, "run", "-d", "--name", "web", "-p", "80", IMAGE, *HTTPD)).strip()
    try:
        port_line = out(run(root, "port", "web")).strip()
        assert port_line.startswith("80/tcp -> 127.0.0.1:")
        host_port = int(port_line.rsplit(":", 1)[1])
        assert http_get(f"http://127.0.0.1:{host_port}/index.html") == f"hello-{cid[:12]}\n"
        data = inspect(root, "web")
        settings = data["NetworkSettings"]
        assert settings["Ports"] == {"80/tcp": [{"HostIp": "127.0.0.1", "HostPort": str(host_port)}]}
        assert settings["IPAddress"].startswith(bridges(root)["bridge"]["IPAM"]["Config"][0]["Subnet"][:5])
        assert data["HostConfig"]["PortBindings"] == {"80/tcp": [{"HostIp": "127.0.0.1", "HostPort": ""}]}
        assert f"127.0.0.1:{host_port}->80/tcp" in out(run(root, "ps"))
    finally:
        run(root, "rm", "-f", "web")


def _udp_echo_binary(tmp_path):
    """A static UDP echo server (busybox's nc has no UDP listener), built with gcc (scripts/programs.txt)."""
    cc = shutil.which("gcc")
    assert cc, "gcc is missing: scripts/setup installs it (gcc and libc6-dev for -static)"
    src = tmp_path / "udpecho.c"
    src.write_text(r"""
#include <netinet/in.h>
#include <stdlib.h>
#include <sys/socket.h>
int main(int argc, char **argv) {
    int s = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[1]))};
    if (bind(s, (struct sockaddr *)&a, sizeof a) != 0) return 1;
    static char buf[65536];
    for (;;) {
        struct sockaddr_in from; socklen_t len = sizeof from;
        ssize_t n = recvfrom(s, buf, sizeof buf, 0, (struct sockaddr *)&from, &len);
        if (n >= 0) sendto(s, buf, n, 0, (struct sockaddr *)&from, len);
    }
}
""")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    build = subprocess.run([cc, "-static", "-O2", "-o", str(bindir / "udpecho"), str(src)], capture_output=True)
    assert build.returncode == 0, f"cannot build a static binary: {build.stderr.decode()[-300:]}"
    return str(bindir)


def test_udp_through_a_published_port(root, tmp_path):
    bindir = _udp_echo_binary(tmp_path)
    run(root, "run", "-d", "--name", "udp", "-v", f"{bindir}:/opt:ro", "-p", "127.0.0.1::5353/udp",
        IMAGE, "/opt/udpecho", "5353")
    try:
        host_port = int(out(run(root, "port", "udp", "5353/udp")).strip().rsplit(":", 1)[1])
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(0.5)
            for _ in range(40):  # datagrams sent before the server binds are lost: resend
                s.sendto(b"ping", ("127.0.0.1", host_port))
                try:
                    data, _ = s.recvfrom(100)
                    break
                except socket.timeout:
                    continue
            else:
                pytest.fail("no UDP reply through the published port")
        assert data == b"ping"
    finally:
        run(root, "rm", "-f", "udp")


def test_containers_on_a_user_network_reach_each_other_by_name(root):
    run(root, "network", "create", "testnet")
    try:
        run(root, "run", "-d", "--name", "peer", "--network", "testnet", IMAGE, *HTTPD)
        proc = run(root, "run", "--rm", "--name", "client", "--network", "testnet", IMAGE, "sh", "-c",
                   "for i in $(seq 50); do wget -qO- http://peer/ && exit 0; sleep 0.1; done; exit 1")
        assert out(proc).startswith("hello-")
        # The client has left: the peer's /etc/hosts no longer names it, and still names itself.
        hosts = out(run(root, "exec", "peer", "cat", "/etc/hosts"))
        assert "client" not in hosts and "\tpeer " in hosts
        assert bridges(root)["testnet"]["Containers"] != {}
        in_use = run(root, "network", "rm", "testnet", check=False)
        assert in_use.returncode == 125 and "in use" in err(in_use)
    finally:
        run(root, "rm", "-f", "peer")
        run(root, "network", "rm", "testnet")


def test_a_container_gets_its_address_mac_and_route_and_reaches_the_gateway(root):
    cid = out(run(root, "run", "-d", "--name", "wired", IMAGE, "sleep", "60")).strip()
    veth = network.veth_name(cid)
    try:
        settings = inspect(root, "wired")["NetworkSettings"]
        ip, prefix, gateway, mac = (settings[k] for k in ("IPAddress", "IPPrefixLen", "Gateway", "MacAddress"))
        bridge = bridges(root)["bridge"]["Options"]["bridge"]
        inside = out(run(root, "exec", "wired", "sh", "-c",
                         "ip -o -4 addr show dev eth0; ip route; ip -o link show eth0; ip -o link show lo; "
                         f"ping -c 1 -W 5 {gateway}"))
        assert f"inet {ip}/{prefix} " in inside
        assert f"default via {gateway} dev eth0" in inside
        assert f"link/ether {mac} " in inside and mac == network.mac_for(ip)
        assert all(",UP" in line for line in inside.splitlines() if ": lo:" in line or ": eth0@" in line)
        assert " 0% packet loss" in inside
        # The host end is a port of the network's bridge, and the bridge kept its own fixed MAC.
        assert os.path.realpath(f"/sys/class/net/{veth}/master") == os.path.realpath(f"/sys/class/net/{bridge}")
        with open(f"/sys/class/net/{bridge}/address") as f:
            assert f.read().strip() == network.mac_for(gateway)
    finally:
        run(root, "rm", "-f", "wired")
    assert not os.path.exists(f"/sys/class/net/{veth}")


def test_a_failure_inside_the_new_namespace_leaves_nothing_and_the_caller_where_it_was(root, monkeypatch):
    """In-process, as the shim does it: the last request fails after the veth exists."""
    def refuse(self, gateway):
        raise netlink.NetlinkError(errno.ENETUNREACH, f"add default route via {gateway}: injected failure")

    monkeypatch.setattr(netlink.RouteSocket, "add_default_route", refuse)
    engine = Engine(root)
    rec = types.SimpleNamespace(id=os.urandom(32).hex(), name="wirefail", extra={}, spec={"network": "bridge"})
    netns_before = os.readlink("/proc/thread-self/ns/net")
    fds_before = sorted(os.listdir("/proc/self/fd"))
    leases_before = footprint(root)["leases"]
    try:
        with pytest.raises(ContainerStartError) as info:
            network.attach(engine, rec)
        assert str(info.value) == ("cannot set up the container's network: add default route via "
                                   f"{bridges(root)['bridge']['IPAM']['Config'][0]['Gateway']}: injected failure")
        assert os.readlink("/proc/thread-self/ns/net") == netns_before
        assert sorted(os.listdir("/proc/self/fd")) == fds_before
        assert not os.path.exists(f"/sys/class/net/{network.veth_name(rec.id)}")
        assert footprint(root)["leases"] == leases_before
    finally:
        network.delete_link(network.veth_name(rec.id))
        network.Networks(engine).release(rec.id)


def test_the_iptables_fallback_adds_and_removes_the_masquerade_rule(tmp_path, monkeypatch):
    """Where nft is missing or refuses (legacy kernels, minimal guests) the engine falls back to iptables;
    scripts/setup installs both, so the fallback is exercised here on its own root."""
    monkeypatch.setattr(network, "_firewall", "iptables")
    engine = Engine(str(tmp_path))
    nets = network.Networks(engine)
    tag = network.root_tag(str(tmp_path))
    chain = network.iptables_chain(tag)
    try:
        record = nets.create("ipt")
        rules = network.nat_rules(tag)
        assert f'-A {chain} -s {record["Subnet"]} ! -o {record["Bridge"]}' in rules and "MASQUERADE" in rules
        postrouting = subprocess.run(["iptables", "-t", "nat", "-S", "POSTROUTING"], capture_output=True,
                                     text=True, check=True).stdout
        assert f"-A POSTROUTING -j {chain}" in postrouting
    finally:
        with contextlib.suppress(Exception):
            nets.remove("ipt")
    assert network.nat_rules(tag) == ""
    postrouting = subprocess.run(["iptables", "-t", "nat", "-S", "POSTROUTING"], capture_output=True,
                                 text=True, check=True).stdout
    assert chain not in postrouting
    assert not os.path.exists(f'/sys/class/net/{record["Bridge"]}')


def test_network_none_has_only_loopback(root):
    links = out(run(root, "run", "--rm", "--network", "none", IMAGE, "ip", "-o", "link"))
    assert [line.split(":")[1].strip() for line in links.splitlines()] == ["lo"]


def test_outbound_traffic_reaches_a_server_on_the_gateway(root):
    config = bridges(root)["bridge"]["IPAM"]["Config"][0]
    gateway = config["Gateway"]

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            body = f"seen {self.client_address[0]}".encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer((gateway, 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        proc = run(root, "run", "--rm", IMAGE, "wget", "-qO-", f"http://{gateway}:{server.server_port}/")
        client = ipaddress.ip_address(out(proc).split()[1])
        # The request came from the container's own address on the bridge, not from the host.
        assert client in ipaddress.ip_network(config["Subnet"]) and str(client) != gateway
    finally:
        server.shutdown()
        server.server_close()


def test_port_in_use_is_one_error_and_creates_nothing(root):
    before = footprint(root)
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        proc = run(root, "run", "--name", "clash", "-p", f"{port}:80", IMAGE, "true", check=False)
    assert proc.returncode == 125
    lines = err(proc).splitlines()
    assert lines[0] == f"Error: cannot publish 127.0.0.1:{port}/tcp: the port is already in use"
    assert all(line.startswith(("Error:", "Hint:")) for line in lines)
    assert "clash" not in out(run(root, "ps", "-a"))
    assert footprint(root) == before


def test_publish_all_exposed_ports(root):
    store = Store(os.path.join(root, "images"))
    image = store.resolve(IMAGE)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for layer in store.layer_dirs(image):
            tar.add(layer, arcname=".")
    buf.seek(0)
    import_rootfs(store, buf, "localhost/busybox-exposed", {"Cmd": HTTPD}, changes=["EXPOSE 80"])
    run(root, "run", "-d", "--name", "exposed", "-P", "localhost/busybox-exposed")
    try:
        ports = inspect(root, "exposed")["NetworkSettings"]["Ports"]
        assert list(ports) == ["80/tcp"] and ports["80/tcp"][0]["HostIp"] == "127.0.0.1"
        assert http_get(f"http://127.0.0.1:{ports['80/tcp'][0]['HostPort']}/").startswith("hello-")
    finally:
        run(root, "rm", "-f", "exposed")
        run(root, "rmi", "localhost/busybox-exposed")


def test_killed_shim_and_container_leave_a_lease_that_is_reclaimed(root):
    run(root, "run", "-d", "--name", "victim", IMAGE, "sleep", "300")
    data = inspect(root, "victim")
    ip = data["NetworkSettings"]["IPAddress"]
    with open(os.path.join(root, "containers", data["Id"], "state.json")) as f:
        rec = json.load(f)
    for pid in (rec["shim_pid"], rec["pid"]):  # both processes were started by this test's CLI call
        os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not inspect(root, "victim")["State"]["Running"], 10, "the killed container to stop running")
    # Its lease is stale now: the next container gets the same (lowest free) address back.
    proc = run(root, "run", "--rm", IMAGE, "ip", "-o", "-4", "addr", "show", "eth0")
    assert f" {ip}/" in out(proc)
    run(root, "rm", "-f", "victim")
    assert footprint(root)["leases"]["bridge"] == {}


def test_concurrent_runs_get_distinct_addresses(root):
    before = footprint(root)
    names = [f"conc{i}" for i in range(10)]
    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        procs = list(pool.map(lambda n: cli(["run", "-d", "--name", n, "-p", "80", IMAGE, "sleep", "60"],
                                            root=root), names))
    try:
        assert all(p.returncode == 0 for p in procs), [err(p) for p in procs if p.returncode]
        ips = [inspect(root, n)["NetworkSettings"]["IPAddress"] for n in names]
        ports = [inspect(root, n)["NetworkSettings"]["Ports"]["80/tcp"][0]["HostPort"] for n in names]
        assert len(set(ips)) == 10 and all(ips) and len(set(ports)) == 10
    finally:
        with concurrent.futures.ThreadPoolExecutor(10) as pool:
            list(pool.map(lambda n: cli(["rm", "-f", n], root=root), names))
    assert footprint(root) == before


def host_veths():
    """runner's host-side veths (``vr<id>``), on a bridge or not."""
    return {name for name in os.listdir("/sys/class/net") if name.startswith("vr")}


def test_fifty_run_rm_cycles_leave_nothing_behind(root):
    before = footprint(root)
    assert before["veths"] == [] and all(v == {} for v in before["leases"].values())
    veths_before = host_veths()
    for i in range(25):
        run(root, "run", "--rm", "-p", "80", IMAGE, "true")
        run(root, "run", "-d", "--name", f"cycle{i}", "-p", "80", IMAGE, "sleep", "60")
        run(root, "rm", "-f", f"cycle{i}")
    assert footprint(root) == before
    assert host_veths() <= veths_before  # none left, not even one that fell off its bridge
