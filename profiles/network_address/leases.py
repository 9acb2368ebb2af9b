"""What a DHCP server holds, read for the site survey (`--leases SOURCE`): pure parsers of
Kea's memfile (CSV), its configuration (pools, and where its memfile is), the answers of
its control agent (lease4-get-all, config-get), and dnsmasq's lease file. The driver
(agent/commands/survey.py) fetches the text; nothing here does I/O."""

from __future__ import annotations

import csv
import io
import ipaddress
import json
from dataclasses import dataclass


@dataclass
class Lease:
    address: str
    hostname: str | None = None
    hwaddr: str | None = None


@dataclass
class Leases:
    """What the DHCP server holds: its active leases, and its pools (None: not known)."""

    leases: list[Lease]
    pools: list[tuple[str, str]] | None
    source: str = ""


class LeaseError(ValueError):
    """A lease source that is not what it claims to be."""


def kea_memfile(text: str, now: float) -> list[Lease]:
    """Kea's lease file (lease4 CSV, append-only: a later row for an address replaces the
    earlier, valid_lifetime 0 deletes it): the leases in state 0 (default) not expired."""
    rows = csv.DictReader(io.StringIO(text))
    if not rows.fieldnames or "address" not in rows.fieldnames \
            or "expire" not in rows.fieldnames:
        raise LeaseError("not a Kea lease4 memfile (no address and expire columns)")
    held: dict[str, Lease | None] = {}
    for row in rows:
        try:
            address = str(ipaddress.IPv4Address(row["address"]))
            expire, lifetime = int(row["expire"]), int(row.get("valid_lifetime") or 0)
            state = int(row.get("state") or 0)
        except (ValueError, TypeError):
            continue  # a damaged row: the others stand
        alive = lifetime > 0 and state == 0 and expire > now
        held[address] = Lease(address, row.get("hostname") or None,
                              row.get("hwaddr") or None) if alive else None
    return [lease for lease in held.values() if lease is not None]


def dnsmasq_leases(text: str, now: float) -> list[Lease]:
    """dnsmasq's lease file: `expiry mac address hostname client-id` (expiry 0: never)."""
    out = []
    for line in text.splitlines():
        words = line.split()
        if len(words) < 4 or words[0] == "duid":
            continue
        try:
            expiry = int(words[0])
            address = str(ipaddress.IPv4Address(words[2]))
        except ValueError as exc:
            raise LeaseError(f"not a dnsmasq lease line: {line[:60]!r}") from exc
        if expiry == 0 or expiry > now:
            out.append(Lease(address, None if words[3] == "*" else words[3], words[1]))
    return out


def _without_comments(text: str) -> str:
    """Kea's configuration is JSON with #, // and /* */ comments (outside strings)."""
    out, i, quoted = [], 0, False
    while i < len(text):
        c = text[i]
        if quoted:
            out.append(c)
            if c == "\\" and i + 1 < len(text):
                out.append(text[i + 1])
                i += 1
            elif c == '"':
                quoted = False
        elif c == '"':
            quoted = True
            out.append(c)
        elif c == "#" or text.startswith("//", i):
            while i < len(text) and text[i] != "\n":
                i += 1
            continue
        elif text.startswith("/*", i):
            end = text.find("*/", i + 2)
            i = len(text) if end < 0 else end + 2
            continue
        else:
            out.append(c)
        i += 1
    return "".join(out)


def kea_config(text: str) -> tuple[list[tuple[str, str]], str | None]:
    """(pools as first-last pairs, the memfile's path or None) of a kea-dhcp4.conf, or of
    the `Dhcp4` object a control agent's config-get returns."""
    try:
        data = json.loads(_without_comments(text)) if isinstance(text, str) else text
    except json.JSONDecodeError as exc:
        raise LeaseError(f"not a Kea configuration: {exc}") from None
    dhcp4 = data.get("Dhcp4") if isinstance(data, dict) else None
    if not isinstance(dhcp4, dict):
        raise LeaseError("not a Kea configuration: no Dhcp4 object")
    subnets = list(dhcp4.get("subnet4") or [])
    for network in dhcp4.get("shared-networks") or []:
        subnets += network.get("subnet4") or []
    pools = []
    for subnet in subnets:
        for pool in subnet.get("pools") or []:
            pools.append(pool_range(str(pool.get("pool", ""))))
    database = dhcp4.get("lease-database") or {}
    memfile = database.get("name") if database.get("type") == "memfile" else None
    return pools, memfile


def pool_range(text: str) -> tuple[str, str]:
    """A Kea pool, "first - last" or a prefix, as (first, last)."""
    try:
        if "-" in text:
            first, last = (str(ipaddress.IPv4Address(p.strip())) for p in text.split("-", 1))
            return first, last
        net = ipaddress.IPv4Network(text.strip(), strict=False)
        return str(net.network_address), str(net.broadcast_address)
    except ValueError as exc:
        raise LeaseError(f"not a pool: {text[:40]!r}") from exc


def kea_answer(text: str, command: str) -> dict:
    """The arguments of a control agent's answer to `command` for the dhcp4 service."""
    try:
        answers = json.loads(text)
    except json.JSONDecodeError as exc:
        raise LeaseError(f"{command}: not JSON: {exc}") from None
    answer = answers[0] if isinstance(answers, list) and answers else answers
    if not isinstance(answer, dict):
        raise LeaseError(f"{command}: not a Kea answer")
    if answer.get("result") not in (0, 3):  # 3: empty (no leases)
        raise LeaseError(f"{command}: {answer.get('text') or answer.get('result')}")
    return answer.get("arguments") or {}


def kea_api_leases(arguments: dict, now: float) -> list[Lease]:
    """lease4-get-all's leases in state 0 (default) and not expired (cltt + valid-lft)."""
    out = []
    for x in arguments.get("leases") or []:
        try:
            expire = int(x.get("cltt", 0)) + int(x.get("valid-lft", 0))
            if int(x.get("state", 0)) == 0 and expire > now:
                out.append(Lease(str(ipaddress.IPv4Address(x["ip-address"])),
                                 x.get("hostname") or None, x.get("hw-address") or None))
        except (KeyError, ValueError, TypeError):
            continue
    return out


def from_file(text: str, now: float, source: str, read=None) -> Leases:
    """A lease source that is a file: a Kea configuration (its pools, and its memfile read
    with `read(path)`), a Kea memfile or a dnsmasq lease file (pools not known: no address
    counts as a pool address)."""
    stripped = text.lstrip()
    if stripped.startswith(("{", "/", "#")) and "Dhcp4" in text:
        pools, memfile = kea_config(text)
        if memfile is None or read is None:
            raise LeaseError(f"{source}: the Kea configuration names no memfile lease file")
        return Leases(kea_memfile(read(memfile), now), pools, f"{source} ({memfile})")
    if stripped.startswith("address,"):
        return Leases(kea_memfile(text, now), None, source)
    return Leases(dnsmasq_leases(text, now), None, source)
