"""Network routes: create, list, inspect, remove, prune, connect and disconnect.

runner's engine keeps user bridge networks (runner.engine.network); Docker clients also expect the three
pre-defined ones, ``bridge``, ``host`` and ``none``, in every list. ``bridge`` is a real runner network made
on first use; until then, and for ``host``/``none`` always, the entry is shaped here by
runner.engine.views.builtin_network. Networks are found by name, full id or id prefix, as Docker does.
"""

from __future__ import annotations

from runner.api.http import ApiError
from runner.api.router import route
from runner.engine import views
from runner.errors import Conflict, NotFound, UsageError

BUILTIN = ("bridge", "host", "none")


def _all(req) -> list[dict]:
    found = req.backend.network_ls()
    names = {n["Name"] for n in found}
    return found + [views.builtin_network(name) for name in BUILTIN if name not in names]


def _find(req, ref: str) -> dict:
    nets = _all(req)
    for key in ("Name", "Id"):
        for net in nets:
            if net[key] == ref:
                return net
    hits = [n for n in nets if n["Id"].startswith(ref)]
    if len(hits) == 1:
        return hits[0]
    raise NotFound(f"network {ref} not found")


def _matches(net: dict, filters: dict[str, list[str]]) -> bool:
    tests = {
        "name": lambda v: v in net["Name"],
        "id": lambda v: net["Id"].startswith(v),
        "driver": lambda v: net["Driver"] == v,
        "scope": lambda v: net["Scope"] == v,
        "type": lambda v: (net["Name"] in BUILTIN) == (v == "builtin"),
        "label": lambda v: v.partition("=")[0] in (net.get("Labels") or {}) and (
            not v.partition("=")[1] or net["Labels"][v.partition("=")[0]] == v.partition("=")[2]),
        "dangling": lambda v: (not net.get("Containers")) == (v.lower() in ("true", "1")),
    }
    for key, values in filters.items():
        if key not in tests:
            raise UsageError(f"invalid filter '{key}'")
        combine = all if key == "label" else any  # Docker: label filters are ANDed, the others ORed
        if values and not combine(tests[key](v) for v in values):
            return False
    return True


@route("GET", "/networks")
def list_networks(req) -> None:
    filters = req.filters()
    req.reply([n for n in _all(req) if _matches(n, filters)])


@route("GET", "/networks/{id}")
def inspect_network(req) -> None:
    req.reply(_find(req, req.params["id"]))


@route("POST", "/networks/create")
def create_network(req) -> None:
    body = req.json()
    name = body.get("Name")
    if not isinstance(name, str) or not name:
        raise UsageError("network name is required")
    driver = body.get("Driver") or "bridge"
    if driver != "bridge":
        raise UsageError(f"plugin \"{driver}\" not found", hint="runner networks use the bridge driver")
    if body.get("Internal") or body.get("EnableIPv6") or body.get("Attachable") or body.get("Ingress"):
        raise UsageError("Internal, EnableIPv6, Attachable and Ingress networks are not supported by runner")
    if name in BUILTIN:
        raise ApiError(409, f"network with name {name} already exists")
    configs = ((body.get("IPAM") or {}).get("Config") or [])
    if not isinstance(configs, list) or len(configs) > 1:
        raise UsageError("runner networks take at most one IPAM config")
    subnet = (configs[0] or {}).get("Subnet") if configs else None
    labels = body.get("Labels") or {}
    if not isinstance(labels, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items()):
        raise UsageError("Labels must be an object of strings")
    try:
        created = req.backend.network_create(name, subnet or None, labels or None)
    except Conflict as exc:
        if "already exists" in exc.message:
            raise ApiError(409, f"network with name {name} already exists") from exc
        raise
    req.reply({"Id": created["Id"], "Warning": ""}, 201)


@route("DELETE", "/networks/{id}")
def remove_network(req) -> None:
    net = _find(req, req.params["id"])
    if net["Name"] in BUILTIN:
        raise ApiError(403, f"{net['Name']} is a pre-defined network and cannot be removed")
    try:
        req.backend.network_rm(net["Name"])
    except Conflict as exc:
        raise ApiError(403, f"error while removing network: {exc.message}") from exc
    req.reply_empty(204)


@route("POST", "/networks/prune")
def prune_networks(req) -> None:
    filters = req.filters()
    deleted = []
    for net in req.backend.network_ls():
        if net["Name"] in BUILTIN or net.get("Containers") or not _matches(net, filters):
            continue
        try:
            req.backend.network_rm(net["Name"])
            deleted.append(net["Name"])
        except (Conflict, NotFound):
            continue
    req.reply({"NetworksDeleted": deleted or None})


def _container_ref(body: dict) -> str:
    ref = body.get("Container")
    if not isinstance(ref, str) or not ref:
        raise UsageError("Container is required")
    return ref


@route("POST", "/networks/{id}/connect")
def connect(req) -> None:
    """``{"Container": ref, "EndpointConfig": {"Aliases": [...]}}``; 200 with no body, as dockerd answers."""
    net = _find(req, req.params["id"])
    body = req.json()
    ref = _container_ref(body)
    endpoint = body.get("EndpointConfig") or {}
    if not isinstance(endpoint, dict):
        raise UsageError("EndpointConfig must be an object")
    ipam = endpoint.get("IPAMConfig") or {}
    if isinstance(ipam, dict) and (ipam.get("IPv4Address") or ipam.get("IPv6Address")):
        raise UsageError("a user specified IP address is not supported by runner: addresses are leased")
    aliases = endpoint.get("Aliases") or []
    # a second connect of a running container: libnetwork's Forbidden
    _membership_call(req, ref, net["Name"], "already exists in network", 403,
                     lambda: req.backend.network_connect(net["Name"], ref, aliases))


@route("POST", "/networks/{id}/disconnect")
def disconnect(req) -> None:
    """``{"Container": ref, "Force": bool}``; 200 with no body."""
    net = _find(req, req.params["id"])
    body = req.json()
    ref = _container_ref(body)
    force = body.get("Force", False)
    if not isinstance(force, bool):
        raise UsageError("Force must be a boolean")
    # dockerd answers "is not connected" with a plain error: 500
    _membership_call(req, ref, net["Name"], "is not connected to", 500,
                     lambda: req.backend.network_disconnect(net["Name"], ref, force))


def _membership_call(req, ref: str, network: str, conflict_text: str, status: int, call) -> None:
    """Run a connect or disconnect: 200 with no body, or Docker's status for its refusals (the Conflict whose
    text holds ``conflict_text`` gets ``status``; a missing container or network its 404 text)."""
    try:
        call()
    except NotFound as exc:
        raise _not_found(exc, ref, network) from exc
    except Conflict as exc:
        if conflict_text in exc.message:
            raise ApiError(status, exc.message) from exc
        raise
    req.reply_empty(200)


def _not_found(exc: NotFound, ref: str, network: str) -> ApiError:
    """Docker's 404 texts, which clients match on: the container's, or the network's."""
    if exc.message.startswith("network "):
        return ApiError(404, f"network {network} not found")
    return ApiError(404, f"No such container: {ref}")
