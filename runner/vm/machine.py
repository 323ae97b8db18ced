"""A named QEMU machine: start, stop, status, rm, and an SSH session to it.

One machine = one directory (see :mod:`runner.vm.layout`) and at most one QEMU process. QEMU runs detached
from the CLI (its own session), so it outlives the command that started it; later commands find it through
``run.json``. That record is never trusted blindly: the pid must be alive *and* be the same process (its start
time and its command line naming this machine's serial log), because after a crash or a host reboot the pid
may belong to anything. A record that fails the check is stale and is removed with the QMP socket and the
readiness file, under the machine lock.

Start is done under an exclusive lock (fcntl on Unix, msvcrt on Windows), so two CLI calls never boot the same
machine twice; the second waits and then finds it running. Readiness is a list of named requirements, checked
in order with one deadline (lima-style): a boot that fails says which requirement failed and where the serial
log is, and QEMU is killed rather than left half-up.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from runner.errors import Conflict, NotFound, PlatformError, UsageError, VMError
from runner.vm import layout
from runner.vm.layout import MachinePaths
from runner.vm.qemu_cmd import Boot, MachineConfig, build_argv, parse_size

AGENT_PORT = 7070  # guest-loopback port the agent listens on; sent to the guest in its boot config
START_TIMEOUT_TCG = 180.0  # a TCG boot takes 5-10 s here; leave room for loaded CI hosts
START_TIMEOUT_ACCEL = 60.0
RESUME_TIMEOUT = 30.0  # resuming a saved state takes ~1-2 s; past this, boot normally instead
LOCK_TIMEOUT = 300.0  # long enough to wait out another call's TCG boot

# Connected SSH clients of this process, keyed by machine dir and the QEMU process identity, so a restarted
# machine never reuses a session to its previous boot.
_SSH_CLIENTS: dict[tuple[str, int, str], Any] = {}


class Machine:
    """A named VM. Cheap to construct: nothing is read or started until a method is called."""

    def __init__(self, name: str = layout.DEFAULT_MACHINE, guest_arch: str | None = None,
                 root: Path | None = None):
        from runner.vm.accel import host_arch

        self.name = name
        self.paths = MachinePaths.for_name(name, root)
        self.guest_arch = guest_arch or host_arch()
        self._proc: subprocess.Popen | None = None  # set when this process started QEMU (to reap it)

    def __repr__(self) -> str:
        return f"Machine({self.name!r})"

    # ---- public API -------------------------------------------------------------------------------------

    def start(self, cpus: int | None = None, memory: int | None = None, disk_size: str | None = None,
              wait: bool = True, timeout: float | None = None, shares: list[str] | None = None) -> "Machine":
        """Boot the machine if it is not running (creating it on first use) and, with ``wait``, block until
        SSH works. ``memory`` is in MiB. Sizes given for an existing machine replace its stored ones, except
        the disk size, which is fixed when the data disk is created. ``shares``: host directories to share
        (replacing the stored or default set, see :mod:`runner.vm.shares`)."""
        from runner.vm import shares as vmshares

        wanted_shares = tuple(vmshares.check_dirs(shares)) if shares else None
        with self._locked():
            record = self._live_record()
            launched = record is None
            if record is None:
                config = self._resolve_config(cpus, memory, disk_size, wanted_shares)
                record = self._launch(config, fast=wait)
            elif any(v is not None for v in (cpus, memory, disk_size, wanted_shares)):
                stored = self.config()
                wanted = MachineConfig(cpus or stored.cpus, memory or stored.memory_mib,
                                       disk_size or stored.disk_size, wanted_shares or stored.shares)
                if wanted != stored:
                    raise Conflict(f"machine {self.name!r} is running with {_describe(stored)}",
                                   hint=f"stop it first: runner vm stop --name {self.name}")
            if wait:
                try:
                    self._wait_ready(record, timeout)
                except VMError as exc:  # snapshot fast start: a failed resume becomes a normal boot
                    if not (launched and record.get("boot") == "resume"):
                        raise
                    from runner.vm import snapshot

                    snapshot.discard(self.paths.dir)
                    print(f"warning: machine {self.name!r} could not resume from its saved state "
                          f"({exc.message}); booting it normally", file=sys.stderr)
                    record = self._launch(config, fast=True, resume=False)
                    self._wait_ready(record, timeout)
                finally:
                    self._close_control()
        return self

    # ---- shared host directories (runner.vm.shares) ---------------------------------------------------
    def shared_dirs(self) -> list[str]:
        """The host directories this machine shares (mounted in the guest at the same paths)."""
        from runner.vm import shares as vmshares

        if vmshares.host_os() == "windows":
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

            muxctl.stop(self.paths.dir)
            steps: list[tuple[Callable[[Any], None], float]] = [
                (lambda q: q.system_powerdown(), timeout), (lambda q: q.quit(), 5.0)]
            for action, wait_s in steps:
                try:
                    with self._qmp(record, timeout=3.0) as q:
                        action(q)
                except VMError:
                    pass  # QMP unusable: go on to the next, harder step
                if self._wait_exit(record, wait_s):
                    break
            else:
                _kill(record["pid"])
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
        key = (str(self.paths.dir), record["pid"], record["identity"])
        client = _SSH_CLIENTS.get(key)
        transport = client.get_transport() if client is not None else None
        if transport is not None and transport.is_active():
            return client
        client = ssh.connect(record["ssh_port"], self._client_key(), self._host_key_line(), self.name)
        _SSH_CLIENTS[key] = client
        return client

    def run(self, command: str, timeout: float | None = None, stdin: bytes | None = None
            ) -> tuple[int, bytes, bytes]:
        """Run a shell command in the guest over SSH: (exit code, stdout, stderr)."""
        from runner.vm import ssh

        return ssh.run(self.ssh(), command, timeout=timeout, stdin=stdin)

    def put_tree(self, local_dir: str | os.PathLike, remote_dir: str) -> int:
        """Copy a host directory tree into the guest (a tar stream over SSH); returns the number of files."""
        from runner.vm import ssh

        return ssh.put_tree(self.ssh(), local_dir, remote_dir)

    def hostfwd_add(self, host_port: int, guest_port: int, proto: str = "tcp", host_ip: str = "127.0.0.1"
                    ) -> None:
        """Forward a host port to the guest while it runs (published container ports)."""
        with self._qmp(self._require_running()) as q:
            q.hostfwd_add(proto, host_ip, host_port, guest_port)

    def hostfwd_remove(self, host_port: int, proto: str = "tcp", host_ip: str = "127.0.0.1") -> None:
        with self._qmp(self._require_running()) as q:
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
                               disk_size or stored.disk_size, shares or stored.shares).validate()
        if self.paths.data_disk.exists() and parse_size(config.disk_size) != parse_size(stored.disk_size):
            raise UsageError(f"machine {self.name!r} already has a {stored.disk_size} data disk",
                             hint="the disk size is fixed when the machine is created; "
                                  f"recreate it with `runner vm rm {self.name}` to change it")
        return config

    def _launch(self, config: MachineConfig, fast: bool = False, resume: bool = True) -> dict:
        """Prepare every file and start QEMU detached; returns the run record (not yet ready)."""
        from runner.vm import accel, image, initrd

        self._clean_runtime()
        layout.write_private(self.paths.config, json.dumps(config.to_dict(), indent=2) + "\n")
        qemu = accel.find_qemu(self.guest_arch)
        artifacts = image.ensure(self.guest_arch)
        client_key, host_key = self._keys()
        if not self.paths.data_disk.exists():
            self._create_data_disk(qemu, config.disk_size)
        os_name = accel.host_os()
        choice = accel.choose(
            self.guest_arch,
            lambda a: accel.probe_boot(a, qemu=qemu, guest_arch=self.guest_arch, kernel=str(artifacts.kernel)),
            qemu_version=accel.qemu_version(qemu))
        token = secrets.token_hex(32)
        from runner.vm import shares as vmshares
        from runner.vm import snapshot

        # Snapshot fast start (runner.vm.snapshot): only when someone waits to send the guest its GO line.
        # The agent's code then boots with the guest (started before the snapshot point, see vmimage/init).
        use_snapshot = fast and snapshot.enabled(os_name)
        agent = None
        if use_snapshot:
            from runner.vm import ship

            agent = ship.local_sources()
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
        is_root = hasattr(os, "geteuid") and os.geteuid() == 0
        # The free ports are found by binding port 0 and closing it; if another process takes one before QEMU
        # binds it, QEMU exits at once naming the hostfwd rule, and readiness requirement 1 reports that.
        qmp: str | int = _free_port() if os_name == "windows" else str(self.paths.qmp_socket)
        boot = Boot(kernel=str(artifacts.kernel), initrd=str(self.paths.initrd),
                    rootfs=str(artifacts.rootfs) if artifacts.rootfs else None,
                    data_disk=str(self.paths.data_disk), serial_log=str(self.paths.serial_log),
                    ready_log=str(self.paths.ready_log), qmp=qmp, ssh_port=_free_port(), name=self.name,
                    kernel_args=tuple(artifacts.cmdline.split()), host_is_root=is_root,
                    shares=self._boot_shares(), bios=_qboot(qemu),
                    tsc_khz=accel.host_tsc_khz() if choice.accel == "tcg" else None)
        argv = build_argv(config, os_name, accel.host_arch(), self.guest_arch, choice.accel, boot)
        argv[0] = qemu
        # ---- snapshot fast start: resume the saved state if it matches, else boot and save one at the guest's
        # snapshot point.
        snap: dict[str, Any] = {}
        if use_snapshot:
            control = str(snapshot.control_path(self.paths.dir))
            Path(control).unlink(missing_ok=True)
            boot = dataclasses.replace(boot, control=control)
            argv = build_argv(config, os_name, accel.host_arch(), self.guest_arch, choice.accel, boot)
            argv[0] = qemu
            state_key = snapshot.key(argv, boot.ssh_port, {
                "qemu": snapshot.file_identity(qemu),
                "manifest": hashlib.sha256(artifacts.manifest.read_bytes()).hexdigest(),
                "keys": [client_key.public, host_key.public],
                "agent": agent[0] if agent else None})
            state = snapshot.usable(self.paths.dir, state_key) if resume else None
            snap = {"control": control, "snapshot_key": state_key, "boot": "resume" if state else "cold"}
            if state:
                boot = dataclasses.replace(boot, incoming=snapshot.incoming_uri(state))
                argv = build_argv(config, os_name, accel.host_arch(), self.guest_arch, choice.accel, boot)
                argv[0] = qemu
        record = self._spawn(argv, boot, choice, token)
        if snap:
            record.update(snap)
            layout.write_private(self.paths.run, json.dumps(record, indent=2) + "\n")
        return record

    def _boot_shares(self) -> tuple:
        from runner.vm import shares as vmshares

        return vmshares.to_shares(self.shared_dirs())

    def _spawn(self, argv: list[str], boot: Boot, choice: Any, token: str) -> dict:
        if isinstance(boot.qmp, str):
            layout.ensure_private_dir(Path(boot.qmp).parent)
        for stale in (self.paths.serial_log, self.paths.ready_log):
            stale.unlink(missing_ok=True)
        kwargs: dict[str, Any] = {}
        if os.name == "posix":
            # Own session: QEMU survives the CLI and its terminal's signals. umask 077: the QMP socket, the
            # logs and the readiness file QEMU creates are the user's alone (QMP is root in the guest).
            kwargs.update(start_new_session=True, umask=0o077)
        else:
            kwargs.update(creationflags=subprocess.DETACHED_PROCESS | subprocess.CREATE_NEW_PROCESS_GROUP)
        log_fd = os.open(self.paths.qemu_log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(log_fd, "wb") as errlog:
            try:
                self._proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=errlog,
                                              stderr=subprocess.STDOUT, **kwargs)
            except OSError as exc:
                raise VMError(f"cannot start {argv[0]}: {exc}") from exc
        pid = self._proc.pid
        identity = _process_identity(pid) or ""
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

    # ---- readiness --------------------------------------------------------------------------------------

    def _wait_ready(self, record: dict, timeout: float | None) -> None:
        """Check each named requirement in order under one deadline; on failure kill QEMU and explain."""
        from runner.vm import ssh

        if timeout is None:
            timeout = START_TIMEOUT_TCG if record["accel"] == "tcg" else START_TIMEOUT_ACCEL
        deadline = time.monotonic() + timeout
        port = record["ssh_port"]

        def qmp_running() -> None:
            try:
                with self._qmp(record, timeout=max(0.5, min(5.0, deadline - time.monotonic()))) as q:
                    status = q.query_status().get("status")
            except VMError as exc:  # the socket appears a moment after QEMU starts
                raise _NotYet(exc.message) from exc
            if isinstance(record["qmp"], str):
                # QEMU created the socket 0700 under umask 077; a socket needs rw only. (The 0700 machine
                # dir is what keeps others out; this keeps the mode honest too.)
                os.chmod(record["qmp"], 0o600)
            if status == "postmigrate":  # a call that was saving the snapshot died: let the guest run on
                with self._qmp(record) as q:
                    q.execute("cont")
                return
            if status != "running":
                raise _NotYet(f"QEMU reports status {status!r}")

        def guest_ready() -> None:
            if not self.guest_ready():
                raise _NotYet("the guest has not written READY to the org.runner.ready port")
            from runner.vm import shares as vmshares

            failed = vmshares.failed_mounts(self._ready_bytes().decode(errors="replace"))
            if failed:
                raise VMError(f"the guest could not mount the shared host directories {', '.join(failed)}",
                              hint=f"check them with `runner vm status --name {self.name}`; change the set "
                                   f"with `runner vm start --share DIR`")

        def banner() -> None:
            try:
                ssh.wait_for_banner(port, min(deadline, time.monotonic() + 2.0))
            except TimeoutError as exc:
                raise _NotYet(str(exc)) from exc

        from runner.vm import muxctl

        # The connection cache (runner.vm.muxctl) logs in once for every later CLI call and makes sure our agent
        # serves: a second SSH login here would cost another key exchange in the slow guest. Launched now when
        # the guest is still booting, so that its start overlaps the boot.
        early_mux = muxctl.spawn(self.name, self.paths.dir) if muxctl.SUPPORTED and not self.guest_ready() else None

        def login() -> None:  # ssh.connect retries transient failures itself; its VMErrors are final
            if muxctl.SUPPORTED:
                if early_mux is not None:
                    muxctl.wait_started(early_mux, self.name, self.paths.dir)
                else:
                    muxctl.start(self.name, self.paths.dir)
                return
            self._forget_ssh()
            client = ssh.connect(port, self._client_key(), self._host_key_line(), self.name,
                                 timeout=max(1.0, deadline - time.monotonic()))
            _SSH_CLIENTS[(str(self.paths.dir), record["pid"], record["identity"])] = client

        if record.get("boot") == "resume":  # a resume that hangs should fall back to a boot soon
            timeout = min(timeout, RESUME_TIMEOUT)
            deadline = time.monotonic() + timeout

        def go() -> None:  # snapshot fast start: see runner.vm.snapshot
            if not record.get("control") or self.guest_ready():
                return
            if record.get("boot") != "resume":
                if b"WAITING" not in self._ready_bytes():
                    raise _NotYet("the guest has not reached its snapshot point (WAITING)")
                self._save_snapshot(record)
            self._send_go(record)

        requirements: list[tuple[str, Callable[[], None]]] = [
            ("qemu process", lambda: None),
            ("qmp", qmp_running),
            ("guest go", go),
            ("guest ready", guest_ready),
            ("ssh banner", banner),
            ("ssh login", login),
        ]
        for index, (what, check) in enumerate(requirements, 1):
            detail = "not checked"
            while True:
                if not self._alive(record):  # at any step, a dead QEMU is requirement 1 failing
                    self._fail(1, len(requirements), "qemu process", self._death_note(record), record)
                try:
                    check()
                    break
                except _NotYet as exc:
                    detail = str(exc)
                except VMError as exc:
                    self._fail(index, len(requirements), what, exc.message, record, hint=exc.hint)
                if time.monotonic() >= deadline:
                    self._fail(index, len(requirements), what, f"{detail} (after {timeout:g} s)", record)
                time.sleep(0.02)
            # When each requirement was met, in seconds since QEMU was started: where a start spends its time
            # (scripts/bench-vm prints them).
            record.setdefault("ready_seconds", {}).setdefault(what, round(time.time() - record["started_at"], 3))
        layout.write_private(self.paths.run, json.dumps(record, indent=2) + "\n")

    def _fail(self, index: int, total: int, what: str, detail: str, record: dict,
              hint: str | None = None) -> None:
        self._terminate(record)
        raise VMError(f"machine {self.name!r} did not come up: requirement {index} of {total} failed: "
                      f"{what}: {detail} — see {self.paths.serial_log}",
                      hint=hint or f"`runner vm logs --name {self.name}` shows the guest console; "
                                    f"QEMU's own messages are in {self.paths.qemu_log}")

    def _death_note(self, record: dict) -> str:
        """Why QEMU is gone: the guest init's FATAL line, else QEMU's last error line."""
        for line in reversed(_tail(self.paths.serial_log, 60).splitlines()):
            for marker in ("runner-init: FATAL", "Kernel panic"):
                if marker in line:
                    return f"the guest stopped: {line[line.index(marker):].strip()}"
        qemu_err = _tail(self.paths.qemu_log, 5).strip().splitlines()
        code = self._proc.returncode if self._proc is not None else None
        return f"QEMU exited{f' with status {code}' if code is not None else ''}" + (
            f": {qemu_err[-1]}" if qemu_err else "")

    def _terminate(self, record: dict) -> None:
        """Tear down a boot that failed its readiness checks; logs are kept for the user."""
        self._forget_ssh()
        if self._alive(record):
            _kill(record["pid"])
            self._wait_exit(record, 10.0)
        self._clean_runtime()

    def guest_ready(self) -> bool:
        """Whether this boot's guest has said READY (dropbear listens) on its readiness port."""
        return b"READY" in self._ready_bytes()

    def _ready_bytes(self) -> bytes:
        try:
            return self.paths.ready_log.read_bytes()
        except OSError:
            return b""

    # ---- snapshot fast start (runner.vm.snapshot) ---------------------------------------------------------

    def _save_snapshot(self, record: dict) -> None:
        """Save the waiting guest's state once per key, then let it run on. A failed save costs only the
        fast start of later boots: it is reported and the boot goes on."""
        from runner.vm import snapshot

        if snapshot.usable(self.paths.dir, record["snapshot_key"]) is None:
            try:
                with self._qmp(record, timeout=snapshot.SAVE_TIMEOUT) as q:
                    try:
                        record["snapshot_saved"] = snapshot.save(q, self.paths.dir, record["snapshot_key"])
                    finally:
                        if q.query_status().get("status") != "running":
                            q.execute("cont")
            except VMError as exc:
                snapshot.discard(self.paths.dir)
                print(f"warning: could not save machine {self.name!r}'s state for fast starts: {exc.message}",
                      file=sys.stderr)

    def _send_go(self, record: dict) -> None:
        from runner.vm import snapshot

        if getattr(self, "_control", None) is None:
            try:
                self._control = snapshot.send_go(record["control"], record["agent_token"])
            except OSError as exc:
                raise _NotYet(f"cannot send GO to the guest's control port: {exc}") from exc

    def _close_control(self) -> None:
        sock = getattr(self, "_control", None)
        self._control = None
        if sock is not None:
            sock.close()

    # ---- process and file bookkeeping -------------------------------------------------------------------

    def _live_record(self) -> dict | None:
        """The run record if its QEMU is alive and provably ours; None otherwise (stale or absent)."""
        try:
            record = json.loads(self.paths.run.read_text())
            int(record["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return record if self._alive(record) else None

    def _alive(self, record: dict) -> bool:
        pid = int(record["pid"])
        if self._proc is not None and self._proc.pid == pid:
            return self._proc.poll() is None  # our child: poll() also reaps it
        identity = _process_identity(pid)
        if identity is None or identity != record.get("identity"):
            return False
        cmdline = _process_cmdline(pid)
        return cmdline is None or str(self.paths.serial_log) in cmdline

    def _wait_exit(self, record: dict, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self._alive(record):
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
        return True

    def _require_running(self) -> dict:
        record = self._live_record()
        if record is None:
            raise VMError(f"machine {self.name!r} is not running", hint=f"runner vm start --name {self.name}")
        return record

    def _qmp(self, record: dict, timeout: float = 5.0) -> Any:
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
        for key in [k for k in _SSH_CLIENTS if k[0] == str(self.paths.dir)]:
            _SSH_CLIENTS.pop(key).close()

    def _keys(self) -> tuple[Any, Any]:
        """(client KeyPair, guest host KeyPair), generated on the machine's first start."""
        from runner.vm import keys

        return keys.ensure_keys(self.paths.keys_dir, self.name)

    def _client_key(self) -> Path:
        return self._keys()[0].private_path

    def _host_key_line(self) -> str:
        return self._keys()[1].public

    @contextmanager
    def _locked(self, timeout: float = LOCK_TIMEOUT) -> Iterator[None]:
        layout.ensure_private_dir(self.paths.dir)
        with _FileLock(self.paths.lock, timeout, f"machine {self.name!r} is busy (another runner call holds "
                                                 f"{self.paths.lock})"):
            yield


class _NotYet(Exception):
    """A readiness requirement is not met yet; retried until the deadline."""


def _describe(config: MachineConfig) -> str:
    cpus = f"{config.cpus} CPU{'s' if config.cpus != 1 else ''}"
    shared = f", sharing {', '.join(config.shares)}" if config.shares else ""
    return f"{cpus}, {config.memory_mib} MiB memory, a {config.disk_size} disk{shared}"


def _tail(path: Path, lines: int) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 8192))
            return b"\n".join(f.read().splitlines()[-lines:]).decode(errors="replace")
    except OSError:
        return ""


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


class _FileLock:
    """An exclusive lock on a file, released when the holder exits or dies (so a crash never leaves it held)."""

    def __init__(self, path: Path, timeout: float, busy_message: str):
        self.path, self.timeout, self.busy_message = path, timeout, busy_message
        self._fd: int | None = None

    def __enter__(self) -> "_FileLock":
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        deadline = time.monotonic() + self.timeout
        while not self._try():
            if time.monotonic() >= deadline:
                os.close(self._fd)
                self._fd = None
                raise VMError(self.busy_message, hint="wait for it to finish, then try again")
            time.sleep(0.1)
        return self

    def _try(self) -> bool:
        assert self._fd is not None
        if os.name == "nt":
            import msvcrt

            try:
                msvcrt.locking(self._fd, msvcrt.LK_NBLCK, 1)
                return True
            except OSError:
                return False
        import fcntl

        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False

    def __exit__(self, *exc: object) -> None:
        assert self._fd is not None
        if os.name == "nt":
            import msvcrt

            os.lseek(self._fd, 0, os.SEEK_SET)
            msvcrt.locking(self._fd, msvcrt.LK_UNLCK, 1)
        os.close(self._fd)  # closing releases the flock
        self._fd = None


# ---- processes without psutil -----------------------------------------------------------------------------


def _process_identity(pid: int) -> str | None:
    """A value that differs between two processes that had the same pid (their start time); None when the
    process does not exist or is a zombie."""
    if sys.platform.startswith("linux"):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return None
        fields = stat[stat.rindex(")") + 2:].split()
        if fields[0] in ("Z", "X"):
            return None
        return f"linux:{fields[19]}"  # field 22 of stat: start time in clock ticks since boot
    if sys.platform == "darwin":
        out = subprocess.run(["ps", "-o", "stat=,lstart=", "-p", str(pid)], capture_output=True, text=True)
        line = out.stdout.strip()
        if out.returncode != 0 or not line or line.startswith("Z"):
            return None
        return "darwin:" + line.split(None, 1)[1]
    if os.name == "nt":
        return _windows_identity(pid)
    raise PlatformError(f"cannot inspect processes on {sys.platform}")


def _process_cmdline(pid: int) -> str | None:
    """The command line, to check the pid runs this machine's QEMU (None where it cannot be read cheaply)."""
    if sys.platform.startswith("linux"):
        try:
            return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            return ""
    if sys.platform == "darwin":
        out = subprocess.run(["ps", "-ww", "-o", "command=", "-p", str(pid)], capture_output=True, text=True)
        return out.stdout
    return None


def _windows_identity(pid: int) -> str | None:
    import ctypes
    from ctypes import wintypes

    kernel32 = ctypes.windll.kernel32  # type: ignore[attr-defined]
    handle = kernel32.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
    if not handle:
        return None
    try:
        code = wintypes.DWORD()
        if not kernel32.GetExitCodeProcess(handle, ctypes.byref(code)) or code.value != 259:  # STILL_ACTIVE
            return None
        times = [wintypes.FILETIME() for _ in range(4)]
        if not kernel32.GetProcessTimes(handle, *[ctypes.byref(t) for t in times]):
            return None
        return f"windows:{times[0].dwHighDateTime}:{times[0].dwLowDateTime}"
    finally:
        kernel32.CloseHandle(handle)


def _kill(pid: int) -> None:
    """Kill QEMU outright (the last resort). On Windows os.kill with SIGTERM is TerminateProcess."""
    try:
        os.kill(pid, signal.SIGKILL if hasattr(signal, "SIGKILL") else signal.SIGTERM)
    except ProcessLookupError:
        pass
