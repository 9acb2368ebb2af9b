"""Resolve Hostname (PS3.15 F.1.1): a small DNS client for the other profiles.

It asks the servers of the current lease (option 6) — or the configured ones — in
order, the last one that answered first; expands names with the lease's search list
(option 119, else 15); and caches answers for their TTL (negative answers for the SOA
minimum, RFC 2308). A new lease (`configure`) purges the cache: another network may
give other answers. Time is CLOCK_BOOTTIME through the injected clock. Messages are
encoded and decoded by dnswire; the transport asks over UDP from a random port with a
random id, drops whatever does not answer the question, and asks again over TCP when
the answer is truncated.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import struct
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from profiles.errors import ParseError
from profiles.network_address import dnswire
from profiles.network_address.dnswire import CNAME, SOA, SRV, TYPE_NAMES, A

log = logging.getLogger(__name__)
QUERY_TIMEOUT = 2.0  # s per server and attempt
NEGATIVE_TTL_MAX = 300  # s


class ResolveError(Exception):
    """No server gave an answer (the message says why), or the name does not exist."""


@dataclass(frozen=True, slots=True)
class SrvRecord:
    """An SRV record (RFC 2782)."""

    priority: int
    weight: int
    port: int
    target: str  # without the final dot; "." means "no service here" (RFC 2782)


Transport = Callable[[bytes, str], Awaitable[bytes]]  # (query, server) -> response


async def udp_then_tcp(query: bytes, server: str, port: int = 53) -> bytes:
    """The response to `query` from `server`; TimeoutError after QUERY_TIMEOUT each way."""
    response = await asyncio.wait_for(_udp(query, server, port), QUERY_TIMEOUT)
    if int.from_bytes(response[2:4]) & dnswire.TC:  # truncated: TCP (RFC 7766)
        response = await asyncio.wait_for(_tcp(query, server, port), QUERY_TIMEOUT)
    return response


class _Answer(asyncio.DatagramProtocol):
    def __init__(self, query: bytes):
        self.query = query
        self.future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr) -> None:
        if dnswire.answers(self.query, data) and not self.future.done():
            self.future.set_result(data)

    def error_received(self, exc: Exception) -> None:  # ICMP unreachable
        if not self.future.done():
            self.future.set_exception(exc)


async def _udp(query: bytes, server: str, port: int) -> bytes:
    # A connected socket: the kernel drops datagrams from anyone but the server.
    transport, protocol = await asyncio.get_running_loop().create_datagram_endpoint(
        lambda: _Answer(query), remote_addr=(server, port))
    try:
        transport.sendto(query)
        return await protocol.future
    finally:
        transport.close()


async def _tcp(query: bytes, server: str, port: int) -> bytes:
    reader, writer = await asyncio.open_connection(server, port)
    try:
        writer.write(struct.pack("!H", len(query)) + query)
        await writer.drain()
        length = struct.unpack("!H", await reader.readexactly(2))[0]
        response = await reader.readexactly(length)
    finally:
        writer.close()
    if not dnswire.answers(query, response):
        raise ConnectionError("TCP answer to another question")
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
        return await self._lookup(name, A)

    async def srv(self, name: str) -> list[SrvRecord]:
        return [SrvRecord(priority, weight, port, target.removesuffix(".") or ".")
                for priority, weight, port, target in await self._lookup(name, SRV)]

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
                raise ResolveError(f"{qname} has no {TYPE_NAMES[rdtype]} (cached)")
            return cached[1]
        if not self.servers:
            raise ResolveError("no DNS servers (none from DHCP, none configured)")
        try:
            query = dnswire.query(qname, rdtype, secrets.randbits(16))
        except ParseError as exc:
            raise ResolveError(str(exc)) from None
        errors = []
        for server in self.servers:
            try:
                response = dnswire.decode(await self.transport(query, server))
            except (OSError, EOFError) as exc:  # timeout, refused, cut short
                errors.append(f"{server}: {exc.__class__.__name__}")
                continue
            except ParseError as exc:
                errors.append(f"{server}: malformed answer ({exc})")
                continue
            rcode = response.rcode
            if rcode not in (dnswire.NOERROR, dnswire.NXDOMAIN):
                errors.append(f"{server}: {dnswire.RCODE_NAMES.get(rcode, rcode)}")
                continue
            if server != self.servers[0]:  # keep asking the one that answers first
                self.servers = (server, *(s for s in self.servers if s != server))
            records, ttl = _answer(response, qname, rdtype)
            self._cache[key] = (now + ttl, records)
            if not records:
                raise ResolveError(f"{qname} has no {TYPE_NAMES[rdtype]}")
            return records
        raise ResolveError("; ".join(errors))


def _answer(response: dnswire.Response, qname: str, rdtype: int) -> tuple[list, float]:
    """The data of the answer's records (following CNAMEs) and how long to keep them."""
    def find(name: str, wanted: int) -> list[dnswire.Record]:
        return [r for r in response.answer if r.type == wanted and r.name.lower() == name]

    name = qname.lower()
    for _ in range(8):  # CNAME chain bound
        records = find(name, rdtype)
        if records:
            return [r.data for r in records], float(min(r.ttl for r in records))
        cname = find(name, CNAME)
        if not cname:
            break
        name = str(cname[0].data).lower()
    ttl = 30.0
    for record in response.authority:
        if record.type == SOA:
            ttl = float(min(record.ttl, record.data, NEGATIVE_TTL_MAX))
    return [], ttl


def _is_ipv4(name: str) -> bool:
    parts = name.split(".")
    return len(parts) == 4 and all(p.isdigit() and int(p) < 256 for p in parts)
