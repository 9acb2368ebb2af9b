"""The DHCP driver: sockets, netlink and files around the sans-IO DhcpClient.

Sockets. A UDP socket on port 68 bound to the interface (SO_BINDTODEVICE) with
SO_BROADCAST. Before the device has an address the client sets the BROADCAST flag, so
servers that would unicast OFFER/ACK to `yiaddr` (dnsmasq does) broadcast them and the
kernel delivers them to this socket; renewals are unicast from the leased address. ARP
probes use an AF_PACKET socket for ETH_P_ARP only, open while a probe runs. While an
address is ours a second ARP socket watches it (RFC 5227 2.4, arp.Defender), with a BPF
filter so that the kernel wakes the agent only for ARP whose sender address is ours.

Time. Deadlines are CLOCK_BOOTTIME; the event loop runs on CLOCK_MONOTONIC, which stops
during suspend, so each wait is at most MAX_SLEEP and BOOTTIME is read again on waking.

Events. Bound/renewed/changed leases are applied (netlink), written to
`<runtime_dir>/resolv.conf` and saved to `<state_dir>/lease-<if>.json` before the
caller's handler sees them. A lost lease goes to the handler first — bounded by
`grace`, so lease-lost hooks can AP-Abort associations — and only then is the address
removed.
"""

from __future__ import annotations

import array
import asyncio
import logging
import random
import socket
import struct
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from profiles import statefile_io
from profiles.network_address.arp import (
    ETH_P_ARP,
    ArpProber,
    Defender,
    LinkLocal,
    claim_filter,
    filter_bytes,
)
from profiles.network_address.dhcp_client import (
    AddressChanged,
    AutoIpWanted,
    DhcpClient,
    DhcpEvent,
    DhcpState,
    LeaseBound,
    LeaseLost,
    LeaseRenewed,
    ProbeRequested,
)
from profiles.network_address.interface_io import Netlink
from profiles.network_address.lease import Lease
from profiles.network_address.resolvconf_io import DnsApplier

log = logging.getLogger(__name__)
CLIENT_PORT = 68
MAX_SLEEP = 30.0  # s: re-read CLOCK_BOOTTIME at least this often (suspend)
SO_BINDTODEVICE = getattr(socket, "SO_BINDTODEVICE", 25)
SO_ATTACH_FILTER = getattr(socket, "SO_ATTACH_FILTER", 26)  # asm-generic/socket.h
NETLINK_ROUTE = 0
RTMGRP_LINK = 1


@dataclass(frozen=True, slots=True)
class AutoIpConfigured:
    """A driver event: the link-local address is in use (degraded: auto-ip)."""

    address: str


@dataclass(frozen=True, slots=True)
class CarrierChanged:
    """A driver event: the link came up or went down."""

    up: bool


@dataclass(frozen=True, slots=True)
class AutoIpRemoved:
    """The link-local address was removed."""

    address: str
    reason: str  # "lease" (a DHCP lease replaced it) or "conflict" (a defence failed)


class AddressRefused(OSError):
    """The kernel refused the leased address itself (no CAP_NET_ADMIN, say)."""


def boottime() -> float:
    return time.clock_gettime(time.CLOCK_BOOTTIME)


@dataclass
class Paths:
    """Where the driver keeps its files, for one interface."""

    state_dir: Path
    runtime_dir: Path
    interface: str

    @property
    def lease_file(self) -> Path:
        return self.state_dir / f"lease-{self.interface}.json"

    @property
    def resolv_conf(self) -> Path:
        return self.runtime_dir / "resolv.conf"

    @property
    def client_id_file(self) -> Path:
        return self.state_dir / "client-id"


def load_saved_lease(paths: Paths) -> tuple[Lease | None, bool]:
    """The saved lease and whether it is from this boot; (None, False) when unusable."""
    record = statefile_io.read_json(paths.lease_file, _lease_record)
    if record is None:
        return None, False
    lease, boot = record
    return lease, boot == statefile_io.boot_id()


def _lease_record(record: object) -> tuple[Lease, str | None]:
    """The shape of `lease-<if>.json`: ValueError for anything else."""
    if not isinstance(record, dict) or "lease" not in record:
        raise ValueError("not a lease file")
    boot = record.get("boot_id")
    if boot is not None and not isinstance(boot, str):
        raise ValueError("boot_id is not a string")
    return Lease.from_record(record["lease"]), boot


def save_lease(paths: Paths, lease: Lease) -> bool:
    """The lease for the next start (INIT-REBOOT); False when the state directory refuses
    it for now (the lease is in force all the same, and saved when it can be)."""
    return statefile_io.save_json(paths.lease_file, {
        "boot_id": statefile_io.boot_id(), "saved_boottime": boottime(),
        "saved_wall": time.time(), "lease": lease.to_record()})


def lease_search(lease: Lease) -> list[str]:
    """The search list a lease gives (option 119, else option 15)."""
    return list(lease.search) or ([lease.domain] if lease.domain else [])


CLIENT_ID_PURPOSE = "dicom-agent dhcp client-id"  # machine_specific(): its own hash


def load_or_make_client_id(paths: Paths, make: Callable[[bytes | None], bytes]) -> bytes:
    """The saved client id; else a new one (`make(None)`: random), saved. When it cannot
    be saved, the id is made from the machine ID instead (`make(uuid)`), so that every
    start until the state directory takes it again asks with the same id — and gets the
    same address (RFC 2131 4.2)."""
    try:
        raw = paths.client_id_file.read_text().strip()
        value = bytes.fromhex(raw.replace(":", ""))
        if len(value) >= 2:
            return value
    except (OSError, ValueError):
        pass
    text = statefile_io.save_identifier(paths.client_id_file,
                                        lambda seed: make(seed).hex(":"), CLIENT_ID_PURPOSE)
    return bytes.fromhex(text.replace(":", ""))


class DhcpDriver:
    """Runs one DhcpClient on one interface until `stop` is set."""

    def __init__(self, client: DhcpClient, paths: Paths, netlink: Netlink,
                 on_event: Callable[[DhcpEvent], Awaitable[None]], grace: float,
                 rng: random.Random, release_on_stop: bool = False,
                 dns: DnsApplier | None = None):
        self.client = client
        self.paths = paths
        self.netlink = netlink
        self.on_event = on_event
        self.grace = grace
        self.rng = rng
        self.release_on_stop = release_on_stop
        self.dns = dns or DnsApplier("file", paths.interface, paths.resolv_conf)
        self._inbox: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue(maxsize=256)
        self._udp: socket.socket | None = None
        self._arp: socket.socket | None = None
        self._prober: ArpProber | None = None
        self._defender: Defender | None = None  # RFC 5227 2.4, while an address is ours
        self._watch: socket.socket | None = None  # its ARP socket, filtered in the kernel
        self._link_local: LinkLocal | None = None
        self._link_local_address: str | None = None  # applied
        self.dropped = 0
        self.arp_watched = 0  # ARP packets the conflict watch's filter let through
        self.apply_failures: Counter[str] = Counter()  # parts the kernel or disk refused

    # -- sockets ---------------------------------------------------------------------------

    def _open_udp(self) -> socket.socket:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        s.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, self.paths.interface.encode())
        s.bind(("0.0.0.0", CLIENT_PORT))
        s.setblocking(False)
        return s

    def _open_arp(self) -> socket.socket:
        s = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_ARP))
        s.bind((self.paths.interface, ETH_P_ARP))
        s.setblocking(False)
        return s

    def _open_watch(self, address: str) -> socket.socket:
        """An ARP socket that the kernel wakes only for ARP claiming `address` (a BPF
        filter on the sender IP: arp.claim_filter); what queued before the filter was
        attached is drained."""
        s = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_ARP))
        try:
            program = claim_filter(address)
            code = array.array("B", filter_bytes(program))  # copied by the kernel at attach
            fprog = struct.pack("HL", len(program), code.buffer_info()[0])  # sock_fprog
            s.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
            s.bind((self.paths.interface, ETH_P_ARP))
            s.setblocking(False)
            while True:
                try:
                    s.recv(4096)
                except (BlockingIOError, InterruptedError):
                    break
        except OSError:
            s.close()
            raise
        return s

    def _watch_address(self, address: str | None) -> None:
        """Watch `address` for conflicts (None: stop watching)."""
        if self._defender is not None and self._defender.address == address:
            return
        if self._watch is not None:
            asyncio.get_running_loop().remove_reader(self._watch.fileno())
            self._watch.close()
            self._watch, self._defender = None, None
        if address is None or not self.client.s.arp_probe:
            return
        try:
            self._watch = self._open_watch(address)
        except OSError as exc:
            log.warning("cannot watch %s for ARP conflicts: %s", address, exc)
            return
        self._defender = Defender(address, self.client.s.mac)
        asyncio.get_running_loop().add_reader(self._watch.fileno(),
                                              self._reader("watch", self._watch))

    def _open_link_monitor(self) -> socket.socket:
        """rtnetlink link notifications: any of them makes us read the carrier again."""
        s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
        s.bind((0, RTMGRP_LINK))
        s.setblocking(False)
        return s

    def carrier(self) -> bool:
        try:
            return Path(f"/sys/class/net/{self.paths.interface}/carrier").read_text().strip() \
                == "1"
        except OSError:  # EINVAL while the interface is administratively down
            return False

    def _reader(self, kind: str, sock: socket.socket) -> Callable[[], None]:
        def read() -> None:
            try:
                data = sock.recv(4096)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.debug("%s socket: %s", kind, exc)
                return
            try:
                self._inbox.put_nowait((kind, data))
            except asyncio.QueueFull:
                self.dropped += 1  # a flood: drop, count, carry on
        return read

    # -- the loop ------------------------------------------------------------------------

    def renew(self) -> None:
        """Ask the leasing server now (the status socket's `renew`)."""
        self._inbox.put_nowait(("renew", b""))

    def stop(self) -> None:
        """Ask run() to end (it sends DHCPRELEASE first when release_on_stop)."""
        self._inbox.put_nowait(("stop", b""))

    async def run(self, saved: Lease | None = None, same_boot: bool = False) -> None:
        loop = asyncio.get_running_loop()
        self._udp = self._open_udp()
        loop.add_reader(self._udp.fileno(), self._reader("udp", self._udp))
        monitor = self._open_link_monitor()
        loop.add_reader(monitor.fileno(), self._reader("link", monitor))
        asked_to_stop = False
        try:
            self.client.start(boottime(), saved=saved, same_boot=same_boot,
                              wall_now=time.time())
            if self.netlink is not None:
                try:
                    if await self.netlink.bring_up():
                        log.info("%s was down: set up", self.paths.interface)
                except Exception as exc:  # the carrier wait says the rest
                    log.warning("%s: cannot set the link up: %s", self.paths.interface, exc)
            has_carrier = self.carrier()
            if not has_carrier:
                log.info("%s has no carrier: waiting for it", self.paths.interface)
                self.client.carrier_lost(boottime())
            await self._flush()
            while True:
                now = boottime()
                deadlines = [t for t in (self.client.get_timer(),
                                         self._prober.get_timer() if self._prober else None,
                                         self._link_local.get_timer() if self._link_local
                                         else None)
                             if t is not None]
                delay = max(min([MAX_SLEEP, *(d - now for d in deadlines)]), 0.0)
                try:
                    kind, data = await asyncio.wait_for(self._inbox.get(), delay)
                except TimeoutError:
                    kind, data = "timer", b""
                if kind == "stop":
                    asked_to_stop = True
                    break
                now = boottime()
                if kind == "renew":
                    self.client.renew_now(now)
                elif kind == "link":
                    carrier = self.carrier()
                    if carrier != has_carrier:
                        has_carrier = carrier
                        log.info("%s carrier %s", self.paths.interface,
                                 "up" if carrier else "down")
                        if carrier:
                            self.client.carrier_regained(now)
                        else:
                            self.client.carrier_lost(now)
                        await self.on_event(CarrierChanged(carrier))
                elif kind == "udp":
                    self.client.receive_datagram(data, now)
                elif kind == "arp":
                    for core in (self._prober, self._link_local):
                        if core is not None:
                            core.receive(data, now)
                elif kind == "watch" and self._defender is not None:
                    self.arp_watched += 1
                    conflict = self._defender.receive(data, now)
                    if conflict is not None:
                        self.client.address_conflict(conflict.address, conflict.mac.hex(":"),
                                                     conflict.defended, now)
                self.client.handle_timer(now)
                if self._prober is not None:
                    self._prober.handle_timer(now)
                    if self._prober.result is not None and self.client.state is DhcpState.PROBING:
                        self.client.probe_result(self._prober.address, self._prober.result, now)
                if self._link_local is not None:
                    self._link_local.handle_timer(now)
                    await self._link_local_changed(now)
                await self._flush()
        except asyncio.CancelledError:
            asked_to_stop = True  # the daemon's orderly stop
            raise
        finally:
            if self._link_local_address is not None:
                await self._stop_link_local("stopped")
            if self.client.state is not DhcpState.STOPPED:
                # RELEASE only on a stop asked for: a run ended by a fault is restarted
                # and resumes from the saved lease.
                release = self.release_on_stop and asked_to_stop
                self.client.stop(boottime(), release=release)
                self._send_datagrams()
                if release:  # the lease is given back: its DNS goes with it
                    self.dns.withdraw()
            self._close_prober()
            self._watch_address(None)
            for sock in (self._udp, monitor):
                loop.remove_reader(sock.fileno())
                sock.close()
            self._udp = None

    def _send_datagrams(self) -> None:
        for d in self.client.datagrams_to_send():
            try:
                self._udp.sendto(d.payload, (d.destination, d.port))
            except OSError as exc:
                log.warning("sending to %s: %s", d.destination, exc)

    async def _flush(self) -> None:
        self._send_datagrams()
        for core, sock in ((self._prober, self._arp), (self._link_local, self._arp),
                           (self._defender, self._watch)):
            if core is None:
                continue
            for frame in core.frames_to_send():
                try:
                    sock.sendto(frame, (self.paths.interface, ETH_P_ARP, 0, 0, b"\xff" * 6))
                except OSError as exc:
                    log.warning("ARP send: %s", exc)
        if self._prober is not None and self._prober.get_timer() is None:
            self._close_prober()  # decided, announcements sent
        while (event := self.client.next_event()) is not None:
            await self._handle(event)
        self._send_datagrams()

    def _ensure_arp(self) -> None:
        if self._arp is None:
            self._arp = self._open_arp()
            asyncio.get_running_loop().add_reader(self._arp.fileno(),
                                                  self._reader("arp", self._arp))

    def _close_arp_if_idle(self) -> None:
        if self._arp is not None and self._prober is None and self._link_local is None:
            asyncio.get_running_loop().remove_reader(self._arp.fileno())
            self._arp.close()
            self._arp = None

    def _close_prober(self) -> None:
        self._prober = None
        self._close_arp_if_idle()

    async def _link_local_changed(self, now: float) -> None:
        """Apply what the RFC 3927 core decided: a new address, or one given up."""
        current = self._link_local.address
        if current == self._link_local_address:
            return
        if self._link_local_address is not None:
            old, self._link_local_address = self._link_local_address, None
            await self.netlink.remove_link_local(old)
            self.client.auto_ip_lost(now)
            await self.on_event(AutoIpRemoved(old, "conflict"))
        if current is not None:
            await self.netlink.add_link_local(current)
            self._link_local_address = current
            self.client.auto_ip_configured(current, now)
            await self.on_event(AutoIpConfigured(current))

    async def _stop_link_local(self, reason: str) -> None:
        address, self._link_local_address = self._link_local_address, None
        self._link_local = None
        self._close_arp_if_idle()
        if address is not None:
            await self.netlink.remove_link_local(address)
            await self.on_event(AutoIpRemoved(address, reason))

    async def _handle(self, event: DhcpEvent) -> None:
        now = boottime()
        match event:
            case ProbeRequested(address):
                self._ensure_arp()
                self._prober = ArpProber(address, self.client.s.mac, self.rng, now)
                return
            case AutoIpWanted():
                if self._link_local is None:
                    self._ensure_arp()
                    self._link_local = LinkLocal(self.client.s.mac, self.rng, now)
                return
            case LeaseBound(lease) | LeaseRenewed(lease) | AddressChanged(_, lease):
                if self._link_local is not None:
                    await self._stop_link_local("lease")  # RFC 3927 1.9: DHCP wins
                # Validated (the lease core), saved, then applied part by part with no
                # part fatal: a restart re-applying the saved lease meets no crash.
                if not save_lease(self.paths, lease):  # full, read-only: saved later
                    self.apply_failures["save-lease"] += 1
                refused = await self.netlink.apply(lease, now, self.grace)
                for failure in refused:
                    self.apply_failures["apply-" + failure.split(":")[0].split(" ")[0]] += 1
                address = [f for f in refused if f.startswith("address:")]
                if address:
                    # Without its address the lease is not the device's: never reported
                    # bound. A fault of this task — the supervisor retries (below T1).
                    raise AddressRefused(f"{lease.address}: {address[0][9:]}")
                failures = self.dns.failures
                try:  # resolvectl or resolvconf may take a moment: off the loop
                    await asyncio.to_thread(self.dns.apply, lease.dns, lease_search(lease))
                except OSError as exc:
                    self.apply_failures["resolv-conf"] += 1
                    log.warning("resolv.conf not written: %s", exc)
                if self.dns.failures > failures:
                    self.apply_failures["dns"] += 1
                self._watch_address(lease.address)  # RFC 5227 2.4 from now on
                await self.on_event(event)
            case LeaseLost(lease, _):
                self._watch_address(None)
                try:
                    await asyncio.wait_for(self.on_event(event), self.grace)
                except TimeoutError:
                    log.warning("lease-lost handlers took over %.1f s", self.grace)
                await self.netlink.remove(lease)
                await asyncio.to_thread(self.dns.withdraw)
                statefile_io.remove(self.paths.lease_file)
            case _:
                await self.on_event(event)
