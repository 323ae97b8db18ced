"""Readiness as named requirements: a started machine is ready when each of them holds, checked in order.

Lima-style: each requirement says what it waits for, how it is checked and what to do when it fails, so a
machine that does not come up reports "requirement N of M failed: <name>: <detail>" with the serial log's
path and that requirement's own hint, and QEMU is killed rather than left half-up. All share one deadline;
a dead QEMU fails requirement 1 at whatever step it dies. When each requirement was met is kept in the run
record (``ready_seconds``, seconds since QEMU started: scripts/bench-vm prints where a start spends its time).

The snapshot fast start's host side lives here too (requirement "guest go", see :mod:`runner.vm.snapshot`):
save the waiting guest's state once per key, then send it the GO line.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from runner.errors import VMError
from runner.records import FrozenRecord
from runner.vm import layout, muxctl, snapshot

if TYPE_CHECKING:
    from runner.vm.machine import Machine

START_TIMEOUT_TCG = 180.0  # a TCG boot takes 5-10 s here; leave room for loaded CI hosts
START_TIMEOUT_ACCEL = 60.0
RESUME_TIMEOUT = 30.0  # resuming a saved state takes ~1-2 s; past this, boot normally instead
POLL = 0.02


class NotYet(Exception):
    """A requirement is not met yet; retried until the deadline."""


class Requirement(FrozenRecord):
    """What must hold, the check (raises :class:`NotYet` while it does not, VMError if it never will), and
    the hint shown when it fails."""

    _fields = ("name", "check", "hint")

    def __init__(self, name: str, check: Callable[[], None], hint: str):
        self._init(name=name, check=check, hint=hint)


class Readiness:
    """One wait for one boot of ``machine`` (its run ``record``)."""

    def __init__(self, machine: "Machine", record: dict, timeout: float | None,
                 warn: Callable[[str], None]):
        if timeout is None:
            timeout = START_TIMEOUT_TCG if record["accel"] == "tcg" else START_TIMEOUT_ACCEL
        if record.get("boot") == "resume":  # a resume that hangs should fall back to a boot soon
            timeout = min(timeout, RESUME_TIMEOUT)
        self.machine, self.record, self.timeout, self.warn = machine, record, timeout, warn
        self.deadline = time.monotonic() + timeout
        self._control: Any = None
        # The connection cache (runner.vm.muxctl) logs in once for every later CLI call and makes sure our agent
        # serves: a second SSH login here would cost another key exchange in the slow guest. Launched now when
        # the guest is still booting, so that its start overlaps the boot.
        self._early_mux = (muxctl.spawn(machine.paths)
                           if muxctl.SUPPORTED and not machine.guest_ready() else None)

    def requirements(self) -> list[Requirement]:
        m = self.machine
        console = f"`runner vm logs --name {m.name}` shows the guest console"
        return [
            Requirement("qemu process", lambda: None, f"QEMU's own messages are in {m.paths.qemu_log}; {console}"),
            Requirement("qmp", self.qmp_running, f"QEMU did not answer on its QMP socket; its messages are in "
                                                 f"{m.paths.qemu_log}"),
            Requirement("guest go", self.go, f"the guest did not reach its snapshot point; {console}; "
                                             f"RUNNER_VM_SNAPSHOT=0 turns the fast start off"),
            Requirement("guest ready", self.guest_ready, f"{console} (the guest's init reports each step there)"),
            Requirement("ssh banner", self.banner, f"the guest's SSH server did not answer; {console}"),
            Requirement("ssh login", self.login, f"see {m.paths.agent_mux_log} (the connection cache's log); "
                                                 f"{console}"),
        ]

    def wait(self) -> None:
        try:
            requirements = self.requirements()
            for index, req in enumerate(requirements, 1):
                self._meet(index, requirements, req)
                self.record.setdefault("ready_seconds", {}).setdefault(
                    req.name, round(time.time() - self.record["started_at"], 3))
            layout.write_private(self.machine.paths.run, json.dumps(self.record, indent=2) + "\n")
        finally:
            self._close_control()

    def _meet(self, index: int, requirements: list[Requirement], req: Requirement) -> None:
        detail = "not checked"
        while True:
            if not self.machine.alive(self.record):  # at any step, a dead QEMU is requirement 1 failing
                self._fail(1, requirements, self._death_note())
            try:
                req.check()
                return
            except NotYet as exc:
                detail = str(exc)
            except VMError as exc:
                self._fail(index, requirements, exc.message, hint=exc.hint)
            if time.monotonic() >= self.deadline:
                self._fail(index, requirements, f"{detail} (after {self.timeout:g} s)")
            time.sleep(POLL)

    def _fail(self, index: int, requirements: list[Requirement], detail: str, hint: str | None = None) -> None:
        m = self.machine
        m.terminate(self.record)
        raise VMError(f"machine {m.name!r} did not come up: requirement {index} of {len(requirements)} failed: "
                      f"{requirements[index - 1].name}: {detail} — see {m.paths.serial_log}",
                      hint=hint or requirements[index - 1].hint)

    def _death_note(self) -> str:
        """Why QEMU is gone: the guest init's FATAL line, else QEMU's last error line."""
        m = self.machine
        for line in reversed(_tail(m.paths.serial_log, 60).splitlines()):
            for marker in ("runner-init: FATAL", "Kernel panic"):
                if marker in line:
                    return f"the guest stopped: {line[line.index(marker):].strip()}"
        qemu_err = _tail(m.paths.qemu_log, 5).strip().splitlines()
        code = m.exit_status()
        return f"QEMU exited{f' with status {code}' if code is not None else ''}" + (
            f": {qemu_err[-1]}" if qemu_err else "")

    # ---- the checks
    def qmp_running(self) -> None:
        record = self.record
        try:
            with self.machine.qmp(record, timeout=max(0.5, min(5.0, self.deadline - time.monotonic()))) as q:
                status = q.query_status().get("status")
        except VMError as exc:  # the socket appears a moment after QEMU starts
            raise NotYet(exc.message) from exc
        if isinstance(record["qmp"], str):
            # QEMU created the socket 0700 under umask 077; a socket needs rw only. (The 0700 machine
            # dir is what keeps others out; this keeps the mode honest too.)
            os.chmod(record["qmp"], 0o600)
        if status == "postmigrate":  # a call that was saving the snapshot died: let the guest run on
            with self.machine.qmp(record) as q:
                q.execute("cont")
            return
        if status != "running":
            raise NotYet(f"QEMU reports status {status!r}")

    def go(self) -> None:  # snapshot fast start: see runner.vm.snapshot
        record = self.record
        if not record.get("control") or self.machine.guest_ready():
            return
        if record.get("boot") != "resume":
            if b"WAITING" not in self.machine.ready_bytes():
                raise NotYet("the guest has not reached its snapshot point (WAITING)")
            self._save_snapshot()
        self._send_go()

    def guest_ready(self) -> None:
        m = self.machine
        if not m.guest_ready():
            raise NotYet("the guest has not written READY to the org.runner.ready port")
        from runner.vm import shares

        failed = shares.failed_mounts(m.ready_bytes().decode(errors="replace"))
        if failed:
            raise VMError(f"the guest could not mount the shared host directories {', '.join(failed)}",
                          hint=f"check them with `runner vm status --name {m.name}`; change the set "
                               f"with `runner vm start --share DIR`")

    def banner(self) -> None:
        from runner.vm import ssh

        try:
            ssh.wait_for_banner(self.record["ssh_port"], min(self.deadline, time.monotonic() + 2.0))
        except TimeoutError as exc:
            raise NotYet(str(exc)) from exc

    def login(self) -> None:  # ssh.connect retries transient failures itself; its VMErrors are final
        m = self.machine
        if muxctl.SUPPORTED:
            if self._early_mux is not None:
                muxctl.wait_started(self._early_mux, m.paths)
            else:
                muxctl.start(m.paths)
            return
        m.connect_ssh(self.record, timeout=max(1.0, self.deadline - time.monotonic()))

    # ---- snapshot fast start
    def _save_snapshot(self) -> None:
        """Save the waiting guest's state once per key, then let it run on. A failed save costs only the
        fast start of later boots: it is reported and the boot goes on."""
        m, record = self.machine, self.record
        if snapshot.usable(m.paths.dir, record["snapshot_key"]) is not None:
            return
        try:
            with m.qmp(record, timeout=snapshot.SAVE_TIMEOUT) as q:
                try:
                    record["snapshot_saved"] = snapshot.save(q, m.paths.dir, record["snapshot_key"])
                finally:
                    if q.query_status().get("status") != "running":
                        q.execute("cont")
        except VMError as exc:
            snapshot.discard(m.paths.dir)
            self.warn(f"could not save machine {m.name!r}'s state for fast starts: {exc.message}")

    def _send_go(self) -> None:
        if self._control is None:
            try:
                self._control = snapshot.send_go(self.record["control"], self.record["agent_token"])
            except OSError as exc:
                raise NotYet(f"cannot send GO to the guest's control port: {exc}") from exc

    def _close_control(self) -> None:
        sock, self._control = self._control, None
        if sock is not None:
            sock.close()


def _tail(path: Path, lines: int) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 8192))
            return b"\n".join(f.read().splitlines()[-lines:]).decode(errors="replace")
    except OSError:
        return ""
