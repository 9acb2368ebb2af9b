"""The driver's event handling: order of apply/save/handlers, and the lease-lost grace."""

from __future__ import annotations

import asyncio
import json
import random
import time

from fake_dhcp_server import FakeServer
from test_dhcp_client import acquire, client

from profiles.network_address.dhcp_client import LeaseBound, LeaseLost
from profiles.network_address.dhcp_io import DhcpDriver, Paths, load_saved_lease


class FakeNetlink:
    def __init__(self, log: list, refuse: list[str] | None = None):
        self.log = log
        self.refuse = refuse or []

    async def apply(self, lease, now, grace):
        saved, _ = load_saved_lease(Paths(self.log_dir, self.log_dir, "eth0"))
        self.log.append(("apply", lease.address, grace, saved == lease))
        return list(self.refuse)

    async def remove(self, lease):
        self.log.append(("remove", lease.address))


def driver(tmp_path, log: list, handler, refuse: list[str] | None = None) -> DhcpDriver:
    paths = Paths(tmp_path / "state", tmp_path / "run", "eth0")
    netlink = FakeNetlink(log, refuse)
    netlink.log_dir = paths.state_dir
    return DhcpDriver(client(), paths, netlink, handler, grace=0.3, rng=random.Random(1))


def test_a_refused_part_is_counted_and_the_lease_still_reaches_the_handlers(tmp_path):
    log: list = []
    lease = acquire(client(), FakeServer())

    async def handler(event):
        log.append(("handler", type(event).__name__))

    d = driver(tmp_path, log, handler, refuse=["mtu: 9000 is above the link's maximum 1500",
                                               "route 198.51.100.0/24: NetlinkError: x"])
    asyncio.run(d._handle(LeaseBound(lease)))
    assert log[-1] == ("handler", "LeaseBound")
    assert d.apply_failures == {"apply-mtu": 1, "apply-route": 1}


def test_a_refused_address_is_a_fault_not_a_bound_lease(tmp_path):
    import pytest

    from profiles.network_address.dhcp_io import AddressRefused

    log: list = []
    lease = acquire(client(), FakeServer())

    async def handler(event):
        log.append(("handler", type(event).__name__))

    d = driver(tmp_path, log, handler, refuse=["address: NetlinkError: (1, 'Operation "
                                               "not permitted')"])
    with pytest.raises(AddressRefused, match="Operation not permitted"):
        asyncio.run(d._handle(LeaseBound(lease)))
    assert ("handler", "LeaseBound") not in log  # nobody hears of a lease not applied


def test_bound_lease_is_saved_then_applied_then_written_before_handlers_see_it(tmp_path):
    log: list = []
    lease = acquire(client(), FakeServer())

    async def handler(event):
        saved, same_boot = load_saved_lease(d.paths)
        log.append(("handler", type(event).__name__, saved == lease, same_boot))

    d = driver(tmp_path, log, handler)
    asyncio.run(d._handle(LeaseBound(lease)))
    # saved before it is applied: a restart re-applying it meets what was validated
    assert log == [("apply", lease.address, 0.3, True),
                   ("handler", "LeaseBound", True, True)]
    resolv = (tmp_path / "run" / "resolv.conf").read_text()
    assert "nameserver 192.0.2.1" in resolv and "search hospital.test" in resolv
    record = json.loads((tmp_path / "state" / "lease-eth0.json").read_text())
    assert record["boot_id"] and record["saved_wall"] <= time.time()


def test_lost_lease_handlers_run_before_the_address_goes(tmp_path):
    log: list = []
    lease = acquire(client(), FakeServer())

    async def handler(event):
        await asyncio.sleep(0.05)  # an AP-Abort takes a moment
        log.append(("handler", type(event).__name__))

    d = driver(tmp_path, log, handler)
    asyncio.run(d._handle(LeaseBound(lease)))
    asyncio.run(d._handle(LeaseLost(lease, "expired")))
    assert log[-2:] == [("handler", "LeaseLost"), ("remove", lease.address)]
    assert not (tmp_path / "state" / "lease-eth0.json").exists()
    assert "nameserver" not in (tmp_path / "run" / "resolv.conf").read_text()


def test_a_hanging_lost_lease_handler_is_cut_off_at_the_grace(tmp_path):
    log: list = []
    lease = acquire(client(), FakeServer())

    async def handler(event):
        if isinstance(event, LeaseLost):
            await asyncio.sleep(30)

    d = driver(tmp_path, log, handler)
    t0 = time.monotonic()
    asyncio.run(d._handle(LeaseLost(lease, "expired")))
    assert time.monotonic() - t0 < 20  # cut off, not the handler's 30 s
    assert log == [("remove", lease.address)]


def test_damaged_lease_file_is_set_aside(tmp_path):
    paths = Paths(tmp_path, tmp_path, "eth0")
    paths.lease_file.write_text("{not json")
    assert load_saved_lease(paths) == (None, False)
    assert (tmp_path / "lease-eth0.json.damaged").exists()
    paths.lease_file.write_text(json.dumps({"boot_id": "x", "lease": {"address": "1"}}))
    assert load_saved_lease(paths) == (None, False)
