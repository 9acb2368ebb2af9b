"""The site side (PS3.15 F.1.2, F.1.7, H.1.4.4): from the fleet's device files and one site
file, what the administrator loads into the DHCP server, the DNS zone and the directory.

    dicom-agent site kea|dnsmasq|dns|ldif|check --site SITE.toml DEVICE_DIR

The site file (TOML; unknown keys are errors):

    [site]
    domain = "hospital.test"                  # required: the DNS zone, host names
    subnet = "192.0.2.0/24"                   # required
    pool = ["192.0.2.100", "192.0.2.199"]     # required: the dynamic range, first and last
    ldap_base = "cn=DICOM Configuration,dc=hospital,dc=test"   # for `site ldif`
    interfaces = ["eth1"]                     # for `site kea`: where Kea serves [all]

    [[site.ldap]]                             # for `site dns`: the _ldap._tcp SRV records
    host = "ldap.hospital.test"
    port = 389                                # [389]
    priority = 0                              # [0]
    weight = 0                                # [0]
    address = "192.0.2.1"                     # optional: an A record for it too

    [[device]]
    config = "ct01.toml"                      # required: a device file in DEVICE_DIR
    mac = "02:dc:00:00:00:51"                 # mac or client_id (dhcp --print-client-id)
    client_id = "ff:..."
    address = "192.0.2.51"                    # optional: a fixed address (outside the pool)
    tz_posix = "CET-1CEST,M3.5.0,M10.5.0/3"   # optional: DHCP option 100 for this device
    tz_name = "Europe/Berlin"                 # optional: DHCP option 101

Host names come from each device file's `[network] hostname`. AEs with a title template
are not pre-registered: the devices reserve their titles themselves (H.1.4.3.5), and
the outputs say so.
"""

from __future__ import annotations

import ipaddress
import json
import re
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path

from agent.config import Config, load_config
from profiles.app_config import plan
from profiles.errors import ConfigError

SITE_KEYS = {"domain", "subnet", "pool", "ldap_base", "ldap", "interfaces"}
LDAP_KEYS = {"host", "port", "priority", "weight", "address"}
DEVICE_KEYS = {"config", "mac", "client_id", "address", "tz_posix", "tz_name"}
_MAC = re.compile(r"[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}")
_OCTETS = re.compile(r"[0-9a-fA-F]{2}(:[0-9a-fA-F]{2})+")
TTL = 3600


@dataclass
class Member:
    """One device of the fleet: its site entry and its own configuration."""
    file: str
    config: Config
    mac: str | None = None
    client_id: str | None = None
    address: str | None = None
    tz_posix: str | None = None
    tz_name: str | None = None

    @property
    def name(self) -> str:
        return self.config.device.name

    @property
    def hostname(self) -> str | None:
        return self.config.network.hostname


@dataclass
class Site:
    """The site file: domain, subnet, pool and directory servers."""

    domain: str
    subnet: ipaddress.IPv4Network
    pool: tuple[ipaddress.IPv4Address, ipaddress.IPv4Address]
    ldap_base: str | None = None
    ldap: list[dict] = field(default_factory=list)
    members: list[Member] = field(default_factory=list)
    interfaces: tuple[str, ...] = ()  # where Kea serves: [] = all ("*")


def load_site(site_file: Path, device_dir: Path) -> Site:
    """The site and its fleet; ConfigError naming every problem (exit 2)."""
    errors: list[tuple[str, str]] = []
    try:
        data = tomllib.loads(site_file.read_text())
    except OSError as exc:
        raise ConfigError([(str(site_file), f"cannot read: {exc.strerror}")]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([(str(site_file), f"not UTF-8 (byte {exc.start})")]) from None
    except (tomllib.TOMLDecodeError, RecursionError, ValueError) as exc:
        raise ConfigError([(str(site_file), f"TOML: {str(exc)[:200] or 'nested too deeply'}")
                           ]) from None
    s = data.get("site")
    if not isinstance(s, dict):
        raise ConfigError([(f"{site_file}: site", "a [site] table is required")])
    for key in set(s) - SITE_KEYS:
        errors.append((f"site.{key}", "unknown key"))
    for key in set(data) - {"site", "device"}:
        errors.append((key, "unknown key"))
    domain = s.get("domain")
    if not isinstance(domain, str) or not domain:
        errors.append(("site.domain", "required (the DNS zone)"))
    subnet = pool = None
    try:
        subnet = ipaddress.IPv4Network(s.get("subnet", ""))
    except ValueError as exc:
        errors.append(("site.subnet", f"an IPv4 network is required: {exc}"))
    try:
        first, last = (ipaddress.IPv4Address(a) for a in s.get("pool", []))
        pool = (first, last)
        if subnet is not None and (first not in subnet or last not in subnet or last < first):
            errors.append(("site.pool", "first and last address inside the subnet, in order"))
    except (ValueError, TypeError):
        errors.append(("site.pool", "two IPv4 addresses, the first and the last"))
    ldap = []
    for i, entry in enumerate(s.get("ldap", [])):
        if not isinstance(entry, dict) or "host" not in entry:
            errors.append((f"site.ldap[{i}]", "a table with host"))
            continue
        for key in set(entry) - LDAP_KEYS:
            errors.append((f"site.ldap[{i}].{key}", "unknown key"))
        ldap.append({"host": entry["host"], "port": entry.get("port", 389),
                     "priority": entry.get("priority", 0), "weight": entry.get("weight", 0),
                     "address": entry.get("address")})
    members = []
    for i, entry in enumerate(data.get("device", [])):
        where = f"device[{i}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("config"), str):
            errors.append((where, "a [[device]] table with config (a device file)"))
            continue
        for key in set(entry) - DEVICE_KEYS:
            errors.append((f"{where}.{key}", "unknown key"))
        try:
            config = load_config(device_dir / entry["config"])
        except ConfigError as exc:  # each names the device file (and line)
            errors += exc.errors
            continue
        mac, cid = entry.get("mac"), entry.get("client_id")
        if mac is not None and not _MAC.fullmatch(str(mac)):
            errors.append((f"{where}.mac", f"six hex octets, got {mac!r}"))
        if cid is not None and not _OCTETS.fullmatch(str(cid)):
            errors.append((f"{where}.client_id", f"hex octets, got {cid!r}"))
        if mac is None and cid is None:
            errors.append((where, "mac or client_id is needed for a reservation"))
        address = entry.get("address")
        if address is not None:
            try:
                ipaddress.IPv4Address(address)
            except ValueError:
                errors.append((f"{where}.address", f"an IPv4 address, got {address!r}"))
                address = None
        members.append(Member(entry["config"], config, mac and mac.lower(),
                              cid and cid.lower(), address, entry.get("tz_posix"),
                              entry.get("tz_name")))
    interfaces = s.get("interfaces", [])
    if not isinstance(interfaces, list) or not all(isinstance(i, str) and i
                                                   for i in interfaces):
        errors.append(("site.interfaces", "a list of interface names"))
        interfaces = []
    if errors:
        raise ConfigError([(k if k.startswith(str(device_dir)) else f"{site_file}: {k}", r)
                           for k, r in errors])
    return Site(domain, subnet, pool, s.get("ldap_base"), ldap, members, tuple(interfaces))


# -- site check: conflicts across the fleet ----------------------------------------------

def conflicts(site: Site, attempts: int = 100) -> list[str]:
    """Everything that would break once deployed, one line each."""
    out = []

    def duplicates(what: str, values: list[tuple[str | None, str]]) -> None:
        seen: dict[str, str] = {}
        for value, owner in values:
            if value is None:
                continue
            if value in seen:
                out.append(f"{what} {value}: {seen[value]} and {owner}")
            else:
                seen[value] = owner

    ms = site.members
    duplicates("device name", [(m.name, m.file) for m in ms])
    duplicates("MAC", [(m.mac, m.file) for m in ms])
    duplicates("client id", [(m.client_id, m.file) for m in ms])
    duplicates("host name", [(m.hostname.lower() if m.hostname else None, m.file) for m in ms])
    duplicates("fixed address", [(m.address, m.file) for m in ms])
    first, last = site.pool
    for m in ms:
        if m.address is None:
            continue
        a = ipaddress.IPv4Address(m.address)
        if a not in site.subnet:
            out.append(f"fixed address {a} of {m.file}: outside the subnet {site.subnet}")
        elif first <= a <= last:
            out.append(f"fixed address {a} of {m.file}: inside the dynamic pool "
                       f"{first}-{last}")
    fixed = [(ae.title, m.file) for m in ms for ae in m.config.device.aes if ae.title]
    duplicates("AE title", fixed)
    templates = [(ae.title_template, m.file) for m in ms for ae in m.config.device.aes
                 if ae.title_template]
    for title, owner in fixed:
        for template, other in templates:
            if title in {template.format(n=n) for n in range(1, attempts + 1)}:
                out.append(f"AE title {title} of {owner} is one that template {template!r} "
                           f"of {other} can choose")
    for i, (t1, f1) in enumerate(templates):
        for t2, f2 in templates[i + 1:]:
            if t1 == t2:
                continue  # one template shared by a fleet: the registry keeps titles apart
            common = {t1.format(n=n) for n in range(1, attempts + 1)} & \
                {t2.format(n=n) for n in range(1, attempts + 1)}
            if common:
                out.append(f"templates {t1!r} of {f1} and {t2!r} of {f2} can both choose "
                           f"{sorted(common)[0]}")
    return out


# -- outputs ---------------------------------------------------------------------------------

def _fqdn(site: Site, m: Member) -> str | None:
    return f"{m.hostname}.{site.domain}" if m.hostname and "." not in m.hostname \
        else m.hostname


def kea(site: Site) -> str:
    """A complete Kea DHCPv4 configuration that `kea-dhcp4 -t` accepts as printed: the
    interfaces (the site file's, else all), the domain name, the subnet with its pool and
    the fleet's reservations (client-id or hw-address, hostname, the fixed address, options
    100/101). To merge into a running server's configuration instead, copy
    subnet4[0].reservations into the subnet4 entry of the same subnet (the comment says so)."""
    reservations = []
    for m in site.members:
        r: dict = {"client-id": m.client_id} if m.client_id else {"hw-address": m.mac}
        if m.hostname:
            r["hostname"] = m.hostname
        if m.address:
            r["ip-address"] = m.address
        # As hex, not Kea's CSV text: a POSIX TZ string's commas would split it (seen:
        # "CET-1CEST,M3.5.0,M10.5.0/3" arrived as "CET-1CEST").
        data = [{"code": code, "csv-format": False, "data": value.encode().hex()}
                for code, value in ((100, m.tz_posix), (101, m.tz_name)) if value]
        if data:
            r["option-data"] = data
        reservations.append(r)
    first, last = site.pool
    return json.dumps({"Dhcp4": {
        "comment": f"dicom-agent site kea: {len(site.members)} device(s) of {site.domain}. "
                   "Used whole, or merged: copy subnet4[0].reservations into the subnet4 "
                   f"entry for {site.subnet} of the running configuration.",
        "interfaces-config": {"interfaces": list(site.interfaces) or ["*"]},
        "option-data": [{"name": "domain-name", "data": site.domain}],
        "subnet4": [{"id": 1, "subnet": str(site.subnet),
                     "pools": [{"pool": f"{first} - {last}"}],
                     "reservations": reservations}]}}, indent=2) + "\n"


def dnsmasq(site: Site) -> str:
    lines = [f"# dicom-agent site: {len(site.members)} device(s) of {site.domain}"]
    for m in site.members:
        who = f"id:{m.client_id}" if m.client_id else m.mac
        tag = "dicom-" + re.sub(r"[^A-Za-z0-9]", "-", m.name.lower())
        parts = [who, f"set:{tag}"] + ([m.address] if m.address else []) + \
            ([m.hostname] if m.hostname else [])
        lines.append(f"dhcp-host={','.join(parts)}")
        for code, value in ((100, m.tz_posix), (101, m.tz_name)):
            if value:
                lines.append(f'dhcp-option=tag:{tag},{code},"{value}"')
    return "\n".join(lines) + "\n"


def dns(site: Site) -> str:
    """A zone fragment for `site.domain`: _ldap._tcp SRV records (H.1.2), and A records
    for the LDAP servers and the devices with fixed addresses."""
    zone = site.domain.rstrip(".") + "."
    lines = [f"; dicom-agent site: records for {zone}"]
    for s in site.ldap:
        host = s["host"].rstrip(".") + "."
        lines.append(f"_ldap._tcp.{zone} {TTL} IN SRV {s['priority']} {s['weight']} "
                     f"{s['port']} {host}")
        if s.get("address"):
            lines.append(f"{host} {TTL} IN A {s['address']}")
    for m in site.members:
        fqdn = _fqdn(site, m)
        if m.address and fqdn:
            lines.append(f"{fqdn.rstrip('.')}. {TTL} IN A {m.address}")
    return "\n".join(lines) + "\n"


def ldif(site: Site) -> str:
    """Every device's pre-configuration (H.1.4.4): the device, its connections, the AEs
    with fixed titles and their transfer capabilities, the titles reserved. The devices
    adopt these entries by name; templated AEs are left to them."""
    if not site.ldap_base:
        raise ConfigError([("site.ldap_base", "required for site ldif")])
    entries, notes = [], []
    for m in site.members:
        device = m.config.device
        fixed = tuple(ae for ae in device.aes if ae.title)
        left = [ae.title_template for ae in device.aes if not ae.title]
        if left:
            notes.append(f"{device.name}: AE(s) from template {', '.join(left)} are not "
                         "pre-registered: the device reserves their titles itself")
        hostnames = {c.name: plan.connection_hostname(c, _fqdn(site, m), site.domain,
                                                      m.address) or site.domain
                     for c in device.connections}
        titles = [ae.title for ae in fixed]
        entries += [plan.title_entry(site.ldap_base, t) for t in titles]
        entries += plan.device_entries(site.ldap_base, replace(device, aes=fixed), titles,
                                       hostnames)
    return plan.to_ldif(entries, comment="\n".join([
        f"PS3.15 H.1 pre-configuration of {len(site.members)} device(s) of {site.domain}, "
        "written by dicom-agent site ldif.",
        "Load with: ldapadd -x -D <an account that may write the DICOM subtree> -W -f FILE",
        *notes]))

