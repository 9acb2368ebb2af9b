"""The Time Synchronization profile (PS3.15 Annex G) as the daemon and `dicom-agent time`
both run it: one adapter, so the two cannot disagree.

- servers: autodiscovery (broadcasts heard), else DHCP option 42, else manual, else the
  internal clock (G.1.1); names resolved one way — through the F.1.1 resolver when the
  lease gave DNS servers, else the system's resolver;
- the report: the status's `time` object (dicom-agent(8), SNAPSHOT), whatever the mode:
  `servers`
  always carries `address`, `offset_ms`, `delay_ms`, `stratum`, `accepted`, `reason`;
- chrony mode: synchronized means chronyd selected a source *and* its leap status is not
  "Not synchronised"; a failing `chronyc` is reported (`last_error`, internal clock) and
  retried, never raised;
- `once()` is the command's single round; `keep()` is the daemon's for-good loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import random
import socket
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from agent.adapters.address import dns_of
from agent.config import TimeSettings
from agent.daemon.boot import Event
from profiles import statefile_io
from profiles.network_address.lease import Lease
from profiles.network_address.resolver_io import ResolveError, Resolver
from profiles.time_sync import chrony_io, nts_io, timezone_io
from profiles.time_sync.sntp import RoundResult, SntpClient, StepPolicy
from profiles.time_sync.sntp_io import Listener, SntpDriver, SystemClock
from profiles.time_sync.sources import (
    ZONEINFO,
    ManualBackup,
    choose_servers,
    lease_zone,
    offset_and_control,
    utc_offset_why,
)
from profiles.time_sync.timezone import zone_for

log = logging.getLogger(__name__)
CHRONY_SETTLE = 20.0  # s for chronyd to select a source before "internal-clock"
CHRONY_RETRY = 10.0  # s between attempts while chronyc fails
NTS_RECHECK = 300.0  # s between NTS checks of a server that failed one

OnReport = Callable[[bool], Awaitable[None]]


def resolver_for(lease: Lease | None) -> Resolver | None:
    """The F.1.1 resolver of a lease (its DNS servers; search list, else its domain), or
    None when the lease gave no DNS servers (then the system resolver is used)."""
    servers, search = dns_of(lease)
    return Resolver(servers, search) if servers else None


async def resolve(names: list[str], resolver: Resolver | None
                  ) -> tuple[list[str], list[str]]:
    """The first address of each server name, and what could not be resolved."""
    addresses, failed = [], []
    for name in names:
        try:
            if resolver is not None:
                addresses += (await resolver.addresses(name))[:1]
            else:
                info = await asyncio.get_running_loop().getaddrinfo(name, None,
                                                                    family=socket.AF_INET)
                addresses.append(info[0][4][0])
        except (ResolveError, OSError, UnicodeError) as exc:
            failed.append(f"{name}: {exc}")
    return addresses, failed


def chrony_fields(state: dict) -> dict:
    """chronyd's view as the contract's `time` fields (chrony's own keys added)."""
    selected = [s for s in state["sources"] if s["state"] == "selected"]
    servers = []
    for s in state["sources"]:
        accepted = s["state"] in ("selected", "combined")
        servers.append({"address": s["address"], "offset_ms": s["offset_ms"],
                        "delay_ms": None, "stratum": s["stratum"], "accepted": accepted,
                        "reason": None if accepted else s["state"], "state": s["state"],
                        "poll": s["poll"], "reach": s["reach"], "error_ms": s["error_ms"]})
    return {"servers": servers, "chrony": state,
            "selected": selected[0]["address"] if selected else None,
            "offset_ms": state["tracking"]["offset_ms"],
            "synced": bool(selected) and state["tracking"]["leap"] != "Not synchronised"}


def sntp_fields(result: RoundResult) -> dict:
    return {"servers": list(result.servers), "selected": result.selected,
            "offset_ms": None if result.offset is None else round(result.offset * 1000, 3),
            "synced": result.synced, "correction": result.correction,
            "correction_refused": result.refused}


def clock_floor(state_dir: Path | None) -> float:
    """The wall time the clock is never stepped before (as systemd-timesyncd does): when
    the agent was installed, or the last saved time report, whichever is later."""
    floor = Path(__file__).stat().st_mtime
    if state_dir is not None:
        saved = statefile_io.read_json(state_dir / "time.json")
        wall = saved.get("saved_wall") if isinstance(saved, dict) else None
        if isinstance(wall, int | float) and not isinstance(wall, bool) and wall < 1e11:
            floor = max(floor, float(wall))
    return floor


class Timekeeping:
    def __init__(self, settings: TimeSettings, mode: str, interface: str,
                 rng: random.Random | None = None, state_dir: Path | None = None):
        self.settings = settings
        # One policy for the life of the process: a restarted time task keeps its count.
        self.policy = StepPolicy(settings.step_updates, settings.step_limit_s,
                                 clock_floor(state_dir))
        self.mode = mode
        self.interface = interface
        self.rng = rng or random.Random(os.urandom(16))
        self.rounds = 0
        self.heard: list[str] = []  # servers autodiscovery heard
        self.listener: Listener | None = None  # G.1.1.1: broadcast and 224.0.1.1
        self.source = "internal"
        self.primary: list[str] = []  # the addresses of the source in force
        self.backup = ManualBackup(settings.servers)  # G.1.1.1: the manual servers' backup
        self._resolver: Callable[[], Resolver | None] = lambda: None
        self.core: SntpClient | None = None
        self._nts_checked = 0.0  # monotonic time of the last NTS check
        self.report: dict = {"mode": mode, "source": None, "servers": [], "selected": None,
                             "offset_ms": None, "synced": False, "manual_backup": False,
                             "utc_offset_s": settings.utc_offset, "tz": None,
                             "correction": None, "unresolved": [], "last_error": None,
                             "timezone": {"zone": None, "applied": False,
                                          "reason": "no lease yet"}}

    def counters(self) -> dict:
        out = dict(self.core.counters) if self.core is not None else {}
        out["rounds"] = self.rounds
        return out

    async def discover(self, lease: Lease | None, manual: list[str] | None = None
                       ) -> tuple[str, list[str]]:
        """G.1.1: (source, server names). `manual` given means the operator chose."""
        if manual:
            return "manual", manual
        t = self.settings
        if t.broadcast_discovery:
            if self.listener is None:
                self.listener = Listener(self.interface, t.broadcast_window)
            self.heard = await self.listener.listen(t.broadcast_window)
            self._heard_report()
        return choose_servers(self.heard, lease.ntp if lease else (), t.servers)

    def _heard_report(self) -> None:
        self.report["autodiscovery"] = [{"address": a, "via": v}
                                        for a, v in self.listener.heard.items()]

    async def autodiscover(self, on_change: Callable[[], Awaitable[None]]) -> None:
        """The daemon's autodiscovery, for good: servers heard or lost (broadcast or
        224.0.1.1) change `heard`, and `on_change` evaluates G.1.1's order again."""
        if not self.settings.broadcast_discovery:
            return
        if self.listener is None:
            self.listener = Listener(self.interface, self.settings.broadcast_window)

        async def changed(servers: list[str]) -> None:
            self.heard = servers
            self._heard_report()
            await on_change()

        await self.listener.run(changed)

    async def follow(self, lease: Lease | None, resolver: Resolver | None) -> list[str]:
        """A lease event: G.1.1's order evaluated again — servers heard, else option 42,
        else the manual servers (an empty option 42 never leaves nothing), else the
        internal clock — and the addresses to use now. `time.source` says which."""
        source, names = choose_servers(self.heard, lease.ntp if lease else (),
                                       self.settings.servers)
        addresses, failed = await resolve(names, resolver)
        self.source = source if addresses else "internal"
        self.primary = addresses
        self.report.update(source=self.source, unresolved=failed)
        if self.backup.active:  # still silent? the next round says
            addresses = self.backup.servers(self.source, addresses,
                                            await self._manual_addresses())
        if not addresses:
            self.report.update(synced=False, selected=None)
        shown = [s.get("address") for s in self.report.get("servers") or []]
        if sorted(shown) != sorted(addresses):
            # `servers` names what is in use now; the next round fills in the figures.
            self.report.update(selected=None, servers=[
                {"address": a, "offset_ms": None, "delay_ms": None, "stratum": None,
                 "accepted": False, "reason": "not yet asked"} for a in addresses])
        return addresses

    async def _manual_addresses(self) -> list[str]:
        addresses, _ = await resolve(list(self.settings.servers), self._resolver())
        return addresses

    async def _backup_after(self, result: RoundResult) -> list[str] | None:
        """G.1.1.1 after a round: the servers to ask from now on when the backup starts
        or ends, else None."""
        answered = {s["address"] for s in result.servers if s.get("offset_ms") is not None}
        if not self.backup.after(self.source, self.primary, answered):
            return None
        self.report["manual_backup"] = self.backup.active
        if self.backup.active:
            log.warning("time: no %s server answered: asking the manual servers as well "
                        "(G.1.1.1 backup)", self.source)
        else:
            log.info("time: a %s server answers again: the manual servers dropped",
                     self.source)
        manual = await self._manual_addresses() if self.backup.active else []
        return self.backup.servers(self.source, self.primary, manual)

    def refresh_offset(self, lease: Lease | None, now: float | None = None) -> bool:
        """The UTC offset again (a lease event, a DST transition); True when it changed."""
        before = (self.report.get("utc_offset_s"), self.report.get("tz"))
        self.report.update(offset_and_control(lease, self.settings.utc_offset, self.mode,
                                              time.time() if now is None else now))
        return (self.report["utc_offset_s"], self.report["tz"]) != before

    def force(self) -> tuple[str, str | None, int]:
        """G.1.1.4's value in force (after refresh_offset or begin): its source, the tz
        shown and the offset now."""
        r = self.report
        return r.get("utc_offset_source") or "preset", r.get("tz"), r["utc_offset_s"]

    def begin(self, source: str, lease: Lease | None) -> None:
        self.source = source
        self.report.update(mode=self.mode, source=source, **offset_and_control(
            lease, self.settings.utc_offset, self.mode, time.time()))

    def _sntp_core(self) -> SntpClient:
        """The SNTP core, adjusting the clock only when the guards allow it, under the
        process's one step policy."""
        return SntpClient(self.rng, self.settings.step_threshold_ms / 1000, SystemClock(),
                          may_adjust=self.report["clock_control"]["allowed"],
                          policy=self.policy)

    def _internal(self, reason: str | None = None) -> None:
        self.report.update(source="internal", synced=False, selected=None,
                           last_error=reason)

    # -- the command: one round ------------------------------------------------------------

    async def once(self, lease: Lease | None, manual: list[str] | None = None) -> dict:
        source, names = await self.discover(lease, manual)
        self.begin(source, lease)
        zone, why = zone_for(*self.force()) if lease is not None else (None, "no lease")
        self.report["timezone"] = {"zone": zone, "applied": False, "reason": why if zone is None
                                   else f"{why}; applied by the daemon (set_timezone)"}
        addresses, failed = await resolve(names, resolver_for(lease))
        self.report["unresolved"] = failed
        if not addresses:
            self._internal()
            return self.report
        if self.mode == "chrony":
            try:
                servers, nts = await self._chrony_sources(addresses)
                await chrony_io.hand_over(self.settings.chrony_sourcedir, self.interface,
                                          servers, self.settings.chronyc_socket, nts)
                if not servers:
                    self._internal("no server passed the NTS check (nts = true)")
                    return self.report
                self._chrony_report(await self._chrony_settled())
            except chrony_io.ChronyError as exc:
                self._internal(str(exc))
            return self.report
        self.core = self._sntp_core()
        result = await SntpDriver(self.core).round(addresses)
        self.rounds += 1
        self.report.update(sntp_fields(result))
        return self.report

    async def _chrony_settled(self) -> dict:
        """chronyd's state once it has selected a source (or CHRONY_SETTLE has passed)."""
        deadline = time.monotonic() + CHRONY_SETTLE
        while True:
            state = await chrony_io.state(self.settings.chronyc_socket, self.settings.nts)
            if any(s["state"] == "selected" for s in state["sources"]) \
                    or time.monotonic() > deadline:
                return state
            await asyncio.sleep(0.5)

    async def _chrony_sources(self, addresses: list[str]) -> tuple[list[str], set[str]]:
        """What chronyd is given: (the servers, those of them with `nts`). Without `[time]
        nts`, every server. With it, NTS or nothing (G.1.3): only the servers whose NTS-KE
        service passes the check chronyd would make (nts_io.py: certificate, ALPN, the port
        answering), each with `nts` — a server that fails is left out, never written
        without `nts`, unless `nts_fallback`. Each server's finding goes to the report's
        `nts`; `unauthenticated` when none passed."""
        t = self.settings
        if not t.nts:
            return addresses, set()
        problems = await nts_io.usable(addresses, t.nts_ca_file)
        passed = [a for a in addresses if problems.get(a) is None]
        for address in addresses:
            if problems.get(address):
                log.warning("NTS: %s: %s: %s", address, problems[address],
                            "used without NTS (nts_fallback)" if t.nts_fallback
                            else "not used (NTS or nothing)")
        self.report["nts"] = {
            "servers": {a: {"certificate": problems.get(a) or "ok", "authenticated": False,
                            "used": problems.get(a) is None or t.nts_fallback}
                        for a in addresses},
            "unauthenticated": not passed, "fallback": t.nts_fallback}
        self._nts_checked = time.monotonic()
        return (addresses if t.nts_fallback else passed), set(passed)

    def nts_unauthenticated(self) -> bool:
        """NTS is configured and no server could be authenticated (`time-unauthenticated`)."""
        return bool(self.report.get("nts", {}).get("unauthenticated"))

    def _nts_recheck_due(self) -> bool:
        """A server left out (or used without NTS) for its NTS check is checked again
        every NTS_RECHECK: a certificate put right is taken without a restart."""
        nts = self.report.get("nts")
        return bool(nts) and any(s["certificate"] != "ok" for s in nts["servers"].values()) \
            and time.monotonic() - self._nts_checked > NTS_RECHECK

    def _chrony_report(self, state: dict) -> None:
        self.report.update(chrony_fields(state))
        auth = state.get("authdata")
        if auth is not None and self.report.get("nts"):
            for address, entry in self.report["nts"]["servers"].items():
                data = auth.get(address, {})
                entry["authenticated"] = data.get("mode") == "NTS" and \
                    data.get("cookies", 0) > 0

    # -- the daemon: for good ----------------------------------------------------------------

    async def keep(self, lease: Callable[[], Lease | None],
                   resolver: Callable[[], Resolver | None],
                   updates: asyncio.Queue[list[str]], on_report: OnReport) -> None:
        """Keep time: SNTP rounds as the poll says, or chronyd fed and watched. `updates`
        brings the server addresses of each new lease."""
        self._resolver = resolver
        source, names = await self.discover(lease())
        self.begin(source, lease())
        addresses, failed = await resolve(names, resolver())
        self.primary = addresses
        self.report["unresolved"] = failed
        if not addresses:
            self._internal()
            await on_report(False)  # G.1.1.5: the internal clock, unsynchronized
        if self.mode == "chrony":
            await self._keep_chrony(addresses, updates, on_report)
            return
        self.core = self._sntp_core()
        updates.put_nowait(addresses)  # a later lease may bring others

        async def on_round(result: RoundResult) -> None:
            self.rounds += 1
            self.report.update(sntp_fields(result), last_error=None)
            changed = await self._backup_after(result)
            if changed is not None:
                updates.put_nowait(changed)
            await on_report(result.synced)

        await SntpDriver(self.core).run(updates, on_round)

    async def _keep_chrony(self, addresses: list[str], updates: asyncio.Queue[list[str]],
                           on_report: OnReport) -> None:
        t = self.settings
        handed: list[str] | None = None
        settle_until = 0.0
        reported = False
        while True:
            while not updates.empty():
                addresses = updates.get_nowait() or addresses
            if not addresses:  # until a lease brings servers
                addresses = await updates.get()
                continue
            try:
                if addresses != handed or self._nts_recheck_due():
                    servers, nts = await self._chrony_sources(addresses)
                    # G.1.1.1's backup, chronyd's way: the manual servers beside the
                    # discovered ones, which are `prefer`. Not with NTS (NTS or nothing:
                    # the manual servers are not checked).
                    backup = await self._manual_addresses() if not t.nts \
                        and self.backup.applies(self.source) else []
                    await chrony_io.hand_over(t.chrony_sourcedir, self.interface, servers,
                                              t.chronyc_socket, nts, backup)
                    handed = addresses
                    # chronyd needs a few samples (iburst) before it selects a source.
                    settle_until = time.monotonic() + CHRONY_SETTLE
                    if not servers:  # NTS or nothing, and nothing passed
                        self._internal("no server passed the NTS check (nts = true)")
                        reported = True
                        await on_report(False)
                        with contextlib.suppress(TimeoutError):
                            addresses = await asyncio.wait_for(updates.get(),
                                                               NTS_RECHECK) or addresses
                        continue
                state = await chrony_io.state(t.chronyc_socket, t.nts)
                fields = chrony_fields(state)
            except chrony_io.ChronyError as exc:
                handed = None
                log.warning("chrony: %s", exc)
                if self.report["last_error"] != str(exc) or not reported:
                    self._internal(str(exc))
                    reported = True
                    await on_report(False)
                await asyncio.sleep(CHRONY_RETRY)
                continue
            self._chrony_report(state)
            self.report["last_error"] = None
            if self.report["source"] == "internal":
                self.report["source"] = self.source  # chronyc answers again
            if fields["synced"] or time.monotonic() > settle_until:
                reported = True
                await on_report(fields["synced"])
            # Until the next look at chronyd — or at once when a lease brings servers.
            with contextlib.suppress(TimeoutError):
                new = await asyncio.wait_for(
                    updates.get(), 0.5 if not reported else 10 if not fields["synced"] else 64)
                addresses = new or addresses


def next_offset_change(lease: Lease | None, now: float, zoneinfo_dir: Path = ZONEINFO
                       ) -> float | None:
    """When the UTC offset in force next changes (a DST transition of option 101's zone or
    option 100's rule), within a year; None when it never does. Computed, not polled."""
    if lease is None:
        return None
    _, tz, source, _ = utc_offset_why(lease.tz_name, lease.tz_posix, None, 0, now,
                                      zoneinfo_dir)
    if source == "dhcp-tz-name":
        import zoneinfo  # only for option 101: it reads sysconfig at import

        with (zoneinfo_dir / tz).open("rb") as fh:
            zone = zoneinfo.ZoneInfo.from_file(fh, key=tz)

        def offset(at: float) -> int:
            return int(dt.datetime.fromtimestamp(at, dt.UTC).astimezone(zone)
                       .utcoffset().total_seconds())
    elif source == "dhcp-posix-tz":
        from profiles import posix_tz  # only for option 100: its rules cost ~3 ms to import

        offset = posix_tz.parse(tz).offset_at  # parsed once, evaluated many times
    else:
        return None  # option 2 and the preset never change by themselves
    here = offset(now)
    step, horizon = 3600.0, now + 366 * 86400
    at = now + step
    while at < horizon:
        if offset(at) != here:
            low, high = at - step, at  # the change lies between: bisect to the second
            while high - low > 1:
                mid = (low + high) / 2
                low, high = (mid, high) if offset(mid) == here else (low, mid)
            return high
        at += step
    return None


DAY = 86400.0  # s: the longest the offset timer sleeps before it looks again


class TimeService:
    """The time profile in the daemon, around Timekeeping: keeps time, evaluates G.1.1's
    order again on every lease and autodiscovery change, keeps the UTC offset across DST
    transitions, saves `time.json`, raises the time events and hooks, and answers
    `accept-time-step`. It owns the time part of the snapshot. A lease event only marks
    the lease changed: the DNS look-ups of the NTP servers' names run in this profile's
    own task, never inside the DHCP driver's callback."""

    def __init__(self, tk: Timekeeping, bus, state_dir: Path, discover_timeout: float,
                 lease: Callable[[], Lease | None], resolver: Callable[[], Resolver]):
        self.tk = tk
        self.bus = bus
        self.state_dir = state_dir
        self.discover_timeout = discover_timeout
        self.lease = lease
        self._resolver = resolver
        self.updates: asyncio.Queue[list[str]] = asyncio.Queue()
        self.settled = asyncio.Event()  # a first result: synced or the internal clock
        self.addressed = asyncio.Event()  # set by the daemon with an address
        self._lease_changes = asyncio.Event()
        self._offset_rules = asyncio.Event()
        self._offset_rule: tuple | None = None
        self._offset_known = False
        self._offset_hook = False  # a lease changed the offset: hooked after the zone

    def resolver(self) -> Resolver | None:
        lease = self.lease()
        return self._resolver() if lease is not None and lease.dns else None

    def snapshot(self) -> dict:
        return dict(self.tk.report)

    def ops(self) -> dict:
        return {"accept-time-step": self._op_accept_time_step}

    def tasks(self) -> dict:
        return {"time": self.keep, "offset": self.offset, "discovery": self.discovery,
                "time-servers": self.follow_leases}

    # -- the tasks --------------------------------------------------------------------------

    async def keep(self) -> None:
        # No address after a while: the manual servers may still be reachable.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.addressed.wait(), self.discover_timeout + 10)
        await self.tk.keep(self.lease, self.resolver, self.updates, self.result)

    async def discovery(self) -> None:
        """G.1.1.1 autodiscovery for good (`broadcast_discovery`): after the time task's
        first listening window, servers heard or lost re-evaluate G.1.1's order."""
        await self.settled.wait()
        await self.tk.autodiscover(self.servers_changed)

    async def follow_leases(self) -> None:
        """Each lease change (marked by lease_changed): G.1.1's order evaluated again."""
        while True:
            await self._lease_changes.wait()
            self._lease_changes.clear()
            await self.servers_changed()

    async def servers_changed(self) -> None:
        """G.1.1's order evaluated again — autodiscovered > option 42 > manual > internal
        clock — and what it gives handed to the time task."""
        addresses = await self.tk.follow(self.lease(), self.resolver())
        self.updates.put_nowait(addresses)
        if not addresses and self.settled.is_set():
            await self.result(False)  # G.1.1.5: nothing left but the internal clock
        else:
            await self.bus.publish()

    def lease_changed(self) -> None:
        """Every lease event (from the DHCP driver's callback: nothing is awaited here).
        The servers are evaluated again in this profile's task; a new option 2, 100 or 101
        changes the offset at once, and its timer follows the rule in force."""
        lease = self.lease()
        self._lease_changes.set()
        rule = lease_zone(lease)
        if rule != self._offset_rule:  # a renewal with the same rule: the timer stands
            self._offset_rule = rule
            self._offset_rules.set()
        if self.tk.refresh_offset(lease) and self._offset_known:
            self._offset_hook = True  # once the zone is applied (the offset task)
        self._offset_known = True  # the first lease sets it; later ones change it

    async def offset(self) -> None:
        """The UTC offset across DST transitions: a timer to the next transition of the
        rule in force (option 101's zone or option 100's rule), re-armed on lease events."""
        while True:
            self._offset_rules.clear()
            reported = self.tk.report["timezone"]
            if await self.apply_zone() or self._offset_hook:
                self._offset_hook = False
                self.bus.hook("time-offset-changed")
                await self.bus.publish()
            elif self.tk.report["timezone"] != reported:  # a reason, not a new local time
                await self.bus.publish()
            when = next_offset_change(self.lease(), time.time())
            wait = DAY if when is None else min(max(when - time.time(), 0.0) + 0.5, DAY)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._offset_rules.wait(), wait)
                continue  # a new lease: compute again
            if self.tk.refresh_offset(self.lease()):
                log.info("UTC offset now %+d s", self.tk.report["utc_offset_s"])
                self.bus.hook("time-offset-changed")
                await self.bus.publish()

    async def apply_zone(self) -> bool:
        """G.1.1.4: the lease's zone made the device's local time (`set_timezone`), as
        `localtime` and `timezone` in the state directory (timezone_io); the status's
        `time.timezone` says which zone, whether it is applied and why (or why not). True
        when the local time changed. A lease without a zone leaves the zone in force (the
        image's, or the last applied)."""
        lease = self.lease()
        if lease is None:
            return False
        # Option 100 reads the tz database's files (~0.1 s): not on the loop.
        zone, why = await asyncio.to_thread(zone_for, *self.tk.force())
        applied, changed = False, False
        if zone is not None and self.tk.settings.applies_timezone:
            try:
                changed = timezone_io.apply(self.state_dir, zone)
                applied = True
                if changed:
                    log.info("local time zone now %s (%s)", zone, why)
            except OSError as exc:
                why = f"{why}; not applied: {exc}"
                log.warning("local time zone %s not applied: %s", zone, exc)
        elif zone is not None:
            why = f"{why}; not applied: set_timezone = false"
        self.tk.report["timezone"] = {"zone": zone, "applied": applied, "reason": why}
        return changed

    async def result(self, synced: bool) -> None:
        """A time report: saved for after a restart, and its events — synchronized or the
        internal clock, authenticated or not (NTS), a refused step — applied together."""
        first = not self.settled.is_set()
        self.settled.set()
        statefile_io.save_json(self.state_dir / "time.json",
                               {**self.tk.report, "saved_wall": time.time()})
        refused = self.tk.report.get("correction") == "refused"
        await self.bus.apply(
            Event.TIME_SYNCED if synced else Event.TIME_INTERNAL,
            Event.TIME_UNAUTHENTICATED if self.tk.nts_unauthenticated()
            else Event.TIME_AUTHENTICATED,
            Event.CLOCK_STEP_REFUSED if refused else Event.CLOCK_STEP_SETTLED)
        if synced and first:
            self.bus.hook("time-synced")

    async def _op_accept_time_step(self, req: dict) -> dict:
        """An operator accepts the correction the step policy refused: the next round
        applies it once."""
        self.tk.policy.accept()
        return {"v": 1, "ok": True, "refused": self.tk.report.get("correction_refused")}
