"""The directory as the daemon keeps it: one connection, re-established when it drops,
registration kept up to date, lookups answered (from the cache when the directory is
away). ldap3 is synchronous, so every operation runs in a thread, never on the loop.

States (CONTRACTS.md): locating, registering, registered, awaiting-manual-registration,
unavailable, cached (lookups served from the cache), disabled.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

from profiles import statefile
from profiles.app_config import plan
from profiles.app_config.cache import LookupCache
from profiles.app_config.directory import (
    ConnectionLost,
    Directory,
    DirectoryError,
    Refused,
    Registration,
    Security,
    find_directory,
    manual_ldif_path,
)
from profiles.app_config.model import Device

log = logging.getLogger(__name__)
RETRY_MIN, RETRY_MAX = 5.0, 300.0  # s, while no directory can be reached

Candidates = Callable[[], Awaitable[list[tuple[str, str | None]]]]


class DirectoryService:
    def __init__(self, device: Device, security: Security, candidates: Candidates,
                 state_dir: Path, attempts: int, refresh_interval: float):
        self.device = device
        self.security = security
        self.candidates = candidates
        self.state_dir = state_dir
        self.attempts = attempts
        self.refresh_interval = refresh_interval
        self.cache = LookupCache(state_dir / "cache")
        self.saved = statefile.read_json(state_dir / "directory.json") or {}
        self.state = "locating"
        self.server: str | None = self.saved.get("server")
        self.base: str | None = self.saved.get("base_dn")
        self.reconnects = 0
        self.last_error: str | None = None
        self._dir: Directory | None = None

    # -- connection ------------------------------------------------------------------------

    async def _connect(self) -> Directory:
        urls = await self.candidates()
        if self.server and self.server not in [u for u, _ in urls]:
            urls.insert(0, (self.server, None))  # where the tree was found last time
        elif self.server:
            urls.sort(key=lambda pair: pair[0] != self.server)
        conn, url, base, tried = await asyncio.to_thread(find_directory, urls, self.security)
        if conn is None:
            raise DirectoryError("no DICOM configuration root: " + "; ".join(
                f"{t['url']}: {t['result']}" for t in tried))
        self.server, self.base = url, base
        self._dir = Directory(conn, base)
        return self._dir

    async def call(self, operation: Callable[..., object], *args: object) -> object:
        """Run `operation(directory, *args)` in a thread; reconnect once if it dropped."""
        for attempt in (1, 2):
            directory = self._dir or await self._connect()
            try:
                return await asyncio.to_thread(operation, directory, *args)
            except ConnectionLost as exc:
                log.info("directory connection lost (%s): reconnecting", exc)
                self.close()
                self.reconnects += 1
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self._dir is not None:
            self._dir.close()
            self._dir = None

    # -- registration ----------------------------------------------------------------------

    async def register(self, hostnames: dict[str, str]) -> str:
        """One registration attempt; returns (and sets) the resulting state."""
        self.state = "registering" if self.state != "awaiting-manual-registration" \
            else self.state
        try:
            result: Registration = await self.call(
                lambda d: d.register(self.device, hostnames, self.saved.get("titles", []),
                                     self.attempts))
        except Refused as exc:
            path = manual_ldif_path(self.state_dir, self.device)
            statefile.atomic_write(path, plan.registration_ldif(
                self.device, self.attempts, self.base, hostnames,
                self.saved.get("titles", [])).encode())
            self.last_error = str(exc)
            self.state = "awaiting-manual-registration"
            return self.state
        except DirectoryError as exc:
            self.last_error = str(exc)
            self.state = "unavailable"
            return self.state
        self.saved = {"server": self.server, "base_dn": self.base,
                      "device_dn": result.device_dn, "titles": result.titles}
        statefile.write_json(self.state_dir / "directory.json", self.saved)
        manual_ldif_path(self.state_dir, self.device).unlink(missing_ok=True)
        self.last_error = None
        self.state = "registered"
        return self.state

    async def maintain(self, hostnames: Callable[[], dict[str, str]],
                       changed: asyncio.Event | None = None,
                       on_state: Callable[[str], Awaitable[None]] | None = None) -> None:
        """Keep the registration: retry while unavailable (backing off), check every
        refresh_interval while awaiting an administrator, refresh when registered, and
        at once when `changed` is set (the address or name changed)."""
        retry = RETRY_MIN
        while True:
            before = self.state
            state = await self.register(hostnames())
            if on_state is not None and state != before:
                await on_state(state)
            if state == "unavailable":
                wait, retry = retry, min(retry * 2, RETRY_MAX)
            else:
                wait, retry = self.refresh_interval, RETRY_MIN
            if changed is None:
                await asyncio.sleep(wait)
                continue
            try:
                await asyncio.wait_for(changed.wait(), wait)
                changed.clear()
            except TimeoutError:
                pass

    # -- lookups ---------------------------------------------------------------------------

    async def lookup(self, title: str, refresh: bool = False) -> dict:
        """H.1.4.2 by AE title; the cache (marked stale) when the directory is away. With
        `refresh` the cached entry is dropped first (H.1.6: after a failed association)."""
        if refresh:
            self.cache.drop(title)
        try:
            answer = await self.call(lambda d: d.lookup(title))
        except DirectoryError as exc:
            self.last_error = str(exc)
            return self.cache.get(title) or {"v": 1, "aet": title, "found": False,
                                             "stale": True, "source": "cache"}
        if answer["found"]:
            self.cache.put(answer)
        else:
            self.cache.drop(title)
        return answer

    async def query(self, cluster: str | None, device_type: str | None) -> list[dict]:
        answers = await self.call(lambda d: d.query(cluster, device_type))
        for answer in answers:
            self.cache.put(answer)
        return answers
