"""System commands: info, version, and `system df` / `system prune` (disk space, as docker's)."""

from __future__ import annotations

import typer

from runner.cli import render


def info(fmt: str = typer.Option(None, "--format", help="json for machine-readable output")):
    """Show which backend serves this host and why, and what it runs on."""
    from runner.cli.context import STATE
    choice = STATE.choice
    data = {"backend": choice.backend, "backend_reason": choice.reason}
    data.update(STATE.backend.info())
    data["api_socket"] = _api_socket()
    if isinstance(data.get("machine"), dict):
        from runner.cli.vm import _warn_if_tcg
        _warn_if_tcg(data["machine"])
    if fmt == "json":
        render.print_json(data)
        return
    for key, value in data.items():
        if isinstance(value, dict):
            print(f"{key}:")
            for k, v in value.items():
                print(f"  {k}: {v}")
        else:
            print(f"{key}: {value}")


def _api_socket() -> str:
    """Where `runner serve` listens by default for this user, and whether a server answers there now."""
    from runner.api.server import Address, default_host
    from runner.cli.serve import _answers
    from runner.errors import RunnerError
    host = default_host()
    try:
        serving = _answers(Address(host))
    except RunnerError:  # a Windows pipe: not served yet
        serving = False
    return f"{host} ({'serving' if serving else 'not serving: start it with runner serve -d'})"


def version():
    """Print the version."""
    from runner import __version__
    print(f"runner {__version__}")


system_app = typer.Typer(rich_markup_mode=None,
                         help="Manage runner: disk usage, pruning, info", no_args_is_help=True)

_DF_ROWS = ("Images", "Containers", "Local Volumes", "Build Cache", "Partial downloads")


def df(fmt: str = typer.Option(None, "--format", help="json for machine-readable output")):
    """Show the disk space used by images, containers and partial downloads, and the filesystem's."""
    from runner.cli.context import STATE
    data = STATE.backend.system_df()
    if fmt == "json":
        render.print_json(data)
        return
    rows = []
    for kind in _DF_ROWS:
        row = data.get(kind) or {}
        size, reclaim = row.get("Size", 0), row.get("Reclaimable", 0)
        percent = f" ({100 * reclaim // size}%)" if size else ""
        rows.append([kind, str(row.get("Total", 0)), str(row.get("Active", 0)), render.human_size(size),
                     render.human_size(reclaim) + percent])
    render.table(["TYPE", "TOTAL", "ACTIVE", "SIZE", "RECLAIMABLE"], rows)
    disk = data.get("Disk")
    if disk:
        print(f"\nDisk: {disk['Root']} on {disk['Mount']} ({disk['Type']}): {render.human_size(disk['Used'])} "
              f"used of {render.human_size(disk['Size'])}, {render.human_size(disk['Free'])} free")


_PRUNE_WARNING = """WARNING! This will remove:
  - all stopped containers
  - all networks not used by at least one container
  - all {images}{volumes}
  - unused build cache
  - all partial downloads
"""


def prune(all: bool = typer.Option(False, "-a", "--all", help="remove all unused images, not just dangling ones"),
          force: bool = typer.Option(False, "-f", "--force", help="do not prompt for confirmation"),
          volumes: bool = typer.Option(False, "--volumes", help="remove unused anonymous volumes too")):
    """Remove stopped containers, unused networks, dangling images, the build cache and partial downloads."""
    import sys
    from runner.cli.context import STATE
    if not force:
        sys.stdout.write(_PRUNE_WARNING.format(images="images without at least one container associated to them"
                                               if all else "dangling images",
                                               volumes="\n  - all anonymous volumes not used by at least one container"
                                               if volumes else ""))
        sys.stdout.write("\nAre you sure you want to continue? [y/N] ")
        sys.stdout.flush()
        if sys.stdin.readline().strip().lower() not in ("y", "yes"):
            return
    result = STATE.backend.system_prune(all=all, volumes=volumes)
    for title, key in (("Deleted Containers", "ContainersDeleted"), ("Deleted Networks", "NetworksDeleted"),
                       ("Deleted Volumes", "VolumesDeleted")):
        if result.get(key):
            print(f"{title}:\n" + "\n".join(result[key]) + "\n")
    if result.get("ImagesDeleted"):
        lines = [line.replace("Untagged:", "untagged:").replace("Deleted:", "deleted:")
                 for line in result["ImagesDeleted"]]
        print("Deleted Images:\n" + "\n".join(lines) + "\n")
    if result.get("CachesDeleted"):
        print("Deleted build cache objects:\n" + "\n".join(result["CachesDeleted"]) + "\n")
    print(f"Total reclaimed space: {render.human_size(result.get('SpaceReclaimed', 0))}")


def register(app: typer.Typer) -> None:
    app.command("info")(info)
    app.command("version")(version)
    system_app.command("df")(df)
    system_app.command("prune")(prune)
    system_app.command("info")(info)
    app.add_typer(system_app, name="system")
