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

import asyncio
import logging
import os
import random
import socket
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path

from agent.config import AgentSettings, NetworkSettings, dhcp_client_settings
from agent.daemon.boot import Event
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
    AutoIpConfigured,
    AutoIpRemoved,
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
from profiles.procfs_io import processes

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


class AddressService:
    """The address in the daemon (Annex F), around Address: the one owner of the lease in
    force (or the link-local address), the network part of the snapshot and the `renew`
    op. Each DHCP event is applied — the lease, the resolver, the boot events — and
    published as one snapshot; the other profiles are told (`on_lease`, `on_moved`) without
    anything slow awaited here, inside the DHCP driver's callback. A lost lease withdraws
    the advertisements (`withdraw`), runs the lease-lost hooks, and only then does the
    address go (the driver waits for this)."""

    def __init__(self, address: Address, bus, resolver,
                 on_lease: Callable[[], None], on_address: Callable[[], None],
                 on_moved: Callable[[], None],
                 withdraw: Callable[[], Awaitable[None]], addressed):
        self.address = address
        self.bus = bus
        self.resolver = resolver  # the F.1.1 resolver the other profiles use
        self.on_lease = on_lease  # any lease event (the time profile)
        self.on_address = on_address  # an address to advertise (DNS-SD)
        self.on_moved = on_moved  # another address: the directory's host names
        self.withdraw = withdraw
        self.addressed = addressed  # asyncio.Event: an address (lease or link-local) is up
        self.lease: Lease | None = None
        self.auto_ip: str | None = None
        self._last_address: str | None = None
        address.on_event = self.on_dhcp

    def current(self) -> str | None:
        return self.lease.address if self.lease else self.auto_ip

    def snapshot(self) -> dict:
        lease = self.lease
        client = self.address.client
        if lease is None and client is not None and client.lease is not None \
                and self.address.state in ("bound", "renewing", "rebinding"):
            lease = client.lease  # bound this instant, being applied: say which
        network: dict = {"state": self.address.state,
                         "interface": self.address.network.interface}
        if lease is not None:
            network.update(address=lease.address, prefix=lease.prefix,
                           router=list(lease.router), dns=list(lease.dns),
                           domain=lease.domain, hostname=lease.hostname, fqdn=lease.fqdn,
                           ntp=list(lease.ntp), lease_expires_in=round(remaining(lease), 1),
                           server_id=lease.server_id)
        elif self.auto_ip:
            network.update(address=self.auto_ip, prefix=16)
        if client is not None and client.auto_ip_forbidden:
            network["auto_ip_forbidden"] = True  # a server said so (RFC 2563 2.3)
        return network

    def hook_values(self) -> dict:
        lease = self.lease
        return {"interface": self.address.network.interface, "address": self.current(),
                "prefix": lease.prefix if lease else (16 if self.auto_ip else None),
                "router": list(lease.router) if lease else [],
                "dns": list(lease.dns) if lease else [],
                "domain": lease.domain if lease else None,
                "hostname": lease.hostname if lease else self.address.network.hostname,
                "ntp": list(lease.ntp) if lease else [],
                "lease_expires_in": round(remaining(lease), 1) if lease else None}

    def ops(self) -> dict:
        return {"renew": self._op_renew}

    async def run(self) -> None:
        """The address task: the DHCP client — once no other DHCP client or network
        manager holds the interface (`other-network-manager` while one does: reported,
        not fought)."""
        interface = self.address.network.interface
        said = False
        while others := other_managers(interface):
            if not said:
                log.warning("%s is managed by %s: the agent leaves it alone until that "
                            "stops", interface, ", ".join(others))
                await self.bus.apply(Event.OTHER_NETWORK_MANAGER)
                said = True
            await asyncio.sleep(OTHERS_RECHECK)
        if said:
            log.info("%s: no other manager any more: taking the address", interface)
            await self.bus.apply(Event.OTHER_NETWORK_MANAGER_GONE)
        await self.address.run()

    async def _op_renew(self, req: dict) -> dict:
        self.address.renew()
        self.on_moved()  # and read the directory's word on this device again
        return {"v": 1, "ok": True}

    # -- supervision: the address task's backoff, and what happens while it is down ---------

    def cap(self) -> float | None:
        """The address task's backoff stays well below T1 of the lease it holds."""
        return max(1.0, self.lease.t1 / 4) if self.lease is not None else None

    async def while_down(self) -> None:
        """While the address task is down: when the lease runs out, do what the driver
        would — goodbyes, lease-lost hooks, then the address goes."""
        lease = self.lease
        if lease is None:
            return
        await asyncio.sleep(max(remaining(lease), 0.0))
        await self.lost()
        await self.address.remove_expired(lease)

    # -- DHCP events ------------------------------------------------------------------------

    async def on_dhcp(self, event: object) -> None:
        match event:
            case LeaseBound(lease) | AddressChanged(_, lease):
                # A restarted address task resumes the same lease: nothing new to tell.
                resumed = self.lease is not None and \
                    self.lease.to_record() == lease.to_record()
                # Another address than the last lease's, even with a loss in between.
                moved = self._last_address not in (None, lease.address) or \
                    isinstance(event, AddressChanged)
                self._last_address = lease.address
                self.lease, self.auto_ip = lease, None
                self.resolver.configure(*dns_of(lease))
                self.addressed.set()
                self.on_lease()
                await self.bus.apply(Event.LEASE_BOUND, *([Event.ADDRESS_CHANGED] if moved
                                                          else []))
                if not resumed:
                    self.bus.hook("lease-bound")
                if moved:
                    self.bus.hook("address-changed")
                    self.on_moved()
                self.on_address()
            case LeaseRenewed(lease):
                self.lease = lease
                self.on_lease()
                await self.bus.publish()
                self.bus.hook("lease-renewed")
            case LeaseExpiring():
                self.bus.hook("lease-expiring")
            case AddressConflict(address, mac, defended):
                # RFC 5227 2.4: defended once; a second claim is followed by LeaseLost.
                log.warning("ARP: %s claimed by %s: %s", address, mac,
                            "defended" if defended else "given up (DHCPDECLINE)")
                self.bus.hook("address-conflict", {"conflict_mac": mac,
                                                   "conflict_defended": "yes" if defended
                                                   else "no"})
            case LeaseLost():
                await self.lost()
            case AutoIpConfigured(address):
                self.auto_ip = address
                self.addressed.set()
                await self.bus.apply(Event.AUTO_IP)
                self.on_address()
            case CarrierChanged(up):
                await self.bus.apply(Event.CARRIER_UP if up else Event.CARRIER_DOWN)
            case AutoIpRemoved(address, reason):
                if self.auto_ip == address:
                    self.auto_ip = None
                if reason == "conflict":
                    await self.withdraw()
                    await self.bus.apply(Event.WITHDRAWN)

    async def lost(self) -> None:
        await self.withdraw()  # goodbyes while the address still works
        await self.bus.hook_now("lease-lost")
        self.lease = None
        self.addressed.clear()
        self.on_lease()
        await self.bus.apply(Event.LEASE_LOST)


# Another DHCP client or network manager holding the interface: the agent reports it and
# leaves the interface to it (two DHCP clients on one interface fight over the address).
DHCP_CLIENTS = ("dhclient", "dhcpcd", "udhcpc", "pump", "dhcpcd-bin")
MANAGERS = ("NetworkManager", "systemd-networkd", "connmand", "wicked")
OTHERS_RECHECK = 10.0  # s between looks while another one holds the interface


def other_managers(interface: str, proc: Path = Path("/proc"),
                   netif: Path = Path("/run/systemd/netif/links")) -> list[str]:
    """What else manages `interface` in this network namespace: a DHCP client started for
    it (or for every interface), NetworkManager, systemd-networkd managing it (its link
    state says so), connman, wicked. Names with their PID."""
    try:
        ours = os.stat(proc / "self" / "ns" / "net").st_ino
    except OSError:
        return []
    found = []
    for entry, comm in processes(proc):
        if int(entry) == os.getpid() or (comm not in DHCP_CLIENTS and comm not in MANAGERS
                                         and comm != "busybox"):
            continue
        try:
            if os.stat(f"{proc}/{entry}/ns/net").st_ino != ours:
                continue  # another namespace's (a lab's other devices)
            with open(f"{proc}/{entry}/cmdline", "rb") as fh:
                argv = fh.read().decode(errors="replace").split("\0")
        except OSError:
            continue
        if comm == "busybox":  # an applet: busybox udhcpc ...
            if len(argv) < 2 or argv[1] not in DHCP_CLIENTS:
                continue
            comm, argv = argv[1], argv[1:]
        if comm in DHCP_CLIENTS:
            named = [a for a in argv[1:] if a and not a.startswith("-")
                     and "/" not in a and a.isprintable()]
            holds = interface in argv[1:] or not named  # no interface given: all of them
        elif comm == "systemd-networkd":
            holds = _networkd_manages(interface, netif)
        else:
            holds = True
        if holds:
            found.append(f"{comm} (pid {entry})")
    return sorted(found)


def _networkd_manages(interface: str, netif: Path) -> bool:
    try:
        index = socket.if_nametoindex(interface)
        state = (netif / str(index)).read_text()
    except OSError:
        return False
    return "ADMIN_STATE=configur" in state  # configuring, configured (not unmanaged)
