"""What an adapter may tell the daemon, and nothing more: boot events (applied together,
then exactly one snapshot published — a snapshot never shows half of what happened) and
hooks to run. The router (router.py) makes the one Bus and hands it to every adapter."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from agent.daemon.boot import Event


@dataclass(frozen=True)
class Bus:
    """`apply(*events)`: every event applied to the boot machine, then one snapshot
    published (with no event: the adapter's own part changed). `hook(name, extra)`: the
    hooks of an event that holds no transition, queued with the daemon's values and
    `extra`. `hook_now(name)`: run them now and wait (lease-lost, stopping)."""

    apply: Callable[..., Awaitable[None]]
    hook: Callable[..., None]
    hook_now: Callable[[str], Awaitable[None]]

    async def publish(self) -> None:
        await self.apply()


__all__ = ["Bus", "Event"]
