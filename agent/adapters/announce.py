"""The DNS-SD profile (PS3.15 H.2) for the daemon: which titles the device has, what it
advertises with them, and the advertiser that does it.

Titles pair with the configured AEs: a fixed `title`, else the title this device owns
from the directory (directory.json), else none — a templated AE with no directory to
reserve its title (disabled, down, awaiting an administrator) has no title, is not
advertised, and the boot says so (`no-title`) instead of waiting for ever.
"""

from __future__ import annotations

import zeroconf.asyncio  # noqa: F401 -- see below

from profiles.app_config import dnssd_io
from profiles.app_config.model import Device

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
    """The device's advertisements: announce(titles, address), withdraw(), lookup()."""

    def __init__(self, device: Device, hostname: str):
        self.device = device
        self.advertiser = dnssd_io.Advertiser(hostname)
        self.announced: list[dnssd_io.Service] = []

    def services(self, titles: list[str | None]) -> list[dnssd_io.Service]:
        return dnssd_io.services(self.device, titles)

    async def announce(self, titles: list[str | None], address: str) -> None:
        wanted = self.services(titles)
        await self.advertiser.announce(wanted, address)
        self.announced = wanted
        await self.advertiser.browse()

    async def withdraw(self) -> None:
        self.announced = []
        await self.advertiser.withdraw()

    def lookup(self, title: str) -> dict | None:
        return self.advertiser.lookup(title)

    def to_json(self) -> dict:
        advertised = self.advertiser.advertised
        return {"services": [s.to_json(advertised.get(s.name)) for s in self.announced
                             if s.name in advertised],
                "seen": sorted(self.advertiser.seen)}
