"""`runner serve` (the Docker Engine API on a socket) and `runner docker-env` (how clients find it)."""

from __future__ import annotations

import os
import sys

import typer


def serve(
    host: str = typer.Option(None, "--host", "-H", metavar="URL",
                             help="where to listen: unix:///path (default: /run/runner/docker.sock as root, the "
                                  "user's runtime dir otherwise) or tcp://127.0.0.1:PORT (loopback only)"),
    group: str = typer.Option(None, "--group", help="make the socket 0660 for this group (default: 0600)"),
    detach: bool = typer.Option(False, "--detach", "-d", help="run in the background; see --pidfile"),
    pidfile: str = typer.Option(None, "--pidfile", metavar="PATH",
                                help="write the server's pid here (default with --detach: next to the socket)"),
):
    """Serve the Docker Engine API, so docker, compose, docker-py and testcontainers use runner.

    Whichever backend runner would pick serves the requests (flag > RUNNER_BACKEND > config > platform):
    natively on Linux, the VM's agent on macOS and Windows. Stop it with SIGTERM or Ctrl-C; containers keep
    running and the next server sees them."""
    from runner.api.server import Address, default_host
    from runner.cli.context import STATE
    address = Address(host or default_host())
    if detach:
        _detach(address, group, pidfile)
        return
    from runner.api.server import make_server, serve_until_signalled
    backend = STATE.backend
    server = make_server(address, backend, group=group, debug=STATE.debug)

    def ready() -> None:
        if pidfile:
            from runner.procs import write_atomic
            write_atomic(pidfile, f"{os.getpid()}\n", mode=0o644)
        sys.stderr.write(f"runner: serving the Docker Engine API on {address.text} ({backend.name} backend)\n")
        sys.stderr.write(f"runner: export DOCKER_HOST={address.text}\n")
        sys.stderr.flush()

    _restore(backend)
    try:
        serve_until_signalled(server, ready)
    finally:
        if pidfile:
            import contextlib
            with contextlib.suppress(FileNotFoundError):
                os.unlink(pidfile)


def _restore(backend) -> None:
    """As dockerd at its start: containers whose restart policy keeps them running run again
    (runner.engine.restart). A failure is a warning: serving the API matters more."""
    from runner.errors import RunnerError
    try:
        started = backend.restore()
    except RunnerError as exc:
        sys.stderr.write(f"runner: warning: could not restart containers with restart policies: {exc.message}\n")
        return
    if started:
        sys.stderr.write(f"runner: restarted {len(started)} container(s) by their restart policy\n")


def _detach(address, group: str | None, pidfile: str | None) -> None:
    """Start this very command in the background, wait until it answers, print where and its pid."""
    import time

    from runner.cli.context import STATE
    from runner.errors import RunnerError
    from runner.procs import spawn_detached
    if address.scheme == "unix":
        base = address.path
    elif address.scheme == "npipe":  # \\.\pipe\NAME is no directory for a pid file
        base = os.path.join(_state_dir(), "npipe-" + address.path.rsplit("\\", 1)[-1])
    else:
        base = os.path.join(_state_dir(), f"tcp-{address.port}")
    pidfile = pidfile or base + ".pid"
    log = base + ".log"
    os.makedirs(os.path.dirname(log), exist_ok=True)
    argv = [sys.executable, "-m", "runner"]
    if STATE.backend_flag:
        argv += ["--backend", STATE.backend_flag]
    argv += ["--machine", STATE.machine] + (["--debug"] if STATE.debug else [])
    argv += ["serve", "--host", address.text, "--pidfile", pidfile] + (["--group", group] if group else [])
    proc = spawn_detached(argv, log)
    deadline = time.monotonic() + 60  # the VM backend may boot the machine first
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            with open(log, errors="replace") as f:
                lines = [line for line in f.read().splitlines() if line.strip()]
            reason = lines[-1] if lines else f"exit code {proc.returncode}"
            raise RunnerError(f"runner serve failed to start: {reason.removeprefix('Error: ')}", hint=f"see {log}")
        if os.path.exists(pidfile) and _answers(address):
            print(f"runner serve: pid {proc.pid}, listening on {address.text} (log: {log})")
            print(f"export DOCKER_HOST={address.text}")
            return
        time.sleep(0.05)
    raise RunnerError(f"runner serve did not start listening on {address.text} within 60 s", hint=f"see {log}")


def _answers(address) -> bool:
    import socket
    if address.scheme == "npipe":
        try:  # opening the pipe is connecting to it (the server sees a client that leaves at once)
            with open(address.path, "r+b", buffering=0):
                return True
        except OSError:
            return False
    if address.scheme == "unix":
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        target = address.path
    else:
        sock = socket.socket(socket.AF_INET6 if ":" in address.host else socket.AF_INET, socket.SOCK_STREAM)
        target = (address.host.strip("[]"), address.port)
    try:
        sock.settimeout(1)
        sock.connect(target)
        return True
    except OSError:
        return False
    finally:
        sock.close()


def _state_dir() -> str:
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        return "/run/runner"
    import platformdirs
    return platformdirs.user_runtime_dir("runner")


def docker_env(host: str = typer.Option(None, "--host", "-H", metavar="URL", help="the socket runner serve uses"),
               context: bool = typer.Option(False, "--context",
                                            help="instead, write a docker context named 'runner' for it "
                                                 "(docker context use runner; $DOCKER_CONFIG respected)"),
               context_rm: bool = typer.Option(False, "--context-rm", help="remove that docker context")):
    """Print the shell line that points docker clients at runner: eval "$(runner docker-env)"."""
    from runner.api import dockercontext
    from runner.api.server import Address, default_host
    if context and context_rm:
        from runner.errors import UsageError
        raise UsageError("--context and --context-rm exclude each other")
    if context_rm:
        removed, was_current = dockercontext.remove(dockercontext.config_dir())
        if not removed:
            print(f"no docker context named {dockercontext.NAME!r}")
            return
        print(f"removed the docker context {dockercontext.NAME!r}")
        if was_current:
            print("it was the current one: docker uses its default context again")
        return
    address = Address(host or default_host())
    if context:
        path = dockercontext.write(address.text, dockercontext.config_dir())
        print(f"docker context {dockercontext.NAME!r} -> {address.text} ({path})")
        print(f"use it: docker context use {dockercontext.NAME}  (or docker --context {dockercontext.NAME} ...)")
        return
    print(f"export DOCKER_HOST={address.text}")


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
    app.command("docker-env")(docker_env)
