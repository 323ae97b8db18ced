"""runner.engine.netlink without root: the bytes of each request, and how replies are read and checked.

The expected bytes are written out by hand from the kernel's structs (linux/netlink.h, rtnetlink.h,
if_link.h, veth.h), not produced by the code under test. RouteSocket runs against a fake socket that
answers with prepared datagrams, so the reply checks are tested without a kernel.
"""

import errno
import socket
import struct
import sys

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the engine is Linux-only")

from runner.engine import netlink  # noqa: E402
from runner.engine.netlink import NetlinkError, RouteSocket  # noqa: E402

PORT = 4242


def attr(kind, value):
    length = 4 + len(value)
    return struct.pack("=HH", length, kind) + value + b"\0" * (-length % 4)


def ifinfo(index=0, flags=0, change=0):
    return struct.pack("=BBHiII", 0, 0, 0, index, flags, change)


# ------------------------------------------------------------------------------------------ encoding

def test_attributes_are_padded_but_their_length_is_not():
    assert netlink.pack_attr(3, b"abc") == b"\x07\x00\x03\x00abc\x00"
    assert netlink.pack_str(3, "eth0") == b"\x09\x00\x03\x00eth0\x00\x00\x00\x00"
    assert netlink.pack_u32(10, 7) == b"\x08\x00\x0a\x00\x07\x00\x00\x00"
    assert netlink.pack_attr(1, b"") == b"\x04\x00\x01\x00"


def test_message_header_counts_itself():
    msg = netlink.pack_message(16, 0x605, 9, b"xxxx")
    assert msg == struct.pack("=IHHII", 20, 16, 0x605, 9, 0) + b"xxxx"


def test_bridge_request():
    msg_type, flags, payload = netlink.bridge_request("rnabc0", "02:42:0a:58:00:01")
    assert (msg_type, flags) == (netlink.RTM_NEWLINK, netlink.NLM_F_CREATE | netlink.NLM_F_EXCL)
    assert payload == (ifinfo(flags=1, change=1) + attr(3, b"rnabc0\0") + attr(1, bytes.fromhex("02420a580001"))
                       + attr(18, attr(1, b"bridge\0")))


def test_veth_request_nests_the_peer_with_its_namespace_fd():
    _, flags, payload = netlink.veth_request("vr0123456789a", "eth0", "02:42:0a:58:00:02", 7, master=5)
    peer = ifinfo() + attr(3, b"eth0\0") + attr(1, bytes.fromhex("02420a580002")) + attr(28, struct.pack("=I", 7))
    linkinfo = attr(18, attr(1, b"veth\0") + attr(2, attr(1, peer)))
    assert payload == ifinfo(flags=1, change=1) + attr(3, b"vr0123456789a\0") + linkinfo + attr(10, b"\5\0\0\0")
    assert flags == netlink.NLM_F_CREATE | netlink.NLM_F_EXCL


def test_setlink_request_finds_the_link_by_name_and_never_creates():
    msg_type, flags, payload = netlink.setlink_request("br0", up=True, master=3, alias="runner:x:/r")
    assert (msg_type, flags) == (netlink.RTM_NEWLINK, 0)
    assert payload == ifinfo(flags=1, change=1) + attr(3, b"br0\0") + attr(10, b"\3\0\0\0") + attr(20, b"runner:x:/r\0")
    assert netlink.setlink_request("lo")[2] == ifinfo() + attr(3, b"lo\0")  # change 0: flags untouched


def test_dellink_and_getlink_requests():
    assert netlink.dellink_request("vrx") == (netlink.RTM_DELLINK, 0, ifinfo() + attr(3, b"vrx\0"))
    assert netlink.getlink_request("vrx") == (netlink.RTM_GETLINK, 0, ifinfo() + attr(3, b"vrx\0"))


def test_address_request():
    msg_type, flags, payload = netlink.addr_request(4, "10.88.0.2", 16)
    assert (msg_type, flags) == (netlink.RTM_NEWADDR, netlink.NLM_F_CREATE | netlink.NLM_F_EXCL)
    raw = bytes([10, 88, 0, 2])
    assert payload == struct.pack("=BBBBI", socket.AF_INET, 16, 0, 0, 4) + attr(2, raw) + attr(1, raw)
    with pytest.raises(ValueError):
        netlink.addr_request(4, "10.88.0.2", 33)
    with pytest.raises(ValueError):
        netlink.addr_request(4, "fe80::1", 64)


def test_default_route_request():
    msg_type, _, payload = netlink.default_route_request("10.88.0.1")
    assert msg_type == netlink.RTM_NEWROUTE
    # family, dst_len 0 (default), src_len, tos, table main, proto boot, scope universe, type unicast, flags
    assert payload == bytes([socket.AF_INET, 0, 0, 0, 254, 3, 0, 1]) + b"\0" * 4 + attr(5, bytes([10, 88, 0, 1]))


@pytest.mark.parametrize("name", ["", "a" * 16, "a/b", "a b", "a:b", ".", "..", "x\0"])
def test_invalid_interface_names_are_refused_before_sending(name):
    with pytest.raises(ValueError):
        netlink.ifname(name)
    assert netlink.ifname("a" * 15)  # IFNAMSIZ counts the NUL


@pytest.mark.parametrize("mac", ["02:42:0a:58:00", "02:42:0a:58:00:01:02", "0242.0a58.0001", "02:42:0a:58:00:zz"])
def test_invalid_macs_are_refused(mac):
    with pytest.raises(ValueError):
        netlink.mac_bytes(mac)


# ------------------------------------------------------------------------------------------ decoding

def nlmsg(msg_type, seq, payload, flags=0, pid=PORT):
    length = 16 + len(payload)
    return struct.pack("=IHHII", length, msg_type, flags, seq, pid) + payload + b"\0" * (-length % 4)


def ack(seq, error=0, text="", pid=PORT):
    """An NLMSG_ERROR as a kernel with NETLINK_CAP_ACK and NETLINK_EXT_ACK sends it."""
    payload = struct.pack("=i", -error) + struct.pack("=IHHII", 32, 16, 5, seq, PORT)
    flags = netlink.NLM_F_CAPPED
    if text:
        payload += attr(netlink.NLMSGERR_ATTR_MSG, text.encode() + b"\0")
        flags |= netlink.NLM_F_ACK_TLVS
    return nlmsg(netlink.NLMSG_ERROR, seq, payload, flags, pid)


def test_parse_messages_splits_aligned_messages():
    data = nlmsg(16, 1, b"abcde") + nlmsg(3, 1, b"\0\0\0\0")
    assert [(t, s, p) for t, _, s, _, p in netlink.parse_messages(data)] == [(16, 1, b"abcde"), (3, 1, b"\0\0\0\0")]


@pytest.mark.parametrize("data", [
    b"\x01\x02",  # shorter than a header
    struct.pack("=IHHII", 64, 16, 0, 1, 0) + b"x" * 8,  # claims more than there is
    struct.pack("=IHHII", 8, 16, 0, 1, 0),  # claims less than its own header
])
def test_parse_messages_refuses_lengths_that_do_not_fit(data):
    with pytest.raises(NetlinkError) as info:
        netlink.parse_messages(data)
    assert info.value.errno == errno.EBADMSG


def test_parse_attrs_refuses_an_overlong_attribute():
    assert netlink.parse_attrs(attr(3, b"eth0\0") + attr(1, b"\1\2\3\4\5\6")) == {3: b"eth0\0", 1: b"\1\2\3\4\5\6"}
    with pytest.raises(NetlinkError):
        netlink.parse_attrs(struct.pack("=HH", 40, 3) + b"eth0")


def test_parse_error_reads_the_kernel_text_capped_or_not():
    payload = ack(7, errno.EEXIST, "File exists, really")[16:]
    assert netlink.parse_error(netlink.NLM_F_CAPPED | netlink.NLM_F_ACK_TLVS, payload) == \
        (-errno.EEXIST, 7, "File exists, really")
    # Not capped: the whole request (header + 12 payload bytes) is echoed before the attributes.
    uncapped = struct.pack("=i", -errno.EINVAL) + struct.pack("=IHHII", 28, 16, 5, 8, PORT) + b"r" * 12 \
        + attr(1, b"bad attribute\0")
    assert netlink.parse_error(netlink.NLM_F_ACK_TLVS, uncapped) == (-errno.EINVAL, 8, "bad attribute")
    with pytest.raises(NetlinkError):
        netlink.parse_error(0, b"\0" * 10)


def test_parse_prefix_of_dump_entries():
    addr = struct.pack("=BBBBI", socket.AF_INET, 24, 0, 0, 2) + attr(2, bytes([192, 0, 2, 5]))
    assert netlink.parse_prefix(netlink.RTM_NEWADDR, addr) == "192.0.2.5/24"
    route = bytes([socket.AF_INET, 16, 0, 0, 254, 2, 253, 1]) + b"\0" * 4 + attr(1, bytes([10, 1, 0, 0]))
    assert netlink.parse_prefix(netlink.RTM_NEWROUTE, route) == "10.1.0.0/16"
    default = bytes([socket.AF_INET, 0, 0, 0, 254, 3, 0, 1]) + b"\0" * 4 + attr(5, bytes([10, 1, 0, 1]))
    assert netlink.parse_prefix(netlink.RTM_NEWROUTE, default) is None
    v6 = struct.pack("=BBBBI", socket.AF_INET6, 64, 0, 0, 2) + attr(2, b"\0" * 16)
    assert netlink.parse_prefix(netlink.RTM_NEWADDR, v6) is None


# ------------------------------------------------------------------------------------------ the exchange

class FakeSocket:
    """Records what is sent; answers each recvmsg with the next prepared (data, flags, address)."""

    def __init__(self, *replies):
        self.replies = list(replies)
        self.sent = []
        self.closed = False

    def getsockname(self):
        return (PORT, 0)

    def sendto(self, data, addr):
        assert addr == (0, 0)
        self.sent.append(data)
        return len(data)

    def recvmsg(self, size):
        if not self.replies:
            raise socket.timeout("timed out")
        reply = self.replies.pop(0)
        data, flags, addr = reply(self) if callable(reply) else reply
        return data, [], flags, addr

    def close(self):
        self.closed = True

    def seq(self):
        return struct.unpack_from("=IHHII", self.sent[-1])[3]


def kernel(build, flags=0, addr=(0, 0)):
    """A reply built when it is read, from the sequence number of the request just sent."""
    return lambda sock: (build(sock.seq()), flags, addr)


def test_request_sends_request_and_ack_flags_and_returns_on_the_ack():
    sock = FakeSocket(kernel(lambda seq: ack(seq)))
    RouteSocket(sock).set_up("eth0")
    length, msg_type, flags, seq, pid = struct.unpack_from("=IHHII", sock.sent[0])
    assert length == len(sock.sent[0]) and msg_type == netlink.RTM_NEWLINK
    assert flags == netlink.NLM_F_REQUEST | netlink.NLM_F_ACK and pid == 0
    assert sock.sent[0][16:] == ifinfo(flags=1, change=1) + attr(3, b"eth0\0")


def test_sequence_numbers_advance():
    sock = FakeSocket(kernel(lambda seq: ack(seq)), kernel(lambda seq: ack(seq)))
    nl = RouteSocket(sock)
    nl.set_up("lo")
    first = sock.seq()
    nl.set_up("lo")
    assert sock.seq() == first + 1


def test_a_negative_error_is_an_oserror_saying_what_was_done():
    sock = FakeSocket(kernel(lambda seq: ack(seq, errno.EEXIST, "Device already exists")))
    with pytest.raises(OSError) as info:
        RouteSocket(sock).delete_link("vrdead")
    assert info.value.errno == errno.EEXIST
    assert str(info.value) == "delete link vrdead: File exists (Device already exists)"


def test_ifindex_reads_the_link_reply_before_the_ack():
    sock = FakeSocket(kernel(lambda seq: nlmsg(netlink.RTM_NEWLINK, seq, ifinfo(index=12) + attr(3, b"br0\0"))
                             + ack(seq)))
    assert RouteSocket(sock).ifindex("br0") == 12


def test_link_exists_is_false_only_for_enodev():
    assert RouteSocket(FakeSocket(kernel(lambda seq: ack(seq, errno.ENODEV)))).link_exists("x") is False
    with pytest.raises(NetlinkError):
        RouteSocket(FakeSocket(kernel(lambda seq: ack(seq, errno.EPERM)))).link_exists("x")


def test_replies_to_another_request_are_refused_and_stale_ones_skipped():
    with pytest.raises(NetlinkError) as info:
        RouteSocket(FakeSocket(kernel(lambda seq: ack(seq + 1)))).set_up("lo")
    assert info.value.errno == errno.EPROTO
    with pytest.raises(NetlinkError):
        RouteSocket(FakeSocket(kernel(lambda seq: ack(seq, pid=PORT + 1)))).set_up("lo")
    # A late ack of an earlier request (one that timed out) is skipped; the right one then counts.
    sock = FakeSocket(kernel(lambda seq: ack(seq - 1, errno.EEXIST)), kernel(lambda seq: ack(seq)))
    RouteSocket(sock).set_up("lo")
    assert sock.replies == []


def test_an_ack_whose_echoed_header_names_another_request_is_refused():
    def wrong_echo(seq):
        payload = struct.pack("=i", 0) + struct.pack("=IHHII", 32, 16, 5, seq + 5, PORT)
        return nlmsg(netlink.NLMSG_ERROR, seq, payload, netlink.NLM_F_CAPPED)
    with pytest.raises(NetlinkError) as info:
        RouteSocket(FakeSocket(kernel(wrong_echo))).set_up("lo")
    assert info.value.errno == errno.EPROTO


def test_truncated_and_foreign_datagrams():
    with pytest.raises(NetlinkError) as info:
        RouteSocket(FakeSocket(kernel(lambda seq: ack(seq), flags=socket.MSG_TRUNC))).set_up("lo")
    assert info.value.errno == errno.EMSGSIZE
    # A datagram from another process (port != 0) is not the kernel's answer: ignored.
    sock = FakeSocket(kernel(lambda seq: ack(seq, errno.EPERM), addr=(999, 0)), kernel(lambda seq: ack(seq)))
    RouteSocket(sock).set_up("lo")


def test_no_reply_is_a_timeout_error():
    with pytest.raises(NetlinkError) as info:
        RouteSocket(FakeSocket()).set_up("lo")
    assert info.value.errno == errno.ETIMEDOUT and "set link lo up" in str(info.value)


def test_a_dump_ends_at_done_and_may_span_datagrams():
    def entry(seq, last_octet):
        payload = struct.pack("=BBBBI", socket.AF_INET, 24, 0, 0, 2) + attr(2, bytes([192, 0, 2, last_octet]))
        return nlmsg(netlink.RTM_NEWADDR, seq, payload, netlink.NLM_F_MULTI)
    done = lambda seq: nlmsg(netlink.NLMSG_DONE, seq, b"\0\0\0\0", netlink.NLM_F_MULTI)  # noqa: E731
    route_done = kernel(lambda seq: nlmsg(netlink.NLMSG_DONE, seq, b"\0\0\0\0", netlink.NLM_F_MULTI))
    sock = FakeSocket(kernel(lambda seq: entry(seq, 1) + entry(seq, 2)), kernel(lambda seq: entry(seq, 3) + done(seq)),
                      route_done)
    assert RouteSocket(sock).ipv4_prefixes() == ["192.0.2.1/24", "192.0.2.2/24", "192.0.2.3/24"]
    assert struct.unpack_from("=IHHII", sock.sent[0])[2] & netlink.NLM_F_DUMP == netlink.NLM_F_DUMP


def test_a_real_socket_on_this_host_answers():
    """No root needed: reading links is allowed to anyone (loopback always exists, ENODEV otherwise)."""
    with RouteSocket() as nl:
        assert nl.ifindex("lo") >= 1
        assert nl.link_exists("runner-nonesuch") is False
