"""DNS-SD advertisement and browsing of DICOM services (PS3.15 H.2), with zeroconf.

One service per association-acceptor AE per connection with a port: instance name = the
AE title, type `_dicom._tcp.local.` — or `_dicom-tls._tcp.local.` for a connection with
TLS cipher suites, as later editions of H.2 name it — TXT `AET=<title>` and
`PrimaryDeviceType=<first primary device type>`. zeroconf is bound to the device's
interface address only. Names are probed with RFC 6762 8.1's own timing (probe());
a name conflict renames the instance ("-2", "-3"...); `AET=` keeps the real title.
The browser collects what others advertise, taking the instance name as the AE title
when TXT has no `AET` (H.2).
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
from dataclasses import dataclass

from profiles.app_config.model import Device

log = logging.getLogger(__name__)
PLAIN, TLS = "_dicom._tcp.local.", "_dicom-tls._tcp.local."
PROBES, PROBE_INTERVAL = 3, 0.25  # RFC 6762 8.1: three probes 250 ms apart, then 250 ms


@dataclass(frozen=True)
class Service:
    """One DNS-SD service: an AE on one connection."""

    instance: str  # the AE title, unless that name is taken twice on this device
    type: str
    port: int
    txt: dict[str, str]

    @property
    def name(self) -> str:
        return f"{self.instance}.{self.type}"

    def to_json(self, advertised_as: str | None = None) -> dict:
        return {"name": advertised_as or self.name, "type": self.type, "port": self.port,
                "txt": dict(self.txt)}


def services(device: Device, titles: list[str | None]) -> list[Service]:
    """What this device advertises (titles[i] is device.aes[i]'s title; an AE with no
    title — None, or missing from a short list — is not advertised)."""
    out: list[Service] = []
    for i, ae in enumerate(device.aes):
        title = titles[i] if i < len(titles) else None
        if title is None or not ae.association_acceptor:
            continue
        for name in ae.connections:
            conn = device.connection(name)
            if conn.port is None or conn.installed is False:
                continue
            kind = TLS if conn.tls_cipher_suites else PLAIN
            txt = {"AET": title}
            if device.primary_device_type:
                txt["PrimaryDeviceType"] = device.primary_device_type[0]
            instance = title
            if any(s.instance == instance and s.type == kind for s in out):
                instance = f"{title} ({name})"  # the same AE on two plain ports
            out.append(Service(instance, kind, conn.port, txt))
    return out


class Advertiser:
    """Owns one AsyncZeroconf on one address; announce(), withdraw() (goodbyes)."""

    def __init__(self, hostname: str):
        self.hostname = hostname.split(".")[0]
        self.address: str | None = None
        self.advertised: dict[str, str] = {}  # our service name -> name on the wire
        self._zc = None
        self._infos: list = []
        self._announcing: list[asyncio.Future] = []
        self._browser = None
        self.seen: dict[str, dict] = {}  # AE title -> what the browser resolved
        self.found: dict[str, dict] = {}  # service name -> the same (the survey's view)
        self.resolving: set[asyncio.Task] = set()  # services seen, being resolved
        self._names: dict[str, str] = {}  # service name -> AE title

    async def listen(self, address: str | None = None) -> None:
        """Browse only (the site survey): on `address`, else every interface."""
        from zeroconf import InterfaceChoice, IPVersion
        from zeroconf.asyncio import AsyncZeroconf

        if self._zc is None:
            self._zc = AsyncZeroconf(interfaces=[address] if address else InterfaceChoice.All,
                                     ip_version=IPVersion.V4Only)
            self.address = address

    async def announce(self, wanted: list[Service], address: str) -> None:
        from zeroconf import IPVersion
        from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

        if self._zc is not None and address != self.address:
            await self.withdraw()  # a new address: goodbye, then announce afresh
        if self._zc is None:
            self._zc = AsyncZeroconf(interfaces=[address], ip_version=IPVersion.V4Only)
            self.address = address
        for info in self._infos:
            await self._zc.async_unregister_service(info)
        self._infos, self.advertised = [], {}
        infos = [AsyncServiceInfo(s.type, s.name, addresses=[socket.inet_aton(address)],
                                  port=s.port, properties=s.txt,
                                  server=f"{self.hostname}.local.") for s in wanted]
        # All names are probed at once; a name won is registered without zeroconf's own
        # probe, which returns the task sending the announcements (8.3), not waited for.
        zc = self._zc.zeroconf
        await asyncio.gather(*(probe(zc, info) for info in infos))
        self._announcing = [await zc.async_register_service(info, cooperating_responders=True)
                            for info in infos]
        for service, info in zip(wanted, infos, strict=True):
            self._infos.append(info)
            self.advertised[service.name] = info.name
            if info.name != service.name:
                log.warning("DNS-SD name %s taken: advertised as %s", service.name, info.name)

    async def withdraw(self) -> None:
        """Goodbye packets for everything, then close (lease lost, stop)."""
        if self._zc is None:
            return
        for task in self._announcing:
            task.cancel()
        self._announcing = []
        if self._browser is not None:
            await self._browser.async_cancel()
            self._browser = None
        await self._zc.async_unregister_all_services()
        await self._zc.async_close()
        self._zc, self._infos, self.advertised, self.address = None, [], {}, None

    async def browse(self) -> None:
        """Collect DICOM services others advertise, into `seen`."""
        from zeroconf import ServiceStateChange
        from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo

        if self._zc is None or self._browser is not None:
            return
        zc = self._zc.zeroconf
        pending = self.resolving

        async def resolve(type_: str, name: str) -> None:
            info = AsyncServiceInfo(type_, name)
            # A service whose host publishes no address still has its SRV and TXT.
            if not await info.async_request(zc, 3000) and info.port is None:
                return
            txt = {k.decode(errors="replace"): (v or b"").decode(errors="replace")
                   for k, v in info.properties.items()}
            title = txt.get("AET") or name[: -len(type_) - 1]
            self._names[name] = title
            self.seen[title] = self.found[name] = {
                "aet": title, "tls": type_ == TLS, "port": info.port,
                "hostname": (info.server or "").rstrip("."),
                "addresses": info.parsed_addresses(), "txt": txt,
                "name": name[: -len(type_) - 1], "type": type_.removesuffix(".local.")}

        def changed(zeroconf, service_type: str, name: str, state_change) -> None:
            if state_change is ServiceStateChange.Removed:
                self.seen.pop(self._names.pop(name, ""), None)
                self.found.pop(name, None)
                return
            task = asyncio.get_running_loop().create_task(resolve(service_type, name))
            pending.add(task)
            task.add_done_callback(pending.discard)

        self._browser = AsyncServiceBrowser(zc, [PLAIN, TLS], handlers=[changed])

    def lookup(self, title: str) -> dict | None:
        """A lookup answer from what was browsed (source "dnssd"), or None."""
        entry = self.seen.get(title)
        if entry is None:
            return None
        host = entry["addresses"][0] if entry["addresses"] else entry["hostname"]
        return {"v": 1, "aet": title, "found": True, "stale": False, "source": "dnssd",
                "device": None, "installed": True,
                "connections": [{"hostname": host, "port": entry["port"],
                                 "tls_cipher_suites": ["(TLS)"] if entry["tls"] else [],
                                 "addresses": [a for a in entry["addresses"]
                                               if a.count(".") == 3]}]}


async def probe(zc, info, now=None, sleep=asyncio.sleep, rng=random) -> None:
    """RFC 6762 8.1 for one service name: after a random 0-250 ms, three probes 250 ms
    apart and 250 ms more for an answer; a name another host answers for is renamed
    ("TITLE-2", "TITLE-3"...) and probed afresh. zeroconf's own check spaces its probes
    500 ms apart: 1.15-1.25 s to a name instead of 0.75-1.0 s. `now` and `sleep` are the
    clock (the event loop's by default; a test's own), `zc.async_wait` the wait for an
    answer."""
    now = now or asyncio.get_running_loop().time
    await zc.async_wait_for_start()
    await sleep(rng.uniform(0, PROBE_INTERVAL))
    instance = info.name[: -len(info.type) - 1]
    number, sent, due = 2, 0, now()
    while True:
        if zc.cache.current_entry_with_name_and_alias(info.type, info.name):
            info.name = f"{instance}-{number}.{info.type}"  # someone answered for it
            number, sent, due = number + 1, 0, now()
        elif now() < due:
            await zc.async_wait((due - now()) * 1000)  # woken early by an answer
        elif sent == PROBES:
            return
        else:
            zc.async_send(zc.generate_service_query(info))
            sent, due = sent + 1, now() + PROBE_INTERVAL  # 250 ms after this one
