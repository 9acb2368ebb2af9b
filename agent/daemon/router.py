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
import logging
import os
import random
import signal
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from agent import faults
from agent.adapters.address import Address, dns_of, grace_for, remaining
from agent.adapters.announce import Announcer, titles_for
from agent.adapters.directory import connection_hostnames, saved_record, service_for
from agent.adapters.health import HealthService
from agent.adapters.timekeeping import Timekeeping, TimeService
from agent.config import Config, load_config
from agent.daemon.boot import BootMachine, BootState, Event
from agent.daemon.bus import Bus
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
)
from profiles.network_address.lease import Lease
from profiles.network_address.resolver_io import Resolver

if TYPE_CHECKING:
    from profiles.app_config.directory_io import DirectoryService

log = logging.getLogger("dicom-agent")
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
        self.bus = Bus(self._apply, self._hook, self._hook_now)
        self.timekeeping = Timekeeping(config.time, config.time.mode,
                                       config.network.interface, self.rng,
                                       config.agent.state_dir)
        self.time = TimeService(self.timekeeping, self.bus, config.agent.state_dir,
                                config.network.discover_timeout, lambda: self.lease,
                                lambda: self.resolver)
        self.directory: DirectoryService | None = None
        self.directory_state = "disabled" if not config.directory.enabled else "locating"
        self.titles = titles_for(config.device, *self._owned_titles())
        self.health = HealthService(
            config, self.bus, lambda: self.lease.address if self.lease else self.auto_ip,
            lambda: self.titles, self._mark_health, self.announce_wanted_set)
        self.announcer = Announcer(config.device, config.network.hostname or config.device.name,
                                   config.dnssd, config.agent.state_dir)
        self.address_changed = asyncio.Event()  # directory: rewrite the connections
        self.announce_wanted = asyncio.Event()  # announce: (re)advertise
        self.addressed = self.time.addressed  # an address (lease or link-local) is up
        self.health.addressed = self.addressed
        self.status_server = StatusServer(
            config.agent.status_socket, self.snapshot,
            {"lookup": self._op_lookup, "query": self._op_query, "renew": self._op_renew,
             "reload": self._op_reload, "purge-cache": self._op_purge, **self.time.ops()},
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
                "network": network, "time": self.time.snapshot(), "directory": directory,
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
            h = self.health.of(title)
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
                title is not None and self.health.of(title).state == "up")
            out.append(title if title is not None and installed.get(title, True) and checked
                       else None)
        return out

    async def _mark_health(self, title: str, down: bool) -> None:
        if self.directory is not None and self.directory_state == "registered":
            await self.directory.mark_health(title, down)

    def announce_wanted_set(self) -> None:
        self.announce_wanted.set()

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

    async def _apply(self, *events: Event) -> None:
        """The bus: every event applied, then one snapshot published."""
        for event in events:
            await self._event(event, publish=False)
        self._changed()

    async def _hook_now(self, event: str) -> None:
        await self.hooks.run_now(event, self._hook_values())

    async def _event(self, event: Event, publish: bool = True) -> None:
        self.machine.handle(event)
        if not self.machine.changed:
            return
        if publish:
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

    def _hook(self, event: str, extra: dict | None = None) -> None:
        """Queue the hooks of an event that does not hold its transition."""
        self.hooks.post(event, {**self._hook_values(), **(extra or {})})

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
                self.time.lease_changed()
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
                self.time.lease_changed()
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
        await self.announcer.withdraw()

    async def _unicast_register(self) -> None:
        lease = self.lease
        registered = await self.announcer.register_unicast(
            lease, int(remaining(lease)) if lease else 0)
        if registered is not None:
            await self._event(Event.UNICAST_REGISTERED if registered
                              else Event.UNICAST_REFUSED)

    async def _lease_lost(self) -> None:
        await self._withdraw()  # goodbyes while the address still works
        await self.hooks.run_now("lease-lost", self._hook_values())
        self.lease = None
        self.addressed.clear()
        self.time.lease_changed()
        await self._event(Event.LEASE_LOST)

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
            await self.time.settled.wait()
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
                            self.health.of(title).state != "up":
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
        found = self.announcer.lookup(title) or await self.announcer.lookup_unicast(
            title, self.lease, self.directory.addresses if self.directory else None)
        return found or {"v": 1, "aet": title, "found": False, "stale": False,
                         "source": "directory"}

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
                for name, job in (*self.time.tasks().items(),
                                  ("directory", self._directory),
                                  ("announce", self._announce), ("hooks", self.hooks.serve),
                                  *self.health.tasks().items(),
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
