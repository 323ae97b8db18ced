"""``network connect`` / ``network disconnect``: change the networks of a container after its create.

Why it is built this way:

* **The spec is the container's wanted set of networks**: ``network`` is its first (eth0, the default
  route), ``extra_networks`` the others (eth1, ...), each with its aliases. A created or stopped container
  only has its spec changed, under its lock; its next start wires the new set (runner.engine.network.attach),
  and so does every start after it. When the first network is disconnected the next one moves up (none
  left: ``network: "none"``), and the mode the user chose is kept in ``extra["network_mode"]``: inspect's
  ``HostConfig.NetworkMode`` stays it, as in Docker, and a container left on no network may be connected
  again (Docker refuses to connect one *created* with ``--network none``).
* **A running container is changed in place**, as Docker does. A new veth pair is made from the host with
  its peer born inside the container's network namespace (opened through ``/proc/<pid>/ns/net``, checked
  against the pid's start time) as the next free ``ethN``; its address, link and, only when it is the
  container's sole network, the default route are set through a netlink socket opened inside that
  namespace (``setns`` on this thread and straight back, as the shim does at start). Disconnecting deletes
  the host end, which takes the peer and every route through it along; if that was the default route's
  interface, the next network carries it.
* **The lease names the container's shim as its owner**, not this short-lived caller: it lives exactly as
  long as the container, and the shim's release at exit drops it with the others. Peers' hosts files are
  rewritten by the lease and the release (runner.engine.network), so names resolve at once both ways.
* **Nothing is left on failure**: a veth made before a later step failed is deleted and the lease released
  before the error propagates; the record is written only after the namespace is as it says.

Standard library only (runs in the guest too).
"""

from __future__ import annotations

import contextlib
import os

from runner.engine import netlink, network
from runner.engine.state import LIVE, RESTARTING, RUNNING, alive
from runner.errors import Conflict, ContainerStartError, NotFound, RunnerError, UsageError
from runner.spec import ContainerSpec

MAX_INTERFACES = 99  # veth names vx<n><10 id chars> stay within IFNAMSIZ


# ------------------------------------------------------------------------------------------ pure helpers

def networks_of(spec: dict) -> list[str]:
    """The networks a container is on (by its spec), first one first; none for ``none``/``host``."""
    first = spec.get("network") or "none"
    return ([] if first in network.BUILTIN_MODES else [first]) + \
        [n["name"] for n in spec.get("extra_networks") or []]


def live_endpoints(settings: dict) -> list[dict]:
    """The endpoints the shim (or a connect) recorded for a running container: eth0's, then the others."""
    first = [settings] if settings.get("Interface") else []
    return first + list(settings.get("Extra") or [])


def free_index(endpoints: list[dict]) -> int:
    """The lowest ``ethN`` (N >= 1) no endpoint of the container uses."""
    used = {ep.get("Interface") for ep in endpoints}
    for index in range(1, MAX_INTERFACES + 1):
        if f"eth{index}" not in used:
            return index
    raise Conflict(f"a container can be on at most {MAX_INTERFACES + 1} networks")


def add_to_spec(spec: dict, name: str, aliases: list[str]) -> None:
    """Record network ``name`` in the spec: eth0's when it has none."""
    if (spec.get("network") or "none") == "none":
        spec["network"], spec["aliases"] = name, list(aliases)
    else:
        spec["extra_networks"] = list(spec.get("extra_networks") or []) + [{"name": name, "aliases": list(aliases)}]


def remove_from_spec(spec: dict, extra: dict, name: str) -> None:
    """Forget network ``name`` in the spec: the next network moves up to eth0 (or none is left)."""
    others = [n for n in spec.get("extra_networks") or [] if n["name"] != name]
    if spec.get("network") == name:
        extra["network_mode"] = extra.get("network_mode") or name  # HostConfig.NetworkMode stays the user's
        if others:
            first = others.pop(0)
            spec["network"], spec["aliases"] = first["name"], list(first.get("aliases") or [])
        else:
            spec["network"], spec["aliases"] = "none", []
    spec["extra_networks"] = others


def check_aliases(name: str, aliases: list) -> list[str]:
    if not isinstance(aliases, list) or not all(isinstance(a, str) for a in aliases):
        raise UsageError("aliases must be a list of names")
    if aliases and name == network.DEFAULT_NETWORK:
        raise UsageError("network-scoped alias is supported only for containers in user defined networks")
    return list(dict.fromkeys(aliases))  # (each is checked as a hostname with the changed spec)


# ------------------------------------------------------------------------------------------ the namespace

def _open_netns(rec) -> int:
    """An fd on the running container's network namespace; Conflict when it is not running any more."""
    try:
        fd = os.open(f"/proc/{rec.pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise Conflict(f"container {rec.name} is not running") from exc
    if not alive(rec.pid, rec.pid_start):  # the pid was reused: that namespace is somebody else's
        os.close(fd)
        raise Conflict(f"container {rec.name} is not running")
    return fd


def _socket_inside(stack: contextlib.ExitStack, netns_fd: int) -> "netlink.RouteSocket":
    """A netlink socket bound to the namespace ``netns_fd``; this thread is back in its own before returning,
    whatever happens (setns acts on the calling thread only, hence /proc/thread-self)."""
    from runner.engine.runtime import linux
    original = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        linux.setns(netns_fd, linux.CLONE_NEWNET)
        try:
            return stack.enter_context(netlink.RouteSocket())
        finally:
            linux.setns(original, linux.CLONE_NEWNET)
    finally:
        os.close(original)


def _plug(netns_fd: int, ep: dict, default_route: bool) -> None:
    """Make endpoint ``ep``'s veth, its peer inside as ``ep["Interface"]``, with its address (and route)."""
    try:
        with contextlib.ExitStack() as stack:
            host = stack.enter_context(netlink.RouteSocket())
            inside = _socket_inside(stack, netns_fd)
            network.plug_endpoint(host, inside, netns_fd, ep)
            if default_route:
                inside.add_default_route(ep["Gateway"])
    except OSError as exc:
        raise ContainerStartError(f"cannot connect the container to network {ep['Network']}: {exc}") from exc


def _route_via(rec, gateway: str) -> None:
    """The default route through ``gateway`` (the container's new first network, after eth0 left)."""
    fd = _open_netns(rec)
    try:
        with contextlib.ExitStack() as stack:
            _socket_inside(stack, fd).add_default_route(gateway)
    except OSError as exc:
        raise RunnerError(f"disconnected, but the default route via {gateway} could not be set: {exc}",
                          hint=f"restart the container: runner restart {rec.name}") from exc
    finally:
        os.close(fd)


def _wire(nets: "network.Networks", record: dict, rec, aliases: list[str], first: bool) -> dict:
    """Connect running container ``rec`` to ``record``'s network; returns the endpoint's settings."""
    index = 0 if first else free_index(live_endpoints(rec.extra.get("network") or {}))
    hostname = rec.extra.get("hostname") or rec.id[:12]
    fd = _open_netns(rec)
    try:
        network.delete_link(network.veth_name(rec.id, index))  # a leftover of a killed earlier owner
        ip = nets.lease(record, rec, hostname, aliases, owner=(rec.shim_pid, rec.shim_start))
        ep = network.endpoint_settings(record, ip, network.veth_name(rec.id, index), f"eth{index}")
        try:
            _plug(fd, ep, default_route=first)
        except BaseException:
            network.delete_link(ep["Veth"])
            nets.release(rec.id, record["Name"])
            raise
    finally:
        os.close(fd)
    return ep


def _unwire(nets: "network.Networks", rec, name: str) -> None:
    """Take running container ``rec`` off network ``name``: its veth, its lease, its peers' names."""
    settings = rec.extra.get("network") or {}
    endpoints = live_endpoints(settings)
    ep = next((e for e in endpoints if e.get("Network") == name), None)
    if ep is not None:
        network.delete_link(ep["Veth"])  # the peer inside goes with it, and every route through it
    nets.release(rec.id, name)
    rest = [e for e in endpoints if e is not ep]
    ports = settings.get("Ports") or []
    if ep is not None and ep is settings:  # eth0 left: the next network becomes the first
        rec.extra["network"] = {**(rest[0] if rest else {}), "Ports": ports, "Extra": rest[1:]}
    else:
        settings["Extra"] = [e for e in settings.get("Extra") or [] if e is not ep]


# ------------------------------------------------------------------------------------------ entry points

def connect(engine, name: str, ref: str, aliases: list | None = None) -> str:
    """Connect container ``ref`` to network ``name``; returns the container's name."""
    if name == "host":
        raise UsageError("cannot connect container to host network - container must be created in host network mode")
    if name == "none":
        raise UsageError("container cannot be connected to multiple networks with one of the networks in private "
                         "(none) mode")
    aliases = check_aliases(name, aliases or [])
    nets = network.Networks(engine)
    cid = _reconciled(engine, ref)
    record = nets.ensure(name)
    with engine.state.lock(cid):
        rec = engine.state.load(cid)
        mode = rec.spec.get("network") or "none"
        if mode == "host":
            raise UsageError("container sharing network namespace with another container or host cannot be "
                             "connected to any other network")
        if mode == "none" and not rec.extra.get("network_mode"):
            raise UsageError("container cannot be connected to multiple networks with one of the networks in "
                             "private (none) mode", hint=f"it was created with --network none; recreate it on {name}")
        if name in networks_of(rec.spec):
            if rec.status in LIVE:
                raise Conflict(f"endpoint with name {rec.name} already exists in network {name}")
            return rec.name  # as Docker: a stopped container already on it is left as it is
        if rec.status == RESTARTING:
            raise Conflict(f"container {rec.name} is restarting", hint="connect it once it runs, or stop it first")
        spec = dict(rec.spec)
        add_to_spec(spec, name, aliases)
        ContainerSpec.from_dict(spec).validate()  # a bad alias fails here, before anything is wired
        ep = _wire(nets, record, rec, aliases, first=mode == "none") if rec.status == RUNNING else None
        try:
            rec.spec = spec
            if ep is not None and mode == "none":
                rec.extra["network"] = {**ep, "Ports": [], "Extra": []}
            elif ep is not None:
                rec.extra.setdefault("network", {}).setdefault("Extra", []).append(ep)
            engine.state.save(rec)
        except BaseException:
            if ep is not None:
                network.delete_link(ep["Veth"])
                nets.release(rec.id, name)
            raise
    engine.journal("network", "connect", record["Id"], {"container": cid, "name": name, "type": "bridge"})
    return rec.name


def disconnect(engine, name: str, ref: str, force: bool = False) -> str:
    """Disconnect container ``ref`` from network ``name``; returns the container's name. ``force``: a
    container that no longer exists has its leftover lease on the network dropped (Docker's stale endpoint)."""
    nets = network.Networks(engine)
    try:
        cid = _reconciled(engine, ref)
    except NotFound:
        if force and name not in network.BUILTIN_MODES and _drop_stale(nets, name, ref):
            return ref
        raise
    if name not in network.BUILTIN_MODES and name != network.DEFAULT_NETWORK and not force:
        nets.get(name)  # NotFound: network <name> not found
    with engine.state.lock(cid):
        rec = engine.state.load(cid)
        mode = rec.spec.get("network") or "none"
        if name in network.BUILTIN_MODES and mode == name:
            raise UsageError(f"cannot disconnect container from {name} network - container was created in {name} "
                             "network mode")
        if name not in networks_of(rec.spec):
            where = "network" if rec.status in LIVE else "the network"
            raise Conflict(f"container {rec.id} is not connected to {where} {name}",
                           hint=f"runner inspect {rec.name} lists its networks")
        running = rec.status == RUNNING
        was_first = running and (rec.extra.get("network") or {}).get("Network") == name
        if running:
            _unwire(nets, rec, name)
        remove_from_spec(rec.spec, rec.extra, name)
        if not networks_of(rec.spec):  # on no network any more: its hosts file names only itself
            network.write_hosts(engine, cid, network.hosts_file([("127.0.1.1", [rec.extra.get("hostname") or
                                                                                 cid[:12]])]))
        engine.state.save(rec)
        new_first = (rec.extra.get("network") or {}).get("Gateway") if was_first else None
        if new_first:
            _route_via(rec, new_first)
    with contextlib.suppress(NotFound):
        engine.journal("network", "disconnect", nets.get(name)["Id"], {"container": cid, "name": name,
                                                                        "type": "bridge"})
    return rec.name


def _reconciled(engine, ref: str) -> str:
    """The container's id, its record made honest first: one that died unseen is not taken as running.
    (Before the container's lock is taken: reconciling takes it too.)"""
    return engine.state.reconcile(engine.state.load(engine.state.resolve(ref))).id


def _drop_stale(nets: "network.Networks", name: str, ref: str) -> bool:
    """``disconnect --force`` of a container that is gone: drop leases on ``name`` that name it."""
    leases = nets.leases(name)
    gone = {lease["Id"] for lease in leases.values() if ref in (lease.get("Name"), lease["Id"])
            or lease["Id"].startswith(ref)}
    for cid in gone:
        nets.release(cid, name)
    return bool(gone)
