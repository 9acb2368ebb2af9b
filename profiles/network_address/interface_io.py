"""Apply a lease to the interface through netlink (rtnetlink.py): address with
lifetimes, broadcast, routes, MTU; remove them when the lease is lost.

The address's valid lifetime is the lease's remaining time plus `grace` (the time lease-
lost handlers get), its preferred lifetime the remaining time: should the agent die, the
kernel still removes the address when the lease ends (dhcpcd does the same).

Each part is applied on its own and a refusal by the kernel (NetlinkError) is recorded
and reported, never raised: a lease whose MTU or
one route the kernel refuses still gives the device its address and the other routes.
An MTU above the link's maximum is not tried. A gateway outside the leased subnet gets
an on-link host route first, as systemd-networkd and dhcpcd do.

Routes. The lease's routes carry proto `dhcp` and a metric of their own (`[network]
route_metric`, 1024 by default as systemd-networkd's DHCP routes), and are added beside
what is there — never with NLM_F_REPLACE, which would take the place of another route to
the same destination at the same metric, on any interface (a second NIC's static routes).
Only routes the agent added are deleted: those of this run, and at the first lease those of
an earlier run, found in the kernel's table by proto `dhcp` on this interface.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import struct

from profiles.network_address.lease import ANY, INFINITE, Lease
from profiles.network_address.rtnetlink import (
    IFLA_ADDRESS,
    IFLA_CARRIER,
    IFLA_MAX_MTU,
    RT_SCOPE_LINK,
    RT_TABLE_MAIN,
)
from profiles.network_address.rtnetlink_io import RtNetlink

log = logging.getLogger(__name__)
RTPROT_DHCP = 16  # routes we install carry proto "dhcp", as dhcpcd's do
ROUTE_METRIC = 1024  # as systemd-networkd's DHCP routes

RouteKey = tuple[str, str | None]  # destination, gateway (None: on-link)


def route_plan(lease: Lease) -> list[tuple[str, dict]]:
    """The routes a lease asks for, in the order to install them: option 121/33 routes
    (a 0.0.0.0 router means on-link, RFC 3442), then the default route; a gateway outside
    the leased subnet gets an on-link host route before its first use."""
    network = ipaddress.IPv4Network((lease.address, lease.prefix), strict=False)
    plan: list[tuple[str, dict]] = []
    reached: set[str] = set()

    def through(gateway: str, what: str, dst: str) -> None:
        if gateway not in reached and ipaddress.IPv4Address(gateway) not in network:
            reached.add(gateway)
            plan.append((f"host route {gateway}",
                         {"dst": f"{gateway}/32", "scope": RT_SCOPE_LINK}))
        plan.append((what, {"dst": dst, "gateway": gateway}))

    for dst, via in lease.routes:
        if via == ANY:
            plan.append((f"route {dst}", {"dst": dst, "scope": RT_SCOPE_LINK}))
        else:
            through(via, f"route {dst}", dst)
    if lease.router:
        through(lease.router[0], "default route", "0.0.0.0/0")
    return plan


class Netlink:
    """The lease on one interface. Create with `await Netlink.open(interface)`."""

    def __init__(self, interface: str, ipr: RtNetlink, index: int,
                 metric: int = ROUTE_METRIC):
        self.interface = interface
        self.ipr = ipr
        self.index = index
        self.metric = metric
        self._applied: Lease | None = None
        self._routes: set[RouteKey] | None = None  # ours; None: not yet read from the kernel
        self._stale_metric: dict[RouteKey, int] = {}  # an earlier run's, at another metric

    @classmethod
    async def open(cls, interface: str, metric: int = ROUTE_METRIC) -> Netlink:
        try:
            index = socket.if_nametoindex(interface)
        except OSError:
            raise OSError(f"no interface {interface!r}") from None
        return cls(interface, RtNetlink(), index, metric)

    def close(self) -> None:
        self.ipr.close()

    async def mac(self) -> bytes:
        return (await self.ipr.link(self.index))[IFLA_ADDRESS]

    async def carrier(self) -> bool:
        return (await self.ipr.link(self.index)).get(IFLA_CARRIER) == b"\x01"

    async def bring_up(self) -> bool:
        """The link administratively up, as dhcpcd and systemd-networkd do at start: on a
        real machine nothing else does it for the agent. True when it was down."""
        if await self.ipr.is_up(self.index):
            return False
        await self.ipr.set_up(self.index)
        return True

    async def apply(self, lease: Lease, now: float, grace: float) -> list[str]:
        """Apply the lease part by part; returns what the kernel refused (e.g.
        "mtu: ...", "route 198.51.100.0/24: ..."), empty when all of it took."""
        failed: list[str] = []

        async def step(what: str, action) -> bool:
            try:
                await action
                return True
            except Exception as exc:  # NetlinkError and OSError alike: this part only
                failed.append(f"{what}: {type(exc).__name__}: {exc}"[:200])
                log.warning("%s on %s refused: %s", what, self.interface, exc)
                return False

        old = self._applied
        if old is not None and (old.address, old.prefix) != (lease.address, lease.prefix):
            await self.remove(old)
        remaining = lease.remaining(now)
        lifetimes = {}
        if lease.lease_time != INFINITE:
            lifetimes = {"valid": int(remaining + grace) + 1,
                         "preferred": max(int(remaining), 0)}
        await step("address", self.ipr.replace_address(
            self.index, lease.address, lease.prefix, broadcast=lease.broadcast, **lifetimes))
        if lease.mtu is not None:
            maximum = await self._max_mtu()
            if maximum is not None and lease.mtu > maximum:
                failed.append(f"mtu: {lease.mtu} is above the link's maximum {maximum}")
            else:
                await step("mtu", self.ipr.set_mtu(self.index, lease.mtu))
        plan = route_plan(lease)
        wanted = {(route["dst"], route.get("gateway")) for _, route in plan}
        ours = await self._ours()
        elsewhere = {key for key in ours if self._stale_metric.get(key, self.metric)
                     != self.metric}  # an earlier run's, at another metric
        await self._delete_routes((ours - wanted) | elsewhere)  # not wanted (there) now
        self._routes = ours & wanted - elsewhere
        for what, route in plan:
            if await step(what, self.ipr.add_route(index=self.index, proto=RTPROT_DHCP,
                                                   metric=self.metric, **route)):
                self._routes.add((route["dst"], route.get("gateway")))
        self._applied = lease
        log.info("applied %s/%d on %s (valid %s s)%s", lease.address, lease.prefix,
                 self.interface, lifetimes.get("valid", "forever"),
                 f"; refused: {'; '.join(failed)}" if failed else "")
        return failed

    async def _ours(self) -> set[RouteKey]:
        """The routes this agent put on the interface: known since the first lease of this
        run; before it, read from the kernel (proto dhcp, this interface, the main table:
        a restart, or a crash, left them), at whatever metric they have."""
        if self._routes is None:
            self._routes = set()
            try:
                found = await self.ipr.routes()
            except Exception as exc:  # NetlinkError, OSError: adopt nothing
                log.warning("could not list the routes of %s: %s", self.interface, exc)
                return set()
            for route in found:
                if (route.proto, route.oif, route.table) == (RTPROT_DHCP, self.index,
                                                             RT_TABLE_MAIN):
                    self._stale_metric[(route.dst, route.gateway)] = route.metric
                    self._routes.add((route.dst, route.gateway))
        return set(self._routes)

    async def _delete_routes(self, routes: set[RouteKey]) -> None:
        for dst, gateway in sorted(routes, key=str):
            metric = self._stale_metric.pop((dst, gateway), self.metric)
            try:
                await self.ipr.delete_route(dst, self.index, RTPROT_DHCP, metric, gateway)
            except Exception as exc:  # gone with an address or prefix already
                log.debug("route %s already gone: %s", dst, exc)

    async def _max_mtu(self) -> int | None:
        value = (await self.ipr.link(self.index)).get(IFLA_MAX_MTU)
        if value is None or len(value) != 4:  # an old kernel without the attribute
            return None
        return struct.unpack("=I", value)[0] or None

    async def remove(self, lease: Lease) -> None:
        """Delete the lease's routes and address (an on-link host route would outlive
        the address; the kernel drops the others with it)."""
        await self._delete_routes(await self._ours())
        self._routes = set()
        try:
            await self.ipr.delete_address(self.index, lease.address, lease.prefix)
        except Exception as exc:  # already gone: its lifetime ran out
            log.debug("address %s already gone: %s", lease.address, exc)
        if self._applied is not None and self._applied.address == lease.address:
            self._applied = None
        log.info("removed %s from %s", lease.address, self.interface)

    async def add_link_local(self, address: str) -> None:
        """RFC 3927 address: 169.254/16, scope link, no lifetime, no routes."""
        await self.ipr.replace_address(self.index, address, 16, broadcast="169.254.255.255",
                                       scope=RT_SCOPE_LINK)
        log.info("link-local %s on %s", address, self.interface)

    async def remove_link_local(self, address: str) -> None:
        try:
            await self.ipr.delete_address(self.index, address, 16)
        except Exception as exc:  # already gone
            log.debug("link-local %s already gone: %s", address, exc)
