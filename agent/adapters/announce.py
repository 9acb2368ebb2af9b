"""The DNS-SD profile (PS3.15 H.2) for the daemon: which titles the device has, what it
advertises with them, and the advertiser that does it.

Titles pair with the configured AEs: a fixed `title`, else the title this device owns
from the directory (directory.json), else none — a templated AE with no directory to
reserve its title (disabled, down, awaiting an administrator) has no title, is not
advertised, and the boot says so (`no-title`) instead of waiting for ever.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

from agent.adapters.address import remaining
from agent.daemon.boot import Event
from profiles.app_config import dnssd_io
from profiles.app_config.model import Device
from profiles.network_address.dhcp_io import lease_search
from profiles.network_address.lease import Lease

log = logging.getLogger(__name__)

# zeroconf is imported by the daemon's warm-up (agent.daemon.router.warm_up), in a thread
# while the address is being acquired, not before the first DHCPDISCOVER.


def titles_for(device: Device, owned: list[str], keys: dict[str, str] | None = None
               ) -> list[str | None]:
    """One title per configured AE, None where none is known yet: the title the last
    registration recorded for the AE's key (a template's reservation, or an
    administrator's rename), else its fixed title. A record from before keys were kept
    pairs owned titles with templated AEs by position, once."""
    out: list[str | None] = []
    for i, ae in enumerate(device.aes):
        title = (keys or {}).get(ae.identity)
        if isinstance(title, str):
            out.append(title)
        elif ae.title is not None:
            out.append(ae.title)
        elif not keys and i < len(owned) and isinstance(owned[i], str):
            out.append(owned[i])
        else:
            out.append(None)
    return out


class Announcer:
    """The device's advertisements: announce(titles, address), withdraw(), lookup() — over
    mDNS, and with `[dnssd] unicast` in the site DNS too (RFC 2136 with TSIG)."""

    def __init__(self, device: Device, hostname: str, dnssd=None, state_dir: Path | None = None):
        self.device = device
        self.advertiser = dnssd_io.Advertiser(hostname)
        self.announced: list[dnssd_io.Service] = []
        self.dnssd = dnssd  # [dnssd] settings (the daemon's), None: mDNS only
        self.state_dir = state_dir
        self.unicast = None  # unicast_dnssd_io.UnicastAdvertiser, once registered

    def services(self, titles: list[str | None]) -> list[dnssd_io.Service]:
        return dnssd_io.services(self.device, titles)

    async def announce(self, titles: list[str | None], address: str) -> None:
        wanted = self.services(titles)
        await self.advertiser.announce(wanted, address)
        self.announced = wanted
        await self.advertiser.browse()

    async def withdraw(self) -> None:
        """Goodbyes over mDNS and the site DNS, best effort: the address goes anyway."""
        self.announced = []
        try:
            await self.advertiser.withdraw()
        except Exception as exc:
            log.warning("DNS-SD withdraw: %s: %s", type(exc).__name__, exc)
        if self.unicast is not None:  # while the address still works (lease-lost hold)
            try:
                await asyncio.to_thread(self.unicast.withdraw)
            except Exception as exc:
                log.warning("DNS-SD (unicast) withdraw: %s: %s", type(exc).__name__, exc)

    async def register_unicast(self, lease: Lease | None, ttl: int) -> bool | None:
        """`[dnssd] unicast`: the announced services in the site DNS as well, with the
        lease's lifetime as TTL. None when not configured (or no DNS), True when
        registered, False when refused (a degraded condition, never fatal)."""
        d = self.dnssd
        if d is None or not d.unicast or lease is None or not lease.dns:
            return None
        zone = d.unicast_zone or lease.domain
        host = lease.fqdn or (f"{lease.hostname}.{zone}" if lease.hostname and zone else None)
        if zone is None or host is None:
            log.warning("DNS-SD (unicast): no zone or host name for %s", lease.address)
            return False
        # Imported here: only `[dnssd] unicast` needs it and its dnspython parts.
        from profiles.app_config.unicast_dnssd_io import UnicastAdvertiser, read_tsig_key

        try:
            if self.unicast is None:
                self.unicast = UnicastAdvertiser(read_tsig_key(d.tsig_key_file),
                                                 self.state_dir / "dnssd-unicast.json",
                                                 list(lease.dns))
            self.unicast.nameservers = list(lease.dns)
            taken = await asyncio.to_thread(self.unicast.register, self.announced, zone,
                                            host, max(60, min(3600, ttl)))
        except Exception as exc:  # refused, unreachable, a bad key file
            log.warning("DNS-SD (unicast) not registered in %s: %s: %s", zone,
                        type(exc).__name__, exc)
            return False
        return not taken

    async def lookup_unicast(self, title: str, lease: Lease | None,
                             addresses: Callable[[dict], Awaitable[None]] | None
                             ) -> dict | None:
        """A title in unicast DNS-SD of the lease's search domains (the site DNS crosses
        routers); `addresses` fills in the connections' addresses (the directory's)."""
        if lease is None or not lease.dns:
            return None
        domains = lease_search(lease)
        if not domains:
            return None
        from profiles.app_config.unicast_dnssd_io import browse  # see register_unicast

        try:
            answer = await asyncio.to_thread(browse, domains, list(lease.dns), title)
        except Exception as exc:
            log.info("DNS-SD (unicast) lookup of %s: %s", title, exc)
            return None
        if answer is not None and addresses is not None:
            await addresses(answer)
        return answer

    def lookup(self, title: str) -> dict | None:
        return self.advertiser.lookup(title)

    def to_json(self) -> dict:
        advertised = self.advertiser.advertised
        return {"services": [s.to_json(advertised.get(s.name)) for s in self.announced
                             if s.name in advertised],
                "seen": sorted(self.advertiser.seen)}


class AnnounceService:
    """DNS-SD in the daemon (H.2): (re)advertises when `wanted` — an address, titles, the
    directory's word on installed AEs, an AE's health — once the titles are known or known
    to be missing; owns the dnssd part of the snapshot and the DNS-SD fallback of lookups.
    The events of an announcement (titles known or missing, all installed or not,
    announced, the site DNS registered or refused) are applied together."""

    def __init__(self, announcer: Announcer, bus, address: Callable[[], str | None],
                 lease: Callable[[], Lease | None], directory, health):
        self.announcer = announcer
        self.bus = bus
        self.address, self.lease = address, lease
        self.directory = directory  # DirectoryProfile: titles, state, effective
        self.health = health  # HealthService: a health-checked AE is advertised once up
        self.wanted = asyncio.Event()

    def snapshot(self) -> dict:
        return self.announcer.to_json()

    def tasks(self) -> dict:
        return {"announce": self.run}

    def advertised_titles(self) -> list[str | None]:
        """The titles to announce: not an AE the directory says is not installed, nor a
        health-checked AE before it has answered (or while it does not)."""
        installed = {e["aet"]: e["installed"] for e in self.directory.effective()}
        out = []
        for ae, title in zip(self.announcer.device.aes, self.directory.titles, strict=False):
            checked = not ae.health_check or (
                title is not None and self.health.of(title).state == "up")
            out.append(title if title is not None and installed.get(title, True) and checked
                       else None)
        return out

    def withdrawing(self) -> None:
        """Something took titles away (an AE's health went down): their services leave
        `announced` now, before the change is published, and their goodbyes follow in the
        announce task — no snapshot lists a service whose AE is known to be down."""
        keep = {t for t in self.advertised_titles() if t is not None}
        self.announcer.announced = [s for s in self.announcer.announced
                                    if s.txt.get("AET") in keep]
        self.wanted.set()

    async def run(self) -> None:
        self.wanted.set()  # a restarted task announces afresh
        announced: tuple | None = None
        while True:
            await self.wanted.wait()
            self.wanted.clear()
            address = self.address()
            if address is None:
                announced = None
                continue
            missing = None in self.directory.titles
            if missing and self.directory.state in ("locating", "registering"):
                continue  # the directory may still reserve the title
            advertise = self.advertised_titles()
            # Announce again only for something new: a refresh of the directory must
            # not make the names be probed again.
            events = []
            wanted = (address, tuple(advertise), id(self.announcer.device))
            if wanted != announced or self.announcer.advertiser.address != address:
                await self.announcer.announce(advertise, address)
                announced = wanted
                lease = self.lease()
                registered = await self.announcer.register_unicast(
                    lease, int(remaining(lease)) if lease else 0)
                if registered is not None:
                    events.append(Event.UNICAST_REGISTERED if registered
                                  else Event.UNICAST_REFUSED)
            not_installed = any(not e["installed"] for e in self.directory.effective())
            await self.bus.apply(*events, Event.TITLES_MISSING if missing
                                 else Event.TITLES_KNOWN,
                                 Event.NOT_INSTALLED if not_installed else Event.ALL_INSTALLED,
                                 Event.ANNOUNCED)

    async def lookup(self, title: str) -> dict | None:
        """What DNS-SD says of a title the directory could not answer: seen over mDNS,
        else unicast DNS-SD in the site DNS."""
        service = self.directory.service
        return self.announcer.lookup(title) or await self.announcer.lookup_unicast(
            title, self.lease(), service.addresses if service is not None else None)

    async def withdraw(self) -> None:
        await self.announcer.withdraw()
