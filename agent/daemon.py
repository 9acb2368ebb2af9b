"""`dicom-agent run`: the boot agent. A TaskGroup supervisor runs the profile drivers
and the status server; their events drive the boot machine (agent/boot.py), the hooks,
systemd's notify socket and the status snapshot.

    address  — DhcpDriver: lease events; resolver and NTP servers follow the lease
    time     — SNTP driver (or chrony hand-over) on the lease's or manual servers
    directory— DirectoryService.maintain (after time when TLS wants a sane clock)
    announce — zeroconf: services once an address and the titles are known
    status   — StatusServer; systemd READY=1 at `ready`, STATUS= on each change

A lost lease withdraws the advertisements (goodbyes), runs the lease-lost hooks, and
only then does the address go (the DHCP driver waits for this handler).
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
from typing import Any

from agent.boot import BootMachine, BootState, Event
from agent.config import Config, dhcp_client_settings, load_config
from agent.directory_command import security_for
from agent.hooks import hooks_in, run_hooks
from agent.sdnotify import Notifier
from agent.status import StatusServer
from profiles import statefile
from profiles.app_config import dnssd, plan
from profiles.app_config.service import DirectoryService
from profiles.app_config.srv import candidate_urls
from profiles.errors import ConfigError
from profiles.network_address.client import (
    AddressChanged,
    DhcpClient,
    LeaseBound,
    LeaseExpiring,
    LeaseLost,
    LeaseRenewed,
    generate_client_id,
)
from profiles.network_address.driver import (
    AutoIpConfigured,
    AutoIpRemoved,
    CarrierChanged,
    DhcpDriver,
    Paths,
    boottime,
    load_or_make_client_id,
    load_saved_lease,
)
from profiles.network_address.lease import Lease
from profiles.network_address.netlink import Netlink
from profiles.network_address.resolver import ResolveError, Resolver
from profiles.time_sync import chrony
from profiles.time_sync.driver import SntpDriver, SystemClock, hear_broadcasts
from profiles.time_sync.sntp import RoundResult, SntpClient
from profiles.time_sync.sources import choose_servers, offset_and_control

log = logging.getLogger("dicom-agent")
CHRONY_SETTLE = 20.0  # s for chronyd to select a source before "internal-clock"


class Stopped(Exception):
    """Raised inside the TaskGroup to end it on SIGTERM/SIGINT."""


class Agent:
    def __init__(self, config: Config):
        self.config = config
        self.rng = random.Random(os.urandom(16))
        self.machine = BootMachine()
        self.notifier = Notifier()
        self.resolver = Resolver()
        self.paths = Paths(config.agent.state_dir, config.agent.runtime_dir,
                           config.network.interface)
        self.lease: Lease | None = None
        self.auto_ip: str | None = None
        self._last_address: str | None = None
        self.client: DhcpClient | None = None
        self.driver: DhcpDriver | None = None
        self.time: dict[str, Any] = {"mode": config.time.mode, "source": None,
                                     "servers": [], "selected": None, "offset_ms": None,
                                     "synced": False, "utc_offset_s": config.time.utc_offset,
                                     "tz": None}
        self.ntp_updates: asyncio.Queue[list[str]] = asyncio.Queue()
        self.directory: DirectoryService | None = None
        self.directory_state = "disabled" if not config.directory.enabled else "locating"
        self.titles: list[str] = self._known_titles()
        self.advertiser = dnssd.Advertiser(config.network.hostname or config.device.name)
        self.address_changed = asyncio.Event()  # directory: rewrite the connections
        self.announce_wanted = asyncio.Event()  # announce: (re)advertise
        self.time_settled = asyncio.Event()
        self.addressed = asyncio.Event()
        self.status_server = StatusServer(
            config.agent.status_socket, self.snapshot,
            {"lookup": self._op_lookup, "query": self._op_query, "renew": self._op_renew,
             "reload": self._op_reload, "purge-cache": self._op_purge},
            config.agent.status_group)
        self._ready_once = False
        self._stop = asyncio.Event()

    # -- titles and names ------------------------------------------------------------------

    def _known_titles(self) -> list[str]:
        """Titles usable before registration: fixed ones, and template titles this device
        owned before (directory.json); [] when a template title is still unknown."""
        saved = statefile.read_json(self.paths.state_dir / "directory.json") or {}
        owned = list(saved.get("titles", []))
        titles = []
        for i, ae in enumerate(self.config.device.aes):
            if ae.title is not None:
                titles.append(ae.title)
            elif i < len(owned):
                titles.append(owned[i])
            else:
                return []
        return titles

    def hostnames(self) -> dict[str, str]:
        lease, domain = self.lease, self.config.directory.domain or (
            self.lease.domain if self.lease else None)
        fqdn = (lease.fqdn if lease else None) or self.config.network.hostname
        address = lease.address if lease else self.auto_ip
        return {c.name: plan.connection_hostname(c, fqdn, domain, address) or address or
                "localhost" for c in self.config.device.connections}

    # -- the snapshot (CONTRACTS.md) -------------------------------------------------------

    def snapshot(self) -> dict:
        lease, now = self.lease, boottime()
        network: dict[str, Any] = {"state": self.client.state.value if self.client else
                                   "init", "interface": self.config.network.interface}
        if lease is not None:
            network.update(address=lease.address, prefix=lease.prefix,
                           router=list(lease.router), dns=list(lease.dns),
                           domain=lease.domain, hostname=lease.hostname, fqdn=lease.fqdn,
                           ntp=list(lease.ntp), lease_expires_in=round(lease.remaining(now), 1),
                           server_id=lease.server_id)
        elif self.auto_ip:
            network.update(address=self.auto_ip, prefix=16)
        d = self.directory
        directory = {"state": self.directory_state, "server": d.server if d else None,
                     "base_dn": d.base if d else None,
                     "device_dn": d.saved.get("device_dn") if d else None,
                     "ae_titles": list(self.titles), "last_error": d.last_error if d else None}
        advertised = [s.to_json(self.advertiser.advertised.get(s.name))
                      for s in self._services() if s.name in self.advertiser.advertised]
        return {"v": 1, "state": self.machine.state.value,
                "degraded": sorted(self.machine.degraded), "network": network,
                "time": dict(self.time), "directory": directory,
                "dnssd": {"services": advertised, "seen": sorted(self.advertiser.seen)}}

    def _services(self) -> list[dnssd.Service]:
        return dnssd.services(self.config.device, self.titles) if self.titles else []

    async def _event(self, event: Event) -> None:
        self.machine.handle(event)
        if not self.machine.changed:
            return
        self.status_server.changed()
        state = self.machine.state.value
        degraded = ", ".join(sorted(self.machine.degraded))
        status = state + (f" (degraded: {degraded})" if degraded else "")
        if self.machine.state is BootState.READY and not self._ready_once:
            self._ready_once = True
            self.notifier.ready(status)
            await self._hooks("ready")
        else:
            self.notifier.status(status)

    async def _hooks(self, event: str) -> None:
        lease = self.lease
        values = {"interface": self.config.network.interface,
                  "address": lease.address if lease else self.auto_ip,
                  "prefix": lease.prefix if lease else (16 if self.auto_ip else None),
                  "router": list(lease.router) if lease else [],
                  "dns": list(lease.dns) if lease else [],
                  "domain": lease.domain if lease else None,
                  "hostname": lease.hostname if lease else self.config.network.hostname,
                  "ntp": list(lease.ntp) if lease else [],
                  "utc_offset": self.time.get("utc_offset_s"),
                  "lease_expires_in": round(lease.remaining(boottime()), 1) if lease else None,
                  "ae_titles": list(self.titles)}
        await run_hooks(self.config.agent.hooks_dir, event, values,
                        self.config.agent.hook_timeout)

    # -- address ---------------------------------------------------------------------------

    async def _address(self) -> None:
        n = self.config.network
        netlink = await Netlink.open(n.interface)
        try:
            client_id = n.client_id or load_or_make_client_id(
                self.paths, lambda: generate_client_id(n.interface, self.rng))
            self.client = DhcpClient(dhcp_client_settings(
                n, await netlink.mac(), client_id, self.config.time.utc_offset), self.rng)
            # Lease-lost handlers get every hook's time, plus a margin.
            hooks = len(hooks_in(self.config.agent.hooks_dir))
            grace = self.config.agent.hook_timeout * max(hooks, 1) + 2.0
            self.driver = DhcpDriver(self.client, self.paths, netlink, self._on_dhcp, grace,
                                     self.rng, release_on_stop=n.release_on_stop)
            await self._event(Event.CARRIER_UP if self.driver.carrier() else
                              Event.CARRIER_DOWN)
            saved, same_boot = load_saved_lease(self.paths)
            await self.driver.run(saved=saved, same_boot=same_boot)
        finally:
            netlink.close()

    async def _on_dhcp(self, event: Any) -> None:
        match event:
            case LeaseBound(lease) | AddressChanged(_, lease):
                # Another address than the last lease's, even with a loss in between.
                changed = self._last_address not in (None, lease.address)
                self._last_address = lease.address
                self.lease, self.auto_ip = lease, None
                self.resolver.configure(lease.dns, lease.search or (
                    (lease.domain,) if lease.domain else ()))
                self.ntp_updates.put_nowait(list(lease.ntp))
                self.addressed.set()
                await self._event(Event.LEASE_BOUND)
                await self._hooks("lease-bound")
                if changed or isinstance(event, AddressChanged):
                    await self._event(Event.ADDRESS_CHANGED)
                    await self._hooks("address-changed")
                    self.address_changed.set()
                self.announce_wanted.set()
            case LeaseRenewed(lease):
                self.lease = lease
                self.status_server.changed()
                await self._hooks("lease-renewed")
            case LeaseExpiring():
                await self._hooks("lease-expiring")
            case LeaseLost():
                await self.advertiser.withdraw()  # goodbyes while the address still works
                await self._hooks("lease-lost")
                self.lease = None
                self.addressed.clear()
                await self._event(Event.LEASE_LOST)
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
                    await self.advertiser.withdraw()
                    await self._event(Event.WITHDRAWN)

    # -- time ------------------------------------------------------------------------------

    async def _time(self) -> None:
        t = self.config.time
        # No address after a while: the manual servers may still be reachable.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.addressed.wait(),
                                   self.config.network.discover_timeout + 10)
        heard = await hear_broadcasts(t.broadcast_window) if t.broadcast_discovery else []
        lease = self.lease
        source, names = choose_servers(heard, lease.ntp if lease else (), t.servers)
        self.time.update(source=source, **offset_and_control(lease, t.utc_offset, t.mode,
                                                             time.time()))
        addresses = await self._resolve_servers(names)
        if not addresses:
            self.time.update(source="internal", synced=False)
            await self._time_result(False)  # G.1.1.5: the internal clock, unsynchronized
        if t.mode == "chrony":
            while not addresses:  # until a lease brings servers
                addresses = await self.ntp_updates.get()
            await chrony.hand_over(t.chrony_sourcedir, self.config.network.interface,
                                   addresses, t.chronyc_socket)
            # chronyd needs a few samples (iburst) before it selects a source: give it
            # CHRONY_SETTLE seconds before the internal clock is reported.
            settle_until = time.monotonic() + CHRONY_SETTLE
            while True:
                state = await chrony.state(t.chronyc_socket)
                selected = [s for s in state["sources"] if s["state"] == "selected"]
                self.time.update(servers=state["sources"], chrony=state,
                                 selected=selected[0]["address"] if selected else None,
                                 offset_ms=state["tracking"]["offset_ms"],
                                 synced=bool(selected))
                if selected or time.monotonic() > settle_until:
                    await self._time_result(bool(selected))
                await asyncio.sleep(0.5 if not self.time_settled.is_set() else
                                    10 if not selected else 64)
        core = SntpClient(self.rng, t.step_threshold_ms / 1000, SystemClock(),
                          may_adjust=self.time["clock_control"]["allowed"])
        self.ntp_updates.put_nowait(addresses)  # a later lease may bring others
        await SntpDriver(core).run(self.ntp_updates, self._on_round)

    async def _resolve_servers(self, names: list[str]) -> list[str]:
        out = []
        for name in names:
            try:
                out += (await self.resolver.addresses(name))[:1]
            except ResolveError as exc:
                log.warning("NTP server %s: %s", name, exc)
        return out

    async def _on_round(self, result: RoundResult) -> None:
        self.time.update(servers=list(result.servers), selected=result.selected,
                         offset_ms=None if result.offset is None
                         else round(result.offset * 1000, 3),
                         synced=result.synced, correction=result.correction)
        await self._time_result(result.synced)

    async def _time_result(self, synced: bool) -> None:
        first = not self.time_settled.is_set()
        self.time_settled.set()
        # CONTRACTS.md "State directory": the last time report, for after a restart.
        statefile.write_json(self.paths.state_dir / "time.json",
                             {**self.time, "saved_wall": time.time()})
        await self._event(Event.TIME_SYNCED if synced else Event.TIME_INTERNAL)
        self.status_server.changed()
        if synced and first:
            await self._hooks("time-synced")

    # -- directory -------------------------------------------------------------------------

    async def _directory(self) -> None:
        d = self.config.directory
        if not d.enabled:
            await self._event(Event.DIRECTORY_DISABLED)
            return
        await self.addressed.wait()
        if d.security == "tls":
            await self.time_settled.wait()  # certificate checks want a sane clock
        self.directory = DirectoryService(self.config.device, security_for(self.config),
                                          self._candidates,
                                          self.paths.state_dir, d.title_attempts,
                                          d.refresh_interval)
        await self.directory.maintain(self.hostnames, self.address_changed,
                                      self._on_directory_state)

    async def _candidates(self) -> list[tuple[str, str | None]]:
        d = self.config.directory
        _, urls = await candidate_urls(self.resolver, d.domain or (
            self.lease.domain if self.lease else None), list(d.servers), d.security == "tls",
            self.rng)
        return urls

    async def _on_directory_state(self, state: str) -> None:
        self.directory_state = state
        if state == "registered":
            titles = self.directory.saved.get("titles", [])
            if titles != self.titles:
                self.titles = titles
                self.announce_wanted.set()
            self.machine.set_degraded("directory-cached", False)
            await self._event(Event.DIRECTORY_REGISTERED)
            await self._hooks("registered")
        elif state == "awaiting-manual-registration":
            await self._event(Event.DIRECTORY_AWAITING)
        elif state == "unavailable":
            cached = any(self.directory.cache.directory.glob("*.json")) \
                if self.directory.cache.directory.is_dir() else False
            self.machine.set_degraded("directory-cached", cached)
            if cached:
                self.directory_state = "cached"
            await self._event(Event.DIRECTORY_UNAVAILABLE)
        self.status_server.changed()

    # -- announce --------------------------------------------------------------------------

    async def _announce(self) -> None:
        while True:
            await self.announce_wanted.wait()
            self.announce_wanted.clear()
            address = self.lease.address if self.lease else self.auto_ip
            if address is None:
                continue
            if not self.titles:
                continue  # a template title not chosen yet: after registration
            try:
                await self.advertiser.announce(self._services(), address)
                await self.advertiser.browse()
            except Exception as exc:  # zeroconf's errors are many; never fatal
                log.warning("DNS-SD announce failed: %s", exc)
                continue
            await self._event(Event.ANNOUNCED)
            self.status_server.changed()

    # -- status socket ops -----------------------------------------------------------------

    async def _op_lookup(self, req: dict) -> dict:
        title = req["aet"]
        if not isinstance(title, str):
            raise ValueError("aet must be a string")
        if self.directory is not None:
            answer = await self.directory.lookup(title, bool(req.get("refresh", False)))
            if answer["found"]:
                return answer
        return self.advertiser.lookup(title) or {"v": 1, "aet": title, "found": False,
                                                 "stale": False, "source": "directory"}

    async def _op_query(self, req: dict) -> dict:
        if self.directory is None:
            return {"v": 1, "results": []}
        results = await self.directory.query(req.get("cluster"), req.get("device_type"))
        return {"v": 1, "results": results}

    async def _op_renew(self, req: dict) -> dict:
        if self.driver is not None:
            self.driver.renew()
        return {"v": 1, "ok": True}

    async def _op_reload(self, req: dict) -> dict:
        """Re-read the configuration; the device part takes effect (re-register,
        re-announce), other sections need a restart."""
        if self.config.source is None:
            return {"v": 1, "ok": False}
        try:
            config = load_config(self.config.source)
        except ConfigError as exc:
            return {"v": 1, "error": {"code": "bad-request", "message": "; ".join(exc.lines())}}
        restart = [name for name in ("agent", "network", "time", "directory")
                   if getattr(config, name) != getattr(self.config, name)]
        self.config = replace(self.config, device=config.device)
        if self.directory is not None:
            self.directory.device = config.device
        self.titles = self._known_titles() or self.titles
        self.address_changed.set()
        self.announce_wanted.set()
        return {"v": 1, "ok": True, "restart_needed": restart}

    async def _op_purge(self, req: dict) -> dict:
        if self.directory is not None:
            self.directory.cache.purge()
        return {"v": 1, "ok": True}

    # -- supervisor ------------------------------------------------------------------------

    async def _watchdog(self) -> None:
        if self.notifier.watchdog_interval is None:
            return
        while True:
            self.notifier.watchdog()
            await asyncio.sleep(self.notifier.watchdog_interval)

    async def _until_stopped(self) -> None:
        await self._stop.wait()
        raise Stopped

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop)
        await self.status_server.start()
        await self._event(Event.STARTED)
        try:
            async with asyncio.TaskGroup() as tg:
                for job in (self._address, self._time, self._directory, self._announce,
                            self._watchdog, self._until_stopped):
                    tg.create_task(job(), name=job.__name__)
        except* Stopped:
            pass
        finally:
            await self._shutdown()

    async def _shutdown(self) -> None:
        await self._event(Event.STOP)
        self.notifier.send(stopping="1", status="stopping")
        with contextlib.suppress(Exception):
            await self.advertiser.withdraw()
        await self._hooks("stopping")
        if self.directory is not None:
            self.directory.close()
        await self.status_server.close()
