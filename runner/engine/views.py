"""Docker-shaped JSON: the one place that turns runner's records into what the Docker Engine API returns.

Every caller that shows a container, an image or a network to the outside world gets it from here: the CLI
(``ps``, ``inspect``, ``images``, ``network ls`` — ``runner.cli.render`` formats these for humans), the VM
backend (which rewrites guest port numbers to host ones in these very shapes) and the Engine API server
(``runner.api``), which serves them unchanged. So the shapes follow the Engine API 1.44 field for field:

* container list entry (``GET /containers/json``): ``Names`` with the historic leading slash, ``Created`` as
  Unix seconds, ``Ports`` as a list of ``{"IP", "PrivatePort", "PublicPort", "Type"}``, ``Status`` as the
  human text (``Up 3 minutes``) computed where the container lives, as dockerd does.
* container inspect (``GET /containers/{id}/json``): ``Name`` with the slash, times as RFC 3339 strings with
  nanoseconds, ``NetworkSettings.Ports`` as ``{"80/tcp": [{"HostIp", "HostPort"}]}``.
* image list/inspect (``GET /images/json``, ``/images/{name}/json``) and network list/inspect.

A published port is stored on the container's record as runner's own small dict (``container_port``,
``host_port``, ``host_ip``, ``protocol``: see runner.engine.portproxy); only this module maps it to Docker's
field names. Pure functions of plain data, standard library only (it runs in the guest too).
"""

from __future__ import annotations

import time

RUNNING = "running"
EXITED = "exited"
PAUSED = "paused"


def state_of(rec) -> str:
    """Docker's state word: the record's status, or ``paused`` for a running container that is frozen (the
    record stays ``running``: every rule about running containers still applies to a paused one)."""
    if rec.status == RUNNING and rec.extra.get("paused"):
        return PAUSED
    return rec.status


RESTARTING = "restarting"


# ------------------------------------------------------------------------------------------------ time

def iso_time(ts: float | None) -> str:
    """RFC 3339 with nanoseconds, UTC, as Docker writes times; Go's zero time for "never"."""
    if not ts:
        return "0001-01-01T00:00:00Z"
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts % 1 * 1e9):09d}Z"


def human_duration(seconds: float) -> str:
    """Docker's ``HumanDuration``, coarsened as ``docker ps`` shows it: '3 seconds', '5 minutes', '2 days'."""
    s = max(0, int(seconds))
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if s >= size:
            n = s // size
            return f"{n} {unit}{'s' if n != 1 else ''}"
    return "Less than a second" if s < 1 else f"{s} second{'s' if s != 1 else ''}"


def status_text(state: str, started_at: float | None, finished_at: float | None, exit_code: int | None,
                now: float | None = None) -> str:
    """The list entry's ``Status``: ``Up 3 minutes``, ``Up 3 minutes (Paused)``, ``Exited (0) 5 seconds ago``
    or ``Created``."""
    now = time.time() if now is None else now
    if state == PAUSED:
        return f"Up {human_duration(now - (started_at or now))} (Paused)"
    if state == RUNNING:
        return f"Up {human_duration(now - (started_at or now))}"
    if state == RESTARTING:
        ago = f" {human_duration(now - finished_at)} ago" if finished_at else ""
        return f"Restarting ({exit_code if exit_code is not None else 0}){ago}"
    if state == EXITED:
        ago = f" {human_duration(now - finished_at)} ago" if finished_at else ""
        return f"Exited ({exit_code if exit_code is not None else 0}){ago}"
    return "Created"


# ------------------------------------------------------------------------------------------------ ports

def port_list(bound: list[dict]) -> list[dict]:
    """Bound ports as a container list entry's ``Ports``: ``[{"IP", "PrivatePort", "PublicPort", "Type"}]``."""
    return [{"IP": p["host_ip"], "PrivatePort": int(p["container_port"]), "PublicPort": int(p["host_port"]),
             "Type": p["protocol"]} for p in bound]


def port_map(bound: list[dict]) -> dict:
    """Bound ports as ``NetworkSettings.Ports``: ``{"80/tcp": [{"HostIp": "127.0.0.1", "HostPort": "8080"}]}``
    (what ``docker port`` prints, and what the VM backend turns into host forwards)."""
    out: dict[str, list] = {}
    for p in bound:
        out.setdefault(f'{p["container_port"]}/{p["protocol"]}', []).append(
            {"HostIp": p["host_ip"], "HostPort": str(p["host_port"])})
    return out


def port_bindings(spec) -> dict:
    """``HostConfig.PortBindings``: what was asked for (host port "" = a random one)."""
    out: dict[str, list] = {}
    for p in spec.ports:
        out.setdefault(f"{p.container_port}/{p.protocol}", []).append(
            {"HostIp": p.host_ip, "HostPort": str(p.host_port) if p.host_port else ""})
    return out


# ------------------------------------------------------------------------------------------------ containers

def _live_network(rec) -> dict:
    """What the shim recorded about the running container's network (empty when it does not run)."""
    return rec.extra.get("network") or {}


def container_summary(rec, now: float | None = None, volumes_root: str = "") -> dict:
    """A ``GET /containers/json`` entry for container record ``rec`` (already reconciled); ``volumes_root``:
    where named volumes live (their ``Source``)."""
    spec = rec.spec
    cmd = (spec.get("entrypoint") or []) + (spec.get("command") or [])
    live = _live_network(rec)
    mode = spec.get("network") or "none"
    status = status_text(state_of(rec), rec.started_at, rec.finished_at, rec.exit_code, now)
    health = health_status(rec)
    if health and rec.status == RUNNING:
        status += {"starting": " (health: starting)"}.get(health, f" ({health})")
    return {"Id": rec.id, "Names": ["/" + rec.name], "Image": rec.image_ref, "ImageID": rec.image_id,
            "Command": " ".join(cmd), "Created": int(rec.created), "Ports": port_list(live.get("Ports") or []),
            "Labels": dict(spec.get("labels") or {}), "State": state_of(rec), "Status": status,
            "HostConfig": {"NetworkMode": rec.extra.get("network_mode") or mode},
            "NetworkSettings": {"Networks": _networks(mode, spec.get("aliases"), spec.get("extra_networks"),
                                                      live, False, bool(rec.extra.get("network_mode")))},
            "Mounts": [_mount(m, volumes_root) for m in spec.get("mounts") or []]}


def _networks(mode: str, aliases, extra_networks, live: dict, with_aliases: bool = True,
              disconnected: bool = False) -> dict:
    """``NetworkSettings.Networks``: the container's first network and its extra ones (``extra_networks``),
    with the addresses the shim recorded (``live``) while it runs; ``disconnected``: its last network was
    taken away (``network disconnect``), so ``none`` is no network at all, as in Docker."""
    if disconnected and mode == "none":
        return {}
    extra_live = {ep.get("Network"): ep for ep in live.get("Extra") or []}
    out = {mode: {**_endpoint(live), **({"Aliases": list(aliases or []) or None} if with_aliases else {})}}
    for net in extra_networks or []:
        out[net["name"]] = {**_endpoint(extra_live.get(net["name"]) or {}),
                            **({"Aliases": list(net.get("aliases") or []) or None} if with_aliases else {})}
    return out


def health_status(rec) -> str:
    """``starting``, ``healthy``, ``unhealthy`` for a container with a healthcheck, else ""."""
    return (rec.extra.get("health") or {}).get("Status", "")


def _mount(m, volumes_root: str = "") -> dict:
    """One mount as Docker's ``MountPoint`` (from a Mount or its dict form)."""
    get = m.get if isinstance(m, dict) else lambda k: getattr(m, k, None)
    readonly = bool(get("readonly"))
    kind = get("type") or "bind"
    if kind == "volume":
        import os
        name = get("source") or ""
        return {"Type": "volume", "Name": name, "Source": os.path.join(volumes_root, name, "_data"),
                "Destination": get("target"), "Driver": "local", "Mode": "z", "RW": not readonly,
                "Propagation": ""}
    if kind == "tmpfs":
        return {"Type": "tmpfs", "Source": "", "Destination": get("target"), "Mode": "", "RW": not readonly,
                "Propagation": ""}
    return {"Type": "bind", "Source": get("source"), "Destination": get("target"), "Mode": "ro" if readonly else "",
            "RW": not readonly, "Propagation": "rprivate"}


def _endpoint(live: dict) -> dict:
    """An ``EndpointSettings``: the address part of one network a container is on."""
    return {"NetworkID": live.get("NetworkID", ""), "EndpointID": "", "Gateway": live.get("Gateway", ""),
            "IPAddress": live.get("IPAddress", ""), "IPPrefixLen": live.get("IPPrefixLen", 0),
            "IPv6Gateway": "", "GlobalIPv6Address": "", "GlobalIPv6PrefixLen": 0,
            "MacAddress": live.get("MacAddress", "")}


def network_settings(rec, spec) -> dict:
    """``NetworkSettings`` for inspect, in Docker's shape (empty addresses when not running)."""
    live = _live_network(rec)
    endpoint = _endpoint(live)
    return {"Bridge": live.get("Bridge", ""), "SandboxID": "", "HairpinMode": False,
            "Ports": port_map(live.get("Ports") or []),
            **{k: endpoint[k] for k in ("EndpointID", "Gateway", "IPAddress", "IPPrefixLen", "IPv6Gateway",
                                        "GlobalIPv6Address", "GlobalIPv6PrefixLen", "MacAddress")},
            "Networks": _networks(spec.network, spec.aliases, spec.extra_networks, live,
                                  disconnected=bool(rec.extra.get("network_mode")))}


def container_inspect(rec, spec, config: dict, paths: dict, volumes_root: str = "") -> dict:
    """``GET /containers/{id}/json`` for record ``rec``, its ContainerSpec ``spec`` and the OCI ``config``
    it last started with ({} before its first start); ``paths``: LogPath, HostsPath, ResolvConfPath,
    HostnamePath; ``volumes_root``: where named volumes live."""
    process = config.get("process", {})
    args = process.get("args") or (spec.entrypoint or []) + (spec.command or [])
    state = {"Status": state_of(rec), "Running": rec.status in (RUNNING, RESTARTING),
             "Paused": state_of(rec) == PAUSED,
             "Restarting": rec.status == RESTARTING, "OOMKilled": rec.oom_killed, "Dead": False,
             "Pid": rec.pid or 0 if rec.status == RUNNING else 0,
             "ExitCode": rec.exit_code if rec.exit_code is not None else 0, "Error": rec.error,
             "StartedAt": iso_time(rec.started_at), "FinishedAt": iso_time(rec.finished_at)}
    if rec.extra.get("health"):
        state["Health"] = rec.extra["health"]
    return {
        "Id": rec.id, "Created": iso_time(rec.created), "Path": (args or [""])[0], "Args": args[1:],
        "State": state,
        "Image": rec.image_id, "Name": "/" + rec.name, "RestartCount": int(rec.extra.get("restart_count") or 0),
        "Driver": "overlay2", "Platform": "linux", **paths,
        "HostConfig": _host_config(rec, spec),
        "Mounts": [_mount(m, volumes_root) for m in spec.mounts],
        "Config": {"Hostname": rec.extra.get("hostname") or "", "User": spec.user or "",
                   "Tty": spec.tty, "OpenStdin": spec.interactive, "StdinOnce": bool(spec.stdin_once),
                   "Env": process.get("env", spec.env), "Cmd": spec.command, "Image": rec.image_ref,
                   "WorkingDir": process.get("cwd", spec.workdir or ""), "Entrypoint": spec.entrypoint,
                   "Labels": spec.labels, **({"Healthcheck": rec.extra["healthcheck"]}
                                              if rec.extra.get("healthcheck") else {}),
                   "Volumes": {m.target: {} for m in spec.mounts if m.type == "volume"} or None},
        "NetworkSettings": network_settings(rec, spec),
    }


def _host_config(rec, spec) -> dict:
    from runner.spec import restart_policy
    name, count = restart_policy(spec.restart)
    tmpfs = {m.target: ",".join(([f"size={m.size}"] if m.size else []) + ([f"mode={m.mode:o}"] if m.mode else [])
                                + (["ro"] if m.readonly else [])) for m in spec.mounts if m.type == "tmpfs"}
    return {"Binds": [f"{m.source}:{m.target}" + (":ro" if m.readonly else "") for m in spec.mounts
                      if m.type in ("bind", "volume") and m.source] or None,
            "RestartPolicy": {"Name": name, "MaximumRetryCount": count}, "Tmpfs": tmpfs or None,
            "NetworkMode": rec.extra.get("network_mode") or spec.network, "PortBindings": port_bindings(spec),
            "AutoRemove": spec.auto_remove, "PublishAllPorts": spec.publish_all,
            "ReadonlyRootfs": spec.read_only, "Runtime": rec.runtime,
            "Memory": spec.limits.memory or 0, "NanoCpus": int((spec.limits.cpus or 0) * 1e9),
            "PidsLimit": spec.limits.pids or 0,
            "LogConfig": {"Type": "json-file", "Config": dict(spec.log_opts)}, **security_host_config(spec)}


def security_host_config(spec) -> dict:
    """The security part of ``inspect``'s HostConfig, shaped as Docker's (null when not given)."""
    from runner.spec import parse_device
    devices = []
    for text in spec.devices or []:
        host, ctr, perms = parse_device(text)
        devices.append({"PathOnHost": host, "PathInContainer": ctr, "CgroupPermissions": perms})
    return {"CapAdd": list(spec.cap_add) or None, "CapDrop": list(spec.cap_drop) or None,
            "Privileged": bool(spec.privileged), "SecurityOpt": list(spec.security_opt) or None,
            "Devices": devices}


# ------------------------------------------------------------------------------------------------ images

def unix_seconds(value: float | str | None) -> int:
    """An image config's RFC 3339 ``created`` (nanoseconds allowed) as Unix seconds; 0 when unknown."""
    if value is None or isinstance(value, (int, float)):
        return int(value or 0)
    import datetime
    import re
    text = re.sub(r"(\.\d{6})\d+", r"\1", str(value)).replace("Z", "+00:00")
    try:
        return int(datetime.datetime.fromisoformat(text).timestamp())
    except ValueError:
        return 0


def _repo_digests(img) -> list[str]:
    """``name@sha256:...`` for each repository the image is tagged in (its manifest's digest)."""
    if not img.manifest_digest:
        return []
    repos = dict.fromkeys(tag.rsplit(":", 1)[0] if ":" in tag.rsplit("/", 1)[-1] else tag
                          for tag in img.repo_tags)
    return [f"{repo}@{img.manifest_digest}" for repo in repos]


def image_summary(img) -> dict:
    """A ``GET /images/json`` entry (``SharedSize``/``Containers`` -1: not computed, as Docker by default)."""
    return {"Id": img.id, "ParentId": "", "RepoTags": img.repo_tags, "RepoDigests": _repo_digests(img),
            "Created": unix_seconds(img.created), "Size": img.size, "SharedSize": -1,
            "Labels": (img.config.get("config") or {}).get("Labels") or {}, "Containers": -1}


def image_inspect(img) -> dict:
    """``GET /images/{name}/json``."""
    config = img.config
    return {"Id": img.id, "RepoTags": img.repo_tags, "RepoDigests": _repo_digests(img), "Parent": "",
            "Comment": config.get("comment", ""), "Created": img.created or "",
            "DockerVersion": config.get("docker_version", ""), "Author": config.get("author", ""),
            "Config": config.get("config", {}), "Architecture": config.get("architecture"),
            "Variant": config.get("variant", ""), "Os": config.get("os"), "Size": img.size,
            "GraphDriver": {"Name": "overlay2", "Data": None},
            "RootFS": {"Type": (config.get("rootfs") or {}).get("type", "layers"),
                       "Layers": list((config.get("rootfs") or {}).get("diff_ids") or [])},
            "Metadata": {"LastTagTime": "0001-01-01T00:00:00Z"}}


def image_history(img) -> list[dict]:
    """``GET /images/{name}/history``: the config's history, newest first; each step that made a layer gets
    that layer's size; the newest row carries the image's ID and tags, older ones ``<missing>`` as Docker
    shows for pulled images."""
    history = list(img.config.get("history") or [])
    layers = list(img.layers)
    if not history:
        history = [{"created": img.created, "created_by": ""} for _ in layers] or [{"created": img.created}]
    rows = []
    sizes = iter(layer.size for layer in layers)
    for step in history:
        size = 0 if step.get("empty_layer") else next(sizes, 0)
        rows.append({"Id": "<missing>", "Created": unix_seconds(step.get("created")),
                     "CreatedBy": step.get("created_by", ""), "Tags": None, "Size": size,
                     "Comment": step.get("comment", "")})
    rows.reverse()
    rows[0]["Id"], rows[0]["Tags"] = img.id, img.repo_tags or None
    return rows


# ------------------------------------------------------------------------------------------------ networks

def network(record: dict, leases: dict, prefixlen: int, mac_for) -> dict:
    """``GET /networks/{id}`` for a bridge network ``record`` (runner.engine.network) with its live
    ``leases`` (``{ip: {"Id", "Name", ...}}``); ``mac_for(ip)`` gives a container's MAC address."""
    containers = {lease["Id"]: {"Name": lease["Name"], "EndpointID": "", "MacAddress": mac_for(ip),
                                "IPv4Address": f"{ip}/{prefixlen}", "IPv6Address": ""}
                  for ip, lease in leases.items()}
    return {"Name": record["Name"], "Id": record["Id"], "Created": iso_time(record["Created"]), "Scope": "local",
            "Driver": "bridge", "EnableIPv6": False,
            "IPAM": {"Driver": "default", "Options": {},
                     "Config": [{"Subnet": record["Subnet"], "Gateway": record["Gateway"]}]},
            "Internal": False, "Attachable": False, "Ingress": False, "ConfigFrom": {"Network": ""},
            "ConfigOnly": False, "Containers": containers,
            # Docker's option name, and runner's short one that `network ls` and older scripts read.
            "Options": {"com.docker.network.bridge.name": record["Bridge"], "bridge": record["Bridge"]},
            "Labels": dict(record.get("Labels") or {})}


def builtin_network(name: str) -> dict:
    """One of Docker's pre-defined networks (``bridge`` before runner made it, ``host``, ``none``)."""
    import hashlib
    return {"Name": name, "Id": hashlib.sha256(f"runner-builtin-network:{name}".encode()).hexdigest(),
            "Created": iso_time(None), "Scope": "local", "Driver": {"none": "null"}.get(name, name),
            "EnableIPv6": False, "IPAM": {"Driver": "default", "Options": None, "Config": []},
            "Internal": False, "Attachable": False, "Ingress": False, "ConfigFrom": {"Network": ""},
            "ConfigOnly": False, "Containers": {}, "Options": {}, "Labels": {}}


# ------------------------------------------------------------------------------------------------ volumes

def volume(meta: dict, mountpoint: str) -> dict:
    """``GET /volumes/{name}``: a volume's stored ``meta`` (Name, Labels, Options, CreatedAt) as Docker shows it."""
    created = meta.get("CreatedAt") or 0
    return {"CreatedAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(created)) if created else "",
            "Driver": "local", "Labels": dict(meta.get("Labels") or {}), "Mountpoint": mountpoint,
            "Name": meta["Name"], "Options": dict(meta.get("Options") or {}), "Scope": "local"}


# ------------------------------------------------------------------------------------------------ system

def docker_info(info: dict, containers: list[dict], images: list[dict]) -> dict:
    """``GET /info`` from the engine's own ``info()`` and the container and image lists (Engine API 1.44).

    Numbers describe where containers really run: in the VM that is the guest's CPUs and memory."""
    states = [c.get("State") for c in containers]
    arch = info.get("arch", "")
    return {
        "ID": info.get("hostname", ""), "Name": info.get("hostname", ""),
        "Containers": len(containers), "ContainersRunning": states.count("running"),
        "ContainersPaused": states.count("paused"),
        "ContainersStopped": len(states) - states.count("running") - states.count("paused"),
        "Images": len(images), "Driver": "overlay2", "DriverStatus": [],
        "Plugins": {"Volume": ["local"], "Network": ["bridge", "host", "null"], "Authorization": None,
                    "Log": ["json-file"]},
        "MemoryLimit": True, "SwapLimit": False, "CpuCfsPeriod": True, "CpuCfsQuota": True, "CPUShares": True,
        "CPUSet": True, "PidsLimit": True, "OomKillDisable": False, "IPv4Forwarding": True,
        "BridgeNfIptables": False, "BridgeNfIp6tables": False, "Debug": False, "NFd": 0, "NGoroutines": 0,
        "SystemTime": iso_time(time.time()), "LoggingDriver": "json-file",
        "CgroupDriver": "cgroupfs", "CgroupVersion": str(info.get("cgroup_version", "")),
        "NEventsListener": 0, "KernelVersion": info.get("kernel", ""),
        "OperatingSystem": info.get("os", "Linux"), "OSVersion": "", "OSType": "linux", "Architecture": arch,
        "IndexServerAddress": "https://index.docker.io/v1/",
        "RegistryConfig": {"AllowNondistributableArtifactsCIDRs": [], "AllowNondistributableArtifactsHostnames": [],
                           "InsecureRegistryCIDRs": ["127.0.0.0/8"], "IndexConfigs": {}, "Mirrors": []},
        "NCPU": info.get("ncpu", 1), "MemTotal": info.get("mem_total", 0), "GenericResources": None,
        "DockerRootDir": info.get("root", ""), "HttpProxy": "", "HttpsProxy": "", "NoProxy": "",
        "Labels": [], "ExperimentalBuild": False, "ServerVersion": info.get("version", ""),
        "Runtimes": {"runc": {"path": "runc"}, "builtin": {"path": "runner"}},
        "DefaultRuntime": info.get("runtime", "builtin"),
        "Swarm": {"NodeID": "", "NodeAddr": "", "LocalNodeState": "inactive", "ControlAvailable": False,
                  "Error": "", "RemoteManagers": None},
        "LiveRestoreEnabled": True, "Isolation": "", "InitBinary": "",
        "ContainerdCommit": {"ID": ""}, "RuncCommit": {"ID": ""}, "InitCommit": {"ID": ""},
        "SecurityOptions": ["name=seccomp,profile=builtin", "name=cgroupns"],
        "CDISpecDirs": [], "Warnings": None,
    }
