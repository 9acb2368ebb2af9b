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

import zeroconf.asyncio  # noqa: F401 -- see below

from profiles.app_config import dnssd_io
from profiles.app_config.model import Device
from profiles.network_address.dhcp_io import lease_search
from profiles.network_address.lease import Lease

log = logging.getLogger(__name__)

# The daemon browses and announces from its first address on, so zeroconf is imported
# here, with the daemon's own imports under the paused collector (agent.commands.cli.importing),
# rather than by dnssd in the event loop: ~15 ms less CPU to `ready` (issue 18: two A/B
# runs of 8 and 10 boots each way, medians 0.425 -> 0.41 and 0.395 -> 0.38 s).


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
