"""What the user asked for, as plain data: the contract between CLI, backends and engine.

These records are built by the CLI from flags, travel unchanged to the agent in the VM as JSON
(``to_dict``/``from_dict``) and are checked by ``validate()`` on the engine side too, because the agent must
not trust what arrives over the wire. ``validate()`` collects every problem before raising, so a user fixes
all of them in one go. Standard library only: this module runs inside the guest.
"""

from __future__ import annotations

import re

from runner.errors import UsageError
from runner.records import Record, asdict

_NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,127}$")
_HOSTNAME_RE = re.compile(r"^[a-zA-Z0-9]([a-zA-Z0-9.-]{0,62})$")
_ENV_KEY_RE = re.compile(r"^[^=\0]+$")
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([bkmgt]?)b?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024 ** 2, "g": 1024 ** 3, "t": 1024 ** 4}
NETWORK_MODES = ("none", "host", "bridge")
RUNTIMES = ("builtin", "runc")  # --runtime: the built-in Python runtime, or runc on PATH (same OCI bundle)
_NETWORK_NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$")  # a user network (runner network create)
_NEW: list = []  # marks "not given": a fresh list/dict/Limits per record, as a dataclass default_factory does


def parse_size(text: str, what: str = "size") -> int:
    """Docker-style byte sizes: ``32m``, ``1g``, ``512k``, ``1024`` (bytes)."""
    m = _SIZE_RE.match(str(text))
    if not m:
        raise UsageError(f"invalid {what} {text!r}", hint="use a number with an optional unit: b, k, m, g (e.g. 64m)")
    value = int(float(m.group(1)) * _UNITS[m.group(2).lower()])
    if value <= 0:
        raise UsageError(f"invalid {what} {text!r}: must be greater than zero")
    return value


# Log rotation when --log-opt does not say (Docker's "local" driver keeps 5 files of 20 MB; its json-file driver
# keeps one unbounded file, which is how a chatty container fills a disk).
DEFAULT_LOG_MAX_SIZE = 20 * 1000 * 1000
DEFAULT_LOG_MAX_FILE = 5
LOG_OPTS = ("max-size", "max-file")


def log_limits(opts: dict[str, str] | None) -> tuple[int | None, int]:
    """(max bytes per log file or None for unlimited, number of files) from ``--log-opt`` values.

    As Docker's json-file: ``max-size`` is a size (``10m``; ``-1`` = unlimited), ``max-file`` a count >= 1
    that only counts with a max-size; unknown keys are refused (UsageError).
    """
    opts = opts or {}
    unknown = sorted(set(opts) - set(LOG_OPTS))
    if unknown:
        raise UsageError(f"unknown log opt {unknown[0]!r}", hint="supported: --log-opt max-size=20m, max-file=5")
    size_text = opts.get("max-size")
    max_size = DEFAULT_LOG_MAX_SIZE if size_text is None else \
        None if str(size_text) == "-1" else parse_size(size_text, "log max-size")
    file_text = str(opts.get("max-file", DEFAULT_LOG_MAX_FILE))
    if not file_text.isdigit() or int(file_text) < 1:
        raise UsageError(f"invalid log max-file {file_text!r}: must be a number of at least 1")
    return max_size, int(file_text)


VOLUME_NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]+$")  # Docker's local volume driver's rule
MOUNT_TYPES = ("bind", "volume", "tmpfs")
_VOLUME_MODES = ("ro", "rw", "nocopy", "z", "Z", "rprivate", "private", "rslave", "slave", "rshared", "shared")


class Mount(Record):
    """A mount into the container, Docker's three kinds: ``bind`` (a host path), ``volume`` (a named volume of
    the engine, ``source`` "" = a new anonymous one) and ``tmpfs`` (memory; ``size`` bytes and ``mode``).

    ``nocopy``: a new volume is not filled from the image's content at ``target`` (Docker's ``volume-nocopy``)."""

    _fields = ("source", "target", "readonly", "type", "nocopy", "size", "mode")

    def __init__(self, source: str, target: str, readonly: bool = False, type: str = "bind", nocopy: bool = False,
                 size: int | None = None, mode: int | None = None):
        self.source, self.target, self.readonly, self.type = source, target, readonly, type
        self.nocopy, self.size, self.mode = nocopy, size, mode

    @classmethod
    def parse(cls, text: str) -> "Mount":
        """``-v``: ``/host:/ctr[:opts]`` (bind), ``name:/ctr[:opts]`` (named volume), ``/ctr`` (anonymous)."""
        parts = text.split(":")
        if len(parts) > 3 or not all(parts[:2]) or (len(parts) == 1 and not parts[0]):
            raise UsageError(f"invalid volume spec {text!r}",
                             hint="use -v /host/path:/container/path[:ro], -v NAME:/path[:ro] or -v /path")
        if len(parts) == 1:
            return cls("", parts[0], type="volume")
        modes = parts[2].split(",") if len(parts) == 3 else []
        bad = [m for m in modes if m not in _VOLUME_MODES]
        if bad:
            raise UsageError(f"invalid volume mode {bad[0]!r} in {text!r}", hint="the modes are ro, rw, nocopy")
        kind = "bind" if parts[0].startswith("/") else "volume"
        if kind == "volume" and not VOLUME_NAME_RE.match(parts[0]):
            raise UsageError(f"invalid volume name {parts[0]!r}: only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed",
                             hint="a bind mount needs an absolute host path, e.g. -v $PWD/data:/data")
        return cls(parts[0], parts[1], "ro" in modes, kind, nocopy="nocopy" in modes)

    @classmethod
    def parse_tmpfs(cls, text: str) -> "Mount":
        """``--tmpfs /path[:opts]`` with Docker's options ``size=64m``, ``mode=1777``, ``ro``/``rw``."""
        target, _, opts = text.partition(":")
        mount = cls("", target, type="tmpfs")
        for opt in filter(None, opts.split(",")):
            mount._tmpfs_opt(opt, text)
        return mount

    def _tmpfs_opt(self, opt: str, text: str) -> None:
        key, eq, value = opt.partition("=")
        if key in ("size", "tmpfs-size") and eq:
            self.size = parse_size(value, "tmpfs size")
        elif key in ("mode", "tmpfs-mode") and eq:
            if not re.match(r"^[0-7]{1,4}$", value):
                raise UsageError(f"invalid tmpfs mode {value!r} in {text!r}", hint="an octal mode, e.g. 1777")
            self.mode = int(value, 8)
        elif key in ("ro", "rw", "readonly") and (not eq or value in ("true", "false", "1", "0")):
            self.readonly = key != "rw" and value not in ("false", "0")
        elif key not in ("exec", "noexec", "suid", "nosuid", "dev", "nodev"):
            raise UsageError(f"invalid tmpfs option {opt!r} in {text!r}", hint="use size=64m, mode=1777, ro")

    @classmethod
    def parse_mount(cls, text: str) -> "Mount":
        """``--mount type=volume|bind|tmpfs,source=...,target=...,readonly,...``: Docker's CSV syntax."""
        fields: dict[str, str] = {}
        for item in filter(None, (f.strip() for f in text.split(","))):
            key, eq, value = item.partition("=")
            fields[key.lower()] = value if eq else "true"
        kind = fields.pop("type", "volume")
        if kind not in MOUNT_TYPES:
            raise UsageError(f"invalid mount type {kind!r} in --mount {text!r}", hint="use bind, volume or tmpfs")
        source = fields.pop("source", None) or fields.pop("src", None) or ""
        target = fields.pop("target", None) or fields.pop("destination", None) or fields.pop("dst", None)
        if not target:
            raise UsageError(f"invalid --mount {text!r}: a target is required", hint="add target=/path")
        ro = fields.pop("readonly", None) or fields.pop("ro", None)
        mount = cls(source, target, ro is not None and ro not in ("false", "0"), kind)
        for key, value in fields.items():
            if kind == "volume" and key == "volume-nocopy":
                mount.nocopy = value not in ("false", "0")
            elif kind == "tmpfs" and key in ("tmpfs-size", "tmpfs-mode"):
                mount._tmpfs_opt(f"{key}={value}", text)
            elif kind == "bind" and key == "bind-propagation" and value in _VOLUME_MODES:
                pass  # runner's binds are rprivate, as Docker's default; other propagations are not offered
            elif key != "consistency":
                raise UsageError(f"unexpected key {key!r} in --mount {text!r}")
        if kind == "bind" and not source:
            raise UsageError(f"invalid --mount {text!r}: a bind mount needs source=/host/path")
        if kind == "tmpfs" and source:
            raise UsageError(f"invalid --mount {text!r}: a tmpfs mount takes no source")
        return mount

    @classmethod
    def from_api(cls, obj: dict) -> "Mount":
        """An Engine API ``HostConfig.Mounts`` entry (``Type``, ``Source``, ``Target``, ``ReadOnly``,
        ``VolumeOptions.NoCopy``, ``TmpfsOptions.SizeBytes``/``Mode``) as a Mount; for the API server."""
        if not isinstance(obj, dict):
            raise UsageError("invalid mount: not an object")
        kind = obj.get("Type") or "volume"
        if kind not in MOUNT_TYPES:
            raise UsageError(f"invalid mount type {kind!r}: use bind, volume or tmpfs")
        tmpfs = obj.get("TmpfsOptions") or {}
        mount = cls(str(obj.get("Source") or ""), str(obj.get("Target") or ""), bool(obj.get("ReadOnly")), kind,
                    nocopy=bool((obj.get("VolumeOptions") or {}).get("NoCopy")),
                    size=tmpfs.get("SizeBytes") or None, mode=tmpfs.get("Mode"))
        problems = mount.problems()
        if problems:
            raise UsageError(f"invalid mount: {problems[0]}")
        return mount

    def problems(self) -> list[str]:
        out = []
        if self.type not in MOUNT_TYPES:
            out.append(f"mount type {self.type!r} is not bind, volume or tmpfs")
        elif self.type == "bind" and not str(self.source).startswith("/"):
            out.append(f"mount source {self.source!r} is not an absolute path")
        elif self.type == "volume" and self.source and not VOLUME_NAME_RE.match(str(self.source)):
            out.append(f"invalid volume name {self.source!r}: only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed")
        if not isinstance(self.target, str) or not self.target.startswith("/") or "\0" in self.target:
            out.append(f"mount target {self.target!r} is not an absolute path")
        elif ".." in self.target.split("/"):
            out.append(f"mount target {self.target!r} must not contain '..'")
        elif self.target.rstrip("/") == "":
            out.append("a mount target must not be /")
        if self.size is not None and (not isinstance(self.size, int) or self.size <= 0):
            out.append(f"tmpfs size {self.size!r} must be a positive number of bytes")
        if self.mode is not None and (not isinstance(self.mode, int) or not 0 <= self.mode <= 0o7777):
            out.append(f"tmpfs mode {self.mode!r} is not a file mode")
        return out


class PortMapping(Record):
    """A published port (``-p [ip:]host:container[/proto]``); host port 0 means pick a free one."""

    _fields = ("container_port", "host_port", "host_ip", "protocol")

    def __init__(self, container_port: int, host_port: int = 0, host_ip: str = "127.0.0.1", protocol: str = "tcp"):
        self.container_port, self.host_port, self.host_ip, self.protocol = container_port, host_port, host_ip, protocol

    @classmethod
    def parse(cls, text: str) -> "PortMapping":
        spec, _, proto = text.partition("/")
        proto = proto or "tcp"
        parts = spec.rsplit(":", 2)
        try:
            if len(parts) == 1:
                mapping = cls(int(parts[0]), 0, protocol=proto)
            elif len(parts) == 2:
                mapping = cls(int(parts[1]), int(parts[0]) if parts[0] else 0, protocol=proto)
            else:
                ip = parts[0].strip("[]") or "127.0.0.1"
                mapping = cls(int(parts[2]), int(parts[1]) if parts[1] else 0, ip, proto)
        except ValueError as exc:
            raise UsageError(f"invalid port spec {text!r}",
                             hint="use -p [ip:]hostPort:containerPort[/tcp|udp] or -p containerPort") from exc
        problems = mapping.problems()
        if problems:
            raise UsageError(f"invalid port spec {text!r}: {problems[0]}")
        return mapping

    def problems(self) -> list[str]:
        out = []
        if not 1 <= self.container_port <= 65535:
            out.append(f"container port {self.container_port} out of range 1-65535")
        if not 0 <= self.host_port <= 65535:
            out.append(f"host port {self.host_port} out of range 0-65535")
        if self.protocol not in ("tcp", "udp"):
            out.append(f"protocol {self.protocol!r} is not tcp or udp")
        import ipaddress  # here: only specs with published ports pay for importing it
        try:
            ipaddress.ip_address(self.host_ip)
        except ValueError:
            out.append(f"host address {self.host_ip!r} is not an IP address")
        return out


class Limits(Record):
    """Resource limits: memory in bytes, CPUs as a fraction of cores, max number of tasks; None = unlimited."""

    _fields = ("memory", "cpus", "pids")

    def __init__(self, memory: int | None = None, cpus: float | None = None, pids: int | None = None):
        self.memory, self.cpus, self.pids = memory, cpus, pids

    def problems(self) -> list[str]:
        out = []
        if self.memory is not None and self.memory < 6 * 1024 * 1024:
            out.append(f"memory limit {self.memory} bytes is below the minimum of 6m")
        if self.cpus is not None and not 0.01 <= self.cpus <= 1024:
            out.append(f"--cpus {self.cpus} is out of range (0.01 to the number of CPUs)")
        if self.pids is not None and self.pids <= 0:
            out.append(f"pids limit {self.pids} must be positive")
        return out


class ContainerSpec(Record):
    """Everything needed to create a container. ``command``/``entrypoint`` None means: the image's."""

    _fields = ("image", "command", "entrypoint", "env", "workdir", "user", "name", "hostname", "tty",
               "interactive", "mounts", "ports", "publish_all", "network", "limits", "read_only", "auto_remove",
               "labels", "runtime", "cap_add", "cap_drop", "privileged", "security_opt", "devices", "log_opts",
               "platform", "aliases", "restart", "healthcheck", "extra_networks", "stdin_once")

    def __init__(self, image: str, command: list[str] | None = None, entrypoint: list[str] | None = None,
                 env: list[str] = _NEW, workdir: str | None = None, user: str | None = None,
                 name: str | None = None, hostname: str | None = None, tty: bool = False, interactive: bool = False,
                 mounts: list[Mount] = _NEW, ports: list[PortMapping] = _NEW,
                 publish_all: bool = False, network: str = "none", limits: Limits = _NEW,
                 read_only: bool = False, auto_remove: bool = False, labels: dict[str, str] = _NEW,
                 runtime: str | None = None, cap_add: list[str] = _NEW, cap_drop: list[str] = _NEW,
                 privileged: bool = False, security_opt: list[str] = _NEW, devices: list[str] = _NEW,
                 log_opts: dict[str, str] = _NEW, platform: str | None = None, aliases: list[str] = _NEW,
                 restart: str = "no", healthcheck: dict | None = None, extra_networks: list[dict] = _NEW,
                 stdin_once: bool = False):
        self.image, self.command, self.entrypoint = image, command, entrypoint
        self.env = [] if env is _NEW else env
        self.workdir, self.user, self.name, self.hostname = workdir, user, name, hostname
        self.tty, self.interactive = tty, interactive
        self.mounts = [] if mounts is _NEW else mounts
        self.ports = [] if ports is _NEW else ports
        self.publish_all, self.network = publish_all, network
        self.limits = Limits() if limits is _NEW else limits
        self.read_only, self.auto_remove = read_only, auto_remove
        self.labels = {} if labels is _NEW else labels
        self.runtime = runtime  # None: the engine's default (builtin)
        # Security, as Docker's HostConfig: names as given; security_opt "seccomp=" carries the profile's JSON
        # text (the CLI reads the file, as docker's does, so a profile on the host reaches the VM's engine).
        self.cap_add = [] if cap_add is _NEW else cap_add
        self.cap_drop = [] if cap_drop is _NEW else cap_drop
        self.privileged = privileged
        self.security_opt = [] if security_opt is _NEW else security_opt
        self.devices = [] if devices is _NEW else devices
        self.log_opts = {} if log_opts is _NEW else log_opts
        # --platform (linux/amd64): the image must be of it; None = whatever the local image is.
        self.platform = platform
        # More names peers on a user network know this container by (--network-alias, EndpointConfig.Aliases).
        self.aliases = [] if aliases is _NEW else aliases
        # More user networks the container joins besides ``network`` (its eth1, eth2, ...): each
        # ``{"name": ..., "aliases": [...]}``, as an Engine API create naming several endpoints (compose).
        self.extra_networks = [] if extra_networks is _NEW else extra_networks
        self.restart = restart  # Docker's --restart text: no, always, unless-stopped, on-failure[:N]
        self.healthcheck = healthcheck  # Docker's HealthConfig (Test, Interval, ...); None: the image's
        # Docker's StdinOnce (``run -i`` attached): an attached client's end of input closes the container's stdin;
        # without it (``run -di``) the stdin stays open for the next attach.
        self.stdin_once = stdin_once

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ContainerSpec":
        if not isinstance(data, dict):
            raise UsageError("container spec must be an object")
        known = set(cls._fields)
        unknown = set(data) - known
        if unknown:
            raise UsageError(f"unknown container spec fields: {', '.join(sorted(unknown))}")
        values = dict(data)
        try:
            values["mounts"] = [Mount(**m) for m in values.get("mounts", [])]
            values["ports"] = [PortMapping(**p) for p in values.get("ports", [])]
            values["limits"] = Limits(**values.get("limits", {}))
            spec = cls(**values)
        except TypeError as exc:
            raise UsageError(f"malformed container spec: {exc}") from exc
        return spec

    def _extra_network_problems(self) -> list[str]:
        if not isinstance(self.extra_networks, list):
            return ["extra_networks must be a list"]
        if self.extra_networks and self.network in ("none", "host"):
            return [f"a container on network {self.network} cannot join other networks"]
        out, seen = [], {self.network}
        for net in self.extra_networks:
            name = net.get("name") if isinstance(net, dict) else None
            aliases = net.get("aliases", []) if isinstance(net, dict) else None
            if set(net if isinstance(net, dict) else ()) - {"name", "aliases"} or not isinstance(name, str) \
                    or name in NETWORK_MODES or not _NETWORK_NAME_RE.match(name):
                out.append(f"invalid extra network {net!r}: a user network's name")
            elif name in seen:
                out.append(f"network {name} is named twice")
            seen.add(name)
            if not isinstance(aliases, list) or not all(isinstance(a, str) and _HOSTNAME_RE.match(a)
                                                        for a in aliases):
                out.append(f"invalid network aliases {aliases!r}")
        return out

    def validate(self) -> "ContainerSpec":
        """Raise one UsageError listing every problem; return self so calls can chain."""
        problems: list[str] = []
        if not isinstance(self.image, str) or not self.image:
            problems.append("an image is required")
        for label, value in (("command", self.command), ("entrypoint", self.entrypoint)):
            if value is not None and (not isinstance(value, list) or not all(isinstance(a, str) for a in value)):
                problems.append(f"{label} must be a list of strings")
        if any("\0" in a for a in (self.command or []) + (self.entrypoint or [])):
            problems.append("command arguments must not contain NUL bytes")
        for item in self.env:
            key = str(item).split("=", 1)[0]
            if not _ENV_KEY_RE.match(key) or "\0" in str(item):
                problems.append(f"invalid environment variable {item!r}")
        if self.workdir is not None and not self.workdir.startswith("/"):
            problems.append(f"working directory {self.workdir!r} is not an absolute path")
        if self.name is not None and not _NAME_RE.match(self.name):
            problems.append(f"invalid container name {self.name!r}: use letters, digits, '_', '.', '-'")
        if self.hostname is not None and not _HOSTNAME_RE.match(self.hostname):
            problems.append(f"invalid hostname {self.hostname!r}")
        for alias in self.aliases:
            if not isinstance(alias, str) or not _HOSTNAME_RE.match(alias):
                problems.append(f"invalid network alias {alias!r}")
        if self.user is not None and not re.match(r"^[A-Za-z0-9_.-]+(:[A-Za-z0-9_.-]+)?$", self.user):
            problems.append(f"invalid user {self.user!r}: use uid[:gid] or name[:group]")
        if self.network not in NETWORK_MODES and not _NETWORK_NAME_RE.match(str(self.network)):
            problems.append(f"invalid network mode {self.network!r}: "
                            f"use {', '.join(NETWORK_MODES)} or a network name")
        problems.extend(self._extra_network_problems())
        for m in self.mounts:
            problems.extend(m.problems())
        for p in self.ports:
            problems.extend(p.problems())
        problems.extend(self.limits.problems())
        if self.runtime is not None and self.runtime not in RUNTIMES:
            problems.append(f"unknown or invalid runtime name: {self.runtime}: use {' or '.join(RUNTIMES)}")
        problems.extend(security_problems(self))
        targets = [m.target.rstrip("/") for m in self.mounts if isinstance(m.target, str)]
        for dup in sorted({t for t in targets if targets.count(t) > 1}):
            problems.append(f"duplicate mount point: {dup}")
        if not isinstance(self.labels, dict) or not all(isinstance(k, str) and isinstance(v, str) and k
                                                        for k, v in self.labels.items()):
            problems.append("labels must map non-empty strings to strings")
        if self.auto_remove and restart_policy_name(self.restart) != "no":
            problems.append("conflicting options: cannot specify both --restart and --rm")
        for check in (lambda: restart_policy(self.restart), lambda: health_problems(self.healthcheck)):
            try:
                check()
            except UsageError as exc:
                problems.append(exc.message)
        if self.platform is not None:
            from runner.images.platform import parse_platform
            try:
                parse_platform(self.platform)
            except UsageError as exc:
                problems.append(exc.message)
        try:
            log_limits(self.log_opts)
        except UsageError as exc:
            problems.append(exc.message)
        if problems:
            raise UsageError("; ".join(problems))
        return self


def restart_policy_name(text: str) -> str:
    try:
        return restart_policy(text)[0]
    except UsageError:
        return "invalid"


def restart_policy(text: str) -> tuple[str, int]:
    """``--restart`` text -> (Docker's RestartPolicy Name, MaximumRetryCount); "" counts as "no"."""
    name, _, count = str(text or "no").partition(":")
    if name not in ("no", "always", "unless-stopped", "on-failure"):
        raise UsageError(f"invalid restart policy {text!r}", hint="use no, always, unless-stopped or on-failure[:N]")
    if count and (name != "on-failure" or not count.isdigit()):
        raise UsageError(f"invalid restart policy {text!r}: only on-failure takes a count, e.g. on-failure:3")
    return name, int(count or 0)


def restart_text(policy: dict | None) -> str:
    """An Engine API ``HostConfig.RestartPolicy`` (``Name``, ``MaximumRetryCount``) as ``--restart`` text."""
    name = (policy or {}).get("Name") or "no"
    count = (policy or {}).get("MaximumRetryCount") or 0
    text = f"{name}:{count}" if name == "on-failure" and count else name
    restart_policy(text)  # a UsageError for anything else
    return text


_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_NS = {"ns": 1, "us": 1000, "µs": 1000, "ms": 10 ** 6, "s": 10 ** 9, "m": 60 * 10 ** 9, "h": 3600 * 10 ** 9}


def parse_duration(text: str, what: str = "duration") -> int:
    """A Go duration (``30s``, ``1m30s``, ``500ms``; a bare ``0``) in nanoseconds, as Docker's flags take."""
    text = str(text).strip()
    if text == "0":
        return 0
    pos, total = 0, 0.0
    for m in _DURATION_RE.finditer(text):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _NS[m.group(2)]
        pos = m.end()
    if pos != len(text) or not text:
        raise UsageError(f"invalid {what} {text!r}", hint="use a duration like 30s, 1m30s or 500ms")
    return int(total)


HEALTH_KEYS = ("Test", "Interval", "Timeout", "Retries", "StartPeriod")


def health_problems(health: dict | None) -> None:
    """Raise a UsageError when ``health`` is not a Docker HealthConfig runner can run."""
    if health is None:
        return
    if not isinstance(health, dict) or set(health) - set(HEALTH_KEYS):
        raise UsageError(f"invalid healthcheck {health!r}: the keys are {', '.join(HEALTH_KEYS)}")
    test = health.get("Test")
    if test is not None and test != [] and not (
            isinstance(test, list) and all(isinstance(t, str) and "\0" not in t for t in test)
            and test[0] in ("NONE", "CMD", "CMD-SHELL") and (test[0] == "NONE" or len(test) > 1)):
        raise UsageError(f"invalid healthcheck test {test!r}", hint="[\"CMD\", args...], [\"CMD-SHELL\", cmd] or [\"NONE\"]")
    for key in ("Interval", "Timeout", "StartPeriod", "Retries"):
        value = health.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
            raise UsageError(f"invalid healthcheck {key} {value!r}: must be a non-negative integer")
        if key in ("Interval", "Timeout", "StartPeriod") and value and value < 10 ** 6:
            raise UsageError(f"healthcheck {key} must be at least 1ms")


def parse_device(text: str) -> tuple[str, str, str]:
    """``/dev/x[:/dev/y][:rwm]`` -> (host path, container path, cgroup permissions), Docker's rules."""
    parts = str(text).split(":")
    perms = "rwm"
    if len(parts) > 1 and parts[-1] and set(parts[-1]) <= set("rwm") and not parts[-1].startswith("/"):
        perms = parts.pop()
    if len(parts) == 1:
        parts.append(parts[0])
    if len(parts) != 2 or not parts[0] or not parts[1]:
        raise UsageError(f"invalid device specification: {text}", hint="use --device /dev/x[:/dev/y][:rwm]")
    return parts[0], parts[1], perms


def normalize_cap(name: str) -> str:
    """``sys_admin``, ``CAP_SYS_ADMIN`` -> ``CAP_SYS_ADMIN``; ``all`` -> ``ALL``."""
    up = str(name).strip().upper()
    return up if up == "ALL" or up.startswith("CAP_") else "CAP_" + up


def security_opt_split(opt: str) -> tuple[str, str, str]:
    """``key=value`` (or Docker's older ``key:value``) -> (key, separator, value)."""
    key, eq, value = str(opt).partition("=")
    return (key, eq, value) if eq else str(opt).partition(":")


def security_problems(spec: "ContainerSpec") -> list[str]:
    """What is wrong with the capability, security-opt and device options (Docker's wording)."""
    from runner.engine.runtime.caps import CAP_NUMBERS  # a pure table; imported only when options are given
    out = []
    for label, items in (("CapAdd", spec.cap_add), ("CapDrop", spec.cap_drop)):
        for item in items or []:
            if normalize_cap(item) != "ALL" and normalize_cap(item) not in CAP_NUMBERS:
                out.append(f'invalid {label}: unknown capability: "{normalize_cap(item)}"')
    for opt in spec.security_opt or []:
        key, eq, value = security_opt_split(opt)
        if key == "no-new-privileges":
            if eq and value not in ("true", "false"):
                out.append(f'invalid --security-opt 2: "{opt}"')
        elif key == "seccomp" and eq:
            if value != "unconfined":
                from runner.engine.runtime.seccomp import parse_profile
                try:
                    parse_profile(value)
                except UsageError as exc:
                    out.append(exc.message)
        elif key in ("apparmor", "label") and eq:
            pass  # no AppArmor or SELinux here: accepted and without effect, as on a Docker host without them
        else:
            out.append(f'invalid --security-opt 2: "{opt}"')
    for dev in spec.devices or []:
        try:
            host, ctr, _ = parse_device(dev)
        except UsageError as exc:
            out.append(exc.message)
            continue
        if not host.startswith("/") or not ctr.startswith("/") or ".." in ctr.split("/"):
            out.append(f"invalid device specification: {dev}: paths must be absolute")
    return out


class ExecSpec(Record):
    """A process to start in a running container (``runner exec``)."""

    _fields = ("command", "env", "workdir", "user", "tty", "interactive", "privileged")

    def __init__(self, command: list[str], env: list[str] = _NEW, workdir: str | None = None,
                 user: str | None = None, tty: bool = False, interactive: bool = False, privileged: bool = False):
        self.command = command
        self.env = [] if env is _NEW else env
        self.workdir, self.user, self.tty, self.interactive = workdir, user, tty, interactive
        self.privileged = privileged  # docker exec --privileged: every capability (the container's seccomp stays)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ExecSpec":
        try:
            return cls(**data).validate()
        except TypeError as exc:
            raise UsageError(f"malformed exec spec: {exc}") from exc

    def validate(self) -> "ExecSpec":
        problems = []
        if not self.command or not all(isinstance(a, str) and "\0" not in a for a in self.command):
            problems.append("exec needs a command")
        if self.workdir is not None and not self.workdir.startswith("/"):
            problems.append(f"working directory {self.workdir!r} is not an absolute path")
        for item in self.env:
            if not _ENV_KEY_RE.match(str(item).split("=", 1)[0]):
                problems.append(f"invalid environment variable {item!r}")
        if problems:
            raise UsageError("; ".join(problems))
        return self
