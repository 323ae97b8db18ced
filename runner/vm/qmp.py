"""A small synchronous QMP client over ``qemu.qmp``'s asyncio ``QMPClient``.

The CLI is synchronous and talks to QEMU for one short exchange at a time (status, a port forward, power
off), so each :class:`QMP` owns a private event loop and runs one coroutine per call with a timeout. QEMU's
QMP socket serves one client at a time: keep a connection only as long as the exchange (``with QMP(...)``).

Errors: every failure becomes :class:`runner.errors.VMError` naming the operation. HMP commands sent through
``human-monitor-command`` do not fail as QMP errors: ``hostfwd_add`` with a busy port answers *success*
carrying a text like "Could not set up host forwarding rule", and is silent when it worked;
``hostfwd_remove`` always answers, "host forwarding rule for tcp:... removed" or "... not found". Each reply is
checked against what success looks like, and anything else becomes a VMError carrying QEMU's text.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from runner.errors import VMError

DEFAULT_TIMEOUT = 5.0


class QMP:
    """``with QMP(address) as q: q.query_status()``. ``address``: a Unix socket path or a 127.0.0.1 TCP port."""

    def __init__(self, address: str | Path | int, timeout: float = DEFAULT_TIMEOUT):
        self.address: Any = ("127.0.0.1", address) if isinstance(address, int) else str(address)
        self.timeout = timeout
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: Any = None

    def __enter__(self) -> "QMP":
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def connect(self) -> None:
        """Connect and negotiate capabilities; VMError if nothing answers within the timeout."""
        from qemu.qmp import QMPClient  # lazy: only VM commands pay for qemu.qmp

        self._loop = asyncio.new_event_loop()
        self._client = QMPClient("runner")
        try:
            self._run(self._client.connect(self.address), "connect")
        except VMError:
            self.close()
            raise

    def close(self) -> None:
        if self._loop is None:
            return
        try:
            if self._client is not None:
                self._loop.run_until_complete(asyncio.wait_for(self._client.disconnect(), self.timeout))
        except Exception:  # noqa: BLE001 - disconnect of a dying QEMU may fail any way; nothing to do about it
            pass
        finally:
            self._loop.close()
            self._loop, self._client = None, None

    def execute(self, command: str, arguments: dict | None = None) -> Any:
        """Run one QMP command and return its ``return`` value."""
        if self._client is None:
            raise VMError(f"QMP {command}: not connected")
        return self._run(self._client.execute(command, arguments), command)

    def query_status(self) -> dict:
        """``{"status": "running", "running": True, ...}``"""
        return self.execute("query-status")

    def system_powerdown(self) -> None:
        """Press the ACPI power button; the guest's init decides to power off (returns at once)."""
        self.execute("system_powerdown")

    def quit(self) -> None:
        """Make QEMU exit now. QEMU may close the socket before it replies: that is success too."""
        from qemu.qmp import ExecInterruptedError

        try:
            self.execute("quit")
        except VMError as exc:
            if not isinstance(exc.__cause__, (ExecInterruptedError, ConnectionError, EOFError)):
                raise

    def hmp(self, command_line: str) -> str:
        """Run a human-monitor command and return its text reply."""
        return str(self.execute("human-monitor-command", {"command-line": command_line}) or "")

    def hostfwd_add(self, proto: str, host_ip: str, host_port: int, guest_port: int,
                    netdev: str = "net0") -> None:
        """Forward ``host_ip:host_port`` on the host to the guest's ``guest_port`` (user-mode net)."""
        rule = f"{_proto(proto)}:{host_ip}:{int(host_port)}-:{int(guest_port)}"
        reply = self.hmp(f"hostfwd_add {netdev} {rule}").strip()
        if reply:
            raise VMError(f"cannot forward {host_ip}:{host_port} to guest port {guest_port}: "
                          f"{reply.splitlines()[0]}", hint="is the host port already in use?")

    def hostfwd_remove(self, proto: str, host_ip: str, host_port: int, netdev: str = "net0") -> None:
        """Remove a forward added by :meth:`hostfwd_add` (or at start)."""
        reply = self.hmp(f"hostfwd_remove {netdev} {_proto(proto)}:{host_ip}:{int(host_port)}").strip()
        if not reply.endswith("removed"):
            raise VMError(f"cannot remove the forward of {host_ip}:{host_port}: "
                          f"{reply.splitlines()[0] if reply else 'no reply'}")

    def _run(self, coro: Any, what: str) -> Any:
        from qemu.qmp import QMPError

        assert self._loop is not None
        try:
            return self._loop.run_until_complete(asyncio.wait_for(coro, self.timeout))
        except asyncio.TimeoutError as exc:
            raise VMError(f"QMP {what}: no answer from QEMU at {self._where()} within {self.timeout:g} s") from exc
        except (QMPError, OSError, EOFError) as exc:
            raise VMError(f"QMP {what} failed at {self._where()}: {exc}") from exc

    def _where(self) -> str:
        return f"127.0.0.1:{self.address[1]}" if isinstance(self.address, tuple) else self.address


def _proto(proto: str) -> str:
    p = proto.lower()
    if p not in ("tcp", "udp"):
        raise VMError(f"unsupported protocol {proto!r} for a port forward", hint="use tcp or udp")
    return p
