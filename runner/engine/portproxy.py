"""The userland port proxy: published ports, served from inside the container's shim.

Why userland and why in the shim: a proxy reaches the container from 127.0.0.1 without DNAT tricks
(``route_localnet``), works the same in the VM guest, and living in the shim gives it exactly the
container's lifetime: no separate process to track, nothing left listening after the container exits,
even when the shim is SIGKILLed (the kernel closes its sockets).

Listening sockets are bound in the constructor, before the container's network exists, so a port in use is
one clear error and nothing else has been created. Forwarding starts with :meth:`PortProxy.start` once the
container's address is known.

TCP: one accepting thread per port; each connection gets a second socket to ``container_ip:port`` and two
pumps that move bytes with ``splice(2)`` through a pipe, so data never enters Python (the throughput is
the kernel's, not the interpreter's). Half-closes are propagated (``shutdown(SHUT_WR)``).
UDP: one thread per port with a selector; every client address gets its own connected socket towards the
container, so replies find their way back; idle flows are dropped after ``UDP_IDLE`` seconds.
Threads are daemons: the shim ends with ``os._exit`` and takes them along.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import ipaddress
import os
import selectors
import socket
import threading
import time

from runner.errors import Conflict

UDP_IDLE = 120.0
_CHUNK = 1 << 20


def _family(ip: str) -> int:
    return socket.AF_INET6 if ipaddress.ip_address(ip).version == 6 else socket.AF_INET


class PortProxy:
    """Bind every mapping now (or raise Conflict, closing what was bound); forward after ``start``."""

    def __init__(self, ports: list[dict], bind_override: str | None = None):
        self.bound: list[dict] = []  # the mappings with their real host port (random ones resolved)
        self._socks: list[socket.socket] = []
        self._closed = False
        try:
            for p in ports:
                addr = bind_override or p["host_ip"]
                sock = socket.socket(_family(addr), socket.SOCK_STREAM if p["protocol"] == "tcp"
                                     else socket.SOCK_DGRAM)
                self._socks.append(sock)
                if p["protocol"] == "tcp":
                    # Lets a restarted container take its port back while old connections sit in TIME_WAIT;
                    # Linux still refuses a second listener on the same port.
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    sock.bind((addr, p["host_port"]))
                except OSError as exc:
                    what = f'{p["host_ip"]}:{p["host_port"]}/{p["protocol"]}'
                    if exc.errno == errno.EADDRINUSE:
                        raise Conflict(f"cannot publish {what}: the port is already in use",
                                       hint="choose another host port, or give only the container port "
                                            "(-p PORT) to get a free one") from exc
                    raise Conflict(f"cannot publish {what}: {exc.strerror}") from exc
                if p["protocol"] == "tcp":
                    sock.listen(128)
                self.bound.append({"container_port": p["container_port"], "protocol": p["protocol"],
                                   "host_ip": p["host_ip"], "host_port": sock.getsockname()[1]})
        except BaseException:
            self.close()
            raise

    def start(self, target_ip: str) -> None:
        for sock, p in zip(self._socks, self.bound):
            loop = _tcp_accept if p["protocol"] == "tcp" else _udp_loop
            threading.Thread(target=loop, args=(sock, (target_ip, p["container_port"])), daemon=True,
                             name=f'proxy-{p["host_port"]}/{p["protocol"]}').start()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for sock in self._socks:
            # shutdown wakes a thread blocked in accept()/recv(); a bare close would leave the port bound
            # until that call returned.
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


# ------------------------------------------------------------------------------------------------ TCP

def _tcp_accept(listener: socket.socket, target: tuple[str, int]) -> None:
    while True:
        try:
            client, _ = listener.accept()
        except OSError as exc:
            if exc.errno in (errno.EINTR, errno.ECONNABORTED, errno.EMFILE, errno.ENFILE):
                time.sleep(0.01 if exc.errno in (errno.EMFILE, errno.ENFILE) else 0)
                continue
            return  # the listener was shut down: the container is going away
        threading.Thread(target=_tcp_conn, args=(client, target), daemon=True).start()


def _tcp_conn(client: socket.socket, target: tuple[str, int]) -> None:
    try:
        upstream = socket.create_connection(target, timeout=5)
    except OSError:
        client.close()  # nothing listens in the container (yet): the client sees the connection close
        return
    upstream.settimeout(None)
    for s in (client, upstream):
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    back = threading.Thread(target=_pump, args=(upstream, client), daemon=True)
    back.start()
    _pump(client, upstream)
    back.join()
    client.close()
    upstream.close()


def _pump(src: socket.socket, dst: socket.socket) -> None:
    """src → dst through a pipe with splice(2), then pass the EOF on; an error aborts both directions."""
    r, w = os.pipe2(os.O_CLOEXEC)
    with contextlib.suppress(OSError):
        # 1 MiB instead of 64 KiB: fewer splice round trips per megabyte (the pipe is only a staging area).
        fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, _CHUNK)
    try:
        while True:
            n = os.splice(src.fileno(), w, _CHUNK)
            if n == 0:
                with contextlib.suppress(OSError):
                    dst.shutdown(socket.SHUT_WR)
                return
            while n:
                n -= os.splice(r, dst.fileno(), n)
    except OSError:
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
    finally:
        os.close(r)
        os.close(w)


# ------------------------------------------------------------------------------------------------ UDP

def _udp_loop(listener: socket.socket, target: tuple[str, int]) -> None:
    sel = selectors.DefaultSelector()
    try:
        sel.register(listener, selectors.EVENT_READ, None)
    except ValueError:  # closed before this thread got to run: the container is already going away
        return
    flows: dict[tuple, list] = {}  # client address -> [socket towards the container, last activity]
    while listener.fileno() >= 0:  # close() (from PortProxy.close) ends the loop within one select timeout
        for key, _ in sel.select(timeout=5):
            try:
                if key.data is None:
                    data, client = listener.recvfrom(65535)
                    flow = flows.get(client)
                    if flow is None:
                        up = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                        up.connect(target)
                        flow = flows[client] = [up, 0.0]
                        sel.register(up, selectors.EVENT_READ, client)
                    flow[1] = time.monotonic()
                    with contextlib.suppress(OSError):
                        flow[0].send(data)
                else:
                    data = key.fileobj.recv(65535)
                    flows[key.data][1] = time.monotonic()
                    listener.sendto(data, key.data)
            except OSError:
                if key.data is not None:  # e.g. ECONNREFUSED from the container: drop that flow
                    _drop(sel, flows, key.data)
        idle = time.monotonic() - UDP_IDLE
        for client in [c for c, f in flows.items() if f[1] < idle]:
            _drop(sel, flows, client)


def _drop(sel: selectors.BaseSelector, flows: dict, client: tuple) -> None:
    flow = flows.pop(client, None)
    if flow is not None:
        sel.unregister(flow[0])
        flow[0].close()
