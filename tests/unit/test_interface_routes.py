"""The lease's routes beside a multi-homed device's own (interface_io.Netlink) against a
route table that keeps the kernel's rules for IPv4 (fib_table_insert/delete): a route
is keyed by destination and metric; NLM_F_REPLACE takes the place of the first route with
that key whatever its interface, NLM_F_CREATE alone adds beside it and refuses only an
identical route (EEXIST, which RtNetlink.add_route takes as done); a delete matches
proto, interface, gateway and metric when given."""

from __future__ import annotations

import asyncio
import errno

from profiles.network_address import rtnetlink as rt
from profiles.network_address.interface_io import Netlink
from profiles.network_address.lease import Lease

ETH0, ETH1 = 2, 3
STATIC = [  # eth1, configured by the device's own network configuration
    rt.Route("0.0.0.0/0", 254, 4, 0, 1, ETH1, "10.99.0.1", 0),
    rt.Route("198.51.100.0/24", 254, 4, 0, 1, ETH1, "10.99.0.1", 0),
    rt.Route("10.99.0.0/24", 254, 2, rt.RT_SCOPE_LINK, 1, ETH1, None, 0),
]


class KernelRoutes:
    """The main table as the kernel keeps it, through RtNetlink's route methods."""

    def __init__(self, routes: list[rt.Route]):
        self.table = list(routes)
        self.requests: list[str] = []

    async def add_route(self, dst, index, proto, metric, scope=0, gateway=None):
        self.requests.append(f"add {dst} {gateway} {metric}")
        new = rt.Route(dst, 254, proto, scope, 1, index, gateway, metric)
        if any((r.dst, r.metric, r.oif, r.gateway) == (dst, metric, index, gateway)
               for r in self.table):
            return  # the kernel's EEXIST, which RtNetlink.add_route takes as done
        self.table.insert(0, new)

    async def delete_route(self, dst, index, proto, metric=None, gateway=None):
        self.requests.append(f"del {dst} {gateway} {metric}")
        for r in self.table:
            if r.dst == dst and r.proto == proto and r.oif == index \
                    and (not metric or r.metric == metric) \
                    and (gateway is None or r.gateway == gateway):
                self.table.remove(r)
                return
        raise rt.NetlinkError(errno.ESRCH, "ESRCH")

    async def routes(self):
        return list(self.table)

    async def replace_address(self, *args, **kwargs):
        pass

    async def delete_address(self, *args, **kwargs):
        pass


def lease(router="192.0.2.1", routes=(("203.0.113.0/24", "192.0.2.1"),)) -> Lease:
    return Lease(address="192.0.2.57", prefix=24, broadcast="192.0.2.255",
                 server_id="192.0.2.1", lease_time=3600, t1=1800, t2=3150, bound_at=0.0,
                 bound_wall=0.0, router=(router,), routes=tuple(routes))


def ours(kernel: KernelRoutes) -> set[tuple[str, str | None, int]]:
    return {(r.dst, r.gateway, r.metric) for r in kernel.table if r.oif == ETH0}


def test_the_lease_routes_go_beside_a_second_interfaces_and_leave_them_alone():
    kernel = KernelRoutes(STATIC)
    netlink = Netlink("eth0", kernel, ETH0)
    assert asyncio.run(netlink.apply(lease(), 0.0, 5.0)) == []
    assert ours(kernel) == {("0.0.0.0/0", "192.0.2.1", 1024),
                            ("203.0.113.0/24", "192.0.2.1", 1024)}
    assert all(r in kernel.table for r in STATIC)
    # A new lease with another router: ours replaced, theirs untouched.
    asyncio.run(netlink.apply(lease(router="192.0.2.2", routes=()), 10.0, 5.0))
    assert ours(kernel) == {("0.0.0.0/0", "192.0.2.2", 1024)}
    asyncio.run(netlink.remove(lease(router="192.0.2.2", routes=())))
    assert ours(kernel) == set() and kernel.table == STATIC


def test_a_static_route_at_the_same_metric_is_kept_beside_ours():
    theirs = rt.Route("0.0.0.0/0", 254, 4, 0, 1, ETH1, "10.99.0.1", 1024)
    kernel = KernelRoutes([theirs])
    asyncio.run(Netlink("eth0", kernel, ETH0, metric=1024).apply(lease(routes=()), 0.0, 5.0))
    assert theirs in kernel.table and ours(kernel) == {("0.0.0.0/0", "192.0.2.1", 1024)}


def test_after_a_restart_only_our_earlier_routes_are_found_and_removed():
    """An earlier run (an older version at metric 0 included) left proto-dhcp routes on
    eth0; another program's proto-dhcp route on eth1 and the static ones stay."""
    left = [rt.Route("0.0.0.0/0", 254, 16, 0, 1, ETH0, "192.0.2.9", 0),
            rt.Route("198.51.100.128/25", 254, 16, 0, 1, ETH0, "192.0.2.9", 1024),
            rt.Route("203.0.113.0/24", 254, 16, 0, 1, ETH0, "192.0.2.1", 1024)]
    someone_elses = rt.Route("0.0.0.0/0", 254, 16, 0, 1, ETH1, "10.99.0.1", 1024)
    kernel = KernelRoutes([*STATIC, *left, someone_elses])
    netlink = Netlink("eth0", kernel, ETH0)
    assert asyncio.run(netlink.apply(lease(), 0.0, 5.0)) == []
    assert ours(kernel) == {("0.0.0.0/0", "192.0.2.1", 1024),
                            ("203.0.113.0/24", "192.0.2.1", 1024)}
    assert someone_elses in kernel.table and all(r in kernel.table for r in STATIC)
    assert "del 0.0.0.0/0 192.0.2.9 0" in kernel.requests  # at the metric it had
    asyncio.run(netlink.remove(lease()))
    assert ours(kernel) == set()
