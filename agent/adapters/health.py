"""AE health: is an acceptor AE the agent advertises actually answering?

A C-ECHO (Verification SOP Class) from `[agent] health_calling_aet` to the AE's title on
the device's own address and the port of its first listening connection — over TLS when
that connection has TLS cipher suites, trusting the directory's `ca_file`. pynetdicom is
imported here only, and only when an AE has `health_check = true` (check-config says
when it is missing). Blocking: the daemon runs it in a thread, never on the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from agent.daemon.boot import Event

log = logging.getLogger(__name__)
VERIFICATION = "1.2.840.10008.1.1"
TIMEOUT = 5.0  # s: connect, association, the C-ECHO each


@dataclass
class AeHealth:
    """The last health check of one AE title."""

    state: str = "unchecked"  # unchecked, up, down
    checked_at: float | None = None  # wall clock
    reason: str | None = None  # why down


def echo(calling: str, called: str, host: str, port: int, tls_hostname: str | None = None,
         ca_file: Path | None = None, timeout: float = TIMEOUT) -> str | None:
    """None when `called` at host:port accepted an association and answered a C-ECHO
    with Success; else why not."""
    from pynetdicom import AE  # only when a health check is configured

    ae = AE(ae_title=calling)
    ae.add_requested_context(VERIFICATION)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.connection_timeout = timeout
    tls_args = None
    if tls_hostname is not None:
        context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
        tls_args = (context, tls_hostname)
    try:
        assoc = ae.associate(host, port, ae_title=called, tls_args=tls_args)
    except (OSError, ssl.SSLError, ValueError, RuntimeError) as exc:
        return f"{type(exc).__name__}: {exc}"[:200]
    if not assoc.is_established:
        if assoc.is_rejected:
            return "association rejected"
        return "no association (nothing listening, or it did not answer)"
    try:
        status = assoc.send_c_echo()
        if status is None or "Status" not in status:
            return "no C-ECHO response"
        if int(status.Status) != 0:
            return f"C-ECHO status 0x{int(status.Status):04X}"
        return None
    finally:
        assoc.release()


def checked(health: AeHealth, problem: str | None, now: float | None = None) -> bool:
    """Record a check's outcome; True when the state changed."""
    new = "up" if problem is None else "down"
    changed = new != health.state
    health.state, health.reason = new, problem
    health.checked_at = time.time() if now is None else now
    return changed


HEALTH_SETTLE = 1.0  # s after the address before the first check (the port may open with it)


class HealthService:
    """AE health in the daemon: C-ECHO each health-checked acceptor AE on the device's own
    address, soon after the address (health never holds up `ready`), then every
    `health_interval`. It owns each AE's health (`state`), shown in the snapshot's
    `directory.effective`. Down: `ae-unreachable` (applied with the health, before anything
    is awaited: no snapshot shows one without the other), withdrawn from DNS-SD (`on_change`,
    before that snapshot too), the ae-down hook; up again: announced, ae-up. With
    `health_updates_directory`, the directory's dicomInstalled follows (`mark`)."""

    def __init__(self, config, bus, address: Callable[[], str | None],
                 titles: Callable[[], list[str | None]],
                 mark: Callable[[str, bool], Awaitable[None]] | None,
                 on_change: Callable[[], None]):
        self.config = config
        self.bus = bus
        self.address = address
        self.titles = titles
        self.mark = mark  # the directory's update, when registered and configured
        self.on_change = on_change
        self.state: dict[str, AeHealth] = {}  # per AE title, for health-checked AEs
        self.addressed = None  # the daemon's: an address is up

    def of(self, title: str | None) -> AeHealth:
        return self.state.get(title, AeHealth()) if title is not None else AeHealth()

    def any_down(self) -> bool:
        return any(self.of(t).state == "down" for t in self.titles() if t is not None)

    def tasks(self) -> dict:
        return {"health": self.run}

    async def run(self) -> None:
        device = self.config.device
        watched = [(i, ae) for i, ae in enumerate(device.aes) if ae.health_check]
        if not watched:
            return
        a = self.config.agent
        ca_file = self.config.directory.ca_file
        await self.addressed.wait()
        await asyncio.sleep(HEALTH_SETTLE)
        while True:
            address = self.address()
            for i, ae in watched:
                titles = self.titles()
                title = titles[i] if i < len(titles) else None
                conn = next((c for c in map(device.connection, ae.connections)
                             if c.port is not None), None)
                if title is None or address is None or conn is None:
                    continue
                tls = (conn.hostname or address) if conn.tls_cipher_suites else None
                problem = await asyncio.to_thread(
                    echo, a.health_calling_aet, title, address, conn.port, tls, ca_file)
                state = self.state.setdefault(title, AeHealth())
                before = state.state
                if checked(state, problem):
                    self.on_change()  # withdrawn from the snapshot before it is published
                    await self.bus.apply(Event.AE_DOWN if self.any_down() else Event.AES_UP)
                    log.info("AE %s: %s%s", title, state.state,
                             f" ({problem})" if problem else "")
                    if state.state == "down" or before == "down":
                        self.bus.hook("ae-" + state.state,
                                      {"health_aet": title, "health_reason": problem})
                    if a.health_updates_directory and self.mark is not None:
                        # Down: flagged FALSE; up: restored, if the flag is still ours.
                        await self.mark(title, state.state == "down")
                        self.on_change()  # the directory's word on it has changed too
            await self.bus.apply(Event.AE_DOWN if self.any_down() else Event.AES_UP)
            await asyncio.sleep(a.health_interval)

