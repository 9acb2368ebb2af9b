"""`dicom-agent run`: the boot agent, a router.

Each profile runs through its adapter — the same one its standalone command runs — as a
task under the supervisor (agent/daemon/supervise.py), which outlives the task's faults:

    address   — adapters/address.py: the DHCP client; resolver and NTP servers follow the lease
    time      — adapters/timekeeping.py: SNTP, or chronyd fed and watched
    directory — adapters/directory.py: the DirectoryService (after time when TLS wants a sane
                clock)
    announce  — adapters/announce.py: DNS-SD once an address and the titles are known
    hooks     — daemon/hooks.py: queued hooks, in order, off every profile's back

Profile events become boot events (agent/daemon/boot.py, the whole truth of the boot state);
every visible change reaches the status socket's watchers and systemd's STATUS=.
The daemon exits only on SIGTERM/SIGINT (0) or an invalid configuration at start (2).

A lost lease withdraws the advertisements (goodbyes), runs the lease-lost hooks, and
only then does the address go (the DHCP driver waits for this handler). Should the
address task be down when the lease runs out, the supervisor's while-down step does the
same and removes the address.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import signal
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from agent import faults
from agent.adapters import health
from agent.adapters.address import Address, dns_of, grace_for, remaining
from agent.adapters.announce import Announcer, titles_for
from agent.adapters.directory import connection_hostnames, saved_record, service_for
from agent.adapters.health import AeHealth
from agent.adapters.timekeeping import Timekeeping, next_offset_change
from agent.config import Config, load_config
from agent.daemon.boot import BootMachine, BootState, Event
from agent.daemon.hooks import Hooks
from agent.daemon.sdnotify import Notifier
from agent.daemon.status import StatusServer
from agent.daemon.supervise import Supervisor
from profiles import statefile_io
from profiles.errors import ConfigError
from profiles.network_address.dhcp_client import (
    AddressChanged,
    AddressConflict,
    LeaseBound,
    LeaseExpiring,
    LeaseLost,
    LeaseRenewed,
)
from profiles.network_address.dhcp_io import (
    AutoIpConfigured,
    AutoIpRemoved,
    CarrierChanged,
    lease_search,
)
from profiles.network_address.lease import Lease
from profiles.network_address.resolver_io import Resolver

if TYPE_CHECKING:
    from profiles.app_config import unicast_dnssd_io
    from profiles.app_config.directory_io import DirectoryService

log = logging.getLogger("dicom-agent")
DAY = 86400.0  # s: the longest the offset timer sleeps before it looks again
HEALTH_SETTLE = 1.0  # s after the address before the first AE health check
STATE_CHECK = 5.0  # s: how soon a state file the filesystem refused shows as degraded
STATE_RETRY = 10.0  # s: how often such a file is tried again
DIRECTORY_EVENTS = {"registering": Event.DIRECTORY_LOCATED,
                    "registered": Event.DIRECTORY_REGISTERED,
                    "awaiting-manual-registration": Event.DIRECTORY_AWAITING,
                    "conflict": Event.DIRECTORY_CONFLICT,
                    "unavailable": Event.DIRECTORY_UNAVAILABLE,
                    "cached": Event.DIRECTORY_CACHED}


def _iso(wall: float | None) -> str | None:
    """A wall-clock time as ISO 8601 UTC, to the second."""
    if wall is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(wall))


class Stopped(Exception):
    """Raised inside the TaskGroup to end it on SIGTERM/SIGINT."""


class Agent:
    def __init__(self, config: Config):
        self.config = config
        self.rng = random.Random(os.urandom(16))
        self.machine = BootMachine()
        self.notifier = Notifier()
        self.supervisor = Supervisor(self._supervision_changed)
        self.hooks = Hooks(config.agent.hooks_dir, config.agent.hook_timeout)
        self.resolver = Resolver()
        self.address = Address(config.network, config.agent, config.time.utc_offset,
                               self._on_dhcp, grace_for(config.agent),
                               config.network.release_on_stop, self.rng)
        self.lease: Lease | None = None
        self.auto_ip: str | None = None
        self._last_address: str | None = None
        self.timekeeping = Timekeeping(config.time, config.time.mode,
                                       config.network.interface, self.rng,
                                       config.agent.state_dir)
        self.ntp_updates: asyncio.Queue[list[str]] = asyncio.Queue()
        self.directory: DirectoryService | None = None
        self.directory_state = "disabled" if not config.directory.enabled else "locating"
        self.titles = titles_for(config.device, *self._owned_titles())
        self.health: dict[str, AeHealth] = {}  # per AE title, for health-checked AEs
        self.unicast: unicast_dnssd_io.UnicastAdvertiser | None = None  # [dnssd] unicast
        self.announcer = Announcer(config.device, config.network.hostname or config.device.name)
        self.address_changed = asyncio.Event()  # directory: rewrite the connections
        self.announce_wanted = asyncio.Event()  # announce: (re)advertise
        self.time_settled = asyncio.Event()
        self.addressed = asyncio.Event()
        self._offset_rules = asyncio.Event()  # the lease (and its tz options) changed
        self._offset_known = False
        self._offset_rule: tuple | None = None  # (option 101, option 100) the timer is for
        self.status_server = StatusServer(
            config.agent.status_socket, self.snapshot,
            {"lookup": self._op_lookup, "query": self._op_query, "renew": self._op_renew,
             "reload": self._op_reload, "purge-cache": self._op_purge,
             "accept-time-step": self._op_accept_time_step},
            config.agent.status_group, on_error=self._status_error)
        self._ready_once = False
        self._stop = asyncio.Event()

    # -- what a snapshot shows ------------------------------------------------------------

    def _owned_titles(self) -> tuple[list[str], dict[str, str]]:
        """(the titles the device holds, the title of each AE key) as last registered."""
        saved = self.directory.saved if self.directory is not None else \
            saved_record(self.config.agent.state_dir)
        titles, keys = saved.get("titles", []), saved.get("keys", {})
        return (titles if isinstance(titles, list) else [],
                keys if isinstance(keys, dict) else {})

    def snapshot(self) -> dict:
        lease = self.lease
        client = self.address.client
        if lease is None and client is not None and client.lease is not None \
                and self.address.state in ("bound", "renewing", "rebinding"):
            lease = client.lease  # bound this instant, being applied: say which
        network: dict[str, Any] = {"state": self.address.state,
                                   "interface": self.config.network.interface}
        if lease is not None:
            network.update(address=lease.address, prefix=lease.prefix,
                           router=list(lease.router), dns=list(lease.dns),
                           domain=lease.domain, hostname=lease.hostname, fqdn=lease.fqdn,
                           ntp=list(lease.ntp), lease_expires_in=round(remaining(lease), 1),
                           server_id=lease.server_id)
        elif self.auto_ip:
            network.update(address=self.auto_ip, prefix=16)
        if self.address.client is not None and self.address.client.auto_ip_forbidden:
            network["auto_ip_forbidden"] = True  # a server said so (RFC 2563 2.3)
        d = self.directory
        directory = {"state": self.directory_state, "server": d.server if d else None,
                     "base_dn": d.base if d else None,
                     "device_dn": d.saved.get("device_dn") if d else None,
                     "ae_titles": [t for t in self.titles if t is not None],
                     "last_error": d.last_error if d else None,
                     "effective": self._effective()}
        return {"v": 1, "state": self.machine.state.value,
                "degraded": sorted(c.value for c in self.machine.degraded),
                "network": network, "time": dict(self.timekeeping.report), "directory": directory,
                "dnssd": self.announcer.to_json(),
                "supervision": self.supervisor.snapshot(),
                "counters": self.counters()}

    def _effective(self) -> list[dict]:
        """Per AE, what is in force: the directory's word on the directory-side attributes
        once read back (an administrator's edit wins), else the configuration's."""
        read = self.directory.effective if self.directory is not None else None
        out = []
        for ae, title in zip(self.config.device.aes, self.titles, strict=False):
            if title is None:
                continue
            there = (read or {}).get("aes", {}).get(title)
            if there is not None:
                installed = there["installed"]
                clusters = there["application_cluster"]
                called = there["preferred_called_ae_title"]
            else:
                installed = self.config.device.installed if ae.installed is None \
                    else ae.installed
                clusters = sorted(ae.application_cluster)
                called = sorted(ae.preferred_called_ae_title)
            h = self.health.get(title, AeHealth())
            out.append({"aet": title, "installed": bool(installed),
                        "application_cluster": list(clusters),
                        "preferred_called_ae_title": list(called), "health": h.state,
                        "health_checked_at": _iso(h.checked_at), "health_reason": h.reason})
        return out

    def _advertised_titles(self) -> list[str | None]:
        """The titles to announce: not an AE the directory says is not installed, nor a
        health-checked AE before it has answered (or while it does not)."""
        installed = {e["aet"]: e["installed"] for e in self._effective()}
        out = []
        for ae, title in zip(self.config.device.aes, self.titles, strict=False):
            checked = not ae.health_check or (
                title is not None and self.health.get(title, AeHealth()).state == "up")
            out.append(title if title is not None and installed.get(title, True) and checked
                       else None)
        return out

    # -- AE health (issue 16) -------------------------------------------------------------

    async def _health(self) -> None:
        """C-ECHO each health-checked acceptor AE on the device's own address: soon after
        the address (health never holds up `ready`), then every health_interval. Down:
        withdrawn from DNS-SD, degraded ae-unreachable, the ae-down hook; up again:
        announced, ae-up."""
        checked = [(i, ae) for i, ae in enumerate(self.config.device.aes) if ae.health_check]
        if not checked:
            return
        a = self.config.agent
        ca_file = self.config.directory.ca_file
        await self.addressed.wait()
        await asyncio.sleep(HEALTH_SETTLE)  # the application's port may open with the address
        while True:
            address = self.lease.address if self.lease else self.auto_ip
            for i, ae in checked:
                title = self.titles[i] if i < len(self.titles) else None
                conn = next((c for c in map(self.config.device.connection, ae.connections)
                             if c.port is not None), None)
                if title is None or address is None or conn is None:
                    continue
                tls = (conn.hostname or address) if conn.tls_cipher_suites else None
                problem = await asyncio.to_thread(
                    health.echo, a.health_calling_aet, title, address, conn.port, tls, ca_file)
                state = self.health.setdefault(title, AeHealth())
                before = state.state
                if health.checked(state, problem):
                    # The AE's health and the degraded condition change together, before
                    # anything else is awaited: no snapshot shows one without the other.
                    await self._event(Event.AE_DOWN if self._any_down() else Event.AES_UP)
                    self._changed()
                    log.info("AE %s: %s%s", title, state.state,
                             f" ({problem})" if problem else "")
                    if state.state == "down" or before == "down":
                        self.hooks.post("ae-" + state.state,
                                        {**self._hook_values(), "health_aet": title,
                                         "health_reason": problem})
                    if a.health_updates_directory and self.directory is not None \
                            and self.directory_state == "registered":
                        # Down: flagged FALSE; up: restored, if the flag is still ours.
                        await self.directory.mark_health(title, state.state == "down")
                    self.announce_wanted.set()
            await self._event(Event.AE_DOWN if self._any_down() else Event.AES_UP)
            self._changed()
            await asyncio.sleep(a.health_interval)

    def _any_down(self) -> bool:
        return any(self.health.get(t, AeHealth()).state == "down"
                   for t in self.titles if t is not None)

    def counters(self) -> dict:
        return {"dhcp": self.address.counters(), "validation": self.address.validation(),
                "sntp": self.timekeeping.counters(),
                "boot": dict(self.machine.ignored), "status": dict(self.status_server.counters),
                "hooks": dict(self.hooks.counters),
                "state": {**statefile_io.counters, "unsaved": len(statefile_io.unsaved())},
                "directory": self.directory.counters() if self.directory else
                {"reconnects": 0, "odd-entries": 0, "operations": 0, "replica-conflicts": 0}}

    def _changed(self) -> None:
        self.status_server.changed()

    async def _event(self, event: Event) -> None:
        self.machine.handle(event)
        if not self.machine.changed:
            return
        self._changed()
        state = self.machine.state.value
        degraded = ", ".join(sorted(self.machine.degraded))
        status = state + (f" (degraded: {degraded})" if degraded else "")
        self.notifier.status(status)
        if self.machine.state is BootState.READY and not self._ready_once:
            self._ready_once = True
            self._hook("ready")

    def _hook_values(self) -> dict[str, object]:
        lease = self.lease
        return {"interface": self.config.network.interface,
                "address": lease.address if lease else self.auto_ip,
                "prefix": lease.prefix if lease else (16 if self.auto_ip else None),
                "router": list(lease.router) if lease else [],
                "dns": list(lease.dns) if lease else [],
                "domain": lease.domain if lease else None,
                "hostname": lease.hostname if lease else self.config.network.hostname,
                "ntp": list(lease.ntp) if lease else [],
                "utc_offset": self.timekeeping.report.get("utc_offset_s"),
                "lease_expires_in": round(remaining(lease), 1) if lease else None,
                "ae_titles": [t for t in self.titles if t is not None]}

    def _hook(self, event: str) -> None:
        """Queue the hooks of an event that does not hold its transition."""
        self.hooks.post(event, self._hook_values())

    # -- supervision ------------------------------------------------------------------------

    async def _supervision_changed(self) -> None:
        await self._event(Event.PROFILE_FAILING if self.supervisor.failing
                          else Event.PROFILES_HEALTHY)
        self._changed()

    def _status_error(self, exc: BaseException) -> None:
        record = self.supervisor.record("status")
        record.last_error = f"{type(exc).__name__}: {exc}"[:500]

    def _address_cap(self) -> float | None:
        """The address task's backoff stays well below T1 of the lease it holds."""
        return max(1.0, self.lease.t1 / 4) if self.lease is not None else None

    async def _address_down(self) -> None:
        """While the address task is down: when the lease runs out, do what the driver
        would — goodbyes, lease-lost hooks, then the address goes."""
        lease = self.lease
        if lease is None:
            return
        await asyncio.sleep(max(remaining(lease), 0.0))
        await self._lease_lost()
        await self.address.remove_expired(lease)

    # -- address ----------------------------------------------------------------------------

    async def _on_dhcp(self, event: object) -> None:
        match event:
            case LeaseBound(lease) | AddressChanged(_, lease):
                # A restarted address task resumes the same lease: nothing new to tell.
                resumed = self.lease is not None and \
                    self.lease.to_record() == lease.to_record()
                # Another address than the last lease's, even with a loss in between.
                changed = self._last_address not in (None, lease.address)
                self._last_address = lease.address
                self.lease, self.auto_ip = lease, None
                self.resolver.configure(*dns_of(lease))
                await self._lease_changed_time()
                self.addressed.set()
                await self._event(Event.LEASE_BOUND)
                if not resumed:
                    self._hook("lease-bound")
                if changed or isinstance(event, AddressChanged):
                    await self._event(Event.ADDRESS_CHANGED)
                    self._hook("address-changed")
                    self.address_changed.set()
                self.announce_wanted.set()
            case LeaseRenewed(lease):
                self.lease = lease
                await self._lease_changed_time()
                self._changed()
                self._hook("lease-renewed")
            case LeaseExpiring():
                self._hook("lease-expiring")
            case AddressConflict(address, mac, defended):
                # RFC 5227 2.4: defended once; a second claim is followed by LeaseLost.
                log.warning("ARP: %s claimed by %s: %s", address, mac,
                            "defended" if defended else "given up (DHCPDECLINE)")
                self.hooks.post("address-conflict", {**self._hook_values(),
                                                     "conflict_mac": mac,
                                                     "conflict_defended": "yes" if defended
                                                     else "no"})
            case LeaseLost():
                await self._lease_lost()
            case AutoIpConfigured(address):
                self.auto_ip = address
                self.addressed.set()
                await self._event(Event.AUTO_IP)
                self.announce_wanted.set()
            case CarrierChanged(up):
                await self._event(Event.CARRIER_UP if up else Event.CARRIER_DOWN)
            case AutoIpRemoved(address, reason):
                if self.auto_ip == address:
                    self.auto_ip = None
                if reason == "conflict":
                    await self._withdraw()
                    await self._event(Event.WITHDRAWN)

    async def _withdraw(self) -> None:
        try:
            await self.announcer.withdraw()
        except Exception as exc:  # goodbyes are best effort; the address goes anyway
            log.warning("DNS-SD withdraw: %s: %s", type(exc).__name__, exc)
        if self.unicast is not None:  # while the address still works (lease-lost hold)
            try:
                await asyncio.to_thread(self.unicast.withdraw)
            except Exception as exc:
                log.warning("DNS-SD (unicast) withdraw: %s: %s", type(exc).__name__, exc)

    async def _unicast_register(self) -> None:
        """[dnssd] unicast: the announced services in the site DNS as well (RFC 2136,
        TSIG), with the lease's lifetime as TTL. A refusal is degraded, never fatal."""
        d = self.config.dnssd
        lease = self.lease
        if not d.unicast or lease is None or not lease.dns:
            return
        zone = d.unicast_zone or lease.domain
        host = lease.fqdn or (f"{lease.hostname}.{zone}" if lease.hostname and zone else None)
        if zone is None or host is None:
            log.warning("DNS-SD (unicast): no zone or host name for %s", lease.address)
            await self._event(Event.UNICAST_REFUSED)
            return
        # Imported here: only `[dnssd] unicast` needs it and its dnspython parts.
        from profiles.app_config.unicast_dnssd_io import UnicastAdvertiser, read_tsig_key

        try:
            if self.unicast is None:
                self.unicast = UnicastAdvertiser(
                    read_tsig_key(d.tsig_key_file),
                    self.config.agent.state_dir / "dnssd-unicast.json", list(lease.dns))
            self.unicast.nameservers = list(lease.dns)
            ttl = max(60, min(3600, int(remaining(lease))))
            taken = await asyncio.to_thread(self.unicast.register, self.announcer.announced,
                                            zone, host, ttl)
        except Exception as exc:  # refused, unreachable, a bad key file
            log.warning("DNS-SD (unicast) not registered in %s: %s: %s", zone,
                        type(exc).__name__, exc)
            await self._event(Event.UNICAST_REFUSED)
            return
        await self._event(Event.UNICAST_REFUSED if taken else Event.UNICAST_REGISTERED)

    async def _lease_lost(self) -> None:
        await self._withdraw()  # goodbyes while the address still works
        await self.hooks.run_now("lease-lost", self._hook_values())
        self.lease = None
        self.addressed.clear()
        await self._event(Event.LEASE_LOST)
        await self._lease_changed_time()

    # -- time -------------------------------------------------------------------------------

    async def _time(self) -> None:
        # No address after a while: the manual servers may still be reachable.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.addressed.wait(),
                                   self.config.network.discover_timeout + 10)
        await self.timekeeping.keep(lambda: self.lease, lambda: self.resolver
                                    if self.lease is not None and self.lease.dns else None,
                                    self.ntp_updates, self._time_result)

    async def _discovery(self) -> None:
        """G.1.1.1 autodiscovery for good (`broadcast_discovery`): after the time task's
        first listening window, servers heard or lost re-evaluate G.1.1's order."""
        await self.time_settled.wait()
        await self.timekeeping.autodiscover(self._servers_changed)

    async def _servers_changed(self) -> None:
        """G.1.1's order evaluated again — autodiscovered > option 42 > manual > internal
        clock — and what it gives handed to the time task."""
        lease = self.lease
        resolver = self.resolver if lease is not None and lease.dns else None
        addresses = await self.timekeeping.follow(lease, resolver)
        self.ntp_updates.put_nowait(addresses)
        if not addresses and self.time_settled.is_set():
            await self._time_result(False)  # G.1.1.5: nothing left but the internal clock
        self._changed()

    async def _lease_changed_time(self) -> None:
        """Every lease event: G.1.1's server order and the UTC offset evaluated again
        (a rebind without option 42 falls back to the manual servers; a new option 2,
        100 or 101 changes the offset at once)."""
        lease = self.lease
        await self._servers_changed()
        rule = (lease.tz_name, lease.tz_posix) if lease is not None else None
        if rule != self._offset_rule:  # a renewal with the same rule: the timer stands
            self._offset_rule = rule
            self._offset_rules.set()
        if self.timekeeping.refresh_offset(lease) and self._offset_known:
            self._hook("time-offset-changed")
        self._offset_known = True  # the first lease sets it; later ones change it
        self._changed()

    async def _offset(self) -> None:
        """The UTC offset across DST transitions: a timer to the next transition of the
        rule in force (option 101's zone or option 100's rule), re-armed on lease events."""
        while True:
            self._offset_rules.clear()
            when = next_offset_change(self.lease, time.time())
            wait = DAY if when is None else min(max(when - time.time(), 0.0) + 0.5, DAY)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._offset_rules.wait(), wait)
                continue  # a new lease: compute again
            if self.timekeeping.refresh_offset(self.lease):
                log.info("UTC offset now %+d s", self.timekeeping.report["utc_offset_s"])
                self._hook("time-offset-changed")
                self._changed()

    async def _time_result(self, synced: bool) -> None:
        first = not self.time_settled.is_set()
        self.time_settled.set()
        # CONTRACTS.md "State directory": the last time report, for after a restart.
        statefile_io.save_json(self.config.agent.state_dir / "time.json",
                               {**self.timekeeping.report, "saved_wall": time.time()})
        await self._event(Event.TIME_SYNCED if synced else Event.TIME_INTERNAL)
        await self._event(Event.TIME_UNAUTHENTICATED if self.timekeeping.nts_unauthenticated()
                          else Event.TIME_AUTHENTICATED)
        refused = self.timekeeping.report.get("correction") == "refused"
        await self._event(Event.CLOCK_STEP_REFUSED if refused else Event.CLOCK_STEP_SETTLED)
        self._changed()
        if synced and first:
            self._hook("time-synced")

    # -- directory --------------------------------------------------------------------------

    async def _directory(self) -> None:
        d = self.config.directory
        if not d.enabled:
            await self._event(Event.DIRECTORY_DISABLED)
            self.announce_wanted.set()
            return
        await self.addressed.wait()
        if d.security == "tls" and self.config.time.mode != "observe":
            # Certificate checks want the clock the agent (or chronyd) is about to set;
            # observing, it sets none, so the directory goes on beside time (issue 18).
            await self.time_settled.wait()
        if self.directory is None:
            self.directory = service_for(self.config, lambda: self.lease,
                                         lambda: self.resolver)
            self.directory.on_state = self._on_directory_state
        await self.directory.maintain(self._hostnames, self.address_changed)

    def _hostnames(self) -> dict[str, str]:
        names = connection_hostnames(self.config, self.lease, self.auto_ip)
        if isinstance(names, str):  # no address at all: not reached once addressed
            raise RuntimeError(names)
        return names

    async def _on_directory_state(self, state: str, old: str) -> None:
        self.directory_state = state
        if state == "registered":
            self.titles = titles_for(self.config.device, *self._owned_titles())
        await self._event(DIRECTORY_EVENTS[state])
        if state == "registered" and old != "registered":
            self._hook("registered")
            if self.config.agent.health_updates_directory and self.directory is not None:
                # Not registered as installed before it has answered: a health-checked
                # AE not (yet) up is flagged FALSE, restored by its first good check.
                for ae, title in zip(self.config.device.aes, self.titles, strict=False):
                    if ae.health_check and title is not None and \
                            self.health.get(title, AeHealth()).state != "up":
                        await self.directory.mark_health(title, True)
        changes = self.directory.effective_changes if self.directory else []
        if state == "registered" and changes:
            # Administrators' edits flow back (issue 13): the applications are told.
            self.hooks.post("config-changed", {**self._hook_values(), "changed": changes})
        if state == "registered" and self.directory and self.directory.title_changes:
            # An administrator renamed one of our AEs: it is ours under the new title
            # (advertised below); the applications must answer to it.
            self.hooks.post("title-changed", self._hook_values())
        self.announce_wanted.set()  # titles known, or known to be missing
        self._changed()

    # -- announce ---------------------------------------------------------------------------

    async def _announce(self) -> None:
        self.announce_wanted.set()  # a restarted task announces afresh
        announced: tuple | None = None
        while True:
            await self.announce_wanted.wait()
            self.announce_wanted.clear()
            address = self.lease.address if self.lease else self.auto_ip
            if address is None:
                announced = None
                continue
            missing = None in self.titles
            if missing and self.directory_state in ("locating", "registering"):
                continue  # the directory may still reserve the title
            advertise = self._advertised_titles()
            # Announce again only for something new: a refresh of the directory must
            # not make the names be probed again.
            wanted = (address, tuple(advertise), id(self.announcer.device))
            if wanted != announced or self.announcer.advertiser.address != address:
                await self.announcer.announce(advertise, address)
                announced = wanted
                await self._unicast_register()
            await self._event(Event.TITLES_MISSING if missing else Event.TITLES_KNOWN)
            not_installed = any(not e["installed"] for e in self._effective())
            await self._event(Event.NOT_INSTALLED if not_installed else Event.ALL_INSTALLED)
            await self._event(Event.ANNOUNCED)
            self._changed()

    # -- status socket ops ------------------------------------------------------------------

    async def _op_lookup(self, req: dict) -> dict:
        title = req["aet"]
        if not isinstance(title, str):
            raise ValueError("aet must be a string")
        if self.directory is not None:
            answer = await self.directory.lookup(title, bool(req.get("refresh", False)))
            if answer["found"]:
                return answer
        found = self.announcer.lookup(title) or await self._unicast_lookup(title)
        return found or {"v": 1, "aet": title, "found": False, "stale": False,
                         "source": "directory"}

    async def _unicast_lookup(self, title: str) -> dict | None:
        """Unicast DNS-SD in the lease's search domains: the site DNS crosses routers."""
        lease = self.lease
        if lease is None or not lease.dns:
            return None
        domains = lease_search(lease)
        if not domains:
            return None
        from profiles.app_config.unicast_dnssd_io import browse  # see _unicast_register

        try:
            answer = await asyncio.to_thread(browse, domains, list(lease.dns), title)
        except Exception as exc:
            log.info("DNS-SD (unicast) lookup of %s: %s", title, exc)
            return None
        if answer is not None and self.directory is not None:
            await self.directory._addresses(answer)
        return answer

    async def _op_query(self, req: dict) -> dict:
        cluster, device_type = req.get("cluster"), req.get("device_type")
        if not isinstance(cluster, str | None) or not isinstance(device_type, str | None):
            raise ValueError("cluster and device_type are strings or null")
        if self.directory is None:
            return {"v": 1, "results": []}
        from profiles.app_config.registration import DirectoryError  # see service_for
        try:
            results = await self.directory.query(cluster, device_type)
        except DirectoryError as exc:  # unreachable: say so, as a lookup would be stale
            return {"v": 1, "results": [], "stale": True, "reason": str(exc)[:300]}
        return {"v": 1, "results": results}

    async def _op_renew(self, req: dict) -> dict:
        self.address.renew()
        self.address_changed.set()  # and read the directory's word on this device again
        return {"v": 1, "ok": True}

    async def _op_reload(self, req: dict) -> dict:
        """Re-read the configuration; the device part takes effect (re-register,
        re-announce), other sections need a restart."""
        if self.config.source is None and not self.config.from_system:
            return {"v": 1, "ok": False}
        try:
            config = load_config(self.config.source)
        except ConfigError as exc:
            return {"v": 1, "error": {"code": "bad-request", "message": "; ".join(exc.lines())}}
        restart = [name for name in ("agent", "network", "time", "directory", "dnssd")
                   if getattr(config, name) != getattr(self.config, name)]
        self.config = replace(self.config, device=config.device)
        self.announcer.device = config.device
        if self.directory is not None:
            self.directory.device = config.device
        self.titles = titles_for(config.device, *self._owned_titles())
        self.address_changed.set()
        self.announce_wanted.set()
        return {"v": 1, "ok": True, "restart_needed": restart}

    def _sighup(self) -> None:
        """SIGHUP (systemctl reload): the `reload` op, its outcome in the journal."""
        async def reload() -> None:
            reply = await self._op_reload({})
            if "error" in reply:
                log.error("reload refused, the configuration in force is kept: %s",
                          reply["error"]["message"])
            else:
                log.info("reloaded%s", f"; a restart is needed for {reply['restart_needed']}"
                         if reply.get("restart_needed") else "")
        self._reload_task = asyncio.ensure_future(reload())

    async def _op_accept_time_step(self, req: dict) -> dict:
        """An operator accepts the correction the step policy refused (issue 11): the
        next round applies it once."""
        self.timekeeping.policy.accept()
        return {"v": 1, "ok": True,
                "refused": self.timekeeping.report.get("correction_refused")}

    async def _op_purge(self, req: dict) -> dict:
        if self.directory is not None:
            self.directory.cache.purge()
        return {"v": 1, "ok": True}

    # -- the process ------------------------------------------------------------------------

    async def _watchdog(self) -> None:
        """WATCHDOG=1 only while the loop is healthy: it ran this task on time and a
        snapshot can be built (what the status socket answers)."""
        interval = self.notifier.watchdog_interval
        if interval is None:
            return
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(interval)
            late = loop.time() - before - interval
            try:
                self.snapshot()
            except Exception as exc:
                log.error("watchdog withheld: the snapshot fails: %s: %s",
                          type(exc).__name__, exc)
                continue
            if late < interval:
                self.notifier.watchdog()
            else:
                log.error("watchdog withheld: the event loop was %.1f s late", late)

    async def _state_files(self) -> None:
        """`state-not-saved` while the state directory refuses a file (full, read-only);
        each refused file is written again as soon as the filesystem takes it."""
        unsaved = False
        while True:
            pending = statefile_io.retry_unsaved() if unsaved else statefile_io.unsaved()
            if bool(pending) != unsaved:
                unsaved = bool(pending)
                if unsaved:
                    log.warning("state not saved: %s", ", ".join(map(str, pending)))
                await self._event(Event.STATE_NOT_SAVED if unsaved else Event.STATE_SAVED)
            await asyncio.sleep(STATE_RETRY if unsaved else STATE_CHECK)

    async def _until_stopped(self) -> None:
        await self._stop.wait()
        raise Stopped

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        injected = faults.injection()
        loop = asyncio.get_running_loop()
        faulty = injected.wrap if injected else (lambda name, job: job)
        if injected:
            injected.arm(loop)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop)
        loop.add_signal_handler(signal.SIGHUP, self._sighup)
        await self.status_server.start()
        self.supervisor.record("status")
        await self._event(Event.STARTED)
        sv = self.supervisor
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(sv.run("address", faulty("address", self.address.run),
                                      cap=self._address_cap, while_down=self._address_down),
                               name="address")
                for name, job in (("time", self._time), ("directory", self._directory),
                                  ("announce", self._announce), ("hooks", self.hooks.serve),
                                  ("offset", self._offset), ("discovery", self._discovery),
                                  ("health", self._health),
                                  ("state", self._state_files)):
                    tg.create_task(sv.run(name, faulty(name, job)), name=name)
                tg.create_task(self._watchdog(), name="watchdog")
                tg.create_task(self._until_stopped(), name="until-stopped")
                # READY=1 once the daemon is up — configuration valid, status socket
                # listening, profiles started — as systemd-networkd does; waiting for the
                # boot state `ready` is `dicom-agent wait` (dicom-agent-wait-ready.service).
                self.notifier.ready(self.machine.state.value)
        except* Stopped:
            pass
        finally:
            await self._shutdown()

    async def _shutdown(self) -> None:
        await self._event(Event.STOP)
        self.notifier.send(stopping="1", status="stopping")
        await self._withdraw()
        await self.hooks.run_now("stopping", self._hook_values())
        if self.directory is not None:
            self.directory.close()
        await self.status_server.close()
