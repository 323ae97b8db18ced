"""Container networking: ``none``, ``host``, the default ``bridge`` network and user-defined networks.

Why it is built this way:

* **One Linux bridge per network, one veth pair per container.** The default network ``bridge`` is the
  bridge ``runner0`` (10.88.0.0/16 unless that collides); user networks get ``runner1``, ``runner2``...
  An engine root other than /var/lib/runner (tests, ``$RUNNER_ROOT``) names its bridges ``rn<tag><n>`` and
  its nftables table ``runner_<tag>``, ``tag`` being a hash of the root, so two roots never fight over a
  name. Each bridge carries the alias ``runner:<network>:<root>``: a bridge whose root no longer knows the
  network (a deleted test root, a crash during ``network rm``) is swept away when a network is next created.
* **Links, addresses and routes are rtnetlink requests from this process** (``runner.engine.netlink``),
  not ``ip`` processes: an exec costs 100-200 ms in a TCG guest, a netlink request microseconds.
* **The network namespace is held by a file descriptor, not by a /run/netns file.** The shim opens a
  netlink socket on the host, ``unshare``s a fresh network namespace, opens a second socket and
  ``/proc/thread-self/ns/net`` there, and ``setns``es straight back; each socket keeps talking to its own
  namespace, so the veth (peer born as eth0 inside) is made through the first and lo, eth0, the address
  and the route through the second. It hands ``/proc/<shim pid>/fd/<fd>`` to the runtime, which joins it
  (a namespace entry with a ``path`` in config.json) before the workload execs. Nothing is left on disk:
  when the shim and the container are gone, even after SIGKILL, the kernel destroys the namespace and the
  veth pair with it. The shim still deletes the host-side veth itself on exit, because the kernel does
  that asynchronously and ``rm`` must leave nothing behind when it returns.
* **Leases are owned by the shim.** The IPAM is a JSON file per network under ``<root>/networks``,
  changed only under an ``fcntl`` lock. A lease names the shim (pid and start time) and the container; a
  lease whose shim and container are both dead is stale and reclaimed by the next allocation, so a killed
  engine never leaks addresses.
* **Names on user networks come from /etc/hosts.** The engine bind-mounts ``<container>/etc/hosts``;
  when a container joins or leaves a user network, the hosts files of every container on it are rewritten
  in place (same inode, so the bind mount sees it). No DNS server to run or to crash. The default
  ``bridge`` network, as in Docker, resolves only the container's own name.
* **Published ports are a userland proxy inside the shim** (``runner.engine.portproxy``): its lifetime is
  exactly the container's, it works for 127.0.0.1 (DNAT to a bridge address from loopback would need
  ``route_localnet``), and the listening sockets are bound *first*, so a port in use fails the start before
  any veth, lease or rule exists. Ports bind to 127.0.0.1 unless the user gives an address: unlike Docker,
  publishing never exposes a container to the network by accident.
* **Outbound NAT** is one masquerade rule per network in a table (nftables) or chain (iptables, when nft
  is unusable) owned by runner and regenerated whole from the network records, atomically: the rule text
  is built by pure functions (``nft_script``, ``iptables_restore_script``), unit-tested without root.

VM backend: the guest runs this very engine, so everything above happens inside the guest unchanged. The
host side reads ``Engine.inspect(ref)["NetworkSettings"]["Ports"]`` (Docker's shape, from runner.engine.views:
``{"80/tcp": [{"HostIp": "127.0.0.1", "HostPort": "8080"}]}``, filled once the container runs) and adds
``hostfwd_add`` host ``HostIp:HostPort`` → guest ``:HostPort`` for each entry (``udp`` for ``/udp`` keys),
removing them when the container exits. The agent builds its Engine with ``publish_address="0.0.0.0"`` so
that the guest-side proxy listens where QEMU's forwards arrive; what ``inspect`` reports stays the address
the user asked for on the host.

Standard library only (runs in the guest too); ``nft`` or ``iptables`` for the NAT rules, run once per
network change, never per container.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re

from runner.engine import netlink
from runner.engine import DEFAULT_ROOT
from runner.engine.state import alive, now, proc_start_time, write_json_atomic
from runner.errors import Conflict, ContainerStartError, NotFound, PlatformError, RunnerError, UsageError
from runner.procs import FileLock

DEFAULT_NETWORK = "bridge"
BUILTIN_MODES = ("none", "host")
GLOBAL_LOCK = "/run/runner/network.lock"  # host-wide: subnet choice and bridges are shared by all roots
_NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$")
HOSTS_BASE = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"


# ------------------------------------------------------------------------------------------ pure helpers

def valid_name(name: str) -> bool:
    return bool(_NAME_RE.match(name or "")) and name not in BUILTIN_MODES


def root_tag(root: str) -> str:
    """'' for the default root, else 6 hex chars naming this root's bridges and firewall table."""
    real = os.path.realpath(root)
    if real == DEFAULT_ROOT:
        return ""
    import hashlib  # imported where used, like subprocess and shutil: `--network none` needs none of them
    return hashlib.sha256(real.encode()).hexdigest()[:6]


def bridge_name(tag: str, index: int) -> str:
    return f"runner{index}" if not tag else f"rn{tag}{index}"  # at most 15 characters (IFNAMSIZ)


def table_name(tag: str) -> str:
    return "runner" if not tag else f"runner_{tag}"


def veth_name(cid: str, index: int = 0) -> str:
    """The host end of the container's veth on its first network (``index`` 0) or its extra ones (1..9)."""
    return "vr" + cid[:11] if not index else f"vx{index}{cid[:10]}"


def mac_for(ip: str) -> str:
    """02:42 + the IPv4 address, as Docker does: a reused address keeps its MAC, so no neighbour cache
    on the bridge ever points a fresh container's address at the previous owner's hardware address."""
    return "02:42:" + ":".join(f"{b:02x}" for b in ipaddress.IPv4Address(ip).packed)


def candidate_subnets() -> list[ipaddress.IPv4Network]:
    """10.88.0.0/16 first (the default network), then further /16s, then /24s in 192.168."""
    out = [ipaddress.IPv4Network(f"10.{i}.0.0/16") for i in range(88, 128)]
    out += [ipaddress.IPv4Network(f"172.{i}.0.0/16") for i in range(18, 32)]
    out += [ipaddress.IPv4Network(f"192.168.{i}.0/24") for i in range(0, 256)]
    return out


def choose_subnet(used: list[ipaddress.IPv4Network],
                  candidates: list[ipaddress.IPv4Network] | None = None) -> ipaddress.IPv4Network:
    """The first candidate overlapping nothing in ``used`` (host addresses, routes, resolvers, networks)."""
    for net in candidates if candidates is not None else candidate_subnets():
        if not any(net.overlaps(u) for u in used):
            return net
    raise Conflict("no free private subnet left for a new network", hint="give one with --subnet")


def nft_script(table: str, networks: list[dict]) -> str:
    """The whole runner table, replaced atomically by one ``nft -f`` (empty list: the table is deleted).

    The ``add`` before ``delete`` makes the delete succeed when the table does not exist yet.
    """
    lines = [f"add table ip {table}", f"delete table ip {table}"]
    if networks:
        lines += [f"table ip {table} {{",
                  "\tchain postrouting {",
                  # srcnat priority (100), like iptables' nat POSTROUTING.
                  "\t\ttype nat hook postrouting priority 100; policy accept;"]
        for net in networks:
            # Masquerade what leaves the network's subnet through another interface (the uplink); traffic
            # between containers on the bridge keeps its addresses.
            lines.append(f'\t\tip saddr {net["Subnet"]} oifname != "{net["Bridge"]}" masquerade '
                         f'comment "runner network {net["Name"]}"')
        lines += ["\t}", "}"]
    return "\n".join(lines) + "\n"


def iptables_chain(tag: str) -> str:
    return "RUNNER-NAT" if not tag else f"RUNNER-NAT-{tag}"


def iptables_restore_script(chain: str, networks: list[dict]) -> str:
    """``iptables-restore --noflush`` input: declaring the chain empties it, then one rule per network."""
    lines = ["*nat", f":{chain} - [0:0]"]
    for net in networks:
        lines.append(f'-A {chain} -s {net["Subnet"]} ! -o {net["Bridge"]} -j MASQUERADE '
                     f'-m comment --comment "runner network {net["Name"]}"')
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def resolv_conf(host_text: str, upstream_text: str | None = None) -> str:
    """The host's resolv.conf made usable from another network namespace.

    A loopback resolver (systemd-resolved's 127.0.0.53, dnsmasq on 127.0.1.1) is unreachable from inside
    the container, so its entries are dropped; when that leaves none, the stub's own upstreams are used
    (``upstream_text``, e.g. /run/systemd/resolve/resolv.conf).
    """
    def split(text: str) -> tuple[list[str], list[str]]:
        servers, other = [], []
        for line in (text or "").splitlines():
            words = line.split()
            if words and words[0] == "nameserver" and len(words) > 1:
                try:
                    if not ipaddress.ip_address(words[1].split("%")[0]).is_loopback:
                        servers.append(words[1])
                except ValueError:
                    continue
            elif words and words[0] in ("search", "domain", "options"):
                other.append(line.strip())
        return servers, other

    servers, other = split(host_text)
    if not servers and upstream_text:
        servers = split(upstream_text)[0]
    return "".join(f"nameserver {s}\n" for s in servers) + "".join(f"{o}\n" for o in other)


def hosts_file(entries: list[tuple[str, list[str]]]) -> str:
    """/etc/hosts: localhost lines, then ``ip<TAB>names`` for the container itself and its peers."""
    return HOSTS_BASE + "".join(f"{ip}\t{' '.join(names)}\n" for ip, names in entries)


def effective_ports(ports: list[dict], publish_all: bool, exposed: dict | None) -> list[dict]:
    """The user's ``-p`` mappings plus, with ``-P``, every image ``ExposedPorts`` entry not already
    published (each to a random host port on 127.0.0.1)."""
    out = [dict(p) for p in ports]
    if publish_all:
        have = {(p["container_port"], p["protocol"]) for p in out}
        for key in sorted(exposed or {}):
            port, _, proto = str(key).partition("/")
            proto = proto or "tcp"
            if port.isdigit() and proto in ("tcp", "udp") and (int(port), proto) not in have:
                out.append({"container_port": int(port), "host_port": 0, "host_ip": "127.0.0.1",
                            "protocol": proto})
    return out


# ------------------------------------------------------------------------------------------ small effects

@contextlib.contextmanager
def _flock(path: str):
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    with FileLock(path):
        yield


def _run(argv: list[str], stdin: str | None = None, what: str = "set up the network") -> str:
    import subprocess
    proc = subprocess.run(argv, input=stdin, capture_output=True, text=True)
    if proc.returncode != 0:
        detail = (proc.stderr.strip().splitlines() or [f"{argv[0]} exited with {proc.returncode}"])[-1]
        raise ContainerStartError(f"cannot {what}: {detail}")
    return proc.stdout


@contextlib.contextmanager
def _netlink(what: str):
    """A host-namespace rtnetlink socket; a refusal becomes ``cannot <what>: <request>: <reason>``."""
    try:
        with netlink.RouteSocket() as nl:
            yield nl
    except OSError as exc:
        raise ContainerStartError(f"cannot {what}: {exc}") from exc


def link_exists(name: str) -> bool:
    with _netlink(f"look up {name}") as nl:
        return nl.link_exists(name)


def delete_link(name: str) -> None:
    """Best effort, like every cleanup here: a link that is already gone is not an error."""
    with contextlib.suppress(OSError, RunnerError), _netlink(f"delete {name}") as nl:
        nl.delete_link(name)


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def host_used_networks() -> list[ipaddress.IPv4Network]:
    """Every IPv4 prefix in use on this host: addresses, routes of every table, and DNS resolvers (a
    network hiding the resolver would make name lookups from containers go nowhere)."""
    used: list[ipaddress.IPv4Network] = []

    def add(text: str) -> None:
        with contextlib.suppress(ValueError):
            used.append(ipaddress.IPv4Network(text, strict=False))

    with _netlink("list the host's addresses and routes") as nl:
        for prefix in nl.ipv4_prefixes():
            add(prefix)
    for line in _read("/etc/resolv.conf").splitlines():
        words = line.split()
        if len(words) > 1 and words[0] == "nameserver":
            add(words[1])
    return used


def _set_ip_forward() -> None:
    # Containers reach the outside world through the host: the kernel must route between the bridge and
    # the uplink. Only ever switched on (as Docker does): other software may rely on it being on.
    with contextlib.suppress(OSError):
        with open("/proc/sys/net/ipv4/ip_forward", "r+") as f:
            if f.read().strip() != "1":
                f.seek(0)
                f.write("1")


_firewall: str | None = None


def firewall() -> str:
    """'nft' when nftables works here, else 'iptables' (legacy kernels, minimal guests)."""
    import shutil
    import subprocess
    global _firewall
    if _firewall is None:
        nft = shutil.which("nft")
        if nft and subprocess.run([nft, "list", "tables"], capture_output=True).returncode == 0:
            _firewall = "nft"
        elif shutil.which("iptables-restore"):
            _firewall = "iptables"
        else:
            raise PlatformError("bridge networking needs nftables (nft) or iptables for outbound NAT",
                                hint="install nftables, or use --network host or --network none")
    return _firewall


def apply_nat(tag: str, networks: list[dict]) -> None:
    """Make the kernel's NAT rules for this root match ``networks`` exactly."""
    import shutil
    import subprocess
    if firewall() == "nft":
        _run([shutil.which("nft"), "-f", "-"], nft_script(table_name(tag), networks), "update nftables rules")
    else:
        chain = iptables_chain(tag)
        if networks:
            _run(["iptables-restore", "--noflush"], iptables_restore_script(chain, networks),
                 "update iptables rules")
            jump = ["iptables", "-t", "nat", "-C", "POSTROUTING", "-j", chain]
            if subprocess.run(jump, capture_output=True).returncode != 0:
                _run(["iptables", "-t", "nat", "-A", "POSTROUTING", "-j", chain], what="update iptables rules")
        else:
            for args in (["-D", "POSTROUTING", "-j", chain], ["-F", chain], ["-X", chain]):
                subprocess.run(["iptables", "-t", "nat", *args], capture_output=True)
    if networks:
        _set_ip_forward()


def nat_rules(tag: str) -> str:
    """The root's NAT rules as the firewall in use lists them ("" when it has none): what an operator
    (or a test) reads to see what ``apply_nat`` left in the kernel, without guessing the tool."""
    import shutil
    import subprocess
    if firewall() == "nft":
        argv = [shutil.which("nft") or "nft", "list", "table", "ip", table_name(tag)]
    else:
        argv = ["iptables", "-t", "nat", "-S", iptables_chain(tag)]
    proc = subprocess.run(argv, capture_output=True, text=True)
    return proc.stdout if proc.returncode == 0 else ""


# ------------------------------------------------------------------------------------------ the store

class Networks:
    """Network records and leases of one engine root: ``<root>/networks/<name>.json`` and
    ``<name>.leases.json``, changed only under ``<root>/networks/.lock``."""

    def __init__(self, engine):
        self.engine = engine
        self.root = os.path.realpath(engine.root)
        self.dir = os.path.join(self.root, "networks")
        self.tag = root_tag(self.root)

    # -- records
    def lock(self):
        return _flock(os.path.join(self.dir, ".lock"))

    def _path(self, name: str, suffix: str = ".json") -> str:
        return os.path.join(self.dir, name + suffix)

    def names(self) -> list[str]:
        try:
            return sorted(e[:-5] for e in os.listdir(self.dir) if e.endswith(".json")
                          and not e.endswith(".leases.json"))
        except FileNotFoundError:
            return []

    def get(self, name: str) -> dict:
        try:
            with open(self._path(name)) as f:
                return json.load(f)
        except FileNotFoundError as exc:
            raise NotFound(f"network {name} not found",
                           hint=f"create it with 'runner network create {name}'") from exc

    def all(self) -> list[dict]:
        out = []
        for name in self.names():
            with contextlib.suppress(NotFound, ValueError):
                out.append(self.get(name))
        return out

    def leases(self, name: str) -> dict:
        try:
            with open(self._path(name, ".leases.json")) as f:
                return json.load(f)
        except (FileNotFoundError, ValueError):
            return {}

    def _save_leases(self, name: str, leases: dict) -> None:
        write_json_atomic(self._path(name, ".leases.json"), leases)

    def _stale(self, lease: dict) -> bool:
        """Neither the shim that took the lease nor the container it names is alive."""
        pid, start = lease.get("Shim") or (None, None)
        if alive(pid, start):
            return False
        with contextlib.suppress(Exception):
            rec = self.engine.state.load(lease["Id"])
            return not alive(rec.pid, rec.pid_start)
        return True

    def live_leases(self, name: str) -> dict:
        return {ip: lease for ip, lease in self.leases(name).items() if not self._stale(lease)}

    # -- networks
    def create(self, name: str, subnet: str | None = None, labels: dict | None = None) -> dict:
        if not valid_name(name):
            raise UsageError(f"invalid network name {name!r}",
                             hint="use letters, digits, '_', '.', '-' (not 'none' or 'host')")
        with _flock(GLOBAL_LOCK), self.lock():
            if os.path.exists(self._path(name)):
                raise Conflict(f"network {name} already exists")
            sweep_stale_bridges()
            mine = self.all()
            used = host_used_networks() + [ipaddress.IPv4Network(n["Subnet"]) for n in mine]
            if subnet is None:
                # 10.88.0.0/16 and index 0 (runner0) are kept for the default network, as docker0's are.
                pool = candidate_subnets() if name == DEFAULT_NETWORK else candidate_subnets()[1:]
                net = choose_subnet(used, pool)
            else:
                try:
                    net = ipaddress.IPv4Network(subnet, strict=True)
                except ValueError as exc:
                    raise UsageError(f"invalid subnet {subnet!r}: {exc}",
                                     hint="use an IPv4 CIDR such as 10.90.0.0/24") from exc
                if net.prefixlen > 29:
                    raise UsageError(f"subnet {subnet} is too small", hint="use a /29 or larger")
                clash = next((u for u in used if net.overlaps(u)), None)
                if clash is not None:
                    raise Conflict(f"subnet {net} overlaps {clash}, already in use on this host",
                                   hint="choose another --subnet, or omit it to pick a free one")
            index = 0 if name == DEFAULT_NETWORK else \
                min(set(range(1, len(mine) + 2)) - {n["Index"] for n in mine})
            record = {"Name": name, "Id": os.urandom(32).hex(), "Created": now(), "Driver": "bridge",
                      "Subnet": str(net), "Gateway": str(net.network_address + 1),
                      "Bridge": bridge_name(self.tag, index), "Index": index, "Labels": dict(labels or {})}
            os.makedirs(self.dir, mode=0o700, exist_ok=True)
            write_json_atomic(self._path(name), record)
            try:
                self._bring_up(record, mine + [record])
            except BaseException:
                os.unlink(self._path(name))
                delete_link(record["Bridge"])
                raise
            return record

    def ensure(self, name: str) -> dict:
        """The network's record with its bridge up; the default network is made on first use."""
        try:
            record = self.get(name)
        except NotFound:
            if name != DEFAULT_NETWORK:
                raise
            with contextlib.suppress(Conflict):  # a concurrent first run made it meanwhile
                return self.create(name)
            record = self.get(name)
        if not link_exists(record["Bridge"]):  # after a reboot, or deleted by hand
            with _flock(GLOBAL_LOCK), self.lock():
                if not link_exists(record["Bridge"]):
                    self._bring_up(record, self.all())
        return record

    def _bring_up(self, record: dict, networks: list[dict]) -> None:
        net = ipaddress.IPv4Network(record["Subnet"])
        br = record["Bridge"]
        delete_link(br)  # a leftover of ours with that name: start from a clean bridge
        with _netlink(f"create the bridge {br}") as nl:
            # A fixed MAC: otherwise the bridge takes the lowest MAC among its ports, which changes as
            # containers come and go and leaves stale gateway entries in their neighbour caches.
            nl.create_bridge(br, mac_for(record["Gateway"]), alias=f'runner:{record["Name"]}:{self.root}')
            nl.add_address(br, record["Gateway"], net.prefixlen)
        apply_nat(self.tag, networks)

    def remove(self, name: str) -> None:
        with _flock(GLOBAL_LOCK), self.lock():
            record = self.get(name)
            users = [lease["Name"] for lease in self.live_leases(name).values()]
            for cid in self.engine.state.ids():
                with contextlib.suppress(Exception):
                    rec = self.engine.state.load(cid)
                    wanted = [rec.spec.get("network")] + [n.get("name") for n in rec.spec.get("extra_networks") or []]
                    if name in wanted and rec.name not in users:
                        users.append(rec.name)
            if users:
                raise Conflict(f"network {name} is in use by {', '.join(sorted(users))}",
                               hint="remove those containers first")
            os.unlink(self._path(name))
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._path(name, ".leases.json"))
            apply_nat(self.tag, self.all())
            delete_link(record["Bridge"])

    def inspect(self, name: str) -> dict:
        from runner.engine import views
        record = self.get(name)
        prefix = ipaddress.IPv4Network(record["Subnet"]).prefixlen
        return views.network(record, self.live_leases(name), prefix, mac_for)

    # -- leases
    def lease(self, record: dict, rec, hostname: str, aliases: list[str] | None = None,
              owner: tuple | None = None) -> str:
        """Lease the lowest free address of the network to container ``rec`` on behalf of this process, or of
        ``owner`` (``(pid, start time)``: the running container's shim, for a ``network connect``);
        ``aliases``: its names on this network (default: the spec's, for its first network)."""
        net = ipaddress.IPv4Network(record["Subnet"])
        gateway = ipaddress.IPv4Address(record["Gateway"])
        with self.lock():
            leases = self.live_leases(record["Name"])  # stale leases are dropped here: reclaimed
            taken = set(leases) | {str(gateway)}
            for addr in net.hosts():
                if str(addr) not in taken:
                    break
            else:
                raise Conflict(f'network {record["Name"]} has no free address left ({net})')
            leases[str(addr)] = {"Id": rec.id, "Name": rec.name, "Hostname": hostname,
                                 "Aliases": list(rec.spec.get("aliases") or [] if aliases is None else aliases),
                                 "Shim": list(owner or (os.getpid(), proc_start_time(os.getpid())))}
            self._save_leases(record["Name"], leases)
            self._write_hosts(record, leases)
            return str(addr)

    def release(self, cid: str, network: str | None = None) -> None:
        """Drop every lease of container ``cid`` (or only its lease on ``network``) and tell its peers it left.
        When it leaves only one network it lives on: its own hosts file loses that network's peers too."""
        with self.lock():
            for name in self.names() if network is None else [network]:
                leases = self.leases(name)
                if any(lease["Id"] == cid for lease in leases.values()):
                    live = {ip: lease for ip, lease in leases.items() if lease["Id"] != cid}
                    self._save_leases(name, live)
                    with contextlib.suppress(NotFound):
                        self._write_hosts(self.get(name), live, also=() if network is None else (cid,))

    def rename(self, cid: str, new_name: str) -> None:
        """A renamed container's leases carry its new name, and its peers' hosts files say so."""
        with self.lock():
            for name in self.names():
                leases = self.leases(name)
                mine = [lease for lease in leases.values() if lease["Id"] == cid]
                if mine:
                    for lease in mine:
                        lease["Name"] = new_name
                    self._save_leases(name, leases)
                    with contextlib.suppress(NotFound):
                        self._write_hosts(self.get(name), self.live_leases(name))

    def _write_hosts(self, record: dict, leases: dict, also: tuple = ()) -> None:
        """Rewrite the hosts file of every container on the network (and of the containers ``also``, which
        just left it): its peers on every network it is on (only its own entry on ``bridge``). Called under
        the lock, after ``leases`` of ``record`` were saved."""
        def names(lease: dict) -> list[str]:
            return list(dict.fromkeys([lease["Name"], lease["Hostname"], *lease.get("Aliases", [])]))

        def ordered(items: dict) -> list:
            return sorted(items.items(), key=lambda kv: ipaddress.ip_address(kv[0]))

        ids = {lease["Id"] for lease in leases.values()} | set(also)
        entries: dict[str, list] = {cid: [] for cid in ids}
        for name in [record["Name"]] + [n for n in self.names() if n != record["Name"]]:
            net_leases = leases if name == record["Name"] else self.leases(name)
            if not ids & {lease["Id"] for lease in net_leases.values()}:
                continue
            peers = [(ip, names(lease)) for ip, lease in ordered(net_leases)]
            for ip, lease in net_leases.items():
                if lease["Id"] in ids:
                    entries[lease["Id"]] += [(ip, names(lease))] if name == DEFAULT_NETWORK else peers
        for cid, lines in entries.items():
            if lines:
                write_hosts(self.engine, cid, hosts_file(list(dict.fromkeys((ip, tuple(n)) for ip, n in lines))))
            else:  # on no network any more: only itself, as a container made without one
                with contextlib.suppress(Exception):
                    hostname = self.engine.state.load(cid).extra.get("hostname") or cid[:12]
                    write_hosts(self.engine, cid, hosts_file([("127.0.1.1", [hostname])]))


def write_hosts(engine, cid: str, text: str) -> None:
    """Replace the text of container ``cid``'s hosts file, best effort."""
    path = os.path.join(engine.state.dir(cid), "etc", "hosts")
    with contextlib.suppress(OSError):
        # In place (same inode, no O_CREAT): the file is bind-mounted into the running container,
        # and a container being removed must not get its directory re-created.
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC)
        with os.fdopen(fd, "w") as f:
            f.write(text)


def plug_endpoint(host: "netlink.RouteSocket", inside: "netlink.RouteSocket", netns_fd: int, ep: dict) -> None:
    """Endpoint ``ep``'s veth pair: the host end on its bridge, the peer in ``netns_fd`` as ``ep["Interface"]``
    with its address, up. ``host``/``inside``: netlink sockets bound to the two namespaces. Used at start for
    a container's extra networks and by a live ``network connect``."""
    host.create_veth(ep["Veth"], ep["Interface"], ep["MacAddress"], netns_fd, master=ep["Bridge"])
    inside.add_address(ep["Interface"], ep["IPAddress"], ep["IPPrefixLen"])
    inside.set_up(ep["Interface"])


def sweep_stale_bridges() -> None:
    """Delete runner bridges (and their root's NAT table) whose root no longer has their network.

    Called under the global lock. Identifies bridges by the alias ``runner:<network>:<root>`` they were
    created with, so it never touches a bridge it did not make.
    """
    try:
        links = os.listdir("/sys/class/net")
    except OSError:
        return
    for link in links:
        alias = _read(f"/sys/class/net/{link}/ifalias").strip()
        if not alias.startswith("runner:") or not os.path.isdir(f"/sys/class/net/{link}/bridge"):
            continue
        _, name, root = alias.split(":", 2)
        if os.path.exists(os.path.join(root, "networks", name + ".json")):
            continue
        delete_link(link)
        tag = root_tag(root)
        remaining = []
        with contextlib.suppress(OSError, ValueError):
            for entry in os.listdir(os.path.join(root, "networks")):
                if entry.endswith(".json") and not entry.endswith(".leases.json"):
                    with open(os.path.join(root, "networks", entry)) as f:
                        remaining.append(json.load(f))
        with contextlib.suppress(Exception):
            apply_nat(tag, remaining)


# ------------------------------------------------------------------------------------------ attachment

class Attachment:
    """One container's place on a network, owned by its shim: ports, lease, netns, veth, proxy."""

    netns_path: str | None = None
    settings: dict = {}

    def serve(self) -> None:
        """Start forwarding published ports (after the workload runs)."""

    def detach(self) -> None:
        """Undo everything; safe to call more than once and after a partial attach."""


NO_NETWORK = Attachment()


class BridgeAttachment(Attachment):
    def __init__(self, networks: Networks, rec):
        self.networks = networks
        self.rec = rec
        self.veth = veth_name(rec.id)
        self.proxy = None
        self.netns_fd: int | None = None
        self.ip: str | None = None
        self.settings = {}
        self.extra: list[dict] = []  # the extra networks' endpoints (eth1, ...): their veths are deleted at detach

    def attach(self, network: str, ports: list[dict]) -> None:
        from runner.engine import portproxy
        bind_override = self.networks.engine.publish_address
        # Ports first: a port in use must fail the start before any veth, lease or rule exists.
        self.proxy = portproxy.PortProxy(ports, bind_override)
        record = self.networks.ensure(network)
        hostname = self.rec.extra.get("hostname") or self.rec.id[:12]
        delete_link(self.veth)  # left by a shim that was killed: ours by name, reclaim it
        self.ip = self.networks.lease(record, self.rec, hostname)
        prefix = ipaddress.IPv4Network(record["Subnet"]).prefixlen
        for index, net in enumerate(self.rec.spec.get("extra_networks") or [], 1):
            extra = self.networks.ensure(net["name"])
            delete_link(veth_name(self.rec.id, index))
            self.extra.append(endpoint_settings(extra, self.networks.lease(extra, self.rec, hostname,
                                                                              net.get("aliases") or []),
                                                 veth_name(self.rec.id, index), f"eth{index}"))
        self._wire(record, prefix)
        self.settings = {**endpoint_settings(record, self.ip, self.veth, "eth0"), "Ports": self.proxy.bound}
        if self.extra:
            self.settings["Extra"] = self.extra

    def _wire(self, record: dict, prefix: int) -> None:
        """Make the container's network namespace and plug it into the bridge, all from this process.

        ``unshare`` and ``setns`` switch the calling thread only; the shim calls this from its only thread
        (the port proxy threads start later, in ``serve``). The switch never outlives this function:
        whatever fails, the shim is back in its original namespace before the error propagates, and a
        veth made before the failure is deleted by ``detach``. Two rtnetlink sockets do
        the work; each stays bound to the namespace it was created in, so after returning to the host
        namespace the second one still configures the inside (see ``runner.engine.netlink``).
        """
        from runner.engine.runtime import linux

        try:
            with contextlib.ExitStack() as stack:
                host = stack.enter_context(netlink.RouteSocket())
                inside = self._enter_new_netns(stack, linux)
                # The peer is born as eth0 inside the namespace, with its final MAC, and the host end is
                # enslaved and up in the same request: the host never sees a half-made pair.
                host.create_veth(self.veth, "eth0", mac_for(self.ip), self.netns_fd, master=record["Bridge"])
                inside.set_up("lo")
                inside.add_address("eth0", self.ip, prefix)
                inside.set_up("eth0")
                inside.add_default_route(record["Gateway"])  # after eth0 is up: the gateway is reachable
                for ep in self.extra:  # extra networks: their subnet only, no default route
                    plug_endpoint(host, inside, self.netns_fd, ep)
        except OSError as exc:
            raise ContainerStartError(f"cannot set up the container's network: {exc}") from exc
        self.netns_path = f"/proc/{os.getpid()}/fd/{self.netns_fd}"

    def _enter_new_netns(self, stack: contextlib.ExitStack, linux) -> "netlink.RouteSocket":
        """A fresh network namespace, held by ``self.netns_fd``, and a netlink socket inside it.

        ``/proc/thread-self``: unshare and setns act on the calling thread, so that is the namespace to
        open (``/proc/self`` would name the main thread's, which is the same only when called from it).
        """
        original = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            linux.unshare(linux.CLONE_NEWNET)
            try:
                inside = stack.enter_context(netlink.RouteSocket())
                # Set before anything else can fail, so that detach() closes it.
                self.netns_fd = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
            finally:
                # Back to the host before anything else happens, on success and on failure alike. Should
                # this fail, the shim must not go on in the wrong namespace: the error propagates.
                linux.setns(original, linux.CLONE_NEWNET)
        finally:
            os.close(original)
        return inside

    def serve(self) -> None:
        if self.proxy is not None and self.ip is not None:
            self.proxy.start(self.ip)

    def detach(self) -> None:
        if self.proxy is not None:
            self.proxy.close()  # the host ports are free again before anything else is released
        delete_link(self.veth)
        delete_extra_veths(self.rec.id)  # eth1.. of the create, and those a `network connect` added since
        if self.netns_fd is not None:
            os.close(self.netns_fd)
            self.netns_fd = None
        self.netns_path = None
        if self.ip is not None:
            self.networks.release(self.rec.id)
            self.ip = None


def endpoint_settings(record: dict, ip: str, veth: str, interface: str) -> dict:
    """What the record keeps of one network endpoint (inspect's NetworkSettings.Networks entry)."""
    return {"Network": record["Name"], "NetworkID": record["Id"], "IPAddress": ip,
            "IPPrefixLen": ipaddress.IPv4Network(record["Subnet"]).prefixlen, "Gateway": record["Gateway"],
            "MacAddress": mac_for(ip), "Bridge": record["Bridge"], "Veth": veth, "Interface": interface}


# ------------------------------------------------------------------------------------------ engine entry points

def check(engine, spec) -> None:
    """At create: the network exists (the default one is made on first use); ``-p`` needs a bridge."""
    if spec.network in BUILTIN_MODES:
        if spec.ports:
            raise UsageError(f"published ports need a bridge network, not --network {spec.network}",
                             hint="drop -p, or use --network bridge")
        return
    for name in [spec.network] + [n["name"] for n in spec.extra_networks]:
        Networks(engine).ensure(name)


def attach(engine, rec) -> Attachment:
    """Called by the shim before the rootfs is prepared: returns the wired attachment (or NO_NETWORK)."""
    network = rec.spec.get("network") or "none"
    if network in BUILTIN_MODES:
        return NO_NETWORK
    exposed = {}
    if rec.spec.get("publish_all"):
        exposed = (engine.images_store.resolve(rec.image_id).config.get("config") or {}).get("ExposedPorts")
    ports = effective_ports(rec.spec.get("ports") or [], bool(rec.spec.get("publish_all")), exposed)
    att = BridgeAttachment(Networks(engine), rec)
    try:
        att.attach(network, ports)
    except BaseException:
        att.detach()
        raise
    return att


def join_config(config: dict, netns_path: str | None) -> None:
    """Point the OCI config's network namespace at the wired one, so the runtime joins it."""
    if netns_path:
        for ns in config.get("linux", {}).get("namespaces", []):
            if ns.get("type") == "network":
                ns["path"] = netns_path


def delete_extra_veths(cid: str) -> None:
    """Delete the host ends of container ``cid``'s veths on its extra networks (``vx<n><id>``), whichever
    index they have: found by name, since a ``network connect`` may have added some its shim never saw."""
    with contextlib.suppress(OSError):
        for link in os.listdir("/sys/class/net"):
            if link.startswith("vx") and link[2:-10].isdigit() and link.endswith(cid[:10]):
                delete_link(link)


def forget(engine, cid: str) -> None:
    """At rm: whatever a killed shim could not release (lease, host veth) goes now."""
    with contextlib.suppress(Exception):
        delete_link(veth_name(cid))
    delete_extra_veths(cid)
    with contextlib.suppress(OSError):
        Networks(engine).release(cid)


def resolv_conf_for_container() -> str:
    return resolv_conf(_read("/etc/resolv.conf"), _read("/run/systemd/resolve/resolv.conf"))

