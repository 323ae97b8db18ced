"""`runner network connect` / `disconnect` through the real CLI: real veths moved into running containers'
namespaces, leases, hosts files and traffic between containers on bridges this module creates.

The module uses its own engine root (its bridges are ``rn<tag><n>``); every test removes what it started and
checks that no veth of its containers is left on the host, and the teardown checks bridges and NAT rules.
"""

import json
import os
import signal
import types

import pytest

from runner.engine import netlink, network
from runner.engine.engine import Engine
from runner.engine.state import proc_start_time
from runner.errors import ContainerStartError
from tests.helpers import cli, err, out, wait_for
from tests.native.test_network import _teardown

pytestmark = [pytest.mark.root, pytest.mark.network]

IMAGE = "localhost/busybox"  # (its wget crashes with -T: misses are checked by ping)
HTTPD = ["sh", "-c", "mkdir -p /www && echo hello-$HOSTNAME > /www/index.html && exec httpd -f -p 80 -h /www"]
WGET = "for i in $(seq 50); do wget -qO- http://{}/ && exit 0; sleep 0.1; done; exit 1"


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("runner-netconnect-root"))
    try:
        warm = cli(["run", "--rm", IMAGE, "true"], root=path)  # builds the image and the default network
        assert warm.returncode == 0, err(warm)
        for name in ("ncfront", "ncback"):
            assert cli(["network", "create", name], root=path).returncode == 0
        yield path
    finally:
        _teardown(path)


def run(root, *args, check=True):
    proc = cli(list(args), root=root)
    if check:
        assert proc.returncode == 0, f"runner {' '.join(args)}: {err(proc)}"
    return proc


def inspect(root, ref):
    return json.loads(out(run(root, "inspect", ref)))[0]


def sh(root, ref, script, check=True):
    return run(root, "exec", ref, "sh", "-c", script, check=check)


def bridge_of(root, name):
    return json.loads(out(run(root, "network", "inspect", name)))[0]["Options"]["bridge"]


def host_veths(cid):
    """The host ends of container ``cid``'s veths (eth0's and the others')."""
    return sorted(link for link in os.listdir("/sys/class/net")
                  if link == network.veth_name(cid) or (link.startswith("vx") and link.endswith(cid[:10])))


def leases(root, name):
    path = os.path.join(root, "networks", name + ".leases.json")
    with open(path) as f:
        return {lease["Name"] for lease in json.load(f).values()}


def remove(root, *cids):
    for cid in cids:
        if cid:
            run(root, "rm", "-f", cid, check=False)
    left = {cid[:12]: host_veths(cid) for cid in cids if cid and host_veths(cid)}
    assert not left, f"veths left on the host: {left}"


def test_a_running_container_joins_a_network_reaches_its_peers_by_name_and_leaves_it(root):
    peer = client = None
    try:
        peer = out(run(root, "run", "-d", "--name", "ncpeer", "--network", "ncfront", IMAGE, *HTTPD)).strip()
        client = out(run(root, "run", "-d", "--name", "ncclient", IMAGE, "sleep", "300")).strip()
        before = sh(root, "ncclient", "ping -c 1 -W 2 ncpeer", check=False)
        assert before.returncode != 0 and "bad address" in err(before)

        assert out(run(root, "network", "connect", "--alias", "cli-alias", "ncfront", "ncclient")) == ""
        assert out(sh(root, "ncclient", WGET.format("ncpeer"))) == f"hello-{peer[:12]}\n"
        sh(root, "ncpeer", "ping -c 1 -W 5 ncclient && ping -c 1 -W 5 cli-alias")  # and back, by its alias
        nets = inspect(root, "ncclient")["NetworkSettings"]["Networks"]
        assert sorted(nets) == ["bridge", "ncfront"] and nets["ncfront"]["Aliases"] == ["cli-alias"]
        ip = nets["ncfront"]["IPAddress"]
        inside = out(sh(root, "ncclient", "ip -o -4 addr show dev eth1; ip route"))
        assert f"inet {ip}/{nets['ncfront']['IPPrefixLen']} " in inside
        assert f"default via {nets['bridge']['Gateway']} dev eth0" in inside  # the default route stays eth0's
        veth = network.veth_name(client, 1)
        assert os.path.realpath(f"/sys/class/net/{veth}/master") == \
            os.path.realpath(f"/sys/class/net/{bridge_of(root, 'ncfront')}")
        assert leases(root, "ncfront") == {"ncpeer", "ncclient"}

        assert out(run(root, "network", "disconnect", "ncfront", "ncclient")) == ""
        after = sh(root, "ncclient", "ping -c 1 -W 2 ncpeer", check=False)
        assert after.returncode != 0 and "bad address" in err(after)
        hosts = out(run(root, "exec", "ncpeer", "cat", "/etc/hosts"))
        assert "ncclient" not in hosts and "cli-alias" not in hosts and "\tncpeer " in hosts
        assert "eth1" not in out(sh(root, "ncclient", "ip -o link"))
        assert not os.path.exists(f"/sys/class/net/{veth}")
        assert leases(root, "ncfront") == {"ncpeer"}
        assert sorted(inspect(root, "ncclient")["NetworkSettings"]["Networks"]) == ["bridge"]
    finally:
        remove(root, client, peer)


def test_a_created_container_connected_before_its_start_and_a_restart_keeps_the_changed_set(root):
    peer = box = None
    try:
        peer = out(run(root, "run", "-d", "--name", "ncweb", "--network", "ncback", IMAGE, *HTTPD)).strip()
        box = out(run(root, "create", "--name", "ncbox", IMAGE, "sleep", "300")).strip()
        run(root, "network", "connect", "--alias", "early", "ncback", "ncbox")  # recorded: it does not run
        nets = inspect(root, "ncbox")["NetworkSettings"]["Networks"]
        assert sorted(nets) == ["bridge", "ncback"] and nets["ncback"]["IPAddress"] == ""
        assert host_veths(box) == []
        run(root, "start", "ncbox")
        assert out(sh(root, "ncbox", WGET.format("ncweb"))).startswith("hello-")
        sh(root, "ncweb", "ping -c 1 -W 5 early")

        run(root, "network", "connect", "ncfront", "ncbox")  # live, then stop and start: still on all three
        run(root, "stop", "-t", "1", "ncbox")
        assert host_veths(box) == []  # the shim deleted every veth, the live-connected one too
        run(root, "start", "ncbox")
        nets = inspect(root, "ncbox")["NetworkSettings"]["Networks"]
        assert sorted(nets) == ["bridge", "ncback", "ncfront"] and all(n["IPAddress"] for n in nets.values())
        inside = out(sh(root, "ncbox", "ip -o -4 addr"))
        assert all(f"inet {n['IPAddress']}/" in inside for n in nets.values())
        assert out(sh(root, "ncbox", WGET.format("ncweb"))).startswith("hello-")

        run(root, "stop", "-t", "1", "ncbox")  # disconnected while stopped: gone from the next start on
        run(root, "network", "disconnect", "ncback", "ncbox")
        run(root, "start", "ncbox")
        assert sorted(inspect(root, "ncbox")["NetworkSettings"]["Networks"]) == ["bridge", "ncfront"]
        lost = sh(root, "ncbox", "ping -c 1 -W 2 ncweb", check=False)
        assert lost.returncode != 0 and "bad address" in err(lost)
    finally:
        remove(root, box, peer)


def test_the_first_network_leaving_moves_the_default_route_and_the_last_leaves_only_loopback(root):
    cid = None
    try:
        cid = out(run(root, "run", "-d", "--name", "ncmove", "--network", "ncfront", IMAGE, "sleep", "300")).strip()
        run(root, "network", "connect", "ncback", "ncmove")
        back = inspect(root, "ncmove")["NetworkSettings"]["Networks"]["ncback"]
        run(root, "network", "disconnect", "ncfront", "ncmove")
        assert f"default via {back['Gateway']} dev eth1" in out(sh(root, "ncmove", "ip route"))
        info = inspect(root, "ncmove")
        assert info["HostConfig"]["NetworkMode"] == "ncfront"  # as Docker: the mode the user chose
        assert info["NetworkSettings"]["IPAddress"] == back["IPAddress"]

        run(root, "network", "disconnect", "ncback", "ncmove")
        assert [line.split(":")[1].strip() for line in out(sh(root, "ncmove", "ip -o link")).splitlines()] == ["lo"]
        assert inspect(root, "ncmove")["NetworkSettings"]["Networks"] == {}
        assert "ncmove" not in leases(root, "ncback") and host_veths(cid) == []
        hosts = out(run(root, "exec", "ncmove", "cat", "/etc/hosts"))
        assert back["IPAddress"] not in hosts and f"\t{cid[:12]}\n" in hosts

        run(root, "network", "connect", "ncback", "ncmove")  # on no network: the new one is eth0, with the route
        again = inspect(root, "ncmove")["NetworkSettings"]["Networks"]["ncback"]
        assert f"default via {again['Gateway']} dev eth0" in out(sh(root, "ncmove", "ip route"))
        assert host_veths(cid) == [network.veth_name(cid)]
        run(root, "stop", "-t", "1", "ncmove")  # it was started on no network: its shim still cleans up
        assert host_veths(cid) == [] and "ncmove" not in leases(root, "ncback")
    finally:
        remove(root, cid)


def test_dockers_errors(root):
    cids = []
    try:
        cids.append(out(run(root, "run", "-d", "--name", "ncerr", IMAGE, "sleep", "300")).strip())
        cids.append(out(run(root, "run", "-d", "--name", "ncnone", "--network", "none", IMAGE, "sleep", "300")).strip())
        cids.append(out(run(root, "run", "-d", "--name", "nchost", "--network", "host", IMAGE, "sleep", "300")).strip())
        cids.append(out(run(root, "create", "--name", "ncstopped", "--network", "ncfront", IMAGE, "true")).strip())
        run(root, "network", "connect", "ncback", "ncerr")
        cases = [
            (("connect", "ncback", "ncerr"), "endpoint with name ncerr already exists in network ncback"),
            (("connect", "ncfront", "ncnone"), "container cannot be connected to multiple networks with one of "
                                               "the networks in private (none) mode"),
            (("connect", "ncfront", "nchost"), "container sharing network namespace with another container or "
                                               "host cannot be connected to any other network"),
            (("connect", "host", "ncerr"), "cannot connect container to host network - container must be "
                                           "created in host network mode"),
            (("disconnect", "host", "nchost"), "cannot disconnect container from host network - container was "
                                               "created in host network mode"),
            (("disconnect", "ncfront", "ncerr"), f"container {cids[0]} is not connected to network ncfront"),
            (("disconnect", "ncback", "ncstopped"), f"container {cids[3]} is not connected to the network ncback"),
            (("connect", "nosuchnet", "ncerr"), "network nosuchnet not found"),
            (("connect", "ncfront", "nosuchbox"), "no such container: nosuchbox"),
            (("connect", "--alias", "a", "bridge", "ncstopped"), "network-scoped alias is supported only for "
                                                                 "containers in user defined networks"),
        ]
        for args, text in cases:
            proc = run(root, "network", *args, check=False)
            assert proc.returncode == 125 and f"Error: {text}" in err(proc), (args, err(proc))
            assert "Traceback" not in err(proc)
        run(root, "network", "connect", "ncfront", "ncstopped")  # a stopped one already on it: left as it is
        assert sorted(inspect(root, "ncstopped")["NetworkSettings"]["Networks"]) == ["ncfront"]
        busy = run(root, "network", "rm", "ncback", check=False)
        assert busy.returncode == 125 and "ncerr" in err(busy)
    finally:
        remove(root, *cids)


def test_a_connect_that_fails_inside_leaves_no_veth_no_lease_and_the_caller_where_it_was(root, monkeypatch):
    """In-process, as the engine runs it: the address request fails after the veth exists."""
    cid = None
    try:
        cid = out(run(root, "run", "-d", "--name", "ncfail", IMAGE, "sleep", "300")).strip()

        def refuse(self, name, address, prefixlen):
            raise netlink.NetlinkError(17, f"add address {address}/{prefixlen} to {name}: injected failure")

        monkeypatch.setattr(netlink.RouteSocket, "add_address", refuse)
        netns_before = os.readlink("/proc/thread-self/ns/net")
        fds_before = sorted(os.listdir("/proc/self/fd"))
        spec_before = inspect(root, "ncfail")["NetworkSettings"]["Networks"]
        with pytest.raises(ContainerStartError, match="cannot connect the container to network ncfront: add "
                                                      "address .* to eth1: injected failure"):
            Engine(root).network_connect("ncfront", "ncfail")
        assert os.readlink("/proc/thread-self/ns/net") == netns_before
        assert sorted(os.listdir("/proc/self/fd")) == fds_before
        assert host_veths(cid) == [network.veth_name(cid)]  # eth0's only
        assert "ncfail" not in leases(root, "ncfront")
        assert inspect(root, "ncfail")["NetworkSettings"]["Networks"] == spec_before
        assert "eth1" not in out(sh(root, "ncfail", "ip -o link"))
    finally:
        monkeypatch.undo()
        remove(root, cid)


def test_disconnect_force_drops_what_a_vanished_container_left(root):
    """A lease naming a container that no longer exists (a crash between its removal and the release)."""
    engine = Engine(root)
    nets = network.Networks(engine)
    ghost = types.SimpleNamespace(id="f" * 64, name="ncghost", spec={}, extra={})
    owner = (os.getpid(), proc_start_time(os.getpid()))  # an owner that lives: the lease is not stale
    nets.lease(nets.get("ncfront"), ghost, "ghost", [], owner=owner)
    try:
        assert "ncghost" in leases(root, "ncfront")
        plain = run(root, "network", "disconnect", "ncfront", "ncghost", check=False)
        assert plain.returncode == 125 and "no such container: ncghost" in err(plain)
        run(root, "network", "disconnect", "-f", "ncfront", "ncghost")
        assert "ncghost" not in leases(root, "ncfront")
    finally:
        nets.release(ghost.id)


def test_a_restart_policy_restart_keeps_what_connect_changed(root):
    """The shim restarts the workload in the same namespace: the live-connected interface and its record stay."""
    cid = None
    try:
        cid = out(run(root, "run", "-d", "--name", "ncpolicy", "--restart", "always", IMAGE, "sleep", "300")).strip()
        run(root, "network", "connect", "ncfront", "ncpolicy")
        before = inspect(root, "ncpolicy")
        os.kill(before["State"]["Pid"], signal.SIGKILL)  # a crash, not a user's kill: the policy restarts it
        after = wait_for(lambda: (lambda i: i if i["RestartCount"] == 1 and i["State"]["Running"] else None)(
            inspect(root, "ncpolicy")), 30, "the restart policy to start it again")
        ip = after["NetworkSettings"]["Networks"]["ncfront"]["IPAddress"]
        assert ip == before["NetworkSettings"]["Networks"]["ncfront"]["IPAddress"]
        assert f"inet {ip}/" in out(sh(root, "ncpolicy", "ip -o -4 addr show dev eth1"))
        assert "ncpolicy" in leases(root, "ncfront")
    finally:
        remove(root, cid)
