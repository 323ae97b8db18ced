"""VMBackend: the same Engine, running in a QEMU guest, reached through the resident agent.

Every Backend method is one agent call (:class:`runner.agent.client.AgentBackend`); this module only decides
where the connection comes from, and does it in two speeds:

- fast path (every call once the VM is up): connect to the machine's connection cache
  (:mod:`runner.agent.mux`, a Unix socket), read the per-boot agent token from the machine's ``run.json`` and
  handshake. No paramiko import, no SSH handshake: a few milliseconds.
- slow path (first call after a boot, or after anything in the fast path failed): start the machine if it
  is stopped, ship this runner's code and start the agent if it is not the same version
  (:func:`runner.agent.ship.ensure_agent`), start the connection cache, then take the fast path. Hosts
  without Unix sockets use a direct paramiko channel instead of the cache.

Errors raised by the engine in the guest reach the caller as the very same RunnerError (class, message,
hint, exit code); transport failures are :class:`runner.errors.VMError`.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from runner.agent.client import AgentBackend, AgentClient
from runner.backends.base import Features
from runner.errors import RunnerError, VMError


class VMBackend(AgentBackend):
    name = "vm"
    # Host paths are not shared with the guest yet (the guest kernel has no 9p), and published ports need
    # host forwards that the engine does not request yet; host networking means the VM's network.
    features = Features(bind_mounts=False, host_network=True, published_ports=False)

    def __init__(self, machine_name: str = "default"):
        from runner.vm.layout import MachinePaths

        self.machine_name = machine_name
        self.paths = MachinePaths.for_name(machine_name)
        super().__init__(self._connect)

    # -- connecting
    def _connect(self) -> AgentClient:
        from runner.agent import mux

        if mux.SUPPORTED:
            try:
                return self._via_mux()
            except (OSError, RunnerError):
                pass  # no cache yet, a stale one, an agent of another version: the slow path repairs it
        machine = self._prepare()
        if mux.SUPPORTED:
            mux.start(self.machine_name, self.paths.dir)
            return self._via_mux()
        chan = machine.ssh().get_transport().open_channel(
            "direct-tcpip", ("127.0.0.1", machine.agent_port), ("127.0.0.1", 0))
        return AgentClient(chan, machine.agent_token, self._version(), where=self._where)

    def _via_mux(self) -> AgentClient:
        from runner.agent import mux

        token = self._token()
        return AgentClient(mux.connect(self.paths.dir), token, self._version(), where=self._where)

    def _prepare(self) -> Any:
        """The slow path: the machine running and our agent serving in it."""
        from runner.agent import ship
        from runner.vm.machine import Machine

        machine = Machine(self.machine_name).ensure_running()
        ship.ensure_agent(machine.ssh(), machine.agent_port)
        return machine

    def _token(self) -> str:
        """This boot's agent token from run.json (written by the machine at start, 0600)."""
        try:
            return str(json.loads(self.paths.run.read_text())["agent_token"])
        except (OSError, ValueError, KeyError, TypeError):
            raise VMError(f"machine {self.machine_name!r} is not running") from None

    @staticmethod
    def _version() -> str:
        from runner.agent.ship import local_version

        return local_version()

    @property
    def _where(self) -> str:
        return f"machine {self.machine_name!r}"

    # -- what differs from the engine's own answer
    def info(self) -> dict:
        from runner.vm.machine import Machine

        data = super().info()
        status = Machine(self.machine_name).status()
        data["backend"] = self.name
        data["machine"] = {k: status.get(k) for k in ("name", "state", "accel", "accel_reason", "cpus",
                                                      "memory_mib", "disk_size", "uptime", "guest_arch")
                           if k in status}
        data["host_platform"] = sys.platform
        return data
