"""A small rtnetlink client: the few link, address and route requests bridge networking needs.

Why not the ``ip`` tool: every ``ip`` process is a fork and an exec of a dynamically linked binary. Natively
that is a few milliseconds; in the VM guest under TCG emulation each exec costs 100-200 ms, and a container
on the bridge network needed several of them (bridge, veth, the container's own interfaces). The kernel's
routing socket (``AF_NETLINK``/``NETLINK_ROUTE``) takes the very same requests ``ip`` sends, straight from
this process, at the cost of a ``sendto`` and a ``recvmsg`` each.

Why the socket matters more than the process: a netlink socket belongs to the network namespace that was
current *when it was created*, and keeps talking to that namespace whatever the process does afterwards. So
the shim opens one socket on the host, unshares a fresh network namespace, opens a second socket there and
returns to the host namespace at once; from then on each request goes to the right namespace by choice of
socket, with no process living inside the container's namespace.

Protocol (``linux/netlink.h``, ``linux/rtnetlink.h``), all in host byte order::

    request   nlmsghdr {len u32, type u16, flags u16, seq u32, pid u32}
              + family header (ifinfomsg 16 bytes | ifaddrmsg 8 | rtmsg 12)
              + attributes: rtattr {len u16, type u16} + value, each padded to 4 bytes; nested
                attributes (IFLA_LINKINFO ...) are attributes whose value is more attributes
    reply     NLMSG_ERROR {error s32 (0 = ack, else -errno), the request's nlmsghdr [+ its payload]
              [+ extended-ack attributes: the kernel's own error text]}, preceded by any data the
              request asked for (an RTM_NEWLINK for an RTM_GETLINK)

Every request carries ``NLM_F_ACK``, so success is confirmed, not assumed from silence. Replies are checked
before use: the datagram must come from the kernel (port 0) and not be truncated, every header's length
must fit, and the sequence number and port id must be those of the request (older replies from an
abandoned request are skipped, anything else is refused). A negative error becomes a
:class:`NetlinkError` (an ``OSError`` with the errno) whose text says what was being done, with the
kernel's extended-ack message when it sent one ("create veth vr0123 (peer eth0): File exists").

Building messages (``pack_*``, ``*_request``) and reading them (``parse_*``) are pure functions, unit-tested
without root; :class:`RouteSocket` is the thin part that does I/O.

Standard library only: this module runs inside the VM guest.
"""

from __future__ import annotations

import errno as _errno
import ipaddress
import os
import socket
import struct

# --- linux/netlink.h ---
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x01
NLM_F_MULTI = 0x02
NLM_F_ACK = 0x04
NLM_F_DUMP = 0x300  # NLM_F_ROOT | NLM_F_MATCH
NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400
NLM_F_CAPPED = 0x100  # on NLMSG_ERROR: the request's payload is not echoed
NLM_F_ACK_TLVS = 0x200  # on NLMSG_ERROR: extended-ack attributes follow
NLMSGERR_ATTR_MSG = 1
SOL_NETLINK = 270
NETLINK_CAP_ACK = 10
NETLINK_EXT_ACK = 11

# --- linux/rtnetlink.h ---
RTM_NEWLINK = 16
RTM_DELLINK = 17
RTM_GETLINK = 18
RTM_NEWADDR = 20
RTM_GETADDR = 22
RTM_NEWROUTE = 24
RTM_GETROUTE = 26
RT_TABLE_MAIN = 254
RTPROT_BOOT = 3
RT_SCOPE_UNIVERSE = 0
RTN_UNICAST = 1
RTA_DST = 1
RTA_GATEWAY = 5

# --- linux/if_link.h, linux/if_addr.h, linux/veth.h, linux/if.h ---
IFLA_ADDRESS = 1
IFLA_IFNAME = 3
IFLA_MASTER = 10
IFLA_LINKINFO = 18
IFLA_IFALIAS = 20
IFLA_NET_NS_FD = 28
IFLA_INFO_KIND = 1
IFLA_INFO_DATA = 2
VETH_INFO_PEER = 1
IFA_ADDRESS = 1
IFA_LOCAL = 2
IFF_UP = 0x1
IFNAMSIZ = 16

_NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
_IFINFOMSG = struct.Struct("=BxHiII")  # family, pad, type, index, flags, change
_IFADDRMSG = struct.Struct("=BBBBI")  # family, prefixlen, flags, scope, index
_RTMSG = struct.Struct("=BBBBBBBBI")  # family, dst_len, src_len, tos, table, protocol, scope, type, flags
_RTATTR = struct.Struct("=HH")  # len, type
_ERRHDR = struct.Struct("=i")

RECV_BUFFER = 65536
TIMEOUT = 5.0


class NetlinkError(OSError):
    """The kernel refused a request, or its reply made no sense; ``errno`` is the kernel's error.

    ``str()`` is the message alone ("delete link vr0123: No such device"), without OSError's "[Errno 19]".
    """

    def __str__(self) -> str:
        return self.strerror or super().__str__()


# ------------------------------------------------------------------------------------------ building

def align(n: int) -> int:
    return (n + 3) & ~3


def pack_attr(kind: int, value: bytes) -> bytes:
    """One rtattr, zero-padded to a multiple of 4 (the length field counts the unpadded value)."""
    length = _RTATTR.size + len(value)
    if length > 0xFFFF:
        raise ValueError(f"netlink attribute {kind} is too long ({len(value)} bytes)")
    return _RTATTR.pack(length, kind) + value + b"\0" * (align(length) - length)


def pack_str(kind: int, text: str) -> bytes:
    """A NUL-terminated string attribute."""
    raw = text.encode()
    if b"\0" in raw:
        raise ValueError(f"netlink string contains a NUL byte: {text!r}")
    return pack_attr(kind, raw + b"\0")


def pack_u32(kind: int, value: int) -> bytes:
    return pack_attr(kind, struct.pack("=I", value))


def pack_message(msg_type: int, flags: int, seq: int, payload: bytes, pid: int = 0) -> bytes:
    return _NLMSGHDR.pack(_NLMSGHDR.size + len(payload), msg_type, flags, seq, pid) + payload


def ifinfomsg(index: int = 0, flags: int = 0, change: int = 0) -> bytes:
    return _IFINFOMSG.pack(socket.AF_UNSPEC, 0, index, flags, change)


def ifname(name: str) -> bytes:
    """IFLA_IFNAME, refusing what the kernel would refuse less clearly (IFNAMSIZ includes the NUL)."""
    if not name or len(name.encode()) >= IFNAMSIZ or name in (".", "..") \
            or any(c in "/:" or c.isspace() for c in name):
        raise ValueError(f"invalid interface name {name!r}")
    return pack_str(IFLA_IFNAME, name)


def mac_bytes(mac: str) -> bytes:
    parts = mac.split(":")
    if len(parts) != 6 or not all(len(p) == 2 for p in parts):
        raise ValueError(f"invalid MAC address {mac!r}")
    return bytes(int(p, 16) for p in parts)


def ipv4_bytes(address: str) -> bytes:
    return ipaddress.IPv4Address(address).packed


def link_info(kind: str, data: bytes = b"") -> bytes:
    """IFLA_LINKINFO { IFLA_INFO_KIND kind [, IFLA_INFO_DATA {data}] }."""
    inner = pack_str(IFLA_INFO_KIND, kind)
    if data:
        inner += pack_attr(IFLA_INFO_DATA, data)
    return pack_attr(IFLA_LINKINFO, inner)


# Each request builder returns (message type, extra flags, payload); RouteSocket adds REQUEST|ACK and a seq.

def getlink_request(name: str) -> tuple[int, int, bytes]:
    return RTM_GETLINK, 0, ifinfomsg() + ifname(name)


def bridge_request(name: str, mac: str, up: bool = True) -> tuple[int, int, bytes]:
    """Create a bridge with a fixed MAC (``addr_assign_type`` SET: it no longer follows its ports)."""
    return (RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL,
            ifinfomsg(flags=IFF_UP if up else 0, change=IFF_UP) + ifname(name)
            + pack_attr(IFLA_ADDRESS, mac_bytes(mac)) + link_info("bridge"))


def veth_request(name: str, peer: str, peer_mac: str, peer_netns_fd: int, master: int | None = None,
                 up: bool = True) -> tuple[int, int, bytes]:
    """Create a veth pair whose peer is born in the namespace ``peer_netns_fd`` (never visible on the host).

    The peer's own ifinfomsg and attributes sit inside IFLA_LINKINFO/IFLA_INFO_DATA/VETH_INFO_PEER, as
    ``ip link add NAME type veth peer name PEER address MAC netns FD`` sends them. ``master`` (an ifindex)
    and ``up`` apply to the host end within the same request: the kernel enslaves it before acking, and
    unregisters the pair again if that fails, so there is no half-made pair to clean up. The peer itself
    cannot be brought up in the same request (the kernel configures it before the pair is linked, and
    opening an unlinked veth fails with ENOTCONN): set it up afterwards, from its namespace.
    """
    peer_payload = (ifinfomsg() + ifname(peer) + pack_attr(IFLA_ADDRESS, mac_bytes(peer_mac))
                    + pack_u32(IFLA_NET_NS_FD, peer_netns_fd))
    payload = (ifinfomsg(flags=IFF_UP if up else 0, change=IFF_UP) + ifname(name)
               + link_info("veth", pack_attr(VETH_INFO_PEER, peer_payload)))
    if master is not None:
        payload += pack_u32(IFLA_MASTER, master)
    return RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, payload


def setlink_request(name: str, up: bool | None = None, master: int | None = None,
                    alias: str | None = None) -> tuple[int, int, bytes]:
    """Change an existing link found by name (ifindex 0 + IFLA_IFNAME; no NLM_F_CREATE: ENODEV if absent)."""
    flags = change = 0
    if up is not None:
        flags, change = (IFF_UP if up else 0), IFF_UP
    payload = ifinfomsg(flags=flags, change=change) + ifname(name)
    if master is not None:
        payload += pack_u32(IFLA_MASTER, master)
    if alias is not None:
        payload += pack_str(IFLA_IFALIAS, alias)
    return RTM_NEWLINK, 0, payload


def dellink_request(name: str) -> tuple[int, int, bytes]:
    return RTM_DELLINK, 0, ifinfomsg() + ifname(name)


def addr_request(index: int, address: str, prefixlen: int) -> tuple[int, int, bytes]:
    """``ip addr add ADDRESS/PREFIXLEN dev INDEX``: IFA_LOCAL and IFA_ADDRESS both the address."""
    if not 0 <= prefixlen <= 32:
        raise ValueError(f"invalid IPv4 prefix length {prefixlen}")
    raw = ipv4_bytes(address)
    return (RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL,
            _IFADDRMSG.pack(socket.AF_INET, prefixlen, 0, RT_SCOPE_UNIVERSE, index)
            + pack_attr(IFA_LOCAL, raw) + pack_attr(IFA_ADDRESS, raw))


def default_route_request(gateway: str) -> tuple[int, int, bytes]:
    """``ip route add default via GATEWAY`` in the main table (the kernel finds the device)."""
    return (RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL,
            _RTMSG.pack(socket.AF_INET, 0, 0, 0, RT_TABLE_MAIN, RTPROT_BOOT, RT_SCOPE_UNIVERSE, RTN_UNICAST, 0)
            + pack_attr(RTA_GATEWAY, ipv4_bytes(gateway)))


def dump_request(msg_type: int) -> tuple[int, int, bytes]:
    """Dump every IPv4 address (RTM_GETADDR) or route of every table (RTM_GETROUTE)."""
    header = _IFADDRMSG.pack(socket.AF_INET, 0, 0, 0, 0) if msg_type == RTM_GETADDR else \
        _RTMSG.pack(socket.AF_INET, 0, 0, 0, 0, 0, 0, 0, 0)
    return msg_type, NLM_F_DUMP, header


# ------------------------------------------------------------------------------------------ reading

def parse_messages(data: bytes) -> list[tuple[int, int, int, int, bytes]]:
    """Split a datagram into (type, flags, seq, pid, payload), refusing any length that does not fit."""
    out = []
    offset = 0
    while offset < len(data):
        if len(data) - offset < _NLMSGHDR.size:
            raise NetlinkError(_errno.EBADMSG, f"netlink reply: {len(data) - offset} stray bytes after the "
                                               "last message")
        length, msg_type, flags, seq, pid = _NLMSGHDR.unpack_from(data, offset)
        if length < _NLMSGHDR.size or offset + length > len(data):
            raise NetlinkError(_errno.EBADMSG, f"netlink reply: message length {length} does not fit "
                                               f"the {len(data) - offset} bytes left")
        out.append((msg_type, flags, seq, pid, data[offset + _NLMSGHDR.size:offset + length]))
        offset += align(length)
    return out


def parse_attrs(data: bytes) -> dict[int, bytes]:
    """Attributes by type (the last one wins), refusing any length that does not fit."""
    out: dict[int, bytes] = {}
    offset = 0
    while offset + _RTATTR.size <= len(data):
        length, kind = _RTATTR.unpack_from(data, offset)
        if length < _RTATTR.size or offset + length > len(data):
            raise NetlinkError(_errno.EBADMSG, f"netlink reply: attribute length {length} does not fit")
        out[kind & 0x3FFF] = data[offset + _RTATTR.size:offset + length]  # without NLA_F_NESTED/BYTEORDER
        offset += align(length)
    return out


def parse_error(flags: int, payload: bytes) -> tuple[int, int, str]:
    """An NLMSG_ERROR's (error, seq of the request it answers, the kernel's extended-ack text or '')."""
    if len(payload) < _ERRHDR.size + _NLMSGHDR.size:
        raise NetlinkError(_errno.EBADMSG, f"netlink reply: error message of {len(payload)} bytes is too short")
    (error,) = _ERRHDR.unpack_from(payload)
    orig_len, _, _, orig_seq, _ = _NLMSGHDR.unpack_from(payload, _ERRHDR.size)
    text = ""
    if flags & NLM_F_ACK_TLVS:
        # The echoed request is only its header when capped (NETLINK_CAP_ACK) or on success.
        echoed = _NLMSGHDR.size if flags & NLM_F_CAPPED or error == 0 else max(orig_len, _NLMSGHDR.size)
        tlvs = payload[_ERRHDR.size + align(echoed):]
        raw = parse_attrs(tlvs).get(NLMSGERR_ATTR_MSG, b"")
        text = raw.split(b"\0", 1)[0].decode(errors="replace")
    return error, orig_seq, text


def parse_ifindex(payload: bytes) -> int:
    """The ifindex in an RTM_NEWLINK reply."""
    if len(payload) < _IFINFOMSG.size:
        raise NetlinkError(_errno.EBADMSG, "netlink reply: link message too short")
    index = _IFINFOMSG.unpack_from(payload)[2]
    if index <= 0:
        raise NetlinkError(_errno.EBADMSG, f"netlink reply: invalid ifindex {index}")
    return index


def parse_prefix(msg_type: int, payload: bytes) -> str | None:
    """``address/prefixlen`` of an RTM_NEWADDR or RTM_NEWROUTE dump entry (None: not IPv4, or a default
    route, which covers everything and blocks nothing)."""
    if msg_type == RTM_NEWADDR and len(payload) >= _IFADDRMSG.size:
        family, prefixlen = _IFADDRMSG.unpack_from(payload)[:2]
        attrs = parse_attrs(payload[_IFADDRMSG.size:])
        raw = attrs.get(IFA_LOCAL) or attrs.get(IFA_ADDRESS)
    elif msg_type == RTM_NEWROUTE and len(payload) >= _RTMSG.size:
        family, prefixlen = _RTMSG.unpack_from(payload)[:2]
        raw = parse_attrs(payload[_RTMSG.size:]).get(RTA_DST)
    else:
        return None
    if family != socket.AF_INET or raw is None or len(raw) != 4 or not 0 <= prefixlen <= 32:
        return None
    return f"{ipaddress.IPv4Address(raw)}/{prefixlen}"


# ------------------------------------------------------------------------------------------ the socket

class RouteSocket:
    """A NETLINK_ROUTE socket of the network namespace current at construction; one request at a time.

    ``sock`` is for tests (any object with ``sendto``, ``recvmsg``, ``getsockname`` and ``close``).
    """

    def __init__(self, sock=None, timeout: float = TIMEOUT):
        if sock is None:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE)
            try:
                for opt in (NETLINK_EXT_ACK, NETLINK_CAP_ACK):  # error text from the kernel; short acks
                    try:
                        sock.setsockopt(SOL_NETLINK, opt, 1)
                    except OSError:
                        pass  # older kernels: plain errno only
                sock.bind((0, 0))  # the kernel picks our port id
                sock.settimeout(timeout)  # a kernel that never answers must not hang a start forever
            except BaseException:
                sock.close()
                raise
        self.sock = sock
        self.port = sock.getsockname()[0]
        self.seq = int.from_bytes(os.urandom(2), "little") + 1

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> "RouteSocket":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- the exchange
    def request(self, request: tuple[int, int, bytes], what: str) -> list[tuple[int, bytes]]:
        """Send one request with NLM_F_ACK; return its (type, payload) replies once the ack has come.

        A dump ends with NLMSG_DONE (a negative value in it is an error too); anything else with the
        NLMSG_ERROR that acks it.
        """
        msg_type, flags, payload = request
        self.seq = self.seq % 0x7FFFFFFF + 1
        seq = self.seq
        self.sock.sendto(pack_message(msg_type, NLM_F_REQUEST | NLM_F_ACK | flags, seq, payload), (0, 0))
        replies: list[tuple[int, bytes]] = []
        while True:
            try:
                data, _, msg_flags, addr = self.sock.recvmsg(RECV_BUFFER)
            except socket.timeout as exc:
                raise NetlinkError(_errno.ETIMEDOUT, f"{what}: no reply from the kernel") from exc
            if msg_flags & socket.MSG_TRUNC:
                raise NetlinkError(_errno.EMSGSIZE, f"{what}: netlink reply larger than {RECV_BUFFER} bytes")
            if not addr or addr[0] != 0:
                continue  # not from the kernel: another process cannot answer for it
            for r_type, r_flags, r_seq, r_pid, r_payload in parse_messages(data):
                if r_seq != seq or r_pid != self.port:
                    if r_pid == self.port and 0 < seq - r_seq < 0x10000:
                        continue  # a late reply to an earlier request that gave up waiting
                    raise NetlinkError(_errno.EPROTO, f"{what}: unexpected netlink reply (seq {r_seq}, port "
                                                      f"{r_pid}; expected seq {seq}, port {self.port})")
                if r_type == NLMSG_ERROR:
                    error, orig_seq, text = parse_error(r_flags, r_payload)
                    if orig_seq != seq:
                        raise NetlinkError(_errno.EPROTO, f"{what}: netlink ack for seq {orig_seq}, not {seq}")
                    if error > 0:
                        raise NetlinkError(_errno.EPROTO, f"{what}: invalid netlink error code {error}")
                    if error < 0:
                        raise error_for(-error, what, text)
                    return replies
                if r_type == NLMSG_DONE:
                    if len(r_payload) >= 4 and _ERRHDR.unpack_from(r_payload)[0] < 0:
                        raise error_for(-_ERRHDR.unpack_from(r_payload)[0], what, "")
                    return replies
                replies.append((r_type, r_payload))

    # -- links
    def ifindex(self, name: str) -> int:
        """The ifindex of ``name`` in this socket's namespace (NetlinkError ENODEV when there is none)."""
        replies = [p for t, p in self.request(getlink_request(name), f"look up link {name}") if t == RTM_NEWLINK]
        if len(replies) != 1:
            raise NetlinkError(_errno.EPROTO, f"look up link {name}: {len(replies)} link replies, not 1")
        return parse_ifindex(replies[0])

    def link_exists(self, name: str) -> bool:
        try:
            self.ifindex(name)
        except NetlinkError as exc:
            if exc.errno == _errno.ENODEV:
                return False
            raise
        return True

    def create_bridge(self, name: str, mac: str, alias: str | None = None, up: bool = True) -> None:
        self.request(bridge_request(name, mac, up), f"create bridge {name}")
        if alias is not None:  # the kernel applies IFLA_IFALIAS only to an existing link, not at creation
            self.request(setlink_request(name, alias=alias), f"set the alias of {name}")

    def create_veth(self, name: str, peer: str, peer_mac: str, peer_netns_fd: int, master: str | None = None,
                    up: bool = True) -> None:
        index = self.ifindex(master) if master is not None else None
        self.request(veth_request(name, peer, peer_mac, peer_netns_fd, index, up),
                     f"create veth {name} (peer {peer})" + (f" on {master}" if master else ""))

    def set_up(self, name: str) -> None:
        self.request(setlink_request(name, up=True), f"set link {name} up")

    def delete_link(self, name: str) -> None:
        self.request(dellink_request(name), f"delete link {name}")

    # -- addresses and routes
    def add_address(self, name: str, address: str, prefixlen: int) -> None:
        self.request(addr_request(self.ifindex(name), address, prefixlen),
                     f"add address {address}/{prefixlen} to {name}")

    def add_default_route(self, gateway: str) -> None:
        self.request(default_route_request(gateway), f"add default route via {gateway}")

    def ipv4_prefixes(self) -> list[str]:
        """Every IPv4 address (with its prefix) and every non-default route of every table."""
        out = []
        for msg_type in (RTM_GETADDR, RTM_GETROUTE):
            for r_type, payload in self.request(dump_request(msg_type), "list addresses and routes"):
                prefix = parse_prefix(r_type, payload)
                if prefix is not None:
                    out.append(prefix)
        return out


def error_for(code: int, what: str, kernel_text: str) -> NetlinkError:
    detail = os.strerror(code) + (f" ({kernel_text})" if kernel_text else "")
    return NetlinkError(code, f"{what}: {detail}")
