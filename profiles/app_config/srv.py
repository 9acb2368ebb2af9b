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


class Staggered:
    """Which directory candidates to try, and when, RFC 8305 style (sans IO: times are
    passed in). Candidates come in the order to try them (RFC 2782: priority, then weighted
    random), each with a rank — its SRV priority. The first is tried at once; while
    attempts are still running, the next starts `stagger` seconds after the last one
    started, or at once when an attempt fails — so targets that never answer cost about
    `stagger` each, not a connect timeout each. No attempt starts once one has answered.
    The order decides among those that answer: an answer is taken when no candidate
    before it (a better priority, or the same one earlier in the weighted order) is still
    trying — or once `patience` seconds have passed since the first attempt started."""

    def __init__(self, ranks: Sequence[int], stagger: float = 0.25, patience: float = 1.0):
        self.ranks = list(ranks)
        self.stagger, self.patience = stagger, patience
        self.started: dict[int, float] = {}
        self.failed: set[int] = set()
        self.answered: set[int] = set()
        self._last_start: float | None = None

    def _running(self) -> list[int]:
        return [i for i in self.started if i not in self.failed and i not in self.answered]

    def start_due(self, now: float) -> list[int]:
        """The candidates to start now (each is started once)."""
        due = []
        while not self.answered and len(self.started) < len(self.ranks) and (
                not self._running() or now >= self._last_start + self.stagger):
            i = len(self.started)
            self.started[i] = self._last_start = now
            due.append(i)
        return due

    def fail(self, i: int) -> None:
        self.failed.add(i)

    def answer(self, i: int) -> None:
        self.answered.add(i)

    def _order(self, i: int) -> tuple[int, int]:
        return self.ranks[i], i

    def _best(self) -> int:
        return min(self.answered, key=self._order)

    def _deadline(self) -> float:
        return min(self.started.values()) + self.patience

    def _waited_for(self, i: int, now: float) -> list[int]:
        if now >= self._deadline():
            return []
        return [j for j in self._running() if self._order(j) < self._order(i)]

    def choice(self, now: float) -> int | None:
        """The candidate to take now, or None (nothing answered, or one before the best
        answer still has time to answer)."""
        if not self.answered:
            return None
        best = self._best()
        return None if self._waited_for(best, now) else best

    def exhausted(self) -> bool:
        """Every candidate was tried and failed."""
        return len(self.failed) == len(self.ranks)

    def wakeup(self, now: float) -> float | None:
        """When something is next due without an attempt finishing (None: wait for one)."""
        times = []
        if not self.answered and len(self.started) < len(self.ranks) and self._running():
            times.append(self._last_start + self.stagger)
        if self.answered and self._waited_for(self._best(), now):
            times.append(self._deadline())
        return min(times) if times else None
