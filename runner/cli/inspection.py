"""`runner top|stats|diff|rename|pause|unpause|events`: a container's processes, resource use and file
changes, renaming and freezing it, and the engine's event journal, as docker's commands of the same names."""

from __future__ import annotations

import sys
import time
from typing import List, Optional

import typer

from runner.cli import render


def _backend():
    from runner.cli.context import STATE
    return STATE.backend


def top(container: str = typer.Argument(...),
        ps_args: Optional[List[str]] = typer.Argument(None, help="ps options (default -ef)")):
    """Show the processes running in a container (docker top)."""
    result = _backend().top(container, " ".join(ps_args) if ps_args else None)
    render.table(result["Titles"], [list(row) for row in result["Processes"]])


def stats(containers: Optional[List[str]] = typer.Argument(None, help="containers (default: all running)"),
          no_stream: bool = typer.Option(False, "--no-stream", help="print one sample and exit"),
          fmt: Optional[str] = typer.Option(None, "--format", help="json for one JSON object per sample")):
    """Show containers' CPU, memory, network and process counts (docker stats)."""
    backend = _backend()
    refs = list(containers or []) or [c["Id"] for c in backend.ps()]
    previous: dict = {}
    while True:
        samples = [backend.stats(ref) for ref in refs]
        if previous or no_stream:
            if not no_stream:
                sys.stdout.write("\033[2J\033[H")
            if fmt == "json":
                for s in samples:
                    render.print_json(s)
            else:
                render.table(render.STATS_HEADERS,
                             [render.stats_row(s, previous.get(s["id"], {})) for s in samples])
            if no_stream:
                return
            sys.stdout.flush()
        previous = {s["id"]: s for s in samples}
        time.sleep(1.0)  # the sampling interval (as docker's), not synchronisation


def diff(container: str = typer.Argument(...)):
    """Show files changed in a container's filesystem: A added, C changed, D deleted (docker diff)."""
    for change in _backend().changes(container):
        print(f'{"CAD"[change["Kind"]]} {change["Path"]}')


def rename(container: str = typer.Argument(...), new_name: str = typer.Argument(...)):
    """Rename a container (docker rename)."""
    _backend().rename(container, new_name)


def pause(containers: List[str] = typer.Argument(...)):
    """Freeze every process of containers (docker pause; the cgroup freezer)."""
    from runner.cli.containers import _each
    _each(containers, lambda ref: _backend().pause(ref))


def unpause(containers: List[str] = typer.Argument(...)):
    """Thaw paused containers (docker unpause)."""
    from runner.cli.containers import _each
    _each(containers, lambda ref: _backend().unpause(ref))


def events(since: Optional[str] = typer.Option(None, "--since", help="show events since this time"),
           until: Optional[str] = typer.Option(None, "--until", help="stop at this time"),
           filters: Optional[List[str]] = typer.Option(None, "-f", "--filter", help="KEY=VALUE (type, event, "
                                                       "container, image, network, label)"),
           fmt: Optional[str] = typer.Option(None, "--format", help="json for one JSON object per line")):
    """Stream the engine's events: container create/start/die/destroy, image pull/tag/delete, ... (docker
    events). Without --until it follows until interrupted."""
    from runner.api.timefilter import parse_time
    from runner.errors import UsageError
    wanted: dict[str, list[str]] = {}
    for item in filters or []:
        key, eq, value = item.partition("=")
        if not eq:
            raise UsageError(f"bad format of filter {item!r} (expected name=value)")
        wanted.setdefault(key, []).append(value)
    now = time.time()
    cursor = int((parse_time(since, now) if since else now) * 1e9)
    end = parse_time(until, now, end_of_second=True) if until else None
    end_ns = int(end * 1e9) if end is not None else None
    backend = _backend()
    while True:
        batch = backend.events(cursor, end_ns, wanted)
        for event in batch["events"]:
            print(render.event_line(event) if fmt != "json" else render.json_line(event), flush=True)
        cursor = batch["cursor"]
        if end_ns is not None and cursor >= end_ns:
            return
        time.sleep(0.5 if end is None else max(0.0, min(0.5, end - time.time() + 0.25)))


def register(app: typer.Typer) -> None:
    for fn in (top, stats, diff, rename, pause, unpause, events):
        app.command(fn.__name__)(fn)
