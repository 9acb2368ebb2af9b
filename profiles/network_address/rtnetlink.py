"""rtnetlink messages (rtnetlink(7), RFC 3549), built and read with no socket: the few
requests the agent makes — read a link, set its MTU, add or delete an IPv4 address with
lifetimes, add, delete and list routes — and the kernel's answers: acknowledgements,
refusals (with the NETLINK_EXT_ACK text when the kernel gives one), multipart dumps.
rtnetlink_io.py sends and receives them on one NETLINK_ROUTE socket.

Written here rather than taken from pyroute2, whose import costs ~160 ms of CPU, ~220
modules and ~12 MiB at every start, for requests that are a header, a fixed struct and a
few attributes each; pyroute2 is this module's oracle in the tests (each side decodes the
other's messages to the same fields).

A message from the kernel is read defensively: a truncated header or attribute ends the
reading, it never raises anything but NetlinkError for a refusal.
"""

from __future__ import annotations

import errno
import socket
import struct
from dataclasses import dataclass

NETLINK_ROUTE = 0
SOL_NETLINK, NETLINK_EXT_ACK = 270, 11  # setsockopt: refusals carry the kernel's text
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_MULTI, NLM_F_ACK = 0x1, 0x2, 0x4
NLM_F_DUMP = 0x300  # NLM_F_ROOT | NLM_F_MATCH
NLM_F_REPLACE, NLM_F_EXCL, NLM_F_CREATE = 0x100, 0x200, 0x400
NLM_F_CAPPED, NLM_F_ACK_TLVS = 0x100, 0x200  # in an NLMSG_ERROR's own flags
NLMSGERR_ATTR_MSG = 1
RTM_NEWLINK, RTM_GETLINK, RTM_SETLINK = 16, 18, 19
RTM_NEWADDR, RTM_DELADDR = 20, 21
RTM_NEWROUTE, RTM_DELROUTE, RTM_GETROUTE = 24, 25, 26
IFLA_ADDRESS, IFLA_MTU, IFLA_CARRIER, IFLA_MAX_MTU = 1, 4, 33, 51
IFA_ADDRESS, IFA_LOCAL, IFA_BROADCAST, IFA_CACHEINFO = 1, 2, 4, 6
RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_PRIORITY, RTA_TABLE = 1, 4, 5, 6, 15
RT_TABLE_MAIN, RT_SCOPE_UNIVERSE, RT_SCOPE_LINK, RT_SCOPE_NOWHERE = 254, 0, 253, 255
RTN_UNICAST = 1
INFINITY_LIFE_TIME = 0xFFFFFFFF

HEADER = struct.Struct("=IHHII")  # nlmsghdr: length, type, flags, sequence, port
IFINFOMSG = struct.Struct("=BxHiII")  # family, type, index, flags, change
IFADDRMSG = struct.Struct("=BBBBI")  # family, prefix length, flags, scope, index
RTMSG = struct.Struct("=BBBBBBBBI")  # family, dst/src len, tos, table, proto, scope, type, flags
CACHEINFO = struct.Struct("=IIII")  # preferred, valid, created, updated
U32 = struct.Struct("=I")


class NetlinkError(OSError):
    """The kernel refused a request (errno, and its extended-ack text or strerror)."""


# -- framing --------------------------------------------------------------------------------

def attribute(kind: int, value: bytes) -> bytes:
    """One rtattr: length, type, value, padded to 4 bytes."""
    length = 4 + len(value)
    return struct.pack("=HH", length, kind) + value + b"\0" * (-length % 4)


def attributes(data: bytes) -> dict[int, bytes]:
    """The rtattrs of a message body, by type (a malformed tail is ignored)."""
    out: dict[int, bytes] = {}
    offset = 0
    while offset + 4 <= len(data):
        length, kind = struct.unpack_from("=HH", data, offset)
        if length < 4 or offset + length > len(data):
            break
        out[kind & 0x3FFF] = data[offset + 4:offset + length]  # without NLA_F_* bits
        offset += (length + 3) & ~3
    return out


def message(kind: int, flags: int, seq: int, body: bytes) -> bytes:
    """A request: header and body; the kernel fills in the port."""
    return HEADER.pack(HEADER.size + len(body), kind, flags | NLM_F_REQUEST, seq, 0) + body


@dataclass(frozen=True, slots=True)
class Message:
    """One netlink message as read: its header's type, flags and sequence; its body."""

    kind: int
    flags: int
    seq: int
    body: bytes


def split(data: bytes) -> list[Message]:
    """The messages of one datagram (a truncated one ends the list)."""
    out = []
    offset = 0
    while offset + HEADER.size <= len(data):
        length, kind, flags, seq, _ = HEADER.unpack_from(data, offset)
        if length < HEADER.size or offset + length > len(data):
            break
        out.append(Message(kind, flags, seq, data[offset + HEADER.size:offset + length]))
        offset += (length + 3) & ~3
    return out


def refusal(msg: Message) -> NetlinkError | None:
    """An NLMSG_ERROR's verdict: None for an acknowledgement, else the error, with the
    kernel's extended-ack text (NLMSGERR_ATTR_MSG) when it sent one."""
    if len(msg.body) < 4:
        return NetlinkError(errno.EPROTO, "truncated netlink error message")
    code = -struct.unpack_from("=i", msg.body)[0]
    if code == 0:
        return None
    text = errno.errorcode.get(code, str(code))
    if msg.flags & NLM_F_ACK_TLVS and len(msg.body) >= 4 + HEADER.size:
        quoted = HEADER.size if msg.flags & NLM_F_CAPPED else \
            HEADER.unpack_from(msg.body, 4)[0]  # the whole request was echoed
        tlvs = attributes(msg.body[4 + ((quoted + 3) & ~3):])
        said = tlvs.get(NLMSGERR_ATTR_MSG, b"").split(b"\0")[0]
        if said:
            text = f"{text}: {said.decode('ascii', 'replace')}"
    return NetlinkError(code, text)


class Exchange:
    """The answers to one request (by its sequence number), fed datagram by datagram:
    `feed` says whether the exchange is over, raises NetlinkError on a refusal. Answers
    to an earlier request that timed out are skipped and counted."""

    def __init__(self, seq: int):
        self.seq = seq
        self.answers: list[Message] = []
        self.stale = 0

    def feed(self, data: bytes) -> bool:
        for msg in split(data):
            if msg.seq != self.seq:
                self.stale += 1
                continue
            if msg.kind == NLMSG_ERROR:
                error = refusal(msg)
                if error is not None:
                    raise error
                return True
            if msg.kind == NLMSG_DONE:
                return True
            self.answers.append(msg)
        return False


# -- requests -------------------------------------------------------------------------------

def _ipv4(address: str) -> bytes:
    return socket.inet_aton(address)


def link_body(index: int) -> bytes:
    return IFINFOMSG.pack(socket.AF_UNSPEC, 0, index, 0, 0)


IFF_UP = 0x1


def up_body(index: int) -> bytes:
    """RTM_SETLINK: the link administratively up (IFF_UP set, the other flags untouched)."""
    return IFINFOMSG.pack(socket.AF_UNSPEC, 0, index, IFF_UP, IFF_UP)


def link_flags(body: bytes) -> int:
    """An RTM_NEWLINK message's ifi_flags."""
    return IFINFOMSG.unpack_from(body)[3]


def mtu_body(index: int, mtu: int) -> bytes:
    return link_body(index) + attribute(IFLA_MTU, U32.pack(mtu))


def address_body(index: int, address: str, prefix: int, broadcast: str | None = None,
                 scope: int = RT_SCOPE_UNIVERSE, valid: int | None = None,
                 preferred: int | None = None) -> bytes:
    """RTM_NEWADDR/RTM_DELADDR: the address, its broadcast, its lifetimes (none: forever)."""
    body = IFADDRMSG.pack(socket.AF_INET, prefix, 0, scope, index)
    body += attribute(IFA_LOCAL, _ipv4(address)) + attribute(IFA_ADDRESS, _ipv4(address))
    if broadcast:
        body += attribute(IFA_BROADCAST, _ipv4(broadcast))
    if valid is not None:
        body += attribute(IFA_CACHEINFO, CACHEINFO.pack(
            INFINITY_LIFE_TIME if preferred is None else preferred, valid, 0, 0))
    return body


def route_body(dst: str, index: int, proto: int, scope: int = RT_SCOPE_UNIVERSE,
               kind: int = RTN_UNICAST, gateway: str | None = None,
               metric: int | None = None) -> bytes:
    """RTM_NEWROUTE/RTM_DELROUTE in the main table. For a delete, `kind` 0 and scope
    NOWHERE match any; proto, interface, gateway and metric narrow it to our route."""
    network, _, length = dst.partition("/")
    prefix = int(length or 32)
    body = RTMSG.pack(socket.AF_INET, prefix, 0, 0, RT_TABLE_MAIN, proto, scope, kind, 0)
    if prefix:
        body += attribute(RTA_DST, _ipv4(network))
    body += attribute(RTA_OIF, U32.pack(index))
    if gateway:
        body += attribute(RTA_GATEWAY, _ipv4(gateway))
    if metric is not None:
        body += attribute(RTA_PRIORITY, U32.pack(metric))
    return body


def route_dump_body() -> bytes:
    return RTMSG.pack(socket.AF_INET, 0, 0, 0, 0, 0, 0, 0, 0)


# -- answers --------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Route:
    """An IPv4 route as the kernel lists it."""

    dst: str  # "a.b.c.d/len"
    table: int
    proto: int
    scope: int
    kind: int
    oif: int | None
    gateway: str | None
    metric: int


def parse_route(body: bytes) -> Route | None:
    """An RTM_NEWROUTE body; None when it is not IPv4 or too short."""
    if len(body) < RTMSG.size:
        return None
    family, dst_len, _, _, table, proto, scope, kind, _ = RTMSG.unpack_from(body)
    if family != socket.AF_INET:
        return None
    attrs = attributes(body[RTMSG.size:])

    def u32(key: int) -> int | None:
        value = attrs.get(key)
        return U32.unpack(value)[0] if value is not None and len(value) == 4 else None

    def ipv4(key: int) -> str | None:
        value = attrs.get(key)
        return socket.inet_ntoa(value) if value is not None and len(value) == 4 else None

    return Route(dst=f"{ipv4(RTA_DST) or '0.0.0.0'}/{dst_len}",
                 table=u32(RTA_TABLE) or table, proto=proto, scope=scope, kind=kind,
                 oif=u32(RTA_OIF), gateway=ipv4(RTA_GATEWAY), metric=u32(RTA_PRIORITY) or 0)
