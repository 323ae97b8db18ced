"""`runner vm start|stop|status|ssh|logs|rm`: manage the QEMU machine that runs containers off Linux.

Thin by design: every decision lives in :class:`runner.vm.machine.Machine`; this module parses flags and prints.
paramiko and qemu.qmp are imported only inside the commands (through Machine), never at import time.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from typing import List, Optional

import typer

from runner.errors import UsageError

vm_app = typer.Typer(rich_markup_mode=None, no_args_is_help=True,
                     help="Manage the Linux VM that runs containers on macOS and Windows")

NAME_HELP = "machine name (default: the global --machine, i.e. 'default')"


def _machine(name: str | None):
    from runner.cli.context import STATE, warn
    from runner.vm.machine import Machine

    return Machine(name or STATE.machine, warn=warn)


def _memory(text: str | None) -> int | None:
    from runner.vm.qemu_cmd import parse_memory_mib

    if text is None:
        return None
    mib = parse_memory_mib(text)
    if mib is None:
        raise UsageError(f"--memory {text!r} is not a size", hint="use MiB (2048) or a unit (2G, 512M)")
    return mib


@vm_app.command()
def start(
    name: Optional[str] = typer.Option(None, "--name", help=NAME_HELP),
    cpus: Optional[int] = typer.Option(None, "--cpus", help="virtual CPUs (default 2; kept for later starts)"),
    memory: Optional[str] = typer.Option(None, "--memory", help="memory, MiB or with a unit: 2048, 4G"),
    disk_size: Optional[str] = typer.Option(None, "--disk-size", help="data disk size at creation (20G)"),
    no_wait: bool = typer.Option(False, "--no-wait", help="return once QEMU runs, before SSH is ready"),
    share: Optional[List[str]] = typer.Option(
        None, "--share", help="host directory to share with the VM for -v (repeatable; replaces the default "
                              "set: your home and the temp dir; kept for later starts)"),
    arch: Optional[str] = typer.Option(
        None, "--arch", help="guest CPU architecture at creation: aarch64 (arm64) or x86_64 (amd64); default: "
                             "the host's. Another architecture is another machine (--name)"),
):
    """Boot the machine (creating it on first use) and wait until SSH into it works."""
    machine = _machine(name)
    began = time.monotonic()
    machine.start(cpus=cpus, memory=_memory(memory), disk_size=disk_size, wait=not no_wait, shares=share or None,
                  arch=arch)
    st = machine.status()
    print(f"machine {machine.name!r} is {st['state']} ({st['guest_arch']}, {st['accel']}, "
          f"ssh 127.0.0.1:{st['ssh_port']}, {time.monotonic() - began:.1f} s)")


@vm_app.command()
def stop(
    name: Optional[str] = typer.Option(None, "--name", help=NAME_HELP),
    timeout: float = typer.Option(30.0, "--timeout", help="seconds to wait for a clean power-off"),
):
    """Power the machine off cleanly (ACPI power button; forced after --timeout)."""
    machine = _machine(name)
    print(f"machine {machine.name!r} {'stopped' if machine.stop(timeout) else 'was not running'}")


@vm_app.command()
def status(
    name: Optional[str] = typer.Option(None, "--name", help=NAME_HELP),
    as_json: bool = typer.Option(False, "--json", help="print JSON"),
):
    """Show whether the machine runs, its pid, SSH port, accelerator and uptime."""
    from runner.cli import render

    st = _machine(name).status()
    if st.get("state") == "running":
        st["data_disk"] = _data_disk(name)
    _warn_if_tcg(st)
    if as_json:
        render.print_json(st)
        return
    width = max(len(k) for k in st)
    for key, value in st.items():
        if key == "uptime" and value is not None:
            value = render.duration(value)
        if isinstance(value, list):
            value = ", ".join(value) or "none"
        print(f"{key.ljust(width)}  {'-' if value is None else value}")


def _data_disk(name: Optional[str]) -> str | None:
    """The guest data disk's use as the engine in the guest sees it (``system df``'s Disk), or None.

    To grow a full disk: ``runner vm rm`` then ``runner vm start --disk-size 40G`` (its images and containers
    go with it; ``runner save`` what you want to keep first)."""
    from runner.cli import render
    from runner.errors import RunnerError
    try:
        from runner.backends.vm import VMBackend
        disk = VMBackend(name or "default").system_df()["Disk"]
    except (RunnerError, OSError, KeyError):
        return None
    return (f"{render.human_size(disk['Used'])} used of {render.human_size(disk['Size'])}, "
            f"{render.human_size(disk['Free'])} free ({disk['Mount']}, {disk['Type']})")


def _warn_if_tcg(status: dict) -> None:
    """The TCG warning on stderr for a machine running under emulation (stdout stays parseable)."""
    if status.get("accel") == "tcg":
        from runner.cli.context import warn
        from runner.vm.accel import tcg_warning
        warn(tcg_warning(status.get("accel_reason") or "software emulation"))


@vm_app.command(context_settings={"allow_interspersed_args": False})
def ssh(
    command: Optional[List[str]] = typer.Argument(None, help="command to run; an interactive shell if omitted"),
    name: Optional[str] = typer.Option(None, "--name", help=NAME_HELP),
):
    """Open a root shell in the machine, or run a command there and exit with its status."""
    machine = _machine(name)
    machine.ensure_running()
    if command:
        code, out, err = machine.run(" ".join(command))
        sys.stdout.buffer.write(out)
        sys.stdout.flush()
        sys.stderr.buffer.write(err)
        raise typer.Exit(code)
    raise typer.Exit(_interactive(machine))


def _interactive(machine) -> int:
    """The system ssh client when there is one (best terminal handling), else a paramiko shell."""
    from runner.vm import layout, ssh as vm_ssh

    binary = shutil.which("ssh")
    if binary is None:
        return vm_ssh.interactive_shell(machine.ssh())
    port = machine.status()["ssh_port"]
    client_key, host_key = machine.keys()
    layout.write_private(machine.paths.known_hosts, f"[127.0.0.1]:{port} {host_key.public}\n")
    argv = [binary, "-q", "-p", str(port), "-i", str(client_key.private_path),
            "-o", "IdentitiesOnly=yes", "-o", f"UserKnownHostsFile={machine.paths.known_hosts}",
            "-o", "StrictHostKeyChecking=yes", "-o", "GlobalKnownHostsFile=/dev/null", f"{vm_ssh.USER}@127.0.0.1"]
    return subprocess.call(argv)


@vm_app.command()
def logs(
    name: Optional[str] = typer.Option(None, "--name", help=NAME_HELP),
    follow: bool = typer.Option(False, "-f", "--follow", help="keep printing as the guest writes"),
):
    """Print the guest's serial console (kernel and init messages)."""
    path = _machine(name).logs()
    if not path.exists():
        raise UsageError(f"no serial log yet at {path}", hint="start the machine first: runner vm start")
    out = sys.stdout.buffer
    with open(path, "rb") as f:
        while True:
            chunk = f.read(65536)
            if chunk:
                out.write(chunk)
                continue
            out.flush()
            if not follow:
                return
            if f.tell() > os.path.getsize(path):  # a new boot truncated the log: start over
                f.seek(0)
            time.sleep(0.2)


@vm_app.command()
def rm(
    name: Optional[str] = typer.Option(None, "--name", help=NAME_HELP),
    force: bool = typer.Option(False, "-f", "--force", help="stop the machine first if it runs"),
):
    """Delete the machine: its data disk (images, containers), keys and logs."""
    machine = _machine(name)
    machine.rm(force=force)
    print(f"machine {machine.name!r} removed")


def _mount_image_commands() -> None:
    """`runner vm image ...` comes from the guest image module when it is present."""
    try:
        from runner.cli.vm_image import image_app
    except ImportError:
        return
    vm_app.add_typer(image_app, name="image")


_mount_image_commands()
