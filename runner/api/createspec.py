"""``POST /containers/create``'s body (Docker's ``Config`` + ``HostConfig`` + ``NetworkingConfig``) as runner's
ContainerSpec: a pure mapping, so every field's translation is unit-tested without a server.

Why a separate module: the mapping is the API's contract with ``runner run`` (the same ContainerSpec fields,
the same defaults: ports bind 127.0.0.1 unless an address is given, the default network is the bridge).
Fields Docker clients send with their zero values are ignored; unknown fields are ignored as dockerd does;
a field that *means* something runner cannot do is a 400 naming it, never silently dropped.
"""

from __future__ import annotations

from runner.errors import UsageError
from runner.records import asdict

# HostConfig fields that change what the container is, which runner does not implement: a non-empty value is
# refused. (Zero values are what clients send by default: `"Dns": []`, `"Tmpfs": null`, ...) Tuning knobs
# that do not change behaviour a test could see (MemorySwappiness: -1, OomScoreAdj, ShmSize, BlkioWeight) are
# ignored like unknown fields: the docker CLI sends some of them with non-zero defaults.
_UNSUPPORTED_HOST = ("VolumesFrom", "Links", "ExtraHosts", "Dns", "DnsSearch", "DnsOptions",
                     "Sysctls", "Ulimits", "GroupAdd", "CgroupParent", "VolumeDriver", "StorageOpt",
                     "DeviceRequests", "DeviceCgroupRules", "UsernsMode", "PidMode", "UTSMode", "CpusetCpus",
                     "CpusetMems", "Init")
_UNSUPPORTED_CONFIG = ("OnBuild", "Shell")
_IPC_OK = ("", "private", "shareable")
_LOG_DRIVERS = ("", "json-file", "local")


def _unsupported(field: str) -> UsageError:
    return UsageError(f"{field} is not supported by runner: leave it out of the request")


def _str_list(value, field: str) -> list[str] | None:
    """Docker's strslice: a list of strings, or one string (older clients); null/empty → None."""
    if value is None:
        return None
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise UsageError(f"{field} must be a list of strings")
    return list(value)


def _opt_str(value, field: str) -> str | None:
    if value in (None, ""):
        return None
    if not isinstance(value, str):
        raise UsageError(f"{field} must be a string")
    return value


def _dict(body: dict, key: str) -> dict:
    value = body.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise UsageError(f"{key} must be a JSON object")
    return value


def container_spec(body: dict, name: str | None) -> dict:
    """The ContainerSpec dict (not yet validated: the engine validates it) for a create request.

    ``body`` is the whole JSON body (``Config`` fields at the top level, ``HostConfig`` and
    ``NetworkingConfig`` inside it, as Docker's API has it); ``name`` the ``?name=`` parameter."""
    host = _dict(body, "HostConfig")
    _refuse_unsupported(body, host)
    image = body.get("Image")
    if not isinstance(image, str) or not image:
        raise UsageError("Config.Image is required: the image to create the container from")
    entrypoint = _str_list(body.get("Entrypoint"), "Entrypoint")
    if entrypoint == [""]:
        entrypoint = []  # `--entrypoint ""`: no entrypoint at all (the image's is reset)
    command = _str_list(body.get("Cmd"), "Cmd") or None
    labels = _dict(body, "Labels")
    if not all(isinstance(v, str) for v in labels.values()):
        raise UsageError("Labels values must be strings")
    spec = {
        "image": image, "command": command, "entrypoint": entrypoint,
        "env": _str_list(body.get("Env"), "Env") or [],
        "workdir": _opt_str(body.get("WorkingDir"), "WorkingDir"), "user": _opt_str(body.get("User"), "User"),
        "name": name or None, "hostname": _opt_str(body.get("Hostname"), "Hostname"),
        "tty": bool(body.get("Tty")), "interactive": bool(body.get("OpenStdin")),
        "stdin_once": bool(body.get("OpenStdin")) and bool(body.get("StdinOnce")),
        "labels": dict(labels), "network": _network(body, host),
        "mounts": _mounts(host, body), "ports": _ports(body, host), "publish_all": bool(host.get("PublishAllPorts")),
        "limits": _limits(host), "read_only": bool(host.get("ReadonlyRootfs")),
        "auto_remove": bool(host.get("AutoRemove")), "runtime": _opt_str(host.get("Runtime"), "Runtime"),
        "cap_add": _str_list(host.get("CapAdd"), "CapAdd") or [],
        "cap_drop": _str_list(host.get("CapDrop"), "CapDrop") or [],
        "privileged": bool(host.get("Privileged")),
        "security_opt": _str_list(host.get("SecurityOpt"), "SecurityOpt") or [],
        "devices": _devices(host), "log_opts": _log_opts(host),
        "restart": _restart(host), "healthcheck": _healthcheck(body),
    }
    aliases = _aliases(body, spec["network"])
    if aliases:
        spec["aliases"] = aliases
    extra = _extra_networks(body, spec["network"])
    if extra:
        spec["extra_networks"] = extra
    return spec


def _aliases(body: dict, network: str) -> list[str]:
    """``NetworkingConfig.EndpointsConfig[<network>].Aliases``: more names the container answers to there."""
    endpoints = _dict(_dict(body, "NetworkingConfig"), "EndpointsConfig")
    config = endpoints.get(network) or endpoints.get("default" if network == "bridge" else network) or {}
    if not isinstance(config, dict):
        raise UsageError("NetworkingConfig.EndpointsConfig entries must be objects")
    return _str_list(config.get("Aliases"), "Aliases") or []


def _refuse_unsupported(body: dict, host: dict) -> None:
    for key in _UNSUPPORTED_HOST:
        if host.get(key):
            raise _unsupported(f"HostConfig.{key}")
    for key in _UNSUPPORTED_CONFIG:
        if body.get(key):
            raise _unsupported(f"Config.{key}")
    if host.get("IpcMode") not in (None, *_IPC_OK):
        raise _unsupported("HostConfig.IpcMode")
    stop = body.get("StopSignal")
    if stop not in (None, "", "SIGTERM", "TERM", "15"):
        raise _unsupported("Config.StopSignal")


def _network(body: dict, host: dict) -> str:
    """``NetworkMode``: "" and "default" are the bridge (as `runner run`); one network named in
    ``NetworkingConfig.EndpointsConfig`` stands for it when the mode is the default. More than one network
    is the first of several (sorted by name); the others are ``extra_networks``."""
    if body.get("NetworkDisabled"):
        return "none"
    mode = host.get("NetworkMode") or "default"
    if not isinstance(mode, str):
        raise UsageError("HostConfig.NetworkMode must be a string")
    if mode.startswith("container:"):
        raise _unsupported("HostConfig.NetworkMode container:<name>")
    if mode == "default":
        named = sorted(n for n in _endpoints(body) if n not in ("default", "bridge"))
        mode = named[0] if named else "bridge"
    return mode


def _endpoints(body: dict) -> dict:
    endpoints = _dict(_dict(body, "NetworkingConfig"), "EndpointsConfig")
    if not all(isinstance(v, dict) or v is None for v in endpoints.values()):
        raise UsageError("NetworkingConfig.EndpointsConfig entries must be objects")
    return endpoints


def _extra_networks(body: dict, network: str) -> list[dict]:
    """The endpoints besides the container's first network: API 1.44 clients (compose) name every network of
    a container at create; each is joined (eth1, ...) with its own aliases."""
    out = []
    for name, config in sorted(_endpoints(body).items()):
        if name != network and not (network == "bridge" and name == "default"):
            out.append({"name": name, "aliases": _str_list((config or {}).get("Aliases"), "Aliases") or []})
    return out




def _mounts(host: dict, body: dict | None = None) -> list[dict]:
    """``Binds`` (bind or named volume, ``-v``'s syntax), ``Mounts`` (bind, volume, tmpfs), ``Tmpfs``
    (``{path: options}``) and ``Config.Volumes`` (anonymous volumes where nothing else is mounted)."""
    from runner.spec import Mount
    out = [Mount.parse(b) for b in _str_list(host.get("Binds"), "HostConfig.Binds") or []]
    mounts = host.get("Mounts") or []
    if not isinstance(mounts, list):
        raise UsageError("HostConfig.Mounts must be a list")
    out += [Mount.from_api(m) for m in mounts]
    tmpfs = _dict(host, "Tmpfs")
    for path, opts in tmpfs.items():
        if not isinstance(opts, str):
            raise UsageError("HostConfig.Tmpfs values must be strings")
        out.append(Mount.parse_tmpfs(f"{path}:{opts}" if opts else path))
    taken = {m.target.rstrip("/") for m in out}
    for path in sorted(_dict(body or {}, "Volumes")):
        if path.rstrip("/") not in taken:
            out.append(Mount.parse(path))
    return [asdict(m) for m in out]


def _restart(host: dict) -> str:
    """``RestartPolicy`` (``{"Name": "on-failure", "MaximumRetryCount": 3}``) as ``--restart`` text."""
    from runner.spec import restart_text
    policy = host.get("RestartPolicy")
    if policy is not None and not isinstance(policy, dict):
        raise UsageError("HostConfig.RestartPolicy must be a JSON object")
    return restart_text(policy)


def _healthcheck(body: dict) -> dict | None:
    """``Healthcheck`` (Docker's HealthConfig; durations in ns); None: the image's. Zero fields are dropped
    (they mean "inherit"), and so are fields of newer APIs runner does not run (``StartInterval``)."""
    from runner.spec import HEALTH_KEYS
    health = body.get("Healthcheck")
    if health is None:
        return None
    if not isinstance(health, dict):
        raise UsageError("Config.Healthcheck must be a JSON object")
    out = {k: v for k, v in health.items() if k in HEALTH_KEYS and v not in (None, 0)}
    return out or None


def _port_key(key: str) -> tuple[int, str]:
    port, _, proto = str(key).partition("/")
    try:
        return int(port), proto or "tcp"
    except ValueError as exc:
        raise UsageError(f"invalid port {key!r}: use PORT/tcp or PORT/udp (ranges are not supported)") from exc


def _ports(body: dict, host: dict) -> list[dict]:
    """``PortBindings`` (an empty HostIp binds 127.0.0.1, an empty HostPort picks a free port) and, with
    ``PublishAllPorts``, every ``ExposedPorts`` entry not bound yet on a free port."""
    from runner.spec import PortMapping
    out: list[dict] = []
    bound = set()
    for key, bindings in _dict(host, "PortBindings").items():
        port, proto = _port_key(key)
        bound.add((port, proto))
        for b in bindings or [{}]:
            if not isinstance(b, dict):
                raise UsageError(f"HostConfig.PortBindings[{key!r}] entries must be objects")
            host_port = str(b.get("HostPort") or "0")
            if not host_port.isdigit():
                raise UsageError(f"invalid host port {host_port!r} for {key}: port ranges are not supported")
            out.append(asdict(PortMapping(port, int(host_port), str(b.get("HostIp") or "127.0.0.1"), proto)))
    if host.get("PublishAllPorts"):
        for key in _dict(body, "ExposedPorts"):
            port, proto = _port_key(key)
            if (port, proto) not in bound:
                out.append(asdict(PortMapping(port, 0, "127.0.0.1", proto)))
    return out


def _number(host: dict, key: str) -> float:
    value = host.get(key) or 0
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UsageError(f"HostConfig.{key} must be a number")
    return value


def _limits(host: dict) -> dict:
    memory = int(_number(host, "Memory"))
    cpus = _number(host, "NanoCpus") / 1e9
    quota, period = _number(host, "CpuQuota"), _number(host, "CpuPeriod")
    if not cpus and quota > 0:
        cpus = quota / (period or 100000)
    pids = int(_number(host, "PidsLimit"))
    return {"memory": memory if memory > 0 else None, "cpus": round(cpus, 6) if cpus > 0 else None,
            "pids": pids if pids > 0 else None}


def _devices(host: dict) -> list[str]:
    out = []
    for d in host.get("Devices") or []:
        if not isinstance(d, dict) or not isinstance(d.get("PathOnHost"), str):
            raise UsageError("HostConfig.Devices entries need PathOnHost")
        out.append(f'{d["PathOnHost"]}:{d.get("PathInContainer") or d["PathOnHost"]}:'
                   f'{d.get("CgroupPermissions") or "rwm"}')
    return out


def _log_opts(host: dict) -> dict:
    config = _dict(host, "LogConfig")
    if config.get("Type") not in (None, *_LOG_DRIVERS):
        raise _unsupported(f"log driver {config.get('Type')!r} (HostConfig.LogConfig.Type)")
    opts = _dict(config, "Config")
    if not all(isinstance(v, str) for v in opts.values()):
        raise UsageError("HostConfig.LogConfig.Config values must be strings")
    return dict(opts)
