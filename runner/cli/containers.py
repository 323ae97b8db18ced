"""Container commands, Docker-compatible: run, create, start, attach, exec, ps, logs, stop, kill, rm, inspect,
wait."""

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


def _annotation(opt: runopts.Opt):
    if opt.kind == runopts.FLAG:
        return bool
    if opt.kind == runopts.MULTI:
        return List[opt.type]
    return opt.type if opt.default is not None else Optional[opt.type]


def _from_table(options: tuple) -> "callable":
    """Give the decorated ``fn(**values)`` the Typer signature ``IMAGE [COMMAND...]`` plus ``options``: run and
    create are described once, by runner.cli.runopts' table, which the fast run lane parses with too."""
    import inspect
    P = inspect.Parameter
    params = [P("image", P.POSITIONAL_OR_KEYWORD, default=typer.Argument(..., help="image to run"), annotation=str),
              P("command", P.POSITIONAL_OR_KEYWORD, default=typer.Argument(None, help="command and arguments"),
                annotation=Optional[List[str]])]
    params += [P(o.dest, P.POSITIONAL_OR_KEYWORD, default=_option(o), annotation=_annotation(o)) for o in options]

    def decorate(fn):
        fn.__signature__ = inspect.Signature(params)
        fn.__annotations__ = {p.name: p.annotation for p in params}
        return fn
    return decorate


@_from_table(runopts.RUN_OPTIONS)
def run(**values):
    """Create and start a container (docker run)."""
    raise typer.Exit(runopts.run(values))


@_from_table(runopts.CREATE_OPTIONS)
def create(**values):
    """Create a container without starting it (docker create)."""
    print(runopts.create(values))


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
    privileged: bool = typer.Option(False, "--privileged", help="give the command every capability"),
):
    """Run a command in a running container (docker exec)."""
    from runner.spec import ExecSpec
    spec = ExecSpec(list(command), runopts.parse_env(env, []), workdir, user, tty, interactive,
                    privileged).validate().to_dict()
    backend = _backend()
    raise typer.Exit(attach(lambda stdio, size: backend.exec(container, spec, stdio, size), tty, interactive))


def ps(
    all_: bool = typer.Option(False, "-a", "--all", help="show all containers, not only running ones"),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="only print ids"),
    no_trunc: bool = typer.Option(False, "--no-trunc", help="do not truncate ids and commands"),
    filter_: List[str] = typer.Option([], "-f", "--filter",
                                      help="label=k[=v], name=, status=, ancestor=, id=, volume=, network=, health="),
    fmt: Optional[str] = typer.Option(None, "--format",
                                      help="json (one object a line, as docker), or a Go template: {{.Names}}, table {{.ID}}"),
    last: int = typer.Option(-1, "-n", "--last", help="show the n last created containers (all states)"),
    latest: bool = typer.Option(False, "-l", "--latest", help="show the latest created container"),
):
    """List containers (docker ps)."""
    from runner.engine.filters import parse_cli
    if latest:
        last = 1
    items = _backend().ps(all=all_ or last >= 0, filters=parse_cli(filter_) or None)
    if last >= 0:
        items = items[:last]
    if quiet:
        for c in items:
            print(c["Id"] if no_trunc else c["Id"][:12])
        return
    if fmt:
        render.formatted(fmt, [render.ps_row(c, no_trunc) for c in items], render.PS_HEADERS)
        return
    render.containers(items, no_trunc)


def logs(
    container: str = typer.Argument(...),
    follow: bool = typer.Option(False, "-f", "--follow", help="follow the output until the container exits"),
    tail: str = typer.Option("all", "-n", "--tail", help="number of lines to show from the end of the logs"),
    since: Optional[str] = typer.Option(None, "--since", help="show logs since a time (e.g. 2013-01-02T13:23:37Z)"
                                        " or a relative one (e.g. 42m)"),
    until: Optional[str] = typer.Option(None, "--until", help="show logs before a time or a relative one"),
    timestamps: bool = typer.Option(False, "-t", "--timestamps", help="show timestamps"),
):
    """Show a container's output (docker logs)."""
    from runner.api.timefilter import parse_time
    from runner.stdio import Stdio
    args = {"follow": follow, "tail": _tail_lines(tail)}
    if since:
        args["since"] = parse_time(since)
    if until:
        args["until"] = parse_time(until)
    if timestamps:
        args["timestamps"] = True
    _backend().logs(container, Stdio(None, 1, 2), **args)


def _tail_lines(text: str) -> int | None:
    """docker logs --tail: "all" (or a negative number) is everything, otherwise a count of lines."""
    if text == "all":
        return None
    try:
        n = int(text)
    except ValueError as exc:
        raise UsageError(f'invalid value for "tail": "{text}"', hint='give a number of lines or "all"') from exc
    return None if n < 0 else n


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
    volumes: bool = typer.Option(False, "-v", "--volumes", help="remove the containers' anonymous volumes too"),
):
    """Remove containers (docker rm)."""
    _each(containers, lambda ref: _backend().rm(ref, force=force, volumes=volumes))


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


def inspect(refs: List[str] = typer.Argument(..., help="containers, images, volumes or networks"),
            fmt: Optional[str] = typer.Option(None, "-f", "--format", help="a Go template: {{.State.Running}}"),
            type_: Optional[str] = typer.Option(None, "--type", help="container, image, volume or network")):
    """Show low-level information as JSON, or through a Go template (docker inspect)."""
    backend = _backend()
    kinds = {"container": backend.inspect, "image": backend.image_inspect, "volume": backend.volume_inspect,
             "network": backend.network_inspect}
    if type_ is not None and type_ not in kinds:
        raise UsageError(f'"{type_}" is not a valid value for --type', hint="container, image, volume or network")
    order = [kinds[type_]] if type_ else list(kinds.values())
    nodes = None
    if fmt:
        from runner.cli import gotemplate
        nodes = gotemplate.parse(fmt)  # a bad template fails before anything is looked up
    out = []
    for ref in refs:
        for i, lookup in enumerate(order):
            try:
                out.append(lookup(ref))
                break
            except (NotFound, UsageError):
                if i == len(order) - 1:
                    raise NotFound(f"no such object: {ref}") from None
    if nodes is not None:
        from runner.cli import gotemplate
        for item in out:
            print(gotemplate.execute(nodes, item))
        return
    render.print_json(out)


def attach_(
    container: str = typer.Argument(...),
    no_stdin: bool = typer.Option(False, "--no-stdin", help="do not attach stdin"),
    sig_proxy: str = typer.Option("true", "--sig-proxy", metavar="BOOL",
                                  help="proxy received signals to the container (--sig-proxy=false: do not)"),
    detach_keys: Optional[str] = typer.Option(None, "--detach-keys", help="key sequence for detaching"),
):
    """Attach the terminal to a running container (docker attach): its output, and its stdin if it was created
    with -i; the detach keys (ctrl-p,ctrl-q) leave it running."""
    backend = _backend()
    config = backend.inspect(container)["Config"]
    tty, interactive = bool(config["Tty"]), bool(config["OpenStdin"]) and not no_stdin
    if sig_proxy.lower() not in ("true", "1", "false", "0"):
        raise UsageError(f"invalid value {sig_proxy!r} for --sig-proxy", hint="use --sig-proxy=true or false")
    handles = []

    def start(stdio, size):
        handles.append(backend.attach(container, stdio, size, detach_keys=detach_keys))
        return handles[0]

    code = attach(start, tty, interactive, sig_proxy=sig_proxy.lower() in ("true", "1"))
    if handles and getattr(handles[0], "ended", None) == "eof":
        code = backend.wait(container)  # as the docker CLI: input ended, the container's exit is the answer
    raise typer.Exit(code)


def wait(containers: List[str] = typer.Argument(...)):
    """Block until containers stop, then print their exit codes (docker wait)."""
    for ref in containers:
        print(_backend().wait(ref))


def register(app: typer.Typer) -> None:
    commands = {"run": _RUN_CTX, "create": _RUN_CTX, "exec": _CMD_CTX}  # the rest: Typer's defaults
    for fn in (run, create, start, attach_, exec_, ps, logs, stop, kill, rm, inspect, wait):
        name = fn.__name__.rstrip("_")
        app.command(name, context_settings=commands.get(name))(fn)
