"""The host's port forwards into a machine, for published container ports (QMP ``hostfwd_add``/``remove``).

The guest's port proxies listen on the guest's 0.0.0.0; for each published port the host forwards
``HostIp:HostPort`` to that guest port. Forwards die with QEMU, so the record names the boot it belongs to;
:class:`runner.backends.vm.VMBackend` adds them after ``run``/``start`` and reconciles them on every call
that lists or changes containers.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

from runner.errors import Conflict, RunnerError, VMError


class Forwards:
    """The machine's host port forwards for published container ports, recorded in ``forwards.json``.

    Each entry: container id, protocol, host ip and port, guest port. The record names the QEMU boot (pid and
    process identity from run.json): forwards die with QEMU, so a record of another boot is empty. Changes
    are made under ``forwards.lock`` so concurrent CLI calls never lose or double-remove a forward.
    """

    def __init__(self, machine_name: str):
        from runner.vm.layout import MachinePaths

        self.machine_name = machine_name
        self.paths = MachinePaths.for_name(machine_name)

    def _boot(self) -> str:
        try:
            run = json.loads(self.paths.run.read_text())
            return f'{run["pid"]}:{run["identity"]}'
        except (OSError, ValueError, KeyError, TypeError):
            return ""

    def _load(self) -> list[dict]:
        try:
            data = json.loads(self.paths.forwards.read_text())
        except (OSError, ValueError):
            return []
        if not isinstance(data, dict) or data.get("boot") != self._boot():
            return []
        return [f for f in data.get("forwards", []) if isinstance(f, dict)]

    def _save(self, forwards: list[dict]) -> None:
        from runner.vm import layout

        if not forwards:
            self.paths.forwards.unlink(missing_ok=True)
            return
        layout.write_private(self.paths.forwards, json.dumps({"boot": self._boot(), "forwards": forwards},
                                                             indent=1) + "\n")

    @contextlib.contextmanager
    def _locked(self):
        from runner.procs import FileLock

        with FileLock(self.paths.forwards_lock, 60.0, f"the port forwards of machine {self.machine_name!r} "
                                                      f"are busy ({self.paths.forwards_lock})", error=VMError):
            yield

    def table(self) -> dict:
        """(container id, protocol, guest port) -> host port, for translating the guest's answers."""
        if not self.paths.forwards.exists():
            return {}
        return {(f["container"], f["proto"], int(f["guest_port"])): int(f["host_port"]) for f in self._load()}

    def add(self, info: dict) -> None:
        """Forward every published port of the (running) container ``info``; all or nothing."""
        from runner.vm.machine import Machine

        cid = info["Id"]
        wanted = (info.get("HostConfig") or {}).get("PortBindings") or {}
        machine = Machine(self.machine_name)
        with self._locked():
            forwards = self._load()
            have = {(f["container"], f["proto"], int(f["guest_port"])) for f in forwards}
            added: list[dict] = []
            try:
                for key, bindings in info["NetworkSettings"]["Ports"].items():
                    container_port, _, proto = key.partition("/")
                    fixed = {str(b.get("HostPort") or "") for b in wanted.get(key) or []}
                    for b in bindings or []:
                        guest_port = int(b["HostPort"])
                        if (cid, proto or "tcp", guest_port) in have:
                            continue
                        host_ip = b.get("HostIp") or "127.0.0.1"
                        entry = {"container": cid, "proto": proto or "tcp", "host_ip": host_ip,
                                 "guest_port": guest_port, "container_port": int(container_port)}
                        # The user's fixed host port is also the guest's; a random one is chosen on the host.
                        entry["host_port"] = self._forward(machine, entry, str(guest_port) in fixed)
                        added.append(entry)
            except BaseException:
                for entry in added:
                    with contextlib.suppress(RunnerError):
                        machine.hostfwd_remove(entry["host_port"], entry["proto"], entry["host_ip"])
                raise
            self._save(forwards + added)

    @staticmethod
    def _forward(machine: Any, entry: dict, fixed: bool) -> int:
        tries = [entry["guest_port"]] if fixed else [free_port(entry["host_ip"], entry["proto"])
                                                    for _ in range(3)]
        for i, host_port in enumerate(tries):
            try:
                machine.hostfwd_add(host_port, entry["guest_port"], entry["proto"], entry["host_ip"])
                return host_port
            except VMError as exc:
                if i + 1 < len(tries):
                    continue  # a random port taken between choosing and binding: choose again
                raise Conflict(f"cannot publish port {entry['container_port']}/{entry['proto']}: host port "
                               f"{entry['host_ip']}:{host_port} is already in use", hint=(
                                   "choose another host port (-p HOSTPORT:CONTAINERPORT) or stop what uses it"
                                   if fixed else exc.hint)) from exc
        raise AssertionError("unreachable")

    def drop(self, cid: str) -> None:
        with self._locked():
            forwards = self._load()
            self._remove([f for f in forwards if f["container"] == cid])
            self._save([f for f in forwards if f["container"] != cid])

    def keep_only(self, running: set[str]) -> None:
        with self._locked():
            forwards = self._load()
            self._remove([f for f in forwards if f["container"] not in running])
            self._save([f for f in forwards if f["container"] in running])

    def _remove(self, forwards: list[dict]) -> None:
        if not forwards:
            return
        from runner.vm.machine import Machine

        machine = Machine(self.machine_name)
        for f in forwards:
            with contextlib.suppress(RunnerError):  # already gone (QEMU restarted): nothing to undo
                machine.hostfwd_remove(f["host_port"], f["proto"], f["host_ip"])


def free_port(host_ip: str = "127.0.0.1", proto: str = "tcp") -> int:
    """A port on ``host_ip`` that was free a moment ago (hostfwd_add itself fails if it is taken since)."""
    import socket

    kind = socket.SOCK_DGRAM if proto == "udp" else socket.SOCK_STREAM
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind((host_ip if host_ip not in ("", "0.0.0.0") else "0.0.0.0", 0))
        return s.getsockname()[1]
