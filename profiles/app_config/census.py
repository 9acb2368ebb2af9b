"""The site's census (`dicom-agent site survey`): what the directory, DNS-SD, the DHCP
server and the AEs themselves say of the DICOM network, side by side, and where they
disagree. Pure: the driver (agent/commands/survey.py) reads each source and hands the
answers here; `read_tree` is an Operation the LDAP driver runs (registration.run).

Problems, each with the source that shows it:
- orphan-title: a title in the Unique AE Titles Registry that no AE uses;
- unregistered-title: an AE whose title the registry does not hold;
- duplicate-title: a title held by two devices — on one provider, or across the providers
  the SRV records name (a replication partition);
- advertised-unregistered: a `_dicom._tcp` service whose AE title no directory AE has;
- installed-silent: an installed acceptor that did not answer a C-ECHO (with --echo);
- unresolvable-host: a connection's dicomHostname that resolves to no address;
- unleased-pool-address: a host name that resolves into a DHCP pool where no lease holds
  that address (with leases; an address outside the pools is a static host);
- source-unreadable: a source that could not be read (the survey cannot vouch for it).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any

from profiles.app_config import plan
from profiles.app_config.registration import (
    ONE,
    SUB,
    OddEntry,
    Search,
    boolean_of,
    dn_key,
    many,
    one,
    port_of,
    title_of,
)
from profiles.network_address.leases import Leases

KINDS = ("source-unreadable", "duplicate-title", "installed-silent", "unresolvable-host",
         "unleased-pool-address", "advertised-unregistered", "unregistered-title",
         "orphan-title")  # the order problems are listed in: the gravest first
DEVICE_ATTRS = ("dicomDeviceName", "dicomPrimaryDeviceType", "dicomInstalled",
                "dicomManufacturer", "dicomManufacturerModelName", "dicomDescription")
AE_ATTRS = ("dicomAETitle", "dicomInstalled", "dicomAssociationAcceptor",
            "dicomAssociationInitiator", "dicomNetworkConnectionReference",
            "dicomApplicationCluster")
CONNECTION_ATTRS = ("cn", "dicomHostname", "dicomPort", "dicomTLSCipherSuite",
                    "dicomInstalled")


@dataclass
class Connection:
    dn: str
    name: str | None
    hostname: str | None
    port: int | None
    tls: bool
    installed: bool  # effective: its own dicomInstalled, else its device's


@dataclass
class AE:
    dn: str
    title: str
    installed: bool  # effective
    acceptor: bool
    initiator: bool
    connections: list[Connection]
    clusters: list[str]


@dataclass
class SiteDevice:
    dn: str
    name: str
    types: list[str]
    installed: bool
    manufacturer: str | None = None
    model: str | None = None
    description: str | None = None
    aes: list[AE] = field(default_factory=list)


@dataclass
class Tree:
    """One provider's DICOM configuration: its devices and its registry."""

    devices: list[SiteDevice]
    registry: list[str]
    odd: list[str] = field(default_factory=list)  # entries that are not what the schema says


@dataclass
class Advert:
    """One DNS-SD service: over mDNS on the link, or unicast in the site's zone."""

    name: str  # the service instance name
    type: str  # _dicom._tcp or _dicom-tls._tcp
    aet: str | None  # TXT AET
    host: str | None
    port: int | None
    addresses: list[str]
    source: str  # "mdns", or "dns:<zone>"


def read_tree(base: str) -> Generator[Search, Any, Tree]:
    """Every device, network AE, connection and registry title under one configuration
    root: four paged searches, joined here."""
    below = plan.devices_dn(base)
    devices = yield Search(below, SUB, "dicomDevice", (), DEVICE_ATTRS, paged=True)
    aes = yield Search(below, SUB, "dicomNetworkAE", (), AE_ATTRS, paged=True)
    conns = yield Search(below, SUB, "dicomNetworkConnection", (), CONNECTION_ATTRS,
                         paged=True)
    registry = yield Search(plan.registry_dn(base), ONE, "dicomUniqueAETitle", (),
                            ("dicomAETitle",), paged=True)
    return tree(devices, aes, conns, registry)


def _parent(dn: str) -> bytes:
    return dn_key(plan.split_rdn(dn)[1])


def tree(devices: list[dict], aes: list[dict], conns: list[dict], registry: list[dict]
         ) -> Tree:
    """The entries joined by DN: AEs and connections under their device, an AE's
    connections by its references; dicomInstalled inherited from the device (PS3.15
    H.1.1: optional on AEs and connections). An entry that is not what the schema says is
    left out and named in `odd`."""
    odd: list[str] = []
    by_dn: dict[bytes, SiteDevice] = {}
    for e in devices:
        try:
            device = SiteDevice(e["dn"], one(e, "dicomDeviceName"),
                                many(e, "dicomPrimaryDeviceType"),
                                boolean_of(e, "dicomInstalled") is not False,
                                one(e, "dicomManufacturer", required=False),
                                one(e, "dicomManufacturerModelName", required=False),
                                one(e, "dicomDescription", required=False))
        except OddEntry as exc:
            odd.append(str(exc))
            continue
        by_dn[dn_key(e["dn"])] = device
    connections: dict[bytes, Connection] = {}
    for e in conns:
        device = by_dn.get(_parent(e["dn"]))
        if device is None:
            continue
        try:
            installed = boolean_of(e, "dicomInstalled")
            connections[dn_key(e["dn"])] = Connection(
                e["dn"], one(e, "cn", required=False), one(e, "dicomHostname"), port_of(e),
                bool(many(e, "dicomTLSCipherSuite")),
                device.installed if installed is None else installed)
        except OddEntry as exc:
            odd.append(str(exc))
    for e in aes:
        device = by_dn.get(_parent(e["dn"]))
        if device is None:
            continue
        try:
            installed = boolean_of(e, "dicomInstalled")
            refs = [connections.get(dn_key(r)) for r in many(e, "dicomNetworkConnectionReference")]
            device.aes.append(AE(
                e["dn"], title_of(e), device.installed if installed is None else installed,
                boolean_of(e, "dicomAssociationAcceptor") is True,
                boolean_of(e, "dicomAssociationInitiator") is True,
                [c for c in refs if c is not None], many(e, "dicomApplicationCluster")))
        except OddEntry as exc:
            odd.append(str(exc))
    titles = []
    for e in registry:
        try:
            titles.append(title_of(e))
        except OddEntry as exc:
            odd.append(str(exc))
    return Tree(sorted(by_dn.values(), key=lambda d: d.name.lower()), titles, odd)


def echo_targets(t: Tree, resolved: dict[str, list[str]]) -> list[tuple[str, str, int, bool]]:
    """(title, address, port, tls) for each installed acceptor's installed connections with
    a port and an address: what --echo asks, each host:port once."""
    out, seen = [], set()
    for device in t.devices:
        for ae in device.aes:
            if not (ae.installed and ae.acceptor):
                continue
            for c in ae.connections:
                addresses = resolved.get(c.hostname or "") or []
                if c.installed and c.port and addresses \
                        and (ae.title, addresses[0], c.port) not in seen:
                    seen.add((ae.title, addresses[0], c.port))
                    out.append((ae.title, addresses[0], c.port, c.tls))
    return out


def _in_pools(address: str, pools: list[tuple[str, str]]) -> bool:
    try:
        a = ipaddress.IPv4Address(address)
        return any(ipaddress.IPv4Address(lo) <= a <= ipaddress.IPv4Address(hi)
                   for lo, hi in pools)
    except ValueError:
        return False


def survey(primary: str | None, trees: dict[str, Tree], adverts: list[Advert],
           resolved: dict[str, list[str]], leases: Leases | None = None,
           echoes: dict[tuple[str, str, int], str | None] | None = None,
           unreadable: list[tuple[str, str]] = ()) -> dict:
    """The report: per device and AE what each source says, and the problems (JSON-ready).
    `primary`: the provider whose tree is the directory's word (others are compared for
    titles held twice); `resolved`: host name -> addresses ([]: does not resolve);
    `echoes`: (title, address, port) -> None (answered) or why not; `unreadable`:
    (source, reason)."""
    problems: list[dict] = []

    def problem(kind: str, subject: str, detail: str, device: str | None = None) -> None:
        problems.append({"kind": kind, "subject": subject, "device": device,
                         "detail": detail})

    for source, reason in unreadable:
        problem("source-unreadable", source, reason)
    main = trees.get(primary) if primary else None
    holders: dict[str, dict[str, set[str]]] = {}  # title -> device -> providers
    for url, t in trees.items():
        for device in t.devices:
            for ae in device.aes:
                holders.setdefault(ae.title, {}).setdefault(device.name, set()).add(url)
        for text in t.odd:
            problem("source-unreadable", f"directory {url}", f"odd entry: {text}")
    for title, devices in sorted(holders.items()):
        if len(devices) > 1:
            where = "; ".join(f"{d} on {', '.join(sorted(p))}"
                              for d, p in sorted(devices.items()))
            problem("duplicate-title", title, f"held by {len(devices)} devices: {where}")
    listed = [a for a in adverts if a.aet]
    advertised_titles = {a.aet for a in listed}
    devices_out = []
    if main is not None:
        registry = set(main.registry)
        used = {ae.title for d in main.devices for ae in d.aes}
        for title in sorted(registry - used):
            problem("orphan-title", title, "reserved in the Unique AE Titles Registry; no "
                    "AE uses it")
        pools = leases.pools if leases is not None else None
        held = {x.address for x in leases.leases} if leases is not None else set()
        for device in main.devices:
            devices_out.append(_device(device, registry, listed, resolved, pools, held,
                                       echoes, problem))
    known = set(holders)  # every provider's AE titles
    for a in listed:
        if a.aet not in known:
            problem("advertised-unregistered", a.aet,
                    f"{a.name} ({a.type}, {a.source}) at {a.host}:{a.port}: no directory "
                    "AE has this title")
    order = {k: i for i, k in enumerate(KINDS)}
    problems.sort(key=lambda p: (order[p["kind"]], p["subject"]))
    return {"v": 1, "directory": primary, "providers": sorted(trees),
            "devices": devices_out,
            "advertised": [{"name": a.name, "type": a.type, "aet": a.aet, "host": a.host,
                            "port": a.port, "addresses": a.addresses, "source": a.source,
                            "registered": a.aet in known}
                           for a in sorted(adverts, key=lambda a: (a.aet or "", a.name))],
            "leases": None if leases is None else {
                "source": leases.source, "count": len(leases.leases),
                "pools": leases.pools},
            "unreadable": [{"source": s, "reason": r} for s, r in unreadable],
            "problems": problems,
            "summary": {"devices": len(devices_out),
                        "aes": sum(len(d["aes"]) for d in devices_out),
                        "advertised": len(adverts), "problems": len(problems),
                        "advertised_titles": len(advertised_titles)}}


def _device(device: SiteDevice, registry: set[str], adverts: list[Advert],
            resolved: dict[str, list[str]], pools: list[tuple[str, str]] | None,
            held: set[str], echoes: dict | None, problem) -> dict:
    """One device's row; `pools` (None: not known) and the addresses leases `held`."""
    aes = []
    for ae in device.aes:
        if ae.title not in registry:
            problem("unregistered-title", ae.title, "no entry in the Unique AE Titles "
                    "Registry", device.name)
        conns = []
        for c in ae.connections:
            addresses = resolved.get(c.hostname or "") or []
            echo = None  # not asked: --echo not given, not an installed acceptor, no address
            key = (ae.title, addresses[0], c.port) if addresses and c.port else None
            if echoes is not None and ae.installed and ae.acceptor and c.installed \
                    and key in echoes:
                echo = "ok" if echoes[key] is None else echoes[key]
                if echoes[key] is not None:
                    problem("installed-silent", ae.title, f"{key[1]}:{key[2]}: {echo}",
                            device.name)
            conns.append({"name": c.name, "hostname": c.hostname, "port": c.port,
                          "tls": c.tls, "installed": c.installed, "addresses": addresses,
                          "echo": echo})
        aes.append({"title": ae.title, "installed": ae.installed, "acceptor": ae.acceptor,
                    "initiator": ae.initiator, "registered": ae.title in registry,
                    "advertised": sorted({a.source for a in adverts if a.aet == ae.title}),
                    "clusters": ae.clusters, "connections": conns})
    hosts = dict.fromkeys(c.hostname for ae in device.aes for c in ae.connections
                          if c.hostname)
    for host in hosts:
        addresses = resolved.get(host)
        if addresses is None:
            continue  # not asked
        if not addresses:
            problem("unresolvable-host", host, "dicomHostname resolves to no address",
                    device.name)
        elif pools:
            for address in addresses:
                if _in_pools(address, pools) and address not in held:
                    problem("unleased-pool-address", host,
                            f"resolves to {address}, in a DHCP pool, but no lease holds it",
                            device.name)
    return {"name": device.name, "types": device.types, "installed": device.installed,
            "manufacturer": device.manufacturer, "model": device.model,
            "description": device.description, "aes": aes}
