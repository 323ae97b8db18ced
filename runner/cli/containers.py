"""Container commands, Docker-compatible: run, create, start, exec, ps, logs, stop, kill, rm, inspect, wait."""

from __future__ import annotations

from typing import List, Optional

import typer

from runner.cli import render, runopts
from runner.cli.attach import attach
from runner.errors import NotFound, UsageError

# Everything after the image belongs to the container's command, flags included (`run img ls -l`).
_CMD_CTX = {"allow_interspersed_args": False}
# run/create take -h for --hostname, as docker does, so only --help shows help there.
_RUN_CTX = {**_CMD_CTX, "help_option_names": ["--help"]}


def _backend():
    from runner.cli.context import backend
    return backend()


def _option(opt: runopts.Opt):
    """The Typer form of one entry of the run/create option table."""
    return typer.Option(opt.default, *opt.flags, help=opt.help)


_OPTS = {opt.dest: _option(opt) for opt in runopts.RUN_OPTIONS}


def run(
    image: str = typer.Argument(..., help="image to run"),
    command: Optional[List[str]] = typer.Argument(None, help="command and arguments"),
    detach: bool = _OPTS["detach"], rm: bool = _OPTS["rm"],
    env: List[str] = _OPTS["env"], env_file: List[str] = _OPTS["env_file"],
    workdir: Optional[str] = _OPTS["workdir"], user: Optional[str] = _OPTS["user"],
    name: Optional[str] = _OPTS["name"], hostname: Optional[str] = _OPTS["hostname"],
    entrypoint: Optional[str] = _OPTS["entrypoint"], memory: Optional[str] = _OPTS["memory"],
    cpus: Optional[float] = _OPTS["cpus"], pids_limit: Optional[int] = _OPTS["pids_limit"],
    volume: List[str] = _OPTS["volume"], read_only: bool = _OPTS["read_only"], network: str = _OPTS["network"],
    tty: bool = _OPTS["tty"], interactive: bool = _OPTS["interactive"], publish: List[str] = _OPTS["publish"],
    publish_all: bool = _OPTS["publish_all"], label: List[str] = _OPTS["label"], pull: str = _OPTS["pull"],
    log_opt: List[str] = _OPTS["log_opt"],
):
    """Create and start a container (docker run)."""
    raise typer.Exit(runopts.run(dict(locals())))


def create(
    image: str = typer.Argument(...), command: Optional[List[str]] = typer.Argument(None),
    rm: bool = _OPTS["rm"],
    env: List[str] = _OPTS["env"], env_file: List[str] = _OPTS["env_file"],
    workdir: Optional[str] = _OPTS["workdir"], user: Optional[str] = _OPTS["user"],
    name: Optional[str] = _OPTS["name"], hostname: Optional[str] = _OPTS["hostname"],
    entrypoint: Optional[str] = _OPTS["entrypoint"], memory: Optional[str] = _OPTS["memory"],
    cpus: Optional[float] = _OPTS["cpus"], pids_limit: Optional[int] = _OPTS["pids_limit"],
    volume: List[str] = _OPTS["volume"], read_only: bool = _OPTS["read_only"], network: str = _OPTS["network"],
    tty: bool = _OPTS["tty"], interactive: bool = _OPTS["interactive"], publish: List[str] = _OPTS["publish"],
    publish_all: bool = _OPTS["publish_all"], label: List[str] = _OPTS["label"], pull: str = _OPTS["pull"],
    log_opt: List[str] = _OPTS["log_opt"],
):
    """Create a container without starting it (docker create)."""
    print(runopts.create(dict(locals())))


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
    spec = ExecSpec(list(command), runopts.parse_env(env, []), workdir, user, tty, interactive).validate().to_dict()
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
    from runner.cli.context import print_error
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
