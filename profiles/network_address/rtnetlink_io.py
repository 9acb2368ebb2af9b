"""The few rtnetlink requests the agent makes (rtnetlink(7), RFC 3549), on one
NETLINK_ROUTE socket: read a link (MAC, carrier, maximum MTU), set its MTU, add or
replace and delete an IPv4 address with lifetimes, replace and delete a route.

Written here rather than taken from pyroute2 (issue 18): importing pyroute2 0.9 costs
~130 ms of CPU and ~210 modules at every start — a third of the boot budget on an
embedded CPU — for requests that are a header, a fixed struct and a few attributes each.
Every request asks for an acknowledgement; a refusal is a NetlinkError (an OSError with
the kernel's errno), raised to the caller, which records it per part.
"""

from __future__ import annotations

import asyncio
import errno
import socket
import struct

NETLINK_ROUTE = 0
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_ACK = 0x1, 0x4
NLM_F_REPLACE, NLM_F_CREATE = 0x100, 0x400
RTM_NEWLINK, RTM_GETLINK, RTM_SETLINK = 16, 18, 19
RTM_NEWADDR, RTM_DELADDR = 20, 21
RTM_NEWROUTE, RTM_DELROUTE = 24, 25
IFLA_ADDRESS, IFLA_MTU, IFLA_CARRIER, IFLA_MAX_MTU = 1, 4, 33, 51
IFA_ADDRESS, IFA_LOCAL, IFA_BROADCAST, IFA_CACHEINFO = 1, 2, 4, 6
RTA_DST, RTA_OIF, RTA_GATEWAY = 1, 4, 5
RT_TABLE_MAIN, RT_SCOPE_UNIVERSE, RT_SCOPE_NOWHERE, RTN_UNICAST = 254, 0, 255, 1
INFINITY_LIFE_TIME = 0xFFFFFFFF

HEADER = struct.Struct("=IHHII")  # nlmsghdr: length, type, flags, sequence, port
IFINFOMSG = struct.Struct("=BxHiII")  # family, type, index, flags, change
IFADDRMSG = struct.Struct("=BBBBI")  # family, prefix length, flags, scope, index
RTMSG = struct.Struct("=BBBBBBBBI")  # family, dst/src len, tos, table, proto, scope, type, flags
CACHEINFO = struct.Struct("=IIII")  # preferred, valid, created, updated


class NetlinkError(OSError):
    """The kernel refused a request (errno and strerror as the kernel said)."""


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


def _ipv4(address: str) -> bytes:
    return socket.inet_aton(address)


class RtNetlink:
    """One non-blocking NETLINK_ROUTE socket; one request at a time."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK
                                  | socket.SOCK_CLOEXEC, NETLINK_ROUTE)
        self.sock.bind((0, 0))
        self.seq = 0
        self._lock = asyncio.Lock()

    def close(self) -> None:
        self.sock.close()

    async def request(self, kind: int, flags: int, body: bytes) -> list[tuple[int, bytes]]:
        """Send one request, acknowledged: the messages answered before the
        acknowledgement (type, body). NetlinkError when the kernel refuses."""
        async with self._lock:
            self.seq += 1
            seq = self.seq
            self.sock.send(HEADER.pack(HEADER.size + len(body), kind,
                                       flags | NLM_F_REQUEST | NLM_F_ACK, seq, 0) + body)
            loop = asyncio.get_running_loop()
            answers: list[tuple[int, bytes]] = []
            while True:
                data = await asyncio.wait_for(loop.sock_recv(self.sock, 65536), 5)
                offset = 0
                while offset + HEADER.size <= len(data):
                    length, mtype, _, mseq, _ = HEADER.unpack_from(data, offset)
                    if length < HEADER.size:
                        break
                    payload = data[offset + HEADER.size:offset + length]
                    offset += (length + 3) & ~3
                    if mseq != seq:
                        continue  # an answer to an earlier request that timed out
                    if mtype == NLMSG_ERROR:
                        code = -struct.unpack_from("=i", payload)[0]
                        if code:
                            raise NetlinkError(code, errno.errorcode.get(code, str(code)))
                        return answers
                    if mtype == NLMSG_DONE:
                        return answers
                    answers.append((mtype, payload))

    # -- links -------------------------------------------------------------------------------

    async def link(self, index: int) -> dict[int, bytes]:
        """The link's attributes (IFLA_*), by type."""
        answers = await self.request(RTM_GETLINK, 0,
                                     IFINFOMSG.pack(socket.AF_UNSPEC, 0, index, 0, 0))
        for mtype, payload in answers:
            if mtype == RTM_NEWLINK:
                return attributes(payload[IFINFOMSG.size:])
        raise NetlinkError(errno.ENODEV, f"no link {index}")

    async def set_mtu(self, index: int, mtu: int) -> None:
        await self.request(RTM_SETLINK, 0, IFINFOMSG.pack(socket.AF_UNSPEC, 0, index, 0, 0)
                           + attribute(IFLA_MTU, struct.pack("=I", mtu)))

    # -- addresses ---------------------------------------------------------------------------

    async def replace_address(self, index: int, address: str, prefix: int,
                              broadcast: str | None = None, scope: int = RT_SCOPE_UNIVERSE,
                              valid: int | None = None, preferred: int | None = None) -> None:
        """Add the address, or update it (lifetimes) if the interface has it."""
        body = IFADDRMSG.pack(socket.AF_INET, prefix, 0, scope, index)
        body += attribute(IFA_LOCAL, _ipv4(address)) + attribute(IFA_ADDRESS, _ipv4(address))
        if broadcast:
            body += attribute(IFA_BROADCAST, _ipv4(broadcast))
        if valid is not None:
            body += attribute(IFA_CACHEINFO, CACHEINFO.pack(
                INFINITY_LIFE_TIME if preferred is None else preferred, valid, 0, 0))
        await self.request(RTM_NEWADDR, NLM_F_CREATE | NLM_F_REPLACE, body)

    async def delete_address(self, index: int, address: str, prefix: int) -> None:
        await self.request(RTM_DELADDR, 0, IFADDRMSG.pack(socket.AF_INET, prefix, 0, 0, index)
                           + attribute(IFA_LOCAL, _ipv4(address))
                           + attribute(IFA_ADDRESS, _ipv4(address)))

    # -- routes ------------------------------------------------------------------------------

    @staticmethod
    def _route(dst: str, index: int, proto: int, scope: int, kind: int,
               gateway: str | None) -> bytes:
        network, _, length = dst.partition("/")
        prefix = int(length or 32)
        body = RTMSG.pack(socket.AF_INET, prefix, 0, 0, RT_TABLE_MAIN, proto, scope, kind, 0)
        if prefix:
            body += attribute(RTA_DST, _ipv4(network))
        body += attribute(RTA_OIF, struct.pack("=I", index))
        if gateway:
            body += attribute(RTA_GATEWAY, _ipv4(gateway))
        return body

    async def replace_route(self, dst: str, index: int, proto: int,
                            scope: int = RT_SCOPE_UNIVERSE, gateway: str | None = None) -> None:
        await self.request(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_REPLACE,
                           self._route(dst, index, proto, scope, RTN_UNICAST, gateway))

    async def delete_route(self, dst: str, index: int, proto: int) -> None:
        """The route to `dst` through `index` that `proto` installed, in any scope."""
        await self.request(RTM_DELROUTE, 0,
                           self._route(dst, index, proto, RT_SCOPE_NOWHERE, 0, None))
