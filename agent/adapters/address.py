"""The Network Address Management profile (PS3.15 Annex F) as the daemon and `dicom-agent
dhcp` both run it: one adapter, so the two cannot disagree.

It builds the DHCP core's settings from `[network]` (and the preset UTC offset of
`[time]` when a configuration is given: Table F.1-2's default for option 2), the client
id (configured, else persisted, else generated), the driver (netlink, sockets, saved
lease), and runs it; lease events go to the caller's handler. It also knows what the
F.1.1 resolver of a lease is, and how to take an expired lease's address away while the
driver is not running (the supervisor calls it between restarts).
"""

from __future__ import annotations

import logging
import os
import random
from collections import Counter
from collections.abc import Awaitable, Callable

from agent.config import AgentSettings, NetworkSettings, dhcp_client_settings
from agent.daemon.hooks import hooks_in
from profiles import statefile_io
from profiles.network_address.dhcp_client import (
    AddressChanged,
    AddressConflict,
    AddressDeclined,
    DhcpClient,
    LeaseBound,
    LeaseExpiring,
    LeaseLost,
    LeaseRenewed,
    generate_client_id,
)
from profiles.network_address.dhcp_io import (
    CarrierChanged,
    DhcpDriver,
    Paths,
    boottime,
    lease_search,
    load_or_make_client_id,
    load_saved_lease,
)
from profiles.network_address.interface_io import Netlink
from profiles.network_address.lease import Lease
from profiles.network_address.resolvconf_io import DnsApplier

log = logging.getLogger(__name__)
EVENT_NAMES = {LeaseBound: "lease-bound", LeaseRenewed: "lease-renewed",
               LeaseExpiring: "lease-expiring", LeaseLost: "lease-lost",
               AddressChanged: "address-changed", AddressDeclined: "address-declined",
               AddressConflict: "address-conflict"}


def dns_of(lease: Lease | None) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The F.1.1 resolver's servers and search list from a lease (option 6; option 119,
    else option 15)."""
    if lease is None:
        return (), ()
    return tuple(lease.dns), tuple(lease_search(lease))


def grace_for(agent: AgentSettings) -> float:
    """How long lease-lost handlers may hold the address: every hook's time, plus a
    margin for a hook already running when the lease goes."""
    hooks = len(hooks_in(agent.hooks_dir))
    return 2 * agent.hook_timeout * max(hooks, 1) + 2.0


class Address:
    """One DHCP client on one interface. `run()` is the task body (restartable: a new
    run resumes from the saved lease, BOUND in the same boot or INIT-REBOOT)."""

    def __init__(self, network: NetworkSettings, agent: AgentSettings,
                 preset_offset: int | None, on_event: Callable[[object], Awaitable[None]],
                 grace: float, release_on_stop: bool, rng: random.Random | None = None):
        self.network = network
        self.agent = agent
        self.preset_offset = preset_offset
        self.on_event = on_event
        self.grace = grace
        self.release_on_stop = release_on_stop
        self.rng = rng or random.Random(os.urandom(16))
        self.paths = Paths(agent.state_dir, agent.runtime_dir, network.interface)
        # F.1.3.4: the lease's DNS applied to the device's resolver, as [network] resolver
        # says; one applier for the life of the process (it remembers what it replaced).
        self.dns = DnsApplier(network.resolver, network.interface, self.paths.resolv_conf)
        self.client: DhcpClient | None = None
        self.driver: DhcpDriver | None = None
        self._counters: Counter[str] = Counter()  # of earlier runs
        self._validation: Counter[str] = Counter()

    def client_id(self) -> bytes:
        """The RFC 4361 client identifier this device uses: the configured one, else the
        one persisted in the state directory (made and saved the first time). A site's
        Kea reservation by client id needs it before the device first boots
        (`dicom-agent dhcp --print-client-id`)."""
        n = self.network
        return n.client_id or load_or_make_client_id(
            self.paths, lambda uuid: generate_client_id(n.interface, self.rng, uuid))

    @property
    def state(self) -> str:
        return self.client.state.value if self.client else "init"

    def counters(self) -> dict[str, int]:
        """What the DHCP core and driver ignored (malformed, wrong xid, floods...)."""
        out = Counter(self._counters)
        if self.client is not None:
            out.update(self.client.counters)
        if self.driver is not None:
            out["dropped"] += self.driver.dropped
            out["arp-watched"] += self.driver.arp_watched
        return dict(out)

    def validation(self) -> dict[str, int]:
        """Values refused at the boundary (`dhcp-option-N`) and parts of a lease the
        kernel or the disk refused (`apply-mtu`, `apply-route`, `save-lease`...)."""
        out = Counter(self._validation)
        if self.client is not None:
            out.update(self.client.validation)
        if self.driver is not None:
            out.update(self.driver.apply_failures)
        return dict(out)

    async def run(self) -> None:
        n = self.network
        if self.client is not None:  # a restart: keep what the last run counted
            self._counters, self._validation = Counter(self.counters()), Counter(
                self.validation())
            self.client = self.driver = None
        netlink = await Netlink.open(n.interface, n.route_metric)
        try:
            client_id = self.client_id()
            self.client = DhcpClient(dhcp_client_settings(
                n, await netlink.mac(), client_id, self.preset_offset), self.rng)
            self.driver = DhcpDriver(self.client, self.paths, netlink, self.on_event,
                                     self.grace, self.rng,
                                     release_on_stop=self.release_on_stop, dns=self.dns)
            await self.on_event(CarrierChanged(self.driver.carrier()))
            saved, same_boot = load_saved_lease(self.paths)
            await self.driver.run(saved=saved, same_boot=same_boot)
        finally:
            netlink.close()

    def renew(self) -> None:
        if self.driver is not None:
            self.driver.renew()

    def stop(self) -> None:
        if self.driver is not None:
            self.driver.stop()

    async def remove_expired(self, lease: Lease) -> None:
        """The driver is down and `lease` has run out: take its address away, forget the
        lease (what the driver does on expiry, for when it cannot)."""
        netlink = await Netlink.open(self.network.interface,
                                     self.network.route_metric)
        try:
            await netlink.remove(lease)
        finally:
            netlink.close()
        self.dns.withdraw()
        statefile_io.remove(self.paths.lease_file)
        log.warning("lease for %s expired while the address task was down: removed",
                    lease.address)


def remaining(lease: Lease) -> float:
    return lease.remaining(boottime())
