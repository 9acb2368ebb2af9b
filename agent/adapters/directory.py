"""The Application Configuration profile (PS3.15 H.1) as the daemon and `dicom-agent
directory ...` both run it: one adapter over the DirectoryService, so the two cannot
disagree about the domain, the servers tried, the security pattern or the host names.

- domain: `directory.domain`, else the lease's domain (option 15), else its first search
  domain (option 119);
- servers: where the DICOM tree was found last time, then `_ldap._tcp.<domain>` in RFC
  2782 order, then the manual URLs, each name resolved with the F.1.1 resolver;
- host names: `dicomHostname` per connection (H.1.1.3) from the connection, the lease's
  FQDN or `network.hostname`, qualified with the domain, else the address.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from agent.config import Config
from agent.daemon.boot import Event
from profiles.app_config import plan
from profiles.app_config.records_io import read_directory_record
from profiles.app_config.srv import candidate_urls
from profiles.network_address.lease import Lease
from profiles.network_address.resolver_io import Resolver

if TYPE_CHECKING:
    from profiles.app_config.directory_io import DirectoryService
    from profiles.app_config.ldap_io import Security


def security_for(config: Config) -> Security:
    """The Table H.1-15 pattern of `[directory]`, with the password read from its file."""
    from profiles.app_config.ldap_io import Security  # ldap3: only with a directory
    d = config.directory
    password = d.password_file.read_text().rstrip("\n") if d.password_file else None
    return Security(d.security, d.bind_dn, password, str(d.ca_file) if d.ca_file else None,
                    str(d.client_cert) if d.client_cert else None,
                    str(d.client_key) if d.client_key else None, d.allow_cleartext_password)


def directory_domain(config: Config, lease: Lease | None) -> str | None:
    if config.directory.domain:
        return config.directory.domain
    if lease is not None:
        return lease.domain or (lease.search[0] if lease.search else None)
    return None


def saved_record(state_dir: Path) -> dict:
    return read_directory_record(state_dir)


def connection_hostnames(config: Config, lease: Lease | None, address: str | None = None
                         ) -> dict[str, str] | str:
    """dicomHostname per connection (H.1.1.3), or why none can be given."""
    domain = directory_domain(config, lease)
    fqdn = (lease.fqdn if lease else None) or config.network.hostname
    address = (lease.address if lease else None) or address
    out = {}
    for conn in config.device.connections:
        name = plan.connection_hostname(conn, fqdn, domain, address) or address
        if name is None:
            return (f"device.connection {conn.name!r}: no host name known (no lease saved, "
                    "no network.hostname, no connection hostname)")
        out[conn.name] = name
    return out


def candidates_for(config: Config, lease: Callable[[], Lease | None],
                   resolver: Callable[[], Resolver], rng: random.Random | None = None
                   ) -> Callable[[], Awaitable[tuple[list[dict], list[tuple[str, str | None]]]]]:
    """The DirectoryService's source of servers: SRV records in the order tried, and the
    (URL, address) pairs to try, read afresh each time (a new lease, a new domain)."""
    rng = rng or random.Random(os.urandom(8))

    async def candidates() -> tuple[list[dict], list[tuple[str, str | None]]]:
        d = config.directory
        srv, urls = await candidate_urls(resolver(), directory_domain(config, lease()),
                                         list(d.servers), d.security == "tls", rng)
        records = [{"priority": r.priority, "weight": r.weight, "port": r.port,
                    "target": r.target} for r in srv]
        return records, urls

    return candidates


def credentials_may_go_to(config: Config) -> Callable[[str], bool]:
    """Where a password or client certificate may be sent: a server named in
    `[directory] servers`, or a host inside the configured — never a DHCP-supplied —
    `[directory] domain` (an SRV target there). A remembered server passes the same rule."""
    d = config.directory
    named = {urlsplit(url).hostname for url in d.servers}
    domain = d.domain.lower().rstrip(".") if d.domain else None

    def trusted(url: str) -> bool:
        host = (urlsplit(url).hostname or "").lower().rstrip(".")
        return host in named or (domain is not None and (
            host == domain or host.endswith("." + domain)))

    return trusted


def service_for(config: Config, lease: Callable[[], Lease | None],
                resolver: Callable[[], Resolver]) -> DirectoryService:
    from profiles.app_config.directory_io import DirectoryService  # ldap3: only with a directory
    d = config.directory
    async def resolve(name: str) -> list[str]:
        return await resolver().addresses(name)

    return DirectoryService(config.device, security_for(config),
                            candidates_for(config, lease, resolver), config.agent.state_dir,
                            d.title_attempts, d.refresh_interval,
                            credentials_may_go_to(config), resolve)


STATE_EVENTS = {"registering": Event.DIRECTORY_LOCATED,
                "registered": Event.DIRECTORY_REGISTERED,
                "awaiting-manual-registration": Event.DIRECTORY_AWAITING,
                "conflict": Event.DIRECTORY_CONFLICT,
                "unavailable": Event.DIRECTORY_UNAVAILABLE, "cached": Event.DIRECTORY_CACHED,
                "lookup-only": Event.DIRECTORY_LOOKUP_ONLY}


class DirectoryProfile:
    """The directory in the daemon (H.1): locates and registers through the
    DirectoryService once there is an address (and, for TLS with a clock to set, once time
    settled), keeps the registration, owns the directory state, the titles in force, the
    directory part of the snapshot (with `effective`: per AE what is in force and its
    health) and the ops `lookup`, `query` and `purge-cache`. `changed` is set when the
    connections' host names must be written again (a new address, a renewal asked for)."""

    def __init__(self, config: Callable[[], Config], bus, lease: Callable[[], Lease | None],
                 auto_ip: Callable[[], str | None], resolver: Callable[[], Resolver],
                 health, addressed, time_settled, on_titles: Callable[[], None]):
        self.config = config
        self.bus = bus
        self.lease, self.auto_ip, self.resolver = lease, auto_ip, resolver
        self.health = health  # HealthService: effective shows each AE's health
        self.addressed, self.time_settled = addressed, time_settled
        self.on_titles = on_titles  # titles known, or known to be missing: announce
        self.service: DirectoryService | None = None
        self.state = "disabled" if not config().directory.enabled else "locating"
        self.changed = asyncio.Event()
        self.titles = self.titles_in_force()
        self.fallback: Callable[[str], Awaitable[dict | None]] | None = None  # DNS-SD

    def titles_in_force(self) -> list[str | None]:
        from agent.adapters.announce import titles_for

        saved = self.service.saved if self.service is not None else \
            saved_record(self.config().agent.state_dir)
        titles, keys = saved.get("titles", []), saved.get("keys", {})
        return titles_for(self.config().device, titles if isinstance(titles, list) else [],
                          keys if isinstance(keys, dict) else {})

    def device_changed(self) -> None:
        """A reload brought another [device]: register and announce it."""
        if self.service is not None:
            self.service.device = self.config().device
        self.titles = self.titles_in_force()
        self.changed.set()

    # -- what the snapshot shows ------------------------------------------------------------

    def effective(self) -> list[dict]:
        """Per AE, what is in force: the directory's word on the directory-side attributes
        once read back (an administrator's edit wins), else the configuration's."""
        device = self.config().device
        read = self.service.effective if self.service is not None else None
        out = []
        for ae, title in zip(device.aes, self.titles, strict=False):
            if title is None:
                continue
            there = (read or {}).get("aes", {}).get(title)
            if there is not None:
                installed = there["installed"]
                clusters = there["application_cluster"]
                called = there["preferred_called_ae_title"]
            else:
                installed = device.installed if ae.installed is None else ae.installed
                clusters = sorted(ae.application_cluster)
                called = sorted(ae.preferred_called_ae_title)
            h = self.health.of(title)
            out.append({"aet": title, "installed": bool(installed),
                        "application_cluster": list(clusters),
                        "preferred_called_ae_title": list(called), "health": h.state,
                        "health_checked_at": _iso(h.checked_at), "health_reason": h.reason})
        return out

    def snapshot(self) -> dict:
        d = self.service
        return {"state": self.state, "server": d.server if d else None,
                "base_dn": d.base if d else None,
                "device_dn": d.saved.get("device_dn") if d else None,
                "ae_titles": [t for t in self.titles if t is not None],
                "last_error": d.last_error if d else None, "effective": self.effective()}

    def counters(self) -> dict:
        return self.service.counters() if self.service else {
            "reconnects": 0, "odd-entries": 0, "operations": 0, "replica-conflicts": 0}

    # -- the task ---------------------------------------------------------------------------

    def tasks(self) -> dict:
        return {"directory": self.run}

    async def run(self) -> None:
        config = self.config()
        d = config.directory
        if not d.enabled:
            await self.bus.apply(Event.DIRECTORY_DISABLED)
            self.on_titles()
            return
        await self.addressed.wait()
        if d.security == "tls" and config.time.mode != "observe":
            # Certificate checks want the clock the agent (or chronyd) is about to set;
            # observing, it sets none, so the directory goes on beside time.
            await self.time_settled.wait()
        if self.service is None:
            self.service = service_for(config, self.lease, self.resolver)
            self.service.on_state = self._on_state
        await self.service.maintain(self._hostnames, self.changed)

    def _hostnames(self) -> dict[str, str]:
        names = connection_hostnames(self.config(), self.lease(), self.auto_ip())
        if isinstance(names, str):  # no address at all: not reached once addressed
            raise RuntimeError(names)
        return names

    async def _on_state(self, state: str, old: str) -> None:
        self.state = state
        registered = state == "registered"
        if registered:
            self.titles = self.titles_in_force()
        await self.bus.apply(STATE_EVENTS[state])
        if registered and old != "registered":
            self.bus.hook("registered")
            if self.config().agent.health_updates_directory:
                # Not registered as installed before it has answered: a health-checked
                # AE not (yet) up is flagged FALSE, restored by its first good check.
                for ae, title in zip(self.config().device.aes, self.titles, strict=False):
                    if ae.health_check and title is not None and \
                            self.health.of(title).state != "up":
                        await self.service.mark_health(title, True)
        if registered and self.service.effective_changes:
            # Administrators' edits flow back: the applications are told.
            self.bus.hook("config-changed", {"changed": self.service.effective_changes})
        if registered and self.service.title_changes:
            # An administrator renamed one of our AEs: it is ours under the new title
            # (advertised); the applications must answer to it.
            self.bus.hook("title-changed")
        self.on_titles()

    async def mark_health(self, title: str, down: bool) -> None:
        if self.service is not None and self.state == "registered":
            await self.service.mark_health(title, down)

    # -- socket ops -------------------------------------------------------------------------

    def ops(self) -> dict:
        return {"lookup": self._op_lookup, "query": self._op_query,
                "purge-cache": self._op_purge}

    async def _op_lookup(self, req: dict) -> dict:
        title = req["aet"]
        if not isinstance(title, str):
            raise ValueError("aet must be a string")
        if self.service is not None:
            answer = await self.service.lookup(title, bool(req.get("refresh", False)))
            if answer["found"]:
                return answer
        found = await self.fallback(title) if self.fallback is not None else None
        return found or {"v": 1, "aet": title, "found": False, "stale": False,
                         "source": "directory"}

    async def _op_query(self, req: dict) -> dict:
        cluster, device_type = req.get("cluster"), req.get("device_type")
        if not isinstance(cluster, str | None) or not isinstance(device_type, str | None):
            raise ValueError("cluster and device_type are strings or null")
        if self.service is None:
            return {"v": 1, "results": []}
        from profiles.app_config.registration import DirectoryError  # see service_for
        try:
            results = await self.service.query(cluster, device_type)
        except DirectoryError as exc:  # unreachable: say so, as a lookup would be stale
            return {"v": 1, "results": [], "stale": True, "reason": str(exc)[:300]}
        return {"v": 1, "results": results}

    async def _op_purge(self, req: dict) -> dict:
        if self.service is not None:
            self.service.cache.purge()
        return {"v": 1, "ok": True}


def _iso(wall: float | None) -> str | None:
    """A wall-clock time as ISO 8601 UTC, to the second."""
    if wall is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(wall))
