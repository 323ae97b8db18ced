"""Container commands, Docker-compatible: run, create, start, exec, ps, logs, stop, kill, rm, inspect, wait."""

from __future__ import annotations

import os
from typing import List, Optional

import typer

from runner.cli import render
from runner.cli.attach import attach
from runner.errors import NotFound, UsageError

# Everything after the image belongs to the container's command, flags included (`run img ls -l`).
_CMD_CTX = {"allow_interspersed_args": False}
# run/create take -h for --hostname, as docker does, so only --help shows help there.
_RUN_CTX = {**_CMD_CTX, "help_option_names": ["--help"]}


def _backend():
    from runner.cli.app import STATE
    return STATE.backend


def parse_env(items: list[str], files: list[str], environ: dict | None = None) -> list[str]:
    """`-e K=V`, `-e K` (value from this environment, as docker does) and `--env-file` lines."""
    environ = os.environ if environ is None else environ
    lines: list[str] = []
    for path in files:
        try:
            with open(path) as f:
                lines += [ln.strip() for ln in f if ln.strip() and not ln.lstrip().startswith("#")]
        except OSError as exc:
            raise UsageError(f"cannot read env file {path}: {exc.strerror}") from None
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


def build_spec(image: str, command: list[str], *, env, env_file, workdir, user, name, hostname, entrypoint,
               memory, cpus, pids_limit, volume, read_only, network, tty, interactive, rm, publish=(),
               publish_all=False, label=()) -> dict:
    from runner.spec import ContainerSpec, Limits, Mount, PortMapping, parse_size
    labels = {}
    for item in label:
        k, _, v = item.partition("=")
        labels[k] = v
    spec = ContainerSpec(
        image=image, command=list(command) or None,
        entrypoint=None if entrypoint is None else ([entrypoint] if entrypoint else []),
        env=parse_env(env, env_file), workdir=workdir, user=user, name=name, hostname=hostname, tty=tty,
        interactive=interactive, mounts=[Mount.parse(v) for v in volume],
        ports=[PortMapping.parse(p) for p in publish], publish_all=publish_all, network=network,
        limits=Limits(memory=parse_size(memory, "memory size") if memory else None, cpus=cpus,
                      pids=pids_limit if pids_limit is None or pids_limit > 0 else None),  # docker: <= 0 is unlimited
        read_only=read_only, auto_remove=rm, labels=labels)
    return spec.validate().to_dict()


def _ensure_image(image: str, pull: str) -> None:
    """docker's --pull: 'missing' pulls only when the image is absent, 'always' first, 'never' not at all."""
    if pull not in ("missing", "always", "never"):
        raise UsageError(f"invalid --pull value {pull!r}", hint="use missing, always or never")
    backend = _backend()
    if pull == "missing":
        try:
            backend.image_inspect(image)
            return
        except NotFound:
            pass
    if pull != "never":
        from runner.cli.images import pull_image
        pull_image(image, platform=None, quiet=False, to_stderr=True)


_OPTS = dict(
    env=typer.Option([], "-e", "--env", help="set an environment variable (KEY=VALUE, or KEY to copy it)"),
    env_file=typer.Option([], "--env-file", help="read environment variables from a file"),
    workdir=typer.Option(None, "-w", "--workdir", help="working directory inside the container"),
    user=typer.Option(None, "-u", "--user", help="user as name|uid[:group|gid]"),
    name=typer.Option(None, "--name", help="assign a name to the container"),
    hostname=typer.Option(None, "--hostname", "-h", help="container host name"),
    entrypoint=typer.Option(None, "--entrypoint", help="override the image's entrypoint"),
    memory=typer.Option(None, "-m", "--memory", help="memory limit (e.g. 64m, 1g)"),
    cpus=typer.Option(None, "--cpus", help="number of CPUs (e.g. 0.5)"),
    pids_limit=typer.Option(None, "--pids-limit", help="maximum number of processes (-1 unlimited)"),
    volume=typer.Option([], "-v", "--volume", help="bind mount a host path: /host:/ctr[:ro]"),
    read_only=typer.Option(False, "--read-only", help="mount the container's root filesystem read-only"),
    network=typer.Option("bridge", "--network", "--net",
                         help="bridge (default), host, none, or a network from 'runner network create'"),
    tty=typer.Option(False, "-t", "--tty", help="allocate a pseudo-terminal"),
    interactive=typer.Option(False, "-i", "--interactive", help="keep stdin open"),
    publish=typer.Option([], "-p", "--publish",
                         help="publish a port: [ip:]hostPort:containerPort[/proto]; binds 127.0.0.1 unless an "
                              "ip is given (Docker binds all addresses)"),
    publish_all=typer.Option(False, "-P", "--publish-all",
                             help="publish all exposed ports to random ports on 127.0.0.1"),
    label=typer.Option([], "-l", "--label", help="set a label KEY=VALUE"),
    pull=typer.Option("missing", "--pull", help="pull the image: missing, always or never"),
)


def run(
    image: str = typer.Argument(..., help="image to run"),
    command: Optional[List[str]] = typer.Argument(None, help="command and arguments"),
    detach: bool = typer.Option(False, "-d", "--detach", help="run in the background and print the id"),
    rm: bool = typer.Option(False, "--rm", help="remove the container when it exits"),
    env: List[str] = _OPTS["env"], env_file: List[str] = _OPTS["env_file"],
    workdir: Optional[str] = _OPTS["workdir"], user: Optional[str] = _OPTS["user"],
    name: Optional[str] = _OPTS["name"], hostname: Optional[str] = _OPTS["hostname"],
    entrypoint: Optional[str] = _OPTS["entrypoint"], memory: Optional[str] = _OPTS["memory"],
    cpus: Optional[float] = _OPTS["cpus"], pids_limit: Optional[int] = _OPTS["pids_limit"],
    volume: List[str] = _OPTS["volume"], read_only: bool = _OPTS["read_only"], network: str = _OPTS["network"],
    tty: bool = _OPTS["tty"], interactive: bool = _OPTS["interactive"], publish: List[str] = _OPTS["publish"],
    publish_all: bool = _OPTS["publish_all"], label: List[str] = _OPTS["label"], pull: str = _OPTS["pull"],
):
    """Create and start a container (docker run)."""
    spec = build_spec(image, command or [], env=env, env_file=env_file, workdir=workdir, user=user, name=name,
                      hostname=hostname, entrypoint=entrypoint, memory=memory, cpus=cpus,
                      pids_limit=pids_limit, volume=volume, read_only=read_only, network=network, tty=tty,
                      interactive=interactive, rm=rm, publish=publish, publish_all=publish_all, label=label)
    _ensure_image(image, pull)
    backend = _backend()
    if detach:
        print(backend.run(spec, None))
        return 0
    raise typer.Exit(attach(lambda stdio, size: backend.run(spec, stdio, size), tty, interactive))


def create(
    image: str = typer.Argument(...), command: Optional[List[str]] = typer.Argument(None),
    rm: bool = typer.Option(False, "--rm", help="remove the container when it exits"),
    env: List[str] = _OPTS["env"], env_file: List[str] = _OPTS["env_file"],
    workdir: Optional[str] = _OPTS["workdir"], user: Optional[str] = _OPTS["user"],
    name: Optional[str] = _OPTS["name"], hostname: Optional[str] = _OPTS["hostname"],
    entrypoint: Optional[str] = _OPTS["entrypoint"], memory: Optional[str] = _OPTS["memory"],
    cpus: Optional[float] = _OPTS["cpus"], pids_limit: Optional[int] = _OPTS["pids_limit"],
    volume: List[str] = _OPTS["volume"], read_only: bool = _OPTS["read_only"], network: str = _OPTS["network"],
    tty: bool = _OPTS["tty"], interactive: bool = _OPTS["interactive"], publish: List[str] = _OPTS["publish"],
    publish_all: bool = _OPTS["publish_all"], label: List[str] = _OPTS["label"], pull: str = _OPTS["pull"],
):
    """Create a container without starting it (docker create)."""
    spec = build_spec(image, command or [], env=env, env_file=env_file, workdir=workdir, user=user, name=name,
                      hostname=hostname, entrypoint=entrypoint, memory=memory, cpus=cpus,
                      pids_limit=pids_limit, volume=volume, read_only=read_only, network=network, tty=tty,
                      interactive=interactive, rm=rm, publish=publish, publish_all=publish_all, label=label)
    _ensure_image(image, pull)
    print(_backend().create(spec))


def start(
    containers: List[str] = typer.Argument(..., help="containers to start"),
    attach_: bool = typer.Option(False, "-a", "--attach", help="attach stdout/stderr and wait"),
    interactive: bool = typer.Option(False, "-i", "--interactive", help="attach stdin"),
):
    """Start one or more created or stopped containers (docker start)."""
    backend = _backend()
    if attach_ or interactive:
        if len(containers) != 1:
            raise UsageError("you cannot attach to more than one container")
        tty = bool(backend.inspect(containers[0])["Config"]["Tty"])
        raise typer.Exit(attach(lambda stdio, size: backend.start(containers[0], stdio, size), tty, interactive))
    for ref in containers:
        backend.start(ref, None)
        print(ref)


def exec_(
    container: str = typer.Argument(...), command: List[str] = typer.Argument(..., help="command and arguments"),
    interactive: bool = typer.Option(False, "-i", "--interactive", help="keep stdin open"),
    tty: bool = typer.Option(False, "-t", "--tty", help="allocate a pseudo-terminal"),
    env: List[str] = typer.Option([], "-e", "--env", help="set an environment variable"),
    workdir: Optional[str] = typer.Option(None, "-w", "--workdir", help="working directory"),
    user: Optional[str] = typer.Option(None, "-u", "--user", help="user as name|uid[:group|gid]"),
):
    """Run a command in a running container (docker exec)."""
    from runner.spec import ExecSpec
    spec = ExecSpec(list(command), parse_env(env, []), workdir, user, tty, interactive).validate().to_dict()
    backend = _backend()
    raise typer.Exit(attach(lambda stdio, size: backend.exec(container, spec, stdio, size), tty, interactive))


def ps(
    all_: bool = typer.Option(False, "-a", "--all", help="show all containers, not only running ones"),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="only print ids"),
    no_trunc: bool = typer.Option(False, "--no-trunc", help="do not truncate ids and commands"),
    fmt: Optional[str] = typer.Option(None, "--format", help="json for machine-readable output"),
):
    """List containers (docker ps)."""
    items = _backend().ps(all=all_)
    if quiet:
        for c in items:
            print(c["Id"] if no_trunc else c["Id"][:12])
        return
    if fmt == "json":
        render.print_json(items)
        return
    rows = []
    for c in items:
        cmd = c["Command"] if no_trunc or len(c["Command"]) <= 20 else c["Command"][:19] + "…"
        rows.append([c["Id"] if no_trunc else c["Id"][:12], c["Image"], f'"{cmd}"', render.ago(c["Created"]),
                     render.container_status(c), c.get("Ports", ""), c["Name"]])
    render.table(["CONTAINER ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "PORTS", "NAMES"], rows)


def logs(
    container: str = typer.Argument(...),
    follow: bool = typer.Option(False, "-f", "--follow", help="follow the output until the container exits"),
    tail: Optional[int] = typer.Option(None, "-n", "--tail", help="only the last N chunks of output"),
):
    """Show a container's output (docker logs)."""
    from runner.backends.base import Stdio
    _backend().logs(container, Stdio(None, 1, 2), follow=follow, tail=tail)


def stop(
    containers: List[str] = typer.Argument(...),
    time_: int = typer.Option(10, "-t", "--time", "--timeout", help="seconds to wait before killing"),
):
    """Stop containers: SIGTERM, then SIGKILL after the timeout (docker stop)."""
    _each(containers, lambda ref: _backend().stop(ref, timeout=time_))


def kill(
    containers: List[str] = typer.Argument(...),
    signal: str = typer.Option("KILL", "-s", "--signal", help="signal to send"),
):
    """Send a signal to containers (docker kill)."""
    _each(containers, lambda ref: _backend().kill(ref, signal=signal))


def rm(
    containers: List[str] = typer.Argument(...),
    force: bool = typer.Option(False, "-f", "--force", help="kill and remove running containers"),
):
    """Remove containers (docker rm)."""
    _each(containers, lambda ref: _backend().rm(ref, force=force))


def _each(refs: list[str], op) -> None:
    """Apply op to each container like docker: print what worked, report each failure, fail at the end."""
    from runner.cli.app import print_error
    from runner.errors import RunnerError
    failed = None
    for ref in refs:
        try:
            op(ref)
            print(ref)
        except RunnerError as exc:
            print_error(exc)
            failed = exc
    if failed is not None:
        raise typer.Exit(failed.exit_code)


def inspect(refs: List[str] = typer.Argument(..., help="containers or images")):
    """Show low-level information as JSON (docker inspect)."""
    backend = _backend()
    out = []
    for ref in refs:
        try:
            out.append(backend.inspect(ref))
        except NotFound:
            out.append(backend.image_inspect(ref))
    render.print_json(out)


def wait(containers: List[str] = typer.Argument(...)):
    """Block until containers stop, then print their exit codes (docker wait)."""
    for ref in containers:
        print(_backend().wait(ref))


def register(app: typer.Typer) -> None:
    app.command("run", context_settings=_RUN_CTX)(run)
    app.command("create", context_settings=_RUN_CTX)(create)
    app.command("start")(start)
    app.command("exec", context_settings=_CMD_CTX)(exec_)
    app.command("ps")(ps)
    app.command("logs")(logs)
    app.command("stop")(stop)
    app.command("kill")(kill)
    app.command("rm")(rm)
    app.command("inspect")(inspect)
    app.command("wait")(wait)
