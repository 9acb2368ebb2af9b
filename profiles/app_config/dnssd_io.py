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

from profiles.app_config import mdns_probe
from profiles.app_config.model import Device

log = logging.getLogger(__name__)
PLAIN, TLS = "_dicom._tcp.local.", "_dicom-tls._tcp.local."
PROBES, PROBE_INTERVAL = 3, 0.25  # RFC 6762 8.1: three probes 250 ms apart, then 250 ms
TIEBREAK_DEFER = 1.0  # s: RFC 6762 8.2, the loser of a simultaneous probe waits, then probes
MDNS_GROUP, MDNS_PORT = "224.0.0.251", 5353
TYPE_TXT, TYPE_SRV, TYPE_ANY, CLASS_IN, CLASS_UNIQUE = 16, 33, 255, 1, 0x8000


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
        self._probes: ProbeListener | None = None
        self.counts = {"probe-tiebreaks-won": 0, "probe-tiebreaks-lost": 0, "renamed": 0}
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
            self._probes = ProbeListener(address)
            try:
                self._probes.start(asyncio.get_running_loop())
            except OSError as exc:  # probing still works; only 8.2's tie-break is lost
                log.warning("DNS-SD: not listening for others' probes: %s", exc)
                self._probes = None
        for info in self._infos:
            await self._zc.async_unregister_service(info)
        self._infos, self.advertised = [], {}
        infos = [AsyncServiceInfo(s.type, s.name, addresses=[socket.inet_aton(address)],
                                  port=s.port, properties=s.txt,
                                  server=f"{self.hostname}.local.") for s in wanted]
        # All names are probed at once; a name won is registered without zeroconf's own
        # probe, which returns the task sending the announcements (8.3), not waited for.
        zc = self._zc.zeroconf
        await asyncio.gather(*(probe(zc, info, rivals=self._probes.rivals if self._probes
                                     else None, counts=self.counts) for info in infos))
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
        if self._probes is not None:
            self._probes.close()
            self._probes = None
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


def proposal(info) -> list[mdns_probe.Record]:
    """The unique records a probe for `info` proposes (its authority section): SRV, TXT."""
    return [mdns_probe.record(CLASS_IN, TYPE_SRV, mdns_probe.srv_rdata(
                info.priority, info.weight, info.port, info.server)),
            mdns_probe.record(CLASS_IN, TYPE_TXT, info.text)]


def probe_packet(info):
    """RFC 6762 8.1's probe: a QU question for the name (type ANY), the proposed records
    in the authority section — what another host's 8.2 tie-break compares."""
    from zeroconf import DNSOutgoing, DNSQuestion

    out = DNSOutgoing(0)  # a query
    out.add_question(DNSQuestion(info.name, TYPE_ANY, CLASS_IN | CLASS_UNIQUE))
    # Appended as they are: zeroconf types add_authorative_answer for a PTR only.
    out.authorities.extend([info.dns_service(), info.dns_text()])
    return out


def probed(data: bytes, source: tuple[str, int]) -> dict[str, list[mdns_probe.Record]]:
    """The names a probe packet probes for, each with the records it proposes (SRV, TXT,
    A); {} for any other packet."""
    from zeroconf import DNSAddress, DNSIncoming, DNSService, DNSText

    msg = DNSIncoming(data, source)
    if not (msg.is_query() and msg.is_probe()):
        return {}
    out: dict[str, list[mdns_probe.Record]] = {}
    for name in {q.name.lower() for q in msg.questions}:
        records = []
        for r in msg.answers():
            if r.name.lower() != name:
                continue
            if isinstance(r, DNSService):
                rdata = mdns_probe.srv_rdata(r.priority, r.weight, r.port, r.server)
            elif isinstance(r, DNSText):
                rdata = r.text
            elif isinstance(r, DNSAddress):
                rdata = r.address
            else:
                continue
            records.append(mdns_probe.record(r.class_, r.type, rdata))
        if records:
            out[name] = records
    return out


def _held_elsewhere(zc, info, ours: list[mdns_probe.Record]) -> bool:
    """Another host answers for the name: its PTR to it, or an SRV for it that is not
    ours (identical data is not a conflict, RFC 6762 9)."""
    if zc.cache.current_entry_with_name_and_alias(info.type, info.name):
        return True
    mine = ours[0][2]
    return any(mdns_probe.srv_rdata(r.priority, r.weight, r.port, r.server) != mine
               for r in zc.cache.get_all_by_details(info.name, TYPE_SRV, CLASS_IN))


async def probe(zc, info, now=None, sleep=asyncio.sleep, rng=random, rivals=None,
                counts=None, packet=probe_packet) -> None:
    """RFC 6762 8.1 for one service name: after a random 0-250 ms, three probes 250 ms
    apart and 250 ms more for an answer; a name another host answers for is renamed
    ("TITLE-2", "TITLE-3"...) and probed afresh. 8.2: `rivals(name)` gives the record
    sets other hosts' probes for the same name proposed meanwhile; losing the tie-break
    to one defers the probing by a second (the winner then answers for the name, and this
    one renames). zeroconf's own check spaces its probes 500 ms apart and answers no
    rival: 1.15-1.25 s to a name instead of 0.75-1.0 s. `now` and `sleep` are the clock
    (the event loop's by default; a test's own), `zc.async_wait` the wait for an
    answer; `counts` the tie-breaks won and lost and the renames."""
    now = now or asyncio.get_running_loop().time
    counts = counts if counts is not None else {}
    await zc.async_wait_for_start()
    await sleep(rng.uniform(0, PROBE_INTERVAL))
    instance = info.name[: -len(info.type) - 1]
    number, sent, due = 2, 0, now()
    ours = proposal(info)
    while True:
        heard = rivals(info.name) if rivals is not None else []
        outcome = [mdns_probe.tiebreak(ours, theirs) for theirs in heard]
        if _held_elsewhere(zc, info, ours):
            info.name = f"{instance}-{number}.{info.type}"  # someone answered for it
            number, sent, due = number + 1, 0, now()
            counts["renamed"] = counts.get("renamed", 0) + 1
        elif any(o < 0 for o in outcome):
            counts["probe-tiebreaks-lost"] = counts.get("probe-tiebreaks-lost", 0) + 1
            log.info("DNS-SD: %s: another host probes for it with later data: lost the "
                     "simultaneous-probe tie-break (RFC 6762 8.2), probing again in %.0f s",
                     info.name, TIEBREAK_DEFER)
            sent, due = 0, now() + TIEBREAK_DEFER
        elif any(o > 0 for o in outcome) and sent < PROBES:
            counts["probe-tiebreaks-won"] = counts.get("probe-tiebreaks-won", 0) + 1
            log.info("DNS-SD: %s: another host probes for it: won the simultaneous-probe "
                     "tie-break (RFC 6762 8.2)", info.name)
        elif now() < due:
            await zc.async_wait((due - now()) * 1000)  # woken early by an answer
        elif sent == PROBES:
            return
        else:
            zc.async_send(packet(info))
            sent, due = sent + 1, now() + PROBE_INTERVAL  # 250 ms after this one


class ProbeListener:
    """Other hosts' probes on the link (RFC 6762 8.2): a socket bound to the mDNS group
    address itself — so answers sent to this host's own address still reach zeroconf's
    socket — joined on the interface; each probe's proposed records by the name probed
    for, until probe() takes them. This host's own probes are not counted."""

    def __init__(self, address: str):
        self.address = address
        self.heard: dict[str, list[list[mdns_probe.Record]]] = {}
        self._sock: socket.socket | None = None
        self._loop = None

    def start(self, loop) -> None:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if hasattr(socket, "SO_REUSEPORT"):
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            s.bind((MDNS_GROUP, MDNS_PORT))
            s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP,
                         socket.inet_aton(MDNS_GROUP) + socket.inet_aton(self.address))
            s.setblocking(False)
            loop.add_reader(s.fileno(), self._read)
        except OSError:
            s.close()
            raise
        self._sock, self._loop = s, loop

    def _read(self) -> None:
        while True:
            try:
                data, source = self._sock.recvfrom(9000)
            except OSError:  # nothing more to read now (BlockingIOError), or closed
                return
            if source[0] == self.address:
                continue
            try:
                for name, records in probed(data, source).items():
                    if len(self.heard) < 256:
                        self.heard.setdefault(name, []).append(records)
            except Exception as exc:  # a malformed packet from the link: dropped
                log.debug("mDNS packet from %s not read: %s", source[0], exc)

    def rivals(self, name: str) -> list[list[mdns_probe.Record]]:
        return self.heard.pop(name.lower(), [])

    def close(self) -> None:
        if self._sock is not None:
            self._loop.remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None
