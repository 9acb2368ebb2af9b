"""The directory as the daemon keeps it: one connection, re-established when it drops,
registration kept up to date, lookups answered (from the cache when the directory is
away). ldap3 is synchronous, so every operation runs in a thread, never on the loop.

States (dicom-agent(8), the snapshot's directory.state): locating, registering (a server
with the DICOM root was found), lookup-only (no device described: nothing registered),
registered, awaiting-manual-registration, conflict (the device's identity is not clear:
an administrator decides, from the LDIF written), unavailable, cached (unavailable,
lookups served from the cache), disabled. `on_state(new, old)` hears every change, and every
successful registration (titles may have changed).

The daemon and the standalone `directory` commands both run this class.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from pathlib import Path

from profiles import statefile_io
from profiles.app_config import plan, registration
from profiles.app_config.cache_io import LookupCache
from profiles.app_config.ldap_io import (
    OPERATIONS,
    Conflict,
    ConnectionLost,
    Directory,
    DirectoryError,
    OddEntry,
    Refused,
    Registration,
    Security,
    connect,
    find_directory,
    manual_ldif_path,
)
from profiles.app_config.model import Device
from profiles.app_config.records_io import (
    intent_record,
    load_or_make_device_id,
    read_directory_record,
)

log = logging.getLogger(__name__)
RETRY_MIN, RETRY_MAX = 5.0, 300.0  # s, while no directory can be reached
REPLICA_CHECK_DEADLINE = 3.0  # s: the other providers asked at once, this long at most
REPLICA_CHECK_INTERVAL = 300.0  # s: between replica checks while registered (at most)
# s: between looks at our own provider for another holder of our titles (each 0.8-1.2x,
# so devices booted together spread out): what replication brings back after a partition
# is seen within this. Its cost: one indexed equality search per title on the connection
# the device already holds — 10,000 devices of two titles, ~670 searches/s site-wide.
TITLE_CHECK_INTERVAL = 30.0

# -> (SRV records in the order tried, (URL, address) pairs to try)
Candidates = Callable[[], Awaitable[tuple[list[dict], list[tuple[str, str | None]]]]]
OnState = Callable[[str, str], Awaitable[None]]


class DirectoryService:
    def __init__(self, device: Device, security: Security, candidates: Candidates,
                 state_dir: Path, attempts: int, refresh_interval: float,
                 trusted: Callable[[str], bool] = lambda url: True,
                 resolve: Callable[[str], Awaitable[list[str]]] | None = None):
        self.device = device
        self.security = security
        self.candidates = candidates
        self.state_dir = state_dir
        self.attempts = attempts
        self.refresh_interval = refresh_interval
        self.trusted = trusted  # which URLs may receive credentials
        self.resolve = resolve  # host name -> IPv4 addresses (the F.1.1 resolver)
        self.cache = LookupCache(state_dir / "cache")
        self.saved = read_directory_record(state_dir)
        self.intent_path = state_dir / "registration-intent.json"
        self.recovered: list[str] = []  # DNs a killed registration left, removed
        self.maybe_ours: list[str] = []  # a title whose reservation a kill cut short
        self.urls: list[tuple[str, str | None]] = []  # the providers found last
        self.replica_conflicts = 0  # titles given up to a device that reserved them first
        self._gave_up: tuple[str, list[str]] | None = None
        self._hostnames_last: dict[str, str] = {}
        self.title_changes: list[tuple[str, str]] = []  # an administrator's, last time
        self._device_id: str | None = None
        self.effective: dict | None = None  # what the directory says (effective())
        self.effective_changes: list[str] = []
        self.state = "locating"
        self.server: str | None = self.saved.get("server")
        self.base: str | None = self.saved.get("base_dn")
        self.reconnects = 0
        self.odd_entries = 0  # entries refused at the LDAP boundary
        self.last_error: str | None = None
        self.srv_records: list[dict] = []
        self.tried: list[dict] = []
        self.last: Registration | None = None
        self.adopted = False  # the last registration took over an entry made elsewhere
        self.on_state: OnState | None = None
        self._dir: Directory | None = None
        self._lock = asyncio.Lock()

    @property
    def device_id(self) -> str:
        """This device's identity marker: made (and saved) the first time a registration
        needs it — never by a read-only use such as `dicom-agent ldif`."""
        if self._device_id is None:
            self._device_id = load_or_make_device_id(self.state_dir)
        return self._device_id

    # -- connection ------------------------------------------------------------------------

    async def locate(self) -> Directory:
        """Connect to the first candidate holding a DICOM configuration root (H.1.4.1)."""
        self.srv_records, urls = await self.candidates()
        # Each candidate's rank: its SRV priority; the manual URLs after them, in order.
        records = len(self.srv_records)
        ranks = [int(r["priority"]) for r in self.srv_records][:len(urls)] + [
            65536 + n for n in range(len(urls) - records)]
        # Where the DICOM tree was found last time comes first (H.1.2 note: remember it).
        if self.server and self.server not in [u for u, _ in urls]:
            urls.insert(0, (self.server, None))
            ranks.insert(0, -1)
        elif self.server:
            first = [u for u, _ in urls].index(self.server)
            urls.insert(0, urls.pop(first))
            ranks.pop(first)
            ranks.insert(0, -1)
        conn, url, base, tried = await asyncio.to_thread(find_directory, urls, self.security,
                                                         self.trusted, ranks)
        self.tried = tried
        self.urls = urls  # every provider this device knows, for the replica check
        if conn is None:
            raise DirectoryError("no DICOM configuration root: " + "; ".join(
                f"{t['url']}: {t['result']}" for t in tried))
        self.server, self.base = url, base
        self._dir = Directory(conn, base, self.intent_path)
        return self._dir

    async def call(self, operation: Callable[..., object], *args: object) -> object:
        """Run `operation(directory, *args)` in a thread; reconnect once if it dropped.
        One operation at a time: the worker threads share one ldap3 connection, which is
        not safe for concurrent use."""
        async with self._lock:
            return await self._call(operation, *args)

    async def _call(self, operation: Callable[..., object], *args: object) -> object:
        for attempt in (1, 2):
            directory = self._dir or await self.locate()
            try:
                return await asyncio.to_thread(operation, directory, *args)
            except OddEntry:
                self.odd_entries += 1
                raise
            except ConnectionLost as exc:
                log.info("directory connection lost (%s): reconnecting", exc)
                self.close()
                self.reconnects += 1
                if attempt == 2:
                    raise
            finally:
                self.odd_entries += directory.odd_entries
                directory.odd_entries = 0
        raise AssertionError("unreachable")

    def counters(self) -> dict[str, int]:
        return {"reconnects": self.reconnects, "odd-entries": self.odd_entries,
                "operations": OPERATIONS.value, "replica-conflicts": self.replica_conflicts}

    def close(self) -> None:
        if self._dir is not None:
            self._dir.close()
            self._dir = None

    # -- registration ----------------------------------------------------------------------

    async def _set_state(self, state: str) -> str:
        old, self.state = self.state, state
        if self.on_state is not None and (state != old or state == "registered"):
            await self.on_state(state, old)
        return state

    def _has_cache(self) -> bool:
        directory = self.cache.directory
        return directory.is_dir() and any(directory.glob("*.json"))

    async def register(self, hostnames: dict[str, str]) -> str:
        """One registration attempt; returns (and sets) the resulting state. A device
        that describes no device (no name) registers nothing: `lookup-only` once a
        directory is found, for lookups."""
        self._hostnames_last = hostnames
        previous_dn = self.saved.get("device_dn")
        if not self.device.name:
            try:
                if self._dir is None:
                    async with self._lock:
                        await self.locate()
            except DirectoryError as exc:
                self.last_error = str(exc)
                return await self._set_state("cached" if self._has_cache() else "unavailable")
            self.last_error = None
            return await self._set_state("lookup-only")
        try:
            if self._dir is None:
                async with self._lock:
                    await self.locate()
            if self.state in ("locating", "unavailable", "cached"):
                await self._set_state("registering")
            result: Registration = await self.call(self._register_on, hostnames)
        except (Refused, Conflict) as exc:
            # An administrator takes it from here: the entries as LDIF, marker included.
            path = manual_ldif_path(self.state_dir, self.device)
            statefile_io.atomic_write(path, plan.registration_ldif(
                plan.with_marker(self.device, self.device_id), self.attempts, self.base,
                hostnames, self.saved.get("titles", [])).encode())
            self.last_error = str(exc)
            log.warning("directory: %s; LDIF for an administrator: %s", exc, path)
            return await self._set_state("conflict" if isinstance(exc, Conflict)
                                         else "awaiting-manual-registration")
        except DirectoryError as exc:
            self.last_error = str(exc)
            return await self._set_state("cached" if self._has_cache() else "unavailable")
        self.saved = {"server": self.server, "base_dn": self.base,
                      "device_dn": result.device_dn, "titles": result.titles,
                      "keys": result.keys,
                      "health_written": self.saved.get("health_written", {})}
        self.title_changes = result.title_changes
        if self._gave_up is not None:  # a title given way on a replica: which replaced it
            old, before = self._gave_up
            self._gave_up = None
            added = [t for t in result.titles if t not in before]
            self.title_changes = [*self.title_changes, (old, added[0])] if added else \
                self.title_changes
        self.maybe_ours = []
        for old, new in result.title_changes:
            log.info("directory override: AE title %s is now %s (changed in the directory)",
                     old, new)
        statefile_io.save_json(self.state_dir / "directory.json", self.saved)
        statefile_io.remove(manual_ldif_path(self.state_dir, self.device))
        # Found by name but registered by this device before: not an adoption.
        self.last, self.adopted = result, result.adopted and previous_dn != result.device_dn
        self.last_error = None
        await self._read_back(result.device_dn)
        state = await self._set_state("registered")
        lost = await self.check_replicas(result)  # after: a dead provider never delays boot
        return lost if lost is not None else state

    def _register_on(self, directory: Directory, hostnames: dict[str, str]) -> Registration:
        """One registration on one connection (a worker thread). What a cut-short attempt
        added — a kill -9, or a provider lost mid-registration, when this runs again on
        the next provider — is undone first, from the intent record."""
        intent = statefile_io.read_json(self.intent_path, intent_record)
        if intent:
            self.recovered, in_flight = directory.recover(intent)
            if in_flight:
                self.maybe_ours.append(in_flight)
            log.warning("directory: undid an interrupted registration: %s",
                        ", ".join(self.recovered) or "nothing had been added")
        owned = [*self.saved.get("titles", []), *self.maybe_ours]
        return directory.register(self.device, hostnames, owned, self.attempts,
                                  self.device_id, self.saved.get("keys", {}))

    async def _check_replicas(self, result: Registration) -> str | None:
        """Uniqueness across replicas: the other providers this device knows
        are asked, read-only, for AE entries with our titles under another device — they
        may have been reserved there while replication was cut. Of two, the older AE entry
        (entryCSN) keeps the title, then the lower device name; ours giving way releases
        it and registers again with the template's next (a fixed title is a conflict for
        an administrator). Unreachable providers are skipped: a cut link never blocks."""
        others = [(u, a) for u, a in self.urls if u != self.server]
        if not others or not result.titles:
            return None
        device = result.device_dn.lower()
        asks = {asyncio.create_task(asyncio.to_thread(
            _rivals_at, url, address, self.security, self.trusted(url), self.base,
            result.titles)): url for url, address in others}
        done, pending = await asyncio.wait(asks, timeout=REPLICA_CHECK_DEADLINE)
        for task in pending:  # its thread ends at the LDAP timeout and closes its connection
            log.info("replica check: %s: no answer in %.0f s", asks[task],
                     REPLICA_CHECK_DEADLINE)
        rivals = []
        for task in done:
            if task.exception() is not None:
                log.info("replica check: %s: %s", asks[task], task.exception())
                continue
            rivals += [(asks[task], r) for r in task.result() if r["device"].lower() != device]
        if not rivals:
            return None  # nobody else holds our titles anywhere: no need to read ours
        mine = {e["title"]: e for e in await self.call(
            lambda d: d.run(registration.ae_entries(self.base, result.titles)))
            if e["device"].lower() == device}
        for url, rival in rivals:
            ours = mine.get(rival["title"])
            if ours is not None and not registration.keeps(ours, rival):
                return await self._give_way(ours, rival, url)
        return None

    async def _give_way(self, ours: dict, rival: dict, url: str) -> str:
        title = ours["title"]
        other = plan.rdn_value(rival["device"])
        self.replica_conflicts += 1
        fixed = any(ae.title == title for ae in self.device.aes)
        message = (f"AE title {title} is also device {other}'s, reserved before ours "
                   f"on a replica (seen on {url})")
        if fixed:
            self.last_error = message + ": a fixed title, an administrator decides"
            log.warning("directory: %s", self.last_error)
            return await self._set_state("conflict")
        log.warning("directory: %s: giving it up and choosing another", message)
        await self.call(lambda d: d.run(registration.give_up(ours["dn"])))
        keys = {k: t for k, t in self.saved.get("keys", {}).items() if t != title}
        self._gave_up = (title, list(self.saved.get("titles", [])))
        self.saved = {**self.saved, "titles": [t for t in self.saved.get("titles", [])
                                               if t != title], "keys": keys}
        statefile_io.save_json(self.state_dir / "directory.json", self.saved)
        return await self.register(self._hostnames_last)

    async def _read_back(self, device_dn: str) -> None:
        """Administrators' edits flow back: the directory-side attributes of
        the device's own entry, read at each registration (every refresh_interval, on a
        renew); `effective_changes` names what changed since the last read."""
        try:
            effective = await self.call(lambda d: d.effective(device_dn))
        except DirectoryError as exc:
            log.warning("reading back %s: %s", device_dn, exc)
            self.effective_changes = []
            return
        # The agent's own dicomInstalled FALSE for a down AE is not an administrator's edit.
        for title, before in self.saved.get("health_written", {}).items():
            ae = effective["aes"].get(title)
            if ae is not None and ae["installed"] is False:
                ae["installed"] = effective["installed"] if before is None else before == "TRUE"
        self.effective_changes = _changed_attributes(self.effective, effective)
        for name in self.effective_changes:
            log.info("directory override: %s of %s changed by the directory", name,
                     device_dn)
        self.effective = effective

    async def mark_health(self, title: str, down: bool) -> None:
        """[agent] health_updates_directory: a down AE is written dicomInstalled FALSE, and
        restored when it answers again — only if the entry still holds the agent's FALSE
        (an administrator's later edit stands). What was there before is kept in
        directory.json (`health_written`), so a restart restores it too."""
        device_dn = self.saved.get("device_dn")
        if not device_dn:
            return
        written = dict(self.saved.get("health_written", {}))
        ae_dn = plan.ae_dn(device_dn, title)
        try:
            if down and title not in written:
                done, before = await self.call(
                    lambda d: d.run(registration.set_ae_installed(ae_dn, False)))
                if done:
                    written[title] = before
                    log.info("directory: %s written dicomInstalled FALSE (not answering)",
                             title)
            elif not down and title in written:
                before = written.pop(title)
                done, now = await self.call(lambda d: d.run(registration.set_ae_installed(
                    ae_dn, None if before is None else before == "TRUE", only_if="FALSE")))
                log.info("directory: %s %s", title, "restored (answering again)" if done else
                         f"left as the directory has it now ({now})")
            else:
                return
        except DirectoryError as exc:
            log.warning("directory: health of %s not written: %s", title, exc)
            return
        self.saved["health_written"] = written
        statefile_io.save_json(self.state_dir / "directory.json", self.saved)

    async def unregister(self, keep_titles: bool) -> dict:
        """`dicom-agent directory unregister`: this device's own entries removed and its
        titles released (or, keeping them, set not installed). A refusal writes the
        change as LDIF for an administrator (Refused is raised with `ldif` set)."""
        try:
            dn, changed, titles = await self.call(
                lambda d: d.unregister(self.device, self.device_id, keep_titles))
        except Refused as exc:
            path = manual_ldif_path(self.state_dir, self.device).with_suffix(".remove.ldif")
            statefile_io.atomic_write(path, _removal_ldif(self, keep_titles).encode())
            exc.ldif = path
            raise
        if not keep_titles:
            (self.state_dir / "directory.json").unlink(missing_ok=True)
            self.saved = {}
        return {"device_dn": dn, "changed": changed, "titles_released": titles,
                "kept": keep_titles}

    async def maintain(self, hostnames: Callable[[], dict[str, str]],
                       changed: asyncio.Event | None = None) -> None:
        """Keep the registration: retry while unavailable (backing off), check every
        refresh_interval while awaiting an administrator, refresh when registered, and
        at once when `changed` is set (the address or name changed)."""
        retry = RETRY_MIN
        loop = asyncio.get_running_loop()
        while True:
            state = await self.register(hostnames())
            if state in ("unavailable", "cached"):
                wait, retry = retry, min(retry * 2, RETRY_MAX)
            else:
                wait, retry = self.refresh_interval, RETRY_MIN
            refresh_at = loop.time() + wait
            # Between refreshes, the replicas are asked again: a rival reserved
            # while replication was cut shows up on either side once it can be reached.
            replicas_at = loop.time() + REPLICA_CHECK_INTERVAL
            while (left := refresh_at - loop.time()) > 0:
                step = min(left, TITLE_CHECK_INTERVAL * random.uniform(0.8, 1.2)) \
                    if self.state == "registered" else left
                if changed is None:
                    await asyncio.sleep(step)
                else:
                    try:
                        await asyncio.wait_for(changed.wait(), step)
                        changed.clear()
                        break
                    except TimeoutError:
                        pass
                if self.state == "registered" and self.last is not None and \
                        refresh_at - loop.time() > 0:
                    if loop.time() >= replicas_at:
                        replicas_at = loop.time() + REPLICA_CHECK_INTERVAL
                        await self.check_replicas(self.last)
                    else:
                        await self.check_titles(self.last)

    async def check_titles(self, result: Registration) -> str | None:
        """Our own provider asked for other holders of our titles: after a partition
        heals, a rival reserved on the other side while it was cut replicates here, and is
        resolved as the replica check resolves it (the older AE entry keeps the title).
        The state after giving a title way; None if nothing changed."""
        if not result.titles:
            return None
        device = result.device_dn.lower()
        try:
            entries = await self.call(
                lambda d: d.run(registration.ae_entries(self.base, result.titles)))
        except DirectoryError as exc:
            log.info("title check: %s", exc)
            return None
        mine = {e["title"]: e for e in entries if e["device"].lower() == device}
        for rival in entries:
            ours = mine.get(rival["title"])
            if rival["device"].lower() != device and ours is not None \
                    and not registration.keeps(ours, rival):
                return await self._give_way(ours, rival, self.server or "this provider")
        return None

    async def check_replicas(self, result: Registration) -> str | None:
        """_check_replicas; the state after giving a title way, None if nothing changed.
        A provider that fails the check leaves things as they are."""
        try:
            return await self._check_replicas(result)
        except DirectoryError as exc:
            log.info("replica check: %s", exc)
            return None

    # -- lookups ---------------------------------------------------------------------------

    async def lookup(self, title: str, refresh: bool = False) -> dict:
        """H.1.4.2 by AE title; the cache (marked stale) when the directory is away.
        Every lookup asks the directory first, so `refresh` (H.1.6: after a failed
        association) needs no more: the cached entry is replaced only when a fresh answer
        arrives, and stays the offline fallback during an outage."""
        try:
            answer = await self.call(lambda d: d.lookup(title))
        except DirectoryError as exc:
            self.last_error = str(exc)
            return self.cache.get(title) or {"v": 1, "aet": title, "found": False,
                                             "stale": True, "source": "cache"}
        if answer["found"]:
            await self.addresses(answer)
            self.cache.put(answer)
        else:
            self.cache.drop(title)
        return answer

    async def addresses(self, answer: dict) -> None:
        """Each connection's `addresses` (IPv4, [] when unresolvable), so an application
        can connect even where the system resolver is not the agent's."""
        for conn in answer.get("connections", []):
            addresses: list[str] = []
            if self.resolve is not None:
                try:
                    addresses = list(await self.resolve(conn["hostname"]))
                except Exception as exc:  # unresolvable: said by an empty list
                    log.debug("%s: %s", conn["hostname"], exc)
            conn["addresses"] = addresses

    async def query(self, cluster: str | None, device_type: str | None) -> list[dict]:
        answers = await self.call(lambda d: d.query(cluster, device_type))
        for answer in answers:
            await self.addresses(answer)
            self.cache.put(answer)
        return answers


def _rivals_at(url: str, address: str | None, security: Security, trusted: bool,
               base: str, titles: list[str]) -> list[dict]:
    """AE entries with `titles` on another provider (read-only; credentials only where
    they may go)."""
    conn = connect(url, security if trusted else security.without_credentials(), address)
    directory = Directory(conn, base)
    try:
        return directory.run(registration.ae_entries(base, titles))
    finally:
        directory.close()


def _removal_ldif(service: DirectoryService, keep_titles: bool) -> str:
    """What unregister would have done, for an administrator's ldapmodify."""
    dn = service.saved.get("device_dn") or plan.device_dn(service.base, service.device.name)
    if keep_titles:
        return (f"# dicom-agent: device {service.device.name} out of service\n"
                f"dn: {dn}\nchangetype: modify\nreplace: dicomInstalled\n"
                "dicomInstalled: FALSE\n-\n")
    lines = [f"# dicom-agent: remove device {service.device.name} and release its titles",
             "# (ldapdelete -r the device entry, then the titles below)"]
    lines += [f"dn: {dn}", "changetype: delete", ""]
    for title in service.saved.get("titles", []):
        lines += [f"dn: {plan.title_dn(service.base, title)}", "changetype: delete", ""]
    return "\n".join(lines)


AE_ATTRIBUTES = {"installed": "dicomInstalled",
                 "application_cluster": "dicomApplicationCluster",
                 "preferred_called_ae_title": "dicomPreferredCalledAETitle",
                 "preferred_calling_ae_title": "dicomPreferredCallingAETitle",
                 "description": "dicomDescription"}


def _changed_attributes(before: dict | None, after: dict) -> list[str]:
    """The directory attribute names whose values differ ([] on the first read)."""
    if before is None:
        return []
    changed = set()
    if before["installed"] != after["installed"]:
        changed.add("dicomInstalled")
    for name in set(before.get("device", {})) | set(after.get("device", {})):
        if before.get("device", {}).get(name) != after.get("device", {}).get(name):
            changed.add(name)
    for title in set(before["aes"]) | set(after["aes"]):
        old, new = before["aes"].get(title), after["aes"].get(title)
        if old is None or new is None:
            changed.add("dicomAETitle")
            continue
        for key, name in AE_ATTRIBUTES.items():
            if old.get(key) != new.get(key):
                changed.add(name)
    return sorted(changed)
