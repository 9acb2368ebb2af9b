"""RFC 2782 target selection for `_ldap._tcp.<domain>` (PS3.15 H.1.4.1)."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Protocol


class Srv(Protocol):
    priority: int
    weight: int
    port: int
    target: str


def order_srv(records: Sequence[Srv], rng: random.Random) -> list[Srv]:
    """The order to try targets in: lowest priority first; within a priority, weighted
    random as RFC 2782 describes (weight-0 records first in the running sum, so they are
    picked only when the draw is 0 or when nothing else is left). A single record whose
    target is "." says the service is decidedly not available: no targets at all."""
    if len(records) == 1 and records[0].target in (".", ""):
        return []
    ordered: list[Srv] = []
    for priority in sorted({r.priority for r in records}):
        pending = sorted((r for r in records if r.priority == priority),
                         key=lambda r: r.weight != 0)  # weight 0 at the beginning
        while pending:
            total = sum(r.weight for r in pending)
            draw = rng.randint(0, total)
            running = 0
            for i, record in enumerate(pending):
                running += record.weight
                if running >= draw:
                    ordered.append(pending.pop(i))
                    break
    return [r for r in ordered if r.target not in (".", "")]


async def candidate_urls(resolver, domain: str | None, manual: list[str], tls: bool,
                         rng: random.Random) -> tuple[list[Srv], list[tuple[str, str | None]]]:
    """H.1.4.1: the SRV records of `_ldap._tcp.<domain>` in the order they are tried, and
    (URL, address) pairs — SRV targets first, then the manual URLs (H.1.4.1.5) — each
    host resolved with the F.1.1 resolver (None when it does not resolve)."""
    from urllib.parse import urlsplit

    from profiles.network_address.resolver_io import ResolveError

    async def address(host: str) -> str | None:
        try:
            return (await resolver.addresses(host))[0]
        except ResolveError:
            return None

    records: list[Srv] = []
    if domain:
        try:
            records = order_srv(await resolver.srv(f"_ldap._tcp.{domain}."), rng)
        except ResolveError:
            records = []
    urls = [(f"{'ldaps' if r.port == 636 and tls else 'ldap'}://{r.target}:{r.port}",
             await address(r.target + ".")) for r in records]
    urls += [(url, await address(urlsplit(url).hostname)) for url in manual]
    return records, urls
