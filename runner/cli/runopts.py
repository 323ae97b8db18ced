"""`run`/`create`: their options as one table, and what they do, without importing Typer.

Why a table: `runner run` is the hot path, and Typer costs more to import and to build its parser than
creating a container takes. The table below is the single description of the flags; the Typer commands in
runner.cli.containers are built from it (help, flags, defaults), and runner.cli.fastrun parses plain
`run` command lines with it directly. A unit test checks that both agree.
"""

from __future__ import annotations

import os

from runner.errors import ImageNotFound, UsageError

FLAG, VALUE, MULTI = "flag", "value", "multi"


class Opt:
    """One option: its parameter name, flags, kind (flag / value / repeatable value) and value type."""

    __slots__ = ("dest", "flags", "kind", "type", "default", "help")

    def __init__(self, dest: str, flags: tuple[str, ...], kind: str, help: str, type=str, default=None):
        self.dest, self.flags, self.kind, self.type, self.help = dest, flags, kind, type, help
        self.default = False if kind == FLAG else ([] if kind == MULTI else default)


# Options of `create`; `run` adds RUN_ONLY.
CREATE_OPTIONS = (
    Opt("rm", ("--rm",), FLAG, "remove the container when it exits"),
    Opt("env", ("-e", "--env"), MULTI, "set an environment variable (KEY=VALUE, or KEY to copy it)"),
    Opt("env_file", ("--env-file",), MULTI, "read environment variables from a file"),
    Opt("workdir", ("-w", "--workdir"), VALUE, "working directory inside the container"),
    Opt("user", ("-u", "--user"), VALUE, "user as name|uid[:group|gid]"),
    Opt("name", ("--name",), VALUE, "assign a name to the container"),
    Opt("hostname", ("--hostname", "-h"), VALUE, "container host name"),
    Opt("entrypoint", ("--entrypoint",), VALUE, "override the image's entrypoint"),
    Opt("memory", ("-m", "--memory"), VALUE, "memory limit (e.g. 64m, 1g)"),
    Opt("cpus", ("--cpus",), VALUE, "number of CPUs (e.g. 0.5)", type=float),
    Opt("pids_limit", ("--pids-limit",), VALUE, "maximum number of processes (-1 unlimited)", type=int),
    Opt("volume", ("-v", "--volume"), MULTI,
        "bind mount /host:/ctr[:ro], named volume NAME:/ctr[:ro], or anonymous volume /ctr"),
    Opt("mount", ("--mount",), MULTI, "attach a mount: type=volume|bind|tmpfs,source=...,target=...[,readonly]"),
    Opt("tmpfs", ("--tmpfs",), MULTI, "mount a tmpfs: /path[:size=64m,mode=1777]"),
    Opt("restart", ("--restart",), VALUE, "restart policy: no, on-failure[:N], always, unless-stopped",
        default="no"),
    Opt("health_cmd", ("--health-cmd",), VALUE, "command to run to check health"),
    Opt("health_interval", ("--health-interval",), VALUE, "time between health checks (e.g. 30s)"),
    Opt("health_timeout", ("--health-timeout",), VALUE, "longest time one check may run (e.g. 30s)"),
    Opt("health_retries", ("--health-retries",), VALUE, "failures in a row that make it unhealthy", type=int),
    Opt("health_start_period", ("--health-start-period",), VALUE, "time before failures count (e.g. 10s)"),
    Opt("no_healthcheck", ("--no-healthcheck",), FLAG, "disable the image's HEALTHCHECK"),
    Opt("read_only", ("--read-only",), FLAG, "mount the container's root filesystem read-only"),
    Opt("network", ("--network", "--net"), VALUE,
        "bridge (default), host, none, or a network from 'runner network create'", default="bridge"),
    Opt("tty", ("-t", "--tty"), FLAG, "allocate a pseudo-terminal"),
    Opt("interactive", ("-i", "--interactive"), FLAG, "keep stdin open"),
    Opt("publish", ("-p", "--publish"), MULTI,
        "publish a port: [ip:]hostPort:containerPort[/proto]; binds 127.0.0.1 unless an ip is given "
        "(Docker binds all addresses)"),
    Opt("publish_all", ("-P", "--publish-all"), FLAG, "publish all exposed ports to random ports on 127.0.0.1"),
    Opt("label", ("-l", "--label"), MULTI, "set a label KEY=VALUE"),
    Opt("label_file", ("--label-file",), MULTI, "read labels from a file of KEY=VALUE lines"),
    Opt("log_opt", ("--log-opt",), MULTI, "log rotation: max-size=20m, max-file=5 (the defaults; max-size=-1: none)"),
    Opt("pull", ("--pull",), VALUE, "pull the image: missing, always or never", default="missing"),
    Opt("runtime", ("--runtime",), VALUE, "OCI runtime: builtin (default) or runc"),
    Opt("platform", ("--platform",), VALUE,
        "image platform, e.g. linux/amd64 or linux/arm64 (another CPU's images run through user-mode emulation)"),
    Opt("cap_add", ("--cap-add",), MULTI, "add a Linux capability (CAP_ optional; ALL for every one)"),
    Opt("cap_drop", ("--cap-drop",), MULTI, "drop a Linux capability (CAP_ optional; ALL for every one)"),
    Opt("privileged", ("--privileged",), FLAG,
        "all capabilities, no seccomp, all devices, writable /sys: no isolation from the machine's kernel"),
    Opt("security_opt", ("--security-opt",), MULTI,
        "seccomp=unconfined|<profile.json>, no-new-privileges[=true|false]"),
    Opt("device", ("--device",), MULTI, "add a host device: /dev/x[:/dev/y][:rwm]"),
    Opt("network_alias", ("--network-alias",), MULTI, "another name containers on the same network reach it by"),
)
RUN_ONLY = (Opt("detach", ("-d", "--detach"), FLAG, "run in the background and print the id"),)
RUN_OPTIONS = RUN_ONLY + CREATE_OPTIONS


def _read_line_files(files, what: str) -> list[str]:
    """The non-empty, non-comment lines of ``--env-file``/``--label-file`` files, stripped, in order."""
    lines: list[str] = []
    for path in files:
        try:
            with open(path) as f:
                lines += [ln.strip() for ln in f if ln.strip() and not ln.lstrip().startswith("#")]
        except OSError as exc:
            raise UsageError(f"cannot read {what} {path}: {exc.strerror}") from exc
    return lines


def parse_env(items: list[str], files: list[str], environ: dict | None = None) -> list[str]:
    """`-e K=V`, `-e K` (value from this environment, as docker does) and `--env-file` lines."""
    environ = os.environ if environ is None else environ
    lines = _read_line_files(files, "env file")
    out = []
    for item in lines + list(items):
        key, eq, _ = item.partition("=")
        if not key:
            raise UsageError(f"invalid environment variable {item!r}", hint="use -e KEY=VALUE")
        if eq:
            out.append(item)
        elif key in environ:
            out.append(f"{key}={environ[key]}")
    return out


def read_security_opts(items: list[str]) -> list[str]:
    """``seccomp=<file>`` becomes ``seccomp=<the file's JSON>``, as docker's CLI does: the engine (maybe in the
    VM) never sees a path of this machine."""
    out = []
    for item in items:
        key, eq, value = item.partition("=")
        if key == "seccomp" and eq and value and value != "unconfined":
            try:
                with open(value, encoding="utf-8") as f:
                    value = f.read()
            except (OSError, UnicodeDecodeError) as exc:
                raise UsageError(f"opening seccomp profile ({value}) failed: {getattr(exc, 'strerror', None) or exc}",
                                 hint="give a readable JSON profile, or seccomp=unconfined") from exc
            item = "seccomp=" + value
        out.append(item)
    return out


def parse_labels(items: list[str], files: list[str] = ()) -> dict[str, str]:
    """``--label k=v`` / ``--label k`` (empty value) and ``--label-file`` lines (``#`` comments), as docker's."""
    lines = _read_line_files(files, "label file")
    labels = {}
    for item in lines + list(items):
        k, _, v = item.partition("=")
        if not k:
            raise UsageError(f"invalid label {item!r}", hint="use --label KEY=VALUE")
        labels[k] = v
    return labels


def parse_health(cmd, interval, timeout, retries, start_period, disabled: bool) -> dict | None:
    """``--health-*`` / ``--no-healthcheck`` -> Docker's HealthConfig (None: the image's as it is)."""
    from runner.spec import parse_duration
    given = [v for v in (cmd, interval, timeout, retries, start_period) if v is not None]
    if disabled:
        if given:
            raise UsageError("--no-healthcheck conflicts with --health-* options")
        return {"Test": ["NONE"]}
    if not given:
        return None
    health: dict = {"Test": ["CMD-SHELL", cmd] if cmd else []}
    for key, text in (("Interval", interval), ("Timeout", timeout), ("StartPeriod", start_period)):
        if text is not None:
            health[key] = parse_duration(text, f"--health-{key.lower().replace('startperiod', 'start-period')}")
    if retries is not None:
        if retries < 0:
            raise UsageError("--health-retries cannot be negative")
        health["Retries"] = retries
    return health


def parse_mounts(volume=(), mount=(), tmpfs=()) -> list:
    """-v, --mount and --tmpfs; a -v source starting with ``.`` is a path relative to here, as docker 23+ reads it."""
    from runner.spec import Mount
    volume = [os.path.abspath(v.split(":", 1)[0]) + v[len(v.split(":", 1)[0]):]
              if v.split(":", 1)[0] in (".", "..") or v.startswith(("./", "../")) else v for v in volume]
    return [Mount.parse(v) for v in volume] + [Mount.parse_mount(m) for m in mount] + \
        [Mount.parse_tmpfs(t) for t in tmpfs]


def build_spec(image: str, command: list[str], *, env, env_file, workdir, user, name, hostname, entrypoint,
               memory, cpus, pids_limit, volume, read_only, network, tty, interactive, rm, publish=(),
               publish_all=False, label=(), runtime=None, cap_add=(), cap_drop=(), privileged=False,
               security_opt=(), device=(), log_opt=(), platform=None, network_alias=(), mount=(), tmpfs=(),
               restart="no", label_file=(), health_cmd=None, health_interval=None, health_timeout=None,
               health_retries=None, health_start_period=None, no_healthcheck=False, detach=False, **_ignored) -> dict:
    """The validated ContainerSpec (as a dict) for these option values."""
    from runner.spec import ContainerSpec, Limits, PortMapping, parse_size
    labels = parse_labels(label, label_file)
    log_opts = {}
    for item in log_opt:
        k, eq, v = item.partition("=")
        if not eq or not k:
            raise UsageError(f"invalid log opt {item!r}", hint="use --log-opt KEY=VALUE, e.g. max-size=10m")
        log_opts[k] = v
    spec = ContainerSpec(
        image=image, command=list(command or []) or None,
        entrypoint=None if entrypoint is None else ([entrypoint] if entrypoint else []),
        env=parse_env(env, env_file), workdir=workdir, user=user, name=name, hostname=hostname, tty=tty,
        interactive=interactive, stdin_once=interactive and not detach, mounts=parse_mounts(volume, mount, tmpfs),
        ports=[PortMapping.parse(p) for p in publish], publish_all=publish_all, network=network,
        limits=Limits(memory=parse_size(memory, "memory size") if memory else None, cpus=cpus,
                      pids=pids_limit if pids_limit is None or pids_limit > 0 else None),  # docker: <= 0 is unlimited
        read_only=read_only, auto_remove=rm, labels=labels, runtime=runtime, cap_add=list(cap_add),
        cap_drop=list(cap_drop), privileged=privileged, security_opt=read_security_opts(list(security_opt)),
        devices=list(device), log_opts=log_opts, platform=platform or None, aliases=list(network_alias),
        restart=restart or "no",
        healthcheck=parse_health(health_cmd, health_interval, health_timeout, health_retries, health_start_period,
                                 no_healthcheck))
    return spec.validate().to_dict()


def with_image(backend, image: str, pull: str, attempt, platform: str | None = None):
    """docker's --pull around ``attempt`` (a create or run; its result is returned). 'missing' tries first and
    pulls only when the engine answers that the image is absent (or, with ``platform``, not of that platform),
    then tries again, as docker's CLI does: one round trip fewer than asking first, which through the VM is a
    request to the guest. 'always' pulls first; 'never' not at all."""
    if pull not in ("missing", "always", "never"):
        raise UsageError(f"invalid --pull value {pull!r}", hint="use missing, always or never")
    if pull == "missing":
        try:
            return attempt()
        except ImageNotFound:
            pass  # nothing was created: pull, then the same attempt again
    if pull != "never":
        from runner.cli.images import pull_image
        pull_image(image, platform=platform, quiet=False, to_stderr=True)
    return attempt()


def run(opts: dict) -> int:
    """`runner run`: create and start; print the id when detached, else attach and return the exit code."""
    from runner.cli.context import backend as get_backend
    spec = build_spec(**opts)
    backend = get_backend()

    def attempt() -> int:
        if opts["detach"]:
            print(backend.run(spec, None), flush=True)
            return 0
        from runner.cli.attach import attach
        return attach(lambda stdio, size: backend.run(spec, stdio, size), opts["tty"], opts["interactive"])

    return with_image(backend, opts["image"], opts["pull"], attempt, opts.get("platform"))


def create(opts: dict) -> str:
    from runner.cli.context import backend as get_backend
    spec = build_spec(**opts)
    backend = get_backend()
    return with_image(backend, opts["image"], opts["pull"], lambda: backend.create(spec), opts.get("platform"))
