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
