"""Resolve Hostname (PS3.15 F.1.1): a small DNS client on dnspython for the other profiles.

It asks the servers of the current lease (option 6) — or the configured ones — in
order, the last one that answered first; expands names with the lease's search list
(option 119, else 15); and caches answers for their TTL (negative answers for the SOA
minimum, RFC 2308). A new lease (`configure`) purges the cache: another network may
give other answers. Time is CLOCK_BOOTTIME through the injected clock.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import dns.asyncquery
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype

log = logging.getLogger(__name__)
QUERY_TIMEOUT = 2.0  # s per server and attempt
NEGATIVE_TTL_MAX = 300  # s


class ResolveError(Exception):
    """No server gave an answer (the message says why), or the name does not exist."""


@dataclass(frozen=True, slots=True)
class SrvRecord:
    priority: int
    weight: int
    port: int
    target: str  # without the final dot; "." means "no service here" (RFC 2782)


Transport = Callable[[dns.message.Message, str], Awaitable[dns.message.Message]]


async def udp_then_tcp(query: dns.message.Message, server: str) -> dns.message.Message:
    response = await dns.asyncquery.udp(query, server, timeout=QUERY_TIMEOUT)
    if response.flags & dns.flags.TC:
        response = await dns.asyncquery.tcp(query, server, timeout=QUERY_TIMEOUT)
    return response


class Resolver:
    def __init__(self, servers: tuple[str, ...] = (), search: tuple[str, ...] = (),
                 transport: Transport = udp_then_tcp,
                 clock: Callable[[], float] = lambda: time.clock_gettime(time.CLOCK_BOOTTIME)):
        self.servers = servers
        self.search = search
        self.transport = transport
        self.clock = clock
        self._cache: dict[tuple[str, int], tuple[float, list]] = {}

    def configure(self, servers: tuple[str, ...], search: tuple[str, ...]) -> None:
        """New servers and search list (a new lease): what was cached may not hold."""
        if (servers, search) != (self.servers, self.search):
            self._cache.clear()
        self.servers, self.search = servers, search

    def candidates(self, name: str) -> list[str]:
        """Absolute names to try: a dotted or final-dot name as it is first (ndots 1)."""
        if name.endswith("."):
            return [name]
        expanded = [f"{name}.{domain}." for domain in self.search]
        return [f"{name}.", *expanded] if "." in name else [*expanded, f"{name}."]

    async def addresses(self, name: str) -> list[str]:
        """IPv4 addresses of a host name (an address is returned as it is)."""
        if _is_ipv4(name):
            return [name]
        records = await self._lookup(name, dns.rdatatype.A)
        return [r.address for r in records]

    async def srv(self, name: str) -> list[SrvRecord]:
        records = await self._lookup(name, dns.rdatatype.SRV)
        return [SrvRecord(r.priority, r.weight, r.port,
                          r.target.to_text(omit_final_dot=True) or ".") for r in records]

    async def _lookup(self, name: str, rdtype: int) -> list:
        last = "no candidates"
        for candidate in self.candidates(name):
            try:
                return await self._query(candidate, rdtype)
            except ResolveError as exc:
                last = str(exc)
        raise ResolveError(f"{name}: {last}")

    async def _query(self, qname: str, rdtype: int) -> list:
        key = (qname.lower(), rdtype)
        now = self.clock()
        cached = self._cache.get(key)
        if cached is not None and cached[0] > now:
            if not cached[1]:
                raise ResolveError(f"{qname} has no {dns.rdatatype.to_text(rdtype)} (cached)")
            return cached[1]
        if not self.servers:
            raise ResolveError("no DNS servers (none from DHCP, none configured)")
        query = dns.message.make_query(qname, rdtype)
        errors = []
        for server in self.servers:
            try:
                response = await self.transport(query, server)
            except (dns.exception.DNSException, OSError) as exc:
                errors.append(f"{server}: {exc.__class__.__name__}")
                continue
            rcode = response.rcode()
            if rcode not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
                errors.append(f"{server}: {dns.rcode.to_text(rcode)}")
                continue
            if server != self.servers[0]:  # keep asking the one that answers first
                self.servers = (server, *(s for s in self.servers if s != server))
            records, ttl = _answer(response, qname, rdtype)
            self._cache[key] = (now + ttl, records)
            if not records:
                raise ResolveError(f"{qname} has no {dns.rdatatype.to_text(rdtype)}")
            return records
        raise ResolveError("; ".join(errors))


def _answer(response: dns.message.Message, qname: str, rdtype: int) -> tuple[list, float]:
    """The records of the answer (following CNAMEs) and how long to keep them."""
    def find(name: dns.name.Name, wanted: int):
        return next((r for r in response.answer if r.name == name and r.rdtype == wanted
                     and r.rdclass == dns.rdataclass.IN), None)

    name = dns.name.from_text(qname)
    for _ in range(8):  # CNAME chain bound
        rrset = find(name, rdtype)
        if rrset is not None:
            return list(rrset), float(rrset.ttl)
        cname = find(name, dns.rdatatype.CNAME)
        if cname is None:
            break
        name = cname[0].target
    ttl = 30.0
    for rrset in response.authority:
        if rrset.rdtype == dns.rdatatype.SOA:
            ttl = float(min(rrset.ttl, rrset[0].minimum, NEGATIVE_TTL_MAX))
    return [], ttl


def _is_ipv4(name: str) -> bool:
    parts = name.split(".")
    return len(parts) == 4 and all(p.isdigit() and int(p) < 256 for p in parts)
