"""A named QEMU machine: start, stop, status, rm, and an SSH session to it.

One machine = one directory (see :mod:`runner.vm.layout`) and at most one QEMU process. QEMU runs detached
from the CLI (its own session), so it outlives the command that started it; later commands find it through
``run.json``. That record is never trusted blindly: the pid must be alive *and* be the same process (its start
time and its command line naming this machine's serial log), because after a crash or a host reboot the pid
may belong to anything. A record that fails the check is stale and is removed with the QMP socket and the
readiness file, under the machine lock.

Start is done under an exclusive lock (:class:`runner.procs.FileLock`), so two CLI calls never boot the same
machine twice; the second waits and then finds it running. What to launch is a pure plan
(:mod:`runner.vm.boot`); when the machine is ready is a list of named requirements (:mod:`runner.vm.readiness`).
Nothing here prints: warnings go to the ``warn`` callback the caller (the CLI) supplies.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import secrets
import shutil
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from runner import procs
from runner.errors import Conflict, NotFound, UsageError, VMError
from runner.vm import layout
from runner.vm.layout import MachinePaths
from runner.vm.qemu_cmd import Boot, MachineConfig, parse_size

AGENT_PORT = 7070  # guest-loopback port the agent listens on; sent to the guest in its boot config
LOCK_TIMEOUT = 300.0  # long enough to wait out another call's TCG boot


class Machine:
    """A named VM. Cheap to construct: nothing is read or started until a method is called."""

    def __init__(self, name: str = layout.DEFAULT_MACHINE, guest_arch: str | None = None,
                 root: Path | None = None, warn: Callable[[str], None] | None = None):
        from runner.vm.qemu_cmd import normalize_arch

        self.name = name
        self.paths = MachinePaths.for_name(name, root)
        # The architecture asked for (vm start --arch); None = the machine's own, or the host's for a new one.
        self._wanted_arch = normalize_arch(guest_arch) if guest_arch else None
        self.warn = warn or (lambda message: None)  # the CLI passes its own: it is the one owner of output
        self._proc: subprocess.Popen | None = None  # set when this process started QEMU (to reap it)

    @property
    def guest_arch(self) -> str:
        """The guest's CPU architecture: the one asked for, else the machine's stored one, else the host's.

        Like podman machine (one architecture per named machine), a machine keeps the architecture it was
        created with: its data disk holds that architecture's images. Another architecture is another machine
        (``--name``); :meth:`start` refuses a mismatch instead of silently booting the other guest."""
        from runner.vm.accel import host_arch

        return self._wanted_arch or self.existing_arch() or host_arch()

    def existing_arch(self) -> str | None:
        """The architecture this machine was created with, or None when it does not exist yet. A machine
        created before the architecture was stored (config.json without ``arch``) is of the host's."""
        from runner.vm.accel import host_arch

        if not self.paths.config.exists() and not self.paths.data_disk.exists():
            return None
        return (self.config().arch if self.paths.config.exists() else None) or host_arch()

    def __repr__(self) -> str:
        return f"Machine({self.name!r})"

    # ---- public API -------------------------------------------------------------------------------------

    def start(self, cpus: int | None = None, memory: int | None = None, disk_size: str | None = None,
              wait: bool = True, timeout: float | None = None, shares: list[str] | None = None,
              arch: str | None = None) -> "Machine":
        """Boot the machine if it is not running (creating it on first use) and, with ``wait``, block until
        SSH works. ``memory`` is in MiB. Sizes given for an existing machine replace its stored ones, except
        the disk size and ``arch``, which are fixed when the machine is created. ``shares``: host directories
        to share (replacing the stored or default set, see :mod:`runner.vm.shares`)."""
        from runner.vm import shares as vmshares
        from runner.vm.qemu_cmd import normalize_arch

        if arch:
            self._wanted_arch = normalize_arch(arch)
        wanted_shares = tuple(vmshares.check_dirs(shares)) if shares else None
        with self._locked():
            self._check_arch()
            record = self._live_record()
            launched = record is None
            if record is None:
                config = self._resolve_config(cpus, memory, disk_size, wanted_shares)
                record = self._launch(config, fast=wait)
            elif any(v is not None for v in (cpus, memory, disk_size, wanted_shares)):
                stored = self.config()
                wanted = MachineConfig(cpus or stored.cpus, memory or stored.memory_mib,
                                       disk_size or stored.disk_size, wanted_shares or stored.shares, stored.arch)
                if wanted != stored:
                    raise Conflict(f"machine {self.name!r} is running with {_describe(stored)}",
                                   hint=f"stop it first: runner vm stop --name {self.name}")
            if wait:
                from runner.vm.readiness import Readiness

                try:
                    Readiness(self, record, timeout, self.warn).wait()
                except VMError as exc:  # snapshot fast start: a failed resume becomes a normal boot
                    if not (launched and record.get("boot") == "resume"):
                        raise
                    from runner.vm import snapshot

                    snapshot.discard(self.paths.dir)
                    self.warn(f"machine {self.name!r} could not resume from its saved state ({exc.message}); "
                              f"booting it normally")
                    record = self._launch(config, fast=True, resume=False)
                    Readiness(self, record, timeout, self.warn).wait()
        return self

    def _check_arch(self) -> None:
        """An existing machine of another architecture is refused with the way to get the one asked for."""
        existing = self.existing_arch()
        if self._wanted_arch is None or existing is None or existing == self._wanted_arch:
            return
        flag = "" if self.name == layout.DEFAULT_MACHINE else f" --name {self.name}"
        raise Conflict(f"machine {self.name!r} is an {existing} machine, not {self._wanted_arch}",
                       hint=f"use another machine for {self._wanted_arch} (runner vm start --name "
                            f"{self._wanted_arch} --arch {self._wanted_arch}), or remove this one first "
                            f"(runner vm rm{flag}); the architecture is fixed when a machine is created")

    # ---- shared host directories (runner.vm.shares) ---------------------------------------------------
    def shared_dirs(self) -> list[str]:
        """The host directories this machine shares (mounted in the guest at the same paths)."""
        from runner.vm import shares as vmshares
        from runner.vm.accel import host_os

        if host_os() == "windows":
            return []
        stored = self.config().shares
        return list(stored) if stored is not None else vmshares.default_dirs()

    def stop(self, timeout: float = 30.0) -> bool:
        """Power the machine off: ACPI power button, then QMP ``quit``, then SIGKILL as the last resort.
        Returns False if it was not running. The guest unmounts its data disk on the power button."""
        with self._locked():
            record = self._live_record()
            if record is None:
                self._clean_runtime()
                return False
            self._forget_ssh()
            from runner.vm import muxctl  # the connection cache would only hold a dead SSH session

            muxctl.stop(self.paths)
            steps: list[tuple[Callable[[Any], None], float]] = [
                (lambda q: q.system_powerdown(), timeout), (lambda q: q.quit(), 5.0)]
            for action, wait_s in steps:
                try:
                    with self.qmp(record, timeout=3.0) as q:
                        action(q)
                except VMError:
                    pass  # QMP unusable: go on to the next, harder step
                if self._wait_exit(record, wait_s):
                    break
            else:
                procs.kill(record["pid"])
                if not self._wait_exit(record, 10.0):
                    raise VMError(f"QEMU (pid {record['pid']}) of machine {self.name!r} did not die")
            self._clean_runtime()
            return True

    def status(self) -> dict:
        """``state`` is running (SSH ready was signalled), starting (QEMU up, guest not ready) or stopped.
        Stale files of a crashed QEMU are removed here, when no other call holds the machine lock."""
        config = self.config() if self.paths.config.exists() else None
        info: dict[str, Any] = {"name": self.name, "state": "stopped", "pid": None, "ssh_port": None,
                                "accel": None, "uptime": None, "guest_arch": self.guest_arch,
                                "serial_log": str(self.paths.serial_log), "exists": self.paths.dir.is_dir()}
        if config:
            info.update(config.to_dict())
            info.pop("arch", None)  # shown as guest_arch (the host's for a machine that predates --arch)
        info["shares"] = self.shared_dirs()
        record = self._live_record()
        if record is None:
            if self.paths.run.exists():
                self._clean_stale_if_idle()
            return info
        info.update(state="running" if self.guest_ready() else "starting", pid=record["pid"],
                    ssh_port=record["ssh_port"], accel=record["accel"], accel_reason=record.get("accel_why"),
                    boot=record.get("boot", "cold"),  # "resume": started from its saved state (runner.vm.snapshot)
                    uptime=round(time.time() - record["started_at"], 1))
        return info

    def rm(self, force: bool = False) -> None:
        """Delete the machine and its data disk. A running machine needs ``force`` (it is stopped first)."""
        if not self.paths.dir.exists():
            raise NotFound(f"no machine named {self.name!r}")
        if self._live_record() is not None:
            if not force:
                raise Conflict(f"machine {self.name!r} is running",
                               hint=f"stop it first (runner vm stop --name {self.name}) or use --force")
            self.stop()
        with self._locked():
            self._clean_runtime()
        shutil.rmtree(self.paths.dir)

    def ensure_running(self) -> "Machine":
        """The VM backend's entry point: the machine, booted (with its stored or default size) and SSH-ready."""
        record = self._live_record()
        if record is not None and self.guest_ready():
            return self
        return self.start(wait=True)

    def ssh(self) -> Any:
        """A connected, authenticated ``paramiko.SSHClient`` (cached per process and per boot)."""
        from runner.vm import ssh

        record = self._require_running()
        return ssh.cached_session(self._session_key(record)) or self.connect_ssh(record)

    def connect_ssh(self, record: dict, timeout: float = 30.0) -> Any:
        """A new SSH session to this boot, remembered for :meth:`ssh`."""
        from runner.vm import ssh

        client_key, host_key = self.keys()
        client = ssh.connect(record["ssh_port"], client_key.private_path, host_key.public, self.name,
                             timeout=timeout)
        ssh.remember_session(self._session_key(record), client)
        return client

    def _session_key(self, record: dict) -> tuple[str, int, str]:
        return (str(self.paths.dir), record["pid"], record["identity"])

    def run(self, command: str, timeout: float | None = None, stdin: bytes | None = None
            ) -> tuple[int, bytes, bytes]:
        """Run a shell command in the guest over SSH: (exit code, stdout, stderr)."""
        from runner.vm import ssh

        return ssh.run(self.ssh(), command, timeout=timeout, stdin=stdin)

    def hostfwd_add(self, host_port: int, guest_port: int, proto: str = "tcp", host_ip: str = "127.0.0.1"
                    ) -> None:
        """Forward a host port to the guest while it runs (published container ports)."""
        with self.qmp(self._require_running()) as q:
            q.hostfwd_add(proto, host_ip, host_port, guest_port)

    def hostfwd_remove(self, host_port: int, proto: str = "tcp", host_ip: str = "127.0.0.1") -> None:
        with self.qmp(self._require_running()) as q:
            q.hostfwd_remove(proto, host_ip, host_port)

    def logs(self) -> Path:
        """The guest's serial console log (kernel and init messages of the current or last boot)."""
        return self.paths.serial_log

    def config(self) -> MachineConfig:
        """The stored size of the machine (defaults if it was never started)."""
        try:
            return MachineConfig.from_dict(json.loads(self.paths.config.read_text()))
        except FileNotFoundError:
            return MachineConfig()
        except (OSError, ValueError, KeyError) as exc:
            raise VMError(f"unreadable machine config {self.paths.config}: {exc}",
                          hint=f"fix or delete the file, or recreate the machine (runner vm rm {self.name})")

    @property
    def agent_token(self) -> str:
        """The secret the guest agent demands this boot (fresh on every boot, sent in the boot config)."""
        return self._require_running()["agent_token"]

    agent_port = AGENT_PORT

    # ---- starting ---------------------------------------------------------------------------------------

    def _resolve_config(self, cpus: int | None, memory: int | None, disk_size: str | None,
                        shares: tuple[str, ...] | None = None) -> MachineConfig:
        stored = self.config()
        config = MachineConfig(cpus or stored.cpus, memory or stored.memory_mib,
                               disk_size or stored.disk_size, shares or stored.shares, self.guest_arch).validate()
        if self.paths.data_disk.exists() and parse_size(config.disk_size) != parse_size(stored.disk_size):
            raise UsageError(f"machine {self.name!r} already has a {stored.disk_size} data disk",
                             hint="the disk size is fixed when the machine is created; "
                                  f"recreate it with `runner vm rm {self.name}` to change it")
        return config

    def _launch(self, config: MachineConfig, fast: bool = False, resume: bool = True) -> dict:
        """Prepare every file and start QEMU detached; returns the run record (not yet ready)."""
        from runner.vm import accel, artifact_pull, boot, snapshot

        self._clean_runtime()
        layout.write_private(self.paths.config, json.dumps(config.to_dict(), indent=2) + "\n")
        qemu = accel.find_qemu(self.guest_arch)
        # First start on a host without a guest: pulled from the configured/pinned registry reference.
        artifacts = artifact_pull.ensure(self.guest_arch, progress=artifact_pull.status_lines(self.warn))
        client_key, host_key = self.keys()
        if not self.paths.data_disk.exists():
            self._create_data_disk(qemu, config.disk_size)
        os_name = accel.host_os()
        choice = accel.choose(
            self.guest_arch,
            lambda a: accel.probe_boot(a, qemu=qemu, guest_arch=self.guest_arch, kernel=str(artifacts.kernel)),
            qemu_version=accel.qemu_version(qemu), warn=self.warn)
        token = secrets.token_hex(32)
        # Snapshot fast start (runner.vm.snapshot): only when someone waits to send the guest its GO line.
        # The agent's code then boots with the guest (started before the snapshot point, see vmimage/init).
        agent = None
        if fast and snapshot.enabled(os_name):
            from runner.vm import ship

            agent = ship.local_sources()
        self._write_initrd(artifacts, token, agent)
        spec = self._boot_spec(artifacts, qemu, os_name, tcg=choice.accel == "tcg")
        state_inputs = None
        if agent is not None:
            control = self.paths.control_socket
            control.unlink(missing_ok=True)
            spec = dataclasses.replace(spec, control=str(control))
            state_inputs = {"qemu": snapshot.file_identity(qemu),
                            "manifest": hashlib.sha256(artifacts.manifest.read_bytes()).hexdigest(),
                            "keys": [client_key.public, host_key.public], "agent": agent[0]}
        saved = (lambda key: snapshot.usable(self.paths.dir, key)) if resume else (lambda key: None)
        launch = boot.plan(config, (os_name, accel.host_arch()), self.guest_arch, choice.accel, spec, qemu,
                           state_inputs, saved)
        record = self._spawn(launch.argv, launch.boot, choice, token)
        if launch.snapshot:
            record.update(launch.snapshot)
            layout.write_private(self.paths.run, json.dumps(record, indent=2) + "\n")
        return record

    def _write_initrd(self, artifacts: Any, token: str, agent: tuple[str, dict] | None) -> None:
        """The guest's per-boot config (keys, token, clock, seed, shares), appended to the image's initrd."""
        from runner.vm import initrd
        from runner.vm import shares as vmshares

        client_key, host_key = self.keys()
        initrd.combined_initrd(artifacts.initrd, {
            "hostname": self.name,
            "ssh_host_key": host_key.private_pem,
            "authorized_keys": client_key.public + "\n",
            "agent_token": token,
            "agent_port": AGENT_PORT,
            "time": time.time(),
            "rng_seed": secrets.token_hex(64),
            "timezone": "UTC",
            **vmshares.guest_config(self.shared_dirs()),
        }, self.paths.initrd, agent=agent)

    def _boot_spec(self, artifacts: Any, qemu: str, os_name: str, tcg: bool) -> Boot:
        from runner.vm import accel

        is_root = hasattr(os, "geteuid") and os.geteuid() == 0
        # The free ports are found by binding port 0 and closing it; if another process takes one before QEMU
        # binds it, QEMU exits at once naming the hostfwd rule, and readiness requirement 1 reports that.
        qmp: str | int = _free_port() if os_name == "windows" else str(self.paths.qmp_socket)
        return Boot(kernel=str(artifacts.kernel), initrd=str(self.paths.initrd),
                    rootfs=str(artifacts.rootfs) if artifacts.rootfs else None,
                    data_disk=str(self.paths.data_disk), serial_log=str(self.paths.serial_log),
                    ready_log=str(self.paths.ready_log), qmp=qmp, ssh_port=_free_port(), name=self.name,
                    kernel_args=tuple(artifacts.cmdline.split()), host_is_root=is_root,
                    shares=self._boot_shares(), bios=_qboot(qemu),
                    tsc_khz=accel.host_tsc_khz() if tcg else None)

    def _boot_shares(self) -> tuple:
        from runner.vm import shares as vmshares

        return vmshares.to_shares(self.shared_dirs())

    def _spawn(self, argv: list[str], boot: Boot, choice: Any, token: str) -> dict:
        if isinstance(boot.qmp, str):
            layout.ensure_private_dir(Path(boot.qmp).parent)
        for stale in (self.paths.serial_log, self.paths.ready_log):
            stale.unlink(missing_ok=True)
        try:
            # umask 077: the QMP socket, the logs and the readiness file QEMU creates are the user's alone
            # (QMP is root in the guest).
            self._proc = procs.spawn_detached(argv, self.paths.qemu_log, umask=0o077)
        except OSError as exc:
            raise VMError(f"cannot start {argv[0]}: {exc}") from exc
        pid = self._proc.pid
        identity = procs.identity(pid) or ""
        record = {"pid": pid, "identity": identity, "ssh_port": boot.ssh_port, "qmp": boot.qmp,
                  "accel": choice.accel, "accel_why": choice.why, "started_at": time.time(),
                  "agent_token": token, "guest_arch": self.guest_arch, "argv": argv}
        layout.write_private(self.paths.run, json.dumps(record, indent=2) + "\n")
        return record

    def _create_data_disk(self, qemu: str, size: str) -> None:
        """qcow2 grows on demand: a 20G disk costs a few hundred KiB until the guest writes to it."""
        # qemu-img ships next to the emulator (Homebrew, the Windows installer, Debian's qemu-utils).
        qemu_img = str(Path(qemu).with_name("qemu-img" + Path(qemu).suffix))
        if not os.path.exists(qemu_img):
            qemu_img = shutil.which("qemu-img") or qemu_img
        tmp = self.paths.data_disk.with_name("data.qcow2.tmp")
        # Bytes, not the user's spelling: qemu-img does not read "20GiB".
        proc = subprocess.run([qemu_img, "create", "-q", "-f", "qcow2", str(tmp), str(parse_size(size))],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            tmp.unlink(missing_ok=True)
            raise VMError(f"cannot create the data disk {self.paths.data_disk}: "
                          f"{(proc.stderr or proc.stdout).strip()}")
        if os.name == "posix":
            os.chmod(tmp, 0o600)
        os.replace(tmp, self.paths.data_disk)

    def guest_ready(self) -> bool:
        """Whether this boot's guest has said READY (dropbear listens) on its readiness port."""
        return b"READY" in self.ready_bytes()

    def ready_bytes(self) -> bytes:
        """What the guest wrote to its readiness port this boot (WAITING, READY, failed mounts)."""
        try:
            return self.paths.ready_log.read_bytes()
        except OSError:
            return b""

    # ---- process and file bookkeeping -------------------------------------------------------------------

    def _live_record(self) -> dict | None:
        """The run record if its QEMU is alive and provably ours; None otherwise (stale or absent)."""
        try:
            record = json.loads(self.paths.run.read_text())
            int(record["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return record if self.alive(record) else None

    def alive(self, record: dict) -> bool:
        """Whether the run record's QEMU still runs and is provably that process (pid, start time, and a
        command line naming this machine's serial log)."""
        pid = int(record["pid"])
        if self._proc is not None and self._proc.pid == pid:
            return self._proc.poll() is None  # our child: poll() also reaps it
        identity = procs.identity(pid)
        if identity is None or identity != record.get("identity"):
            return False
        cmdline = procs.cmdline(pid)
        return cmdline is None or str(self.paths.serial_log) in cmdline

    def exit_status(self) -> int | None:
        """QEMU's exit status, if this process started it and it has exited."""
        return self._proc.returncode if self._proc is not None else None

    def terminate(self, record: dict) -> None:
        """Tear down a boot that failed its readiness checks; logs are kept for the user."""
        self._forget_ssh()
        if self.alive(record):
            procs.kill(record["pid"])
            self._wait_exit(record, 10.0)
        self._clean_runtime()

    def _wait_exit(self, record: dict, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self.alive(record):
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
        return True

    def _require_running(self) -> dict:
        record = self._live_record()
        if record is None:
            raise VMError(f"machine {self.name!r} is not running", hint=f"runner vm start --name {self.name}")
        return record

    def qmp(self, record: dict, timeout: float = 5.0) -> Any:
        """A QMP connection to this boot's QEMU (a context manager)."""
        from runner.vm.qmp import QMP

        return QMP(record["qmp"], timeout=timeout)

    def _clean_runtime(self) -> None:
        """Remove the files of a boot that is over (never logs or the data disk). Caller holds the lock."""
        for path in self.paths.runtime_files():
            path.unlink(missing_ok=True)

    def _clean_stale_if_idle(self) -> None:
        """Clean a crashed boot's files unless another call holds the lock (it may be starting right now)."""
        try:
            with self._locked(timeout=0):
                if self._live_record() is None:
                    self._clean_runtime()
        except VMError:
            pass

    def _forget_ssh(self) -> None:
        from runner.vm import ssh

        ssh.forget_sessions(str(self.paths.dir))

    def keys(self) -> tuple[Any, Any]:
        """(client KeyPair, guest host KeyPair) of this machine (:mod:`runner.vm.keys`), generated on first
        use: what `runner vm ssh` hands the system ssh client."""
        from runner.vm import keys

        return keys.ensure_keys(self.paths.keys_dir, self.name)

    @contextmanager
    def _locked(self, timeout: float = LOCK_TIMEOUT) -> Iterator[None]:
        layout.ensure_private_dir(self.paths.dir)
        with procs.FileLock(self.paths.lock, timeout, f"machine {self.name!r} is busy (another runner call holds "
                                                      f"{self.paths.lock})", error=VMError):
            yield


def _describe(config: MachineConfig) -> str:
    cpus = f"{config.cpus} CPU{'s' if config.cpus != 1 else ''}"
    shared = f", sharing {', '.join(config.shares)}" if config.shares else ""
    return f"{cpus}, {config.memory_mib} MiB memory, a {config.disk_size} disk{shared}"


def _qboot(qemu: str) -> str | None:
    """QEMU's qboot.rom (faster than SeaBIOS for direct kernel boot) if this QEMU ships one."""
    exe = Path(qemu).resolve()
    for candidate in (exe.parent.parent / "share" / "qemu" / "qboot.rom", exe.parent / "share" / "qboot.rom",
                      Path("/usr/share/qemu/qboot.rom"), Path("/usr/local/share/qemu/qboot.rom")):
        if candidate.is_file():
            return str(candidate)
    return None


def _free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
