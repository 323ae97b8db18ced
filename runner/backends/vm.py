"""VMBackend: the same Engine, running in a QEMU guest, reached through the resident agent.

Every Backend method is one agent call (:class:`runner.backends.agent.AgentBackend`); this module only decides
where the connection comes from, and does it in two speeds:

- fast path (every call once the VM is up): connect to the machine's connection cache
  (:mod:`runner.vm.muxctl`, a Unix socket), read the per-boot agent token from the machine's ``run.json`` and
  handshake. No paramiko import, no SSH handshake: a few milliseconds.
- slow path (after anything in the fast path failed): start the machine if it is stopped (a start brings up
  the agent and the connection cache, see :meth:`runner.vm.machine.Machine.start`), start the cache if it is
  gone, and if the agent still does not answer, ship this runner's code and restart it
  (:func:`runner.vm.ship.ensure_agent`: the machine ran an agent of another runner version), then take the
  fast path. Hosts without Unix sockets use a direct paramiko channel instead of the cache.

Errors raised by the engine in the guest reach the caller as the very same RunnerError (class, message,
hint, exit code); transport failures are :class:`runner.errors.VMError`.

What the host adds around the engine's own answers (each a few lines below):

- **bind mounts**: ``-v`` sources must lie under a directory the machine shares over 9p
  (:mod:`runner.vm.shares`, mounted in the guest at the same real path); a source is resolved to its real path
  and checked here, so the error names the shared directories and how to add one.
- **published ports**: the guest's proxies listen on the guest's 0.0.0.0 (the agent's environment); after
  ``run``/``start`` the host adds a QEMU ``hostfwd`` from ``HostIp:HostPort`` to the guest port for each entry
  of ``inspect()["NetworkSettings"]["Ports"]``. A random host port (``-p 80``) is picked on the host, so the
  guest's and the host's numbers may differ: ``port``, ``inspect`` and ``ps`` show the host's. The host is not
  told when a detached container exits, so active forwards are recorded in the machine's ``forwards.json``
  and reconciled (forwards of containers that no longer run are removed) by every call that lists or changes
  containers; ``runner vm stop`` drops them with QEMU.
- **loopback registries**: a pull or push of ``127.0.0.1:5000/x`` (or localhost, ::1) is sent to the host's
  loopback as the guest reaches it, 10.0.2.2 (QEMU user-net), keeping the image name.
"""

from __future__ import annotations

import contextlib
import json
import sys
from typing import Any, Callable

from runner.agent.client import AgentClient
from runner.backends.agent import AgentBackend
from runner.backends.base import Features
from runner.stdio import ProgressFn, Stdio, TermSize
from runner.errors import Conflict, NotFound, PlatformError, RunnerError, VMError

GUEST_HOST_ADDRESS = "10.0.2.2"  # the host's loopback as seen from the guest (QEMU user-mode networking)
_LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")


class VMBackend(AgentBackend):
    name = "vm"
    # Host directories reach the guest over 9p (not on Windows: QEMU has no virtfs there); published ports are
    # QEMU host forwards added by this class; host networking means the VM's network.
    features = Features(bind_mounts=not sys.platform.startswith("win"), host_network=True, published_ports=True)

    def __init__(self, machine_name: str = "default", warn: Callable[[str], None] | None = None):
        from runner.vm.layout import MachinePaths

        self.machine_name = machine_name
        self.warn = warn
        self.paths = MachinePaths.for_name(machine_name)
        super().__init__(self._connect)

    # -- connecting
    def _connect(self) -> AgentClient:
        from runner.vm import muxctl

        if muxctl.SUPPORTED:
            try:
                return self._via_mux()
            except (OSError, RunnerError):
                pass  # no cache yet, a stale one, an agent of another version: the slow path repairs it
        from runner.vm import ship
        from runner.vm.machine import Machine

        # A machine this boots comes up with our agent serving and, where supported, its connection cache.
        machine = Machine(self.machine_name, warn=self.warn).ensure_running()
        if muxctl.SUPPORTED:
            muxctl.start(self.paths)  # a no-op when one runs
            with contextlib.suppress(OSError, RunnerError):
                return self._via_mux()
        # The machine ran already: its agent may be of another runner version (or, without a cache, unchecked).
        ship.ensure_agent(machine.ssh(), machine.agent_port)
        if muxctl.SUPPORTED:
            return self._via_mux()
        chan = machine.ssh().get_transport().open_channel(
            "direct-tcpip", ("127.0.0.1", machine.agent_port), ("127.0.0.1", 0))
        return AgentClient(chan, machine.agent_token, self._version(), where=self._where)

    def _via_mux(self) -> AgentClient:
        from runner.vm import muxctl

        token = self._token()
        sock = muxctl.connect(self.paths)
        # A hung cache accepts (the kernel queues the connect) but never relays the agent's CHALLENGE: the
        # handshake then fails after a deadline, and the slow path replaces the cache instead of hanging.
        sock.settimeout(muxctl.PROBE_TIMEOUT)
        try:
            client = AgentClient(sock, token, self._version(), where=self._where)
        except BaseException:
            sock.close()
            raise
        sock.settimeout(None)
        return client

    def _token(self) -> str:
        """This boot's agent token from run.json (written by the machine at start, 0600)."""
        try:
            return str(json.loads(self.paths.run.read_text())["agent_token"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise VMError(f"machine {self.machine_name!r} is not running") from exc

    @staticmethod
    def _version() -> str:
        from runner.vm.ship import local_version

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

    # -- bind mounts: sources under the machine's 9p shares ------------------------------------------------
    def _guest_spec(self, spec: dict) -> dict:
        mounts = spec.get("mounts") or []
        if not any(m.get("type", "bind") == "bind" for m in mounts):
            return spec  # no bind mounts: volumes and tmpfs live in the guest
        from runner.vm import shares
        from runner.vm.machine import Machine
        from runner.vm.qemu_cmd import WINDOWS_HINT

        if sys.platform.startswith("win"):
            raise PlatformError("bind mounts (-v) are not supported by the VM backend on Windows hosts",
                                hint=WINDOWS_HINT)
        dirs = Machine(self.machine_name).shared_dirs()
        out = []
        for m in mounts:
            if m.get("type", "bind") != "bind":
                out.append(m)
                continue
            real = shares.resolve_source(str(m["source"]))
            if shares.find_share(real, dirs) is None:
                raise shares.not_shared_error(str(m["source"]), dirs, self.machine_name)
            out.append({**m, "source": real})
        return {**spec, "mounts": out}

    # -- containers: the engine's calls plus host forwards for published ports -----------------------------
    def create(self, spec: dict) -> str:
        return super().create(self._guest_spec(spec))

    def run(self, spec: dict, stdio: Stdio | None, size: TermSize | None = None):
        spec = self._guest_spec(spec)
        self._reconcile()  # frees host ports held for containers that exited meanwhile
        result = super().run(spec, stdio, size)
        if not (spec.get("ports") or spec.get("publish_all")):
            return result  # nothing to forward: no extra round trip
        return self._published(result)

    def start(self, ref: str, stdio: Stdio | None, size: TermSize | None = None):
        self._reconcile()
        return self._published(super().start(ref, stdio, size))

    def stop(self, ref: str, timeout: float = 10) -> str:
        try:
            return super().stop(ref, timeout)
        finally:
            self._reconcile()

    def kill(self, ref: str, signal: str = "KILL") -> str:
        try:
            return super().kill(ref, signal)
        finally:
            self._reconcile()

    def rm(self, ref: str, force: bool = False, volumes: bool = False) -> str:
        try:
            return super().rm(ref, force, volumes)
        finally:
            self._reconcile()

    def ps(self, all: bool = False, filters: dict | None = None) -> list[dict]:
        self._reconcile()
        out = super().ps(all, filters)
        table = self._forwards().table()
        if table:
            for c in out:
                if c.get("Ports"):
                    c["Ports"] = _port_list_on_host(c["Ports"], c["Id"], table)
        return out

    def inspect(self, ref: str) -> dict:
        info = super().inspect(ref)
        table = self._forwards().table()
        settings = info.get("NetworkSettings") or {}
        if table and settings.get("Ports"):
            settings["Ports"] = _ports_on_host(settings["Ports"], info["Id"], table)
        return info

    def port(self, ref: str) -> dict:
        self._reconcile()
        ports = super().port(ref)
        table = self._forwards().table()
        if ports and table:
            ports = _ports_on_host(ports, super().inspect(ref)["Id"], table)
        return ports

    def _forwards(self) -> "Forwards":
        from runner.vm.forwards import Forwards
        return Forwards(self.machine_name)

    def _published(self, result: Any) -> Any:
        """Add host forwards for the container that ``run``/``start`` just started (if it publishes ports);
        an attached process gets its forwards removed when it ends."""
        cid = result if isinstance(result, str) else result.container_id
        try:
            info = super().inspect(cid)
        except NotFound:
            return result  # a --rm container that is gone already: nothing to forward
        if not (info.get("NetworkSettings") or {}).get("Ports") or not info["State"]["Running"]:
            return result
        try:
            self._forwards().add(info)
        except Conflict:
            with contextlib.suppress(RunnerError):
                super().rm(info["Id"], force=True)  # nothing is left behind, as natively
            raise
        if isinstance(result, str):
            return result
        guest_inspect = super().inspect
        return _ForwardedProcess(result, self._forwards(), info["Id"], lambda: guest_inspect(info["Id"]))

    def _reconcile(self) -> None:
        """Drop the forwards of containers that no longer run (cheap when there are none)."""
        forwards = self._forwards()
        if not forwards.table():
            return
        forwards.keep_only({c["Id"] for c in super().ps(False)})

    # -- registries on the host's loopback ----------------------------------------------------------------
    def pull(self, ref: str, platform: str | None = None, credentials: dict | None = None,
             progress: ProgressFn | None = None) -> dict:
        return super().pull(ref, platform, credentials, progress, **_endpoints(ref))

    def push(self, ref: str, credentials: dict | None = None, progress: ProgressFn | None = None) -> str:
        return super().push(ref, credentials, progress, **_endpoints(ref))


    def build(self, stream, options: dict | None = None, progress: ProgressFn | None = None, cancel=None) -> str:
        """A base image the guest's build pulls may live on the host's loopback too (``FROM 127.0.0.1:5000/x``):
        its references are only known in the guest, so every loopback name is mapped, any port."""
        return super().build(stream, options, progress, cancel,
                             endpoints={name: GUEST_HOST_ADDRESS for name in _LOOPBACK_NAMES})


def _endpoints(ref: str) -> dict:
    """``{"endpoints": {...}}`` for a registry on the host's loopback (else ``{}``): the guest connects to
    10.0.2.2 instead, same port. Loopback host names map too (any port), for token servers on loopback."""
    from runner.images.reference import Reference, api_host
    from runner.images.registry import is_loopback

    try:
        registry = Reference.parse(ref).registry
    except RunnerError:
        return {}  # the engine reports the bad reference itself
    host = api_host(registry)
    hostname = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    if not is_loopback(hostname.strip("[]")):
        return {}
    port = host[len(hostname) + 1:]
    mapping = {name: GUEST_HOST_ADDRESS for name in _LOOPBACK_NAMES}
    mapping[host.lower()] = GUEST_HOST_ADDRESS + (f":{port}" if port else "")
    return {"endpoints": mapping}


class _ForwardedProcess:
    """An attached container's process whose host forwards go away when it ends, unless its restart policy
    runs it again (the attached caller hears only of the first exit; later ones are _reconcile's)."""

    def __init__(self, handle: Any, forwards: "Forwards", cid: str, inspect: Any):
        self._handle, self._forwards, self._cid, self._inspect = handle, forwards, cid, inspect
        self.container_id = handle.container_id

    def wait(self) -> int:
        try:
            return self._handle.wait()
        finally:
            with contextlib.suppress(RunnerError, OSError):
                if not self._still_running():
                    self._forwards.drop(self._cid)

    def _still_running(self) -> bool:
        """Running again or waiting to (restarting counts as running, as in Docker); gone is not running."""
        try:
            return bool(self._inspect()["State"]["Running"])
        except NotFound:
            return False

    def resize(self, size: TermSize) -> None:
        self._handle.resize(size)

    def signal(self, signum: int) -> None:
        self._handle.signal(signum)


def _ports_on_host(ports: dict, cid: str, table: dict) -> dict:
    """The guest's ``{"80/tcp": [{"HostIp", "HostPort"}]}`` with the host's port numbers."""
    out = {}
    for key, bindings in ports.items():
        proto = key.partition("/")[2] or "tcp"
        out[key] = [{**b, "HostPort": str(table.get((cid, proto, int(b["HostPort"])), b["HostPort"]))}
                    if str(b.get("HostPort", "")).isdigit() else b for b in bindings or []]
    return out


def _port_list_on_host(ports: list[dict], cid: str, table: dict) -> list[dict]:
    """``ps``'s ``[{"IP", "PrivatePort", "PublicPort", "Type"}]`` with the host's port numbers."""
    return [{**p, "PublicPort": table[(cid, p["Type"], p["PublicPort"])]}
            if (cid, p["Type"], p.get("PublicPort")) in table else p for p in ports]