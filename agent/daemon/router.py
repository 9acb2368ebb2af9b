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
import socket
from dataclasses import replace

from agent import faults
from agent.adapters.address import Address, AddressService, grace_for
from agent.adapters.announce import Announcer, AnnounceService
from agent.adapters.directory import DirectoryProfile
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
from profiles.network_address.resolver_io import Resolver

log = logging.getLogger("dicom-agent")
STATE_CHECK = 5.0  # s: how soon a state file the filesystem refused shows as degraded
STATE_RETRY = 10.0  # s: how often such a file is tried again


def warm_up(modules: list[str]) -> None:
    """Import what the profiles after the address need (zeroconf, ldap3 through the
    directory's driver), in a thread while the address is acquired: the initial delay,
    the DHCP exchange and the RFC 5227 probe leave the CPU idle for seconds, and on a
    slow device these imports cost over a second each — paid before the first
    DHCPDISCOVER if made at start, before registering if made when first needed. With
    the collector paused and the result frozen, as the daemon's own imports."""
    import gc
    import importlib

    gc.disable()
    try:
        for name in modules:
            importlib.import_module(name)
    finally:
        gc.freeze()
        gc.enable()


class Stopped(Exception):
    """Raised inside the TaskGroup to end it on SIGTERM/SIGINT."""


class Agent:
    """The router: makes one adapter per profile and the Bus they talk through, runs their
    tasks under the supervisor, serves their ops on the status socket and composes the
    snapshot from their parts. It holds no fact a profile owns."""

    def __init__(self, config: Config):
        self.config = config
        rng = random.Random(os.urandom(16))
        self.machine = BootMachine()
        self.notifier = Notifier()
        self.supervisor = Supervisor(self._supervision_changed)
        self.hooks = Hooks(config.agent.hooks_dir, config.agent.hook_timeout)
        self.bus = Bus(self._apply, self._hook, self._hook_now)
        resolver = Resolver()
        self.timekeeping = Timekeeping(config.time, config.time.mode,
                                       config.network.interface, rng, config.agent.state_dir)
        self.time = TimeService(self.timekeeping, self.bus, config.agent.state_dir,
                                config.network.discover_timeout, lambda: self.net.lease,
                                lambda: resolver)
        self.health = HealthService(config, self.bus, lambda: self.net.current(),
                                    lambda: self.directory.titles,
                                    lambda title, down: self.directory.mark_health(title, down),
                                    lambda: self.announce.withdrawing())
        self.directory = DirectoryProfile(
            lambda: self.config, self.bus, lambda: self.net.lease, lambda: self.net.auto_ip,
            lambda: resolver, self.health, self.time.addressed, self.time.settled,
            lambda: self.announce.wanted.set())
        self.announcer = Announcer(config.device, config.network.hostname or config.device.name
                                   or socket.gethostname().split(".")[0] or "dicom-agent",
                                   config.dnssd, config.agent.state_dir)
        self.announce = AnnounceService(self.announcer, self.bus, lambda: self.net.current(),
                                        lambda: self.net.lease, self.directory, self.health)
        self.directory.fallback = self.announce.lookup
        self.address = Address(config.network, config.agent, config.time.utc_offset,
                               None, grace_for(config.agent),
                               config.network.release_on_stop, rng)
        self.net = AddressService(self.address, self.bus, resolver, self.time.lease_changed,
                                  lambda: self.announce.wanted.set(),
                                  lambda: self.directory.changed.set(),
                                  self.announce.withdraw, self.time.addressed)
        self.health.addressed = self.time.addressed
        self.status_server = StatusServer(
            config.agent.status_socket, self.snapshot,
            {**self.net.ops(), **self.directory.ops(), **self.time.ops(),
             "reload": self._op_reload},
            config.agent.status_group, on_error=self._status_error)
        self._ready_once = False
        self._stop = asyncio.Event()

    def snapshot(self) -> dict:
        return {"v": 1, "state": self.machine.state.value,
                "degraded": sorted(c.value for c in self.machine.degraded),
                "network": self.net.snapshot(), "time": self.time.snapshot(),
                "directory": self.directory.snapshot(), "dnssd": self.announce.snapshot(),
                "supervision": self.supervisor.snapshot(), "counters": self.counters()}

    def counters(self) -> dict:
        return {"dhcp": self.address.counters(), "validation": self.address.validation(),
                "sntp": self.timekeeping.counters(),
                "boot": dict(self.machine.ignored), "status": dict(self.status_server.counters),
                "hooks": dict(self.hooks.counters),
                "state": {**statefile_io.counters, "unsaved": len(statefile_io.unsaved())},
                "directory": self.directory.counters(),
                "dnssd": dict(self.announcer.advertiser.counts)}

    # -- the bus: boot events, one snapshot each time; hooks ------------------------------

    async def _apply(self, *events: Event) -> None:
        """Every event applied to the boot machine, then one snapshot published."""
        before = (self.machine.state, frozenset(self.machine.degraded))
        for event in events:
            self.machine.handle(event)
        self.status_server.changed()
        if (self.machine.state, frozenset(self.machine.degraded)) != before:
            degraded = ", ".join(sorted(self.machine.degraded))
            self.notifier.status(self.machine.state.value
                                 + (f" (degraded: {degraded})" if degraded else ""))
        if self.machine.state is BootState.READY and not self._ready_once:
            self._ready_once = True
            self._hook("ready")

    def _hook_values(self) -> dict[str, object]:
        return {**self.net.hook_values(),
                "utc_offset": self.timekeeping.report.get("utc_offset_s"),
                "timezone": (self.timekeeping.report["timezone"]["zone"]
                             if self.timekeeping.report["timezone"]["applied"] else None),
                "ae_titles": [t for t in self.directory.titles if t is not None]}

    def _hook(self, event: str, extra: dict | None = None) -> None:
        """Queue the hooks of an event that does not hold its transition."""
        self.hooks.post(event, {**self._hook_values(), **(extra or {})})

    async def _hook_now(self, event: str) -> None:
        await self.hooks.run_now(event, self._hook_values())

    # -- supervision ------------------------------------------------------------------------

    async def _supervision_changed(self) -> None:
        await self._apply(Event.PROFILE_FAILING if self.supervisor.failing
                          else Event.PROFILES_HEALTHY)

    def _status_error(self, exc: BaseException) -> None:
        record = self.supervisor.record("status")
        record.last_error = f"{type(exc).__name__}: {exc}"[:500]

    # -- reload -----------------------------------------------------------------------------

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
        self.directory.device_changed()
        self.announce.wanted.set()
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
                await self._apply(Event.STATE_NOT_SAVED if unsaved else Event.STATE_SAVED)
            await asyncio.sleep(STATE_RETRY if unsaved else STATE_CHECK)

    async def _warm_up(self) -> None:
        modules = ["zeroconf.asyncio"]
        if self.config.directory.enabled:
            modules.append("profiles.app_config.directory_io")
        try:
            await asyncio.to_thread(warm_up, modules)
        except Exception as exc:  # an import that fails fails again where it is needed
            log.warning("warm-up: %s", exc)

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
        await self._apply(Event.STARTED)
        sv = self.supervisor
        tasks = {**self.time.tasks(), **self.directory.tasks(), **self.announce.tasks(),
                 **self.health.tasks(), "hooks": self.hooks.serve, "state": self._state_files}
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(sv.run("address", faulty("address", self.net.run),
                                      cap=self.net.cap, while_down=self.net.while_down),
                               name="address")
                for name, job in tasks.items():
                    tg.create_task(sv.run(name, faulty(name, job)), name=name)
                tg.create_task(self._watchdog(), name="watchdog")
                tg.create_task(self._until_stopped(), name="until-stopped")
                tg.create_task(self._warm_up(), name="warm-up")
                # READY=1 once the daemon is up — configuration valid, status socket
                # listening, profiles started — as systemd-networkd does; waiting for the
                # boot state `ready` is `dicom-agent wait` (dicom-agent-wait-ready.service).
                self.notifier.ready(self.machine.state.value)
        except* Stopped:
            pass
        finally:
            await self._shutdown()

    async def _shutdown(self) -> None:
        await self._apply(Event.STOP)
        self.notifier.send(stopping="1", status="stopping")
        await self.announce.withdraw()
        await self.hooks.run_now("stopping", self._hook_values())
        if self.directory.service is not None:
            self.directory.service.close()
        await self.status_server.close()
