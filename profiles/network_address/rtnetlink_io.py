"""One NETLINK_ROUTE socket carrying rtnetlink.py's requests, one at a time, each
acknowledged: a refusal is a NetlinkError (an OSError with the kernel's errno and its
extended-ack text), raised to the caller, which records it per part."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket

from profiles.network_address import rtnetlink as rt
from profiles.network_address.rtnetlink import NetlinkError, Route

__all__ = ["NetlinkError", "Route", "RtNetlink"]


class RtNetlink:
    """One non-blocking NETLINK_ROUTE socket; one request at a time."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK
                                  | socket.SOCK_CLOEXEC, rt.NETLINK_ROUTE)
        with contextlib.suppress(OSError):  # before Linux 4.12: refusals without text
            self.sock.setsockopt(rt.SOL_NETLINK, rt.NETLINK_EXT_ACK, 1)
        self.sock.bind((0, 0))
        self.seq = 0
        self.stale = 0  # answers to requests that had timed out
        self._lock = asyncio.Lock()

    def close(self) -> None:
        self.sock.close()

    async def request(self, kind: int, flags: int, body: bytes) -> list[rt.Message]:
        """Send one request, acknowledged: the messages answered before the
        acknowledgement (or the end of a dump). NetlinkError when the kernel refuses."""
        async with self._lock:
            self.seq += 1
            exchange = rt.Exchange(self.seq)
            self.sock.send(rt.message(kind, flags | rt.NLM_F_ACK, self.seq, body))
            loop = asyncio.get_running_loop()
            try:
                while not exchange.feed(
                        await asyncio.wait_for(loop.sock_recv(self.sock, 65536), 5)):
                    pass
            finally:
                self.stale += exchange.stale
            return exchange.answers

    # -- links -------------------------------------------------------------------------------

    async def link(self, index: int) -> dict[int, bytes]:
        """The link's attributes (IFLA_*), by type."""
        for msg in await self.request(rt.RTM_GETLINK, 0, rt.link_body(index)):
            if msg.kind == rt.RTM_NEWLINK:
                return rt.attributes(msg.body[rt.IFINFOMSG.size:])
        raise NetlinkError(errno.ENODEV, f"no link {index}")

    async def is_up(self, index: int) -> bool:
        """Whether the link is administratively up (IFF_UP)."""
        for msg in await self.request(rt.RTM_GETLINK, 0, rt.link_body(index)):
            if msg.kind == rt.RTM_NEWLINK:
                return bool(rt.link_flags(msg.body) & rt.IFF_UP)
        raise NetlinkError(errno.ENODEV, f"no link {index}")

    async def set_up(self, index: int) -> None:
        await self.request(rt.RTM_SETLINK, 0, rt.up_body(index))

    async def set_mtu(self, index: int, mtu: int) -> None:
        await self.request(rt.RTM_SETLINK, 0, rt.mtu_body(index, mtu))

    # -- addresses ---------------------------------------------------------------------------

    async def replace_address(self, index: int, address: str, prefix: int,
                              broadcast: str | None = None, scope: int = rt.RT_SCOPE_UNIVERSE,
                              valid: int | None = None, preferred: int | None = None) -> None:
        """Add the address, or update it (lifetimes) if the interface has it."""
        await self.request(rt.RTM_NEWADDR, rt.NLM_F_CREATE | rt.NLM_F_REPLACE,
                           rt.address_body(index, address, prefix, broadcast, scope,
                                           valid, preferred))

    async def delete_address(self, index: int, address: str, prefix: int) -> None:
        await self.request(rt.RTM_DELADDR, 0, rt.address_body(index, address, prefix, scope=0))

    # -- routes ------------------------------------------------------------------------------

    async def add_route(self, dst: str, index: int, proto: int, metric: int,
                        scope: int = rt.RT_SCOPE_UNIVERSE, gateway: str | None = None) -> None:
        """Add a route beside whatever is there — never in place of another's route (no
        NLM_F_REPLACE). The same route already present (ours, from before a restart) is
        not an error."""
        try:
            await self.request(rt.RTM_NEWROUTE, rt.NLM_F_CREATE,
                               rt.route_body(dst, index, proto, scope, rt.RTN_UNICAST,
                                             gateway, metric))
        except NetlinkError as exc:
            if exc.errno != errno.EEXIST:
                raise

    async def delete_route(self, dst: str, index: int, proto: int, metric: int | None = None,
                           gateway: str | None = None) -> None:
        """The route to `dst` through `index` that `proto` installed (at `metric`, via
        `gateway` when given), in any scope."""
        await self.request(rt.RTM_DELROUTE, 0, rt.route_body(
            dst, index, proto, rt.RT_SCOPE_NOWHERE, 0, gateway, metric))

    async def routes(self) -> list[Route]:
        """The kernel's IPv4 routes (all tables)."""
        answers = await self.request(rt.RTM_GETROUTE, rt.NLM_F_DUMP, rt.route_dump_body())
        parsed = (rt.parse_route(m.body) for m in answers if m.kind == rt.RTM_NEWROUTE)
        return [r for r in parsed if r is not None]
