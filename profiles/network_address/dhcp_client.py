"""RFC 2131 DHCP client as a sans-IO state machine.

Theory of operation
-------------------
The client holds every decision and does no I/O. A driver feeds it `start()`,
`receive_datagram()`, `handle_timer()` and `probe_result()`, sends what
`datagrams_to_send()` returns, acts on what `next_event()` returns, and re-arms its one
timer at `get_timer()`. `now` is CLOCK_BOOTTIME seconds; randomness comes from the
injected `random.Random`, so a whole lease — backoff, jitter, T1, T2, expiry — is
tested by advancing `now` by hand.

    INIT --DISCOVER--> SELECTING --REQUEST--> REQUESTING --ACK--> [PROBING] --> BOUND
    BOUND --T1--> RENEWING (unicast) --T2--> REBINDING (broadcast) --expiry--> INIT
    INIT-REBOOT --REQUEST--> REBOOTING --ACK--> BOUND, --NAK/no answer--> INIT
    PROBING --conflict--> DECLINING --10 s--> INIT (RFC 2131 3.1.5)
    SELECTING --discover_timeout, auto_ip--> AUTO_IP (169.254/16; DISCOVERs go on)

Replies are checked (op, xid, chaddr, message type, server id, client id, addresses);
anything that does not fit the state is counted in `counters` and ignored, never
raised (systemd's sd-dhcp-client does the same). Retransmission follows RFC 2131 4.1:
4, 8, 16, 32, 64 s with +-1 s of jitter; in RENEWING and REBINDING the client waits half
of the time left, at least 60 s, never past T2 or expiry.
"""

from __future__ import annotations

import enum
import ipaddress
import logging
import random
import zlib
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from profiles.errors import ParseError
from profiles.network_address import options as o
from profiles.network_address.codec import (
    BOOTREPLY,
    BOOTREQUEST,
    FLAG_BROADCAST,
    DhcpMessage,
    MessageType,
    build,
    pad_chaddr,
    parse,
)
from profiles.network_address.lease import Lease, sanitize

log = logging.getLogger(__name__)

BROADCAST = "255.255.255.255"
SERVER_PORT = 67
MAX_MESSAGE_SIZE = 1500  # option 57: what we accept (one Ethernet frame)
BACKOFF_MAX = 64.0  # s, RFC 2131 4.1
REQUEST_TRIES = 4  # REQUESTING / REBOOTING transmissions before giving up (4+8+16+32 s)
DECLINE_WAIT = 10.0  # s, RFC 2131 3.1.5
RENEW_MIN_WAIT = 60.0  # s, RFC 2131 4.4.5


class DhcpState(enum.Enum):
    #: No lease; after the initial delay send DISCOVER (RFC 2131 4.4.1).
    INIT = "init"
    #: DISCOVER sent, collecting OFFERs.
    SELECTING = "selecting"
    #: REQUEST sent for the chosen OFFER.
    REQUESTING = "requesting"
    #: Checking with ARP that nobody else uses the address (RFC 5227).
    PROBING = "probing"
    #: The address was in use: DECLINE sent, waiting before a new DISCOVER.
    DECLINING = "declining"
    #: Lease held; T1 pending.
    BOUND = "bound"
    #: Past T1: unicast REQUEST to the leasing server.
    RENEWING = "renewing"
    #: Past T2: broadcast REQUEST to any server.
    REBINDING = "rebinding"
    #: A saved lease from an earlier boot; about to ask for it again (RFC 2131 3.2).
    INIT_REBOOT = "init-reboot"
    #: REQUEST for the saved address sent; waiting for ACK or NAK.
    REBOOTING = "rebooting"
    #: No acceptable offer within discover_timeout: a 169.254/16 address is in use
    #: (RFC 3927) while DISCOVERs go on; a lease replaces it.
    AUTO_IP = "auto-ip"
    #: Link down: nothing is sent (the driver says when carrier returns).
    NO_CARRIER = "no-carrier"
    STOPPED = "stopped"


@dataclass(frozen=True, slots=True)
class Datagram:
    """A DHCP message for the driver to send."""

    payload: bytes
    destination: str  # BROADCAST or the server's address
    port: int = SERVER_PORT


# -- events ---------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class LeaseBound:
    """A lease is bound: a new one acknowledged, or this boot's saved one reused."""

    lease: Lease


@dataclass(frozen=True, slots=True)
class LeaseRenewed:
    """The lease was extended at the same address (RENEWING or REBINDING)."""

    lease: Lease


@dataclass(frozen=True, slots=True)
class LeaseExpiring:
    """Entering REBINDING: time for a graceful A-RELEASE (PS3.15 F.1.4.4 note)."""

    lease: Lease


@dataclass(frozen=True, slots=True)
class LeaseLost:
    """The lease is gone; `reason` says why."""

    lease: Lease
    reason: str  # "expired", "nak", "address-conflict", "new-address-in-use"


@dataclass(frozen=True, slots=True)
class AddressChanged:
    """A new lease holds another address than the last one."""

    old_address: str
    lease: Lease


@dataclass(frozen=True, slots=True)
class ProbeRequested:
    """The driver should ARP-probe `address` (RFC 5227) and call probe_result()."""

    address: str


@dataclass(frozen=True, slots=True)
class AddressDeclined:
    """The offered address answered our ARP probe: DHCPDECLINE sent."""

    address: str
    server_id: str


@dataclass(frozen=True, slots=True)
class AddressConflict:
    """RFC 5227 2.4: another machine claimed the address in use (`mac`): defended with
    one announcement, or (`defended` False) given up — DECLINEd, the lease lost."""

    address: str
    mac: str
    defended: bool


@dataclass(frozen=True, slots=True)
class AutoIpWanted:
    """discover_timeout passed with no acceptable offer and auto-IP is permitted (RFC
    2563): the driver should configure a link-local address (RFC 3927) and report it
    with auto_ip_configured()."""


DhcpEvent = (LeaseBound | LeaseRenewed | LeaseExpiring | LeaseLost | AddressChanged
             | ProbeRequested | AddressDeclined | AddressConflict | AutoIpWanted)


@dataclass
class ClientSettings:
    """What the client is told at the start."""

    mac: bytes
    client_id: bytes
    hostname: str | None = None  # requested name; sent as option 12 and 81 (S flag)
    initial_delay: tuple[float, float] = (0.0, 2.0)
    arp_probe: bool = True
    server_allowlist: tuple[str, ...] = ()
    offer_window: float = 0.0
    configured_offset: int | None = None
    auto_ip: bool = False  # RFC 2563 permission from the configuration ("NVRAM")
    discover_timeout: float = 5.0
    requested: tuple[int, ...] = o.REQUESTED
    wall_clock: Callable[[], float] = field(default=lambda: 0.0)


def generate_client_id(interface: str, rng: random.Random,
                       uuid: bytes | None = None) -> bytes:
    """RFC 4361: 0xff, a 4-byte IAID (from the interface name), and a DUID — here a
    DUID-UUID (RFC 6355): `uuid` when given (derived from the machine ID when the id
    cannot be saved), else from the injected RNG. Generated once, then persisted."""
    iaid = zlib.crc32(interface.encode()).to_bytes(4, "big")
    if uuid is None or len(uuid) != 16:
        uuid = rng.getrandbits(128).to_bytes(16, "big")
    return b"\xff" + iaid + b"\x00\x04" + uuid


class DhcpClient:
    """RFC 2131 client. Driven by start(), receive_datagram() and handle_timer(). No I/O."""

    def __init__(self, settings: ClientSettings, rng: random.Random):
        self.s = settings
        self.rng = rng
        self.state = DhcpState.STOPPED
        self.lease: Lease | None = None  # the lease in force (applied by the driver)
        self.counters: Counter[str] = Counter()
        self.validation: Counter[str] = Counter()  # values refused at the boundary
        self._logged: set[tuple[str, str]] = set()
        self._timer: float | None = None
        self._outbox: list[Datagram] = []
        self._events: deque[DhcpEvent] = deque()
        self._xid = 0
        self._started_at = 0.0  # when this exchange began (the secs field)
        self._tries = 0
        self._offers: list[DhcpMessage] = []
        self._offer: DhcpMessage | None = None
        self._pending: Lease | None = None  # ACKed, being probed
        self._requested_address: str | None = None  # INIT-REBOOT / DISCOVER hint
        self._naks = 0
        self._auto_ip_due: float | None = None  # when to ask for a link-local address
        self.auto_ip_forbidden = False  # a server sent option 116 = 0 (RFC 2563)
        self.auto_ip_address: str | None = None

    # -- driver interface ------------------------------------------------------------------

    def start(self, now: float, saved: Lease | None = None, same_boot: bool = False,
              wall_now: float | None = None) -> None:
        """Begin. A saved lease from this boot is reused as it is (its BOOTTIME stamps are
        exact); one from another boot is confirmed with INIT-REBOOT (RFC 2131 3.2), the
        server deciding — even when the wall clock says it expired: at power-on the wall
        clock is the one this agent has yet to set, and a device whose real-time clock
        runs years ahead would otherwise never reuse its address (seen in a VM). Such a
        lease is counted (`saved-lease-expired-by-clock`); a NAK or no answer leads to
        DISCOVER as for any other."""
        if saved is not None and same_boot and saved.remaining(now) > 0:
            self.lease = saved
            self._events.append(LeaseBound(saved))
            self._enter_bound(now)
            self.handle_timer(now)  # a T1 or T2 already past takes effect at once
            return
        if saved is not None and not same_boot:
            wall = self.s.wall_clock() if wall_now is None else wall_now
            if saved.lease_time != 0xFFFFFFFF and saved.bound_wall + saved.lease_time <= wall:
                self.counters["saved-lease-expired-by-clock"] += 1
            self._requested_address = saved.address
            self._enter_init_reboot(now)
            return
        if saved is not None:
            self._requested_address = saved.address
        self._enter_init(now, delay=self._initial_delay())

    def stop(self, now: float, release: bool = False) -> None:
        """Stop; with `release`, send DHCPRELEASE for the lease in force (RFC 2131 4.4.6)."""
        if release and self.lease is not None and self.state in (
                DhcpState.BOUND, DhcpState.RENEWING, DhcpState.REBINDING):
            msg = self._message(MessageType.RELEASE, ciaddr=self.lease.address,
                                extra={o.SERVER_ID: _ip(self.lease.server_id)}, broadcast=False,
                                with_params=False)
            self._outbox.append(Datagram(build(msg), self.lease.server_id))
        self._set_state(DhcpState.STOPPED)
        self._timer = None

    def renew_now(self, now: float) -> bool:
        """An operator's `renew`: ask the leasing server now instead of at T1."""
        if self.state is not DhcpState.BOUND or self.lease is None:
            return False
        self._set_state(DhcpState.RENEWING)
        self._begin_exchange(now)
        self._send_request(now, ciaddr=self.lease.address, destination=self.lease.server_id)
        t2 = self.lease.bound_at + self.lease.t2
        self._timer = min(now + max(RENEW_MIN_WAIT, (t2 - now) / 2), t2)
        return True

    def carrier_lost(self, now: float) -> None:
        self._set_state(DhcpState.NO_CARRIER)
        self._timer = self.lease.expires_at if self.lease else None

    def carrier_regained(self, now: float) -> None:
        """The link may now be another network: confirm the lease (RFC 2131 3.2)."""
        if self.state is not DhcpState.NO_CARRIER:
            return
        self.auto_ip_forbidden = False  # another network: its servers say again (RFC 2563)
        if self.lease is not None and self.lease.remaining(now) > 0:
            self._requested_address = self.lease.address
            self._enter_init_reboot(now)
        else:
            self._enter_init(now, delay=0.0)

    def get_timer(self) -> float | None:
        if self._auto_ip_due is not None and self.state is DhcpState.SELECTING:
            return self._auto_ip_due if self._timer is None else min(self._timer,
                                                                     self._auto_ip_due)
        return self._timer

    def auto_ip_configured(self, address: str, now: float) -> None:
        """The driver has a link-local address in use; DHCP goes on in the background."""
        self.auto_ip_address = address
        if self.state is DhcpState.SELECTING:
            self._set_state(DhcpState.AUTO_IP)

    def auto_ip_lost(self, now: float) -> None:
        self.auto_ip_address = None
        if self.state is DhcpState.AUTO_IP:
            self._set_state(DhcpState.SELECTING)

    def datagrams_to_send(self) -> list[Datagram]:
        out, self._outbox = self._outbox, []
        return out

    def next_event(self) -> DhcpEvent | None:
        return self._events.popleft() if self._events else None

    def handle_timer(self, now: float) -> None:
        if self._auto_ip_due is not None and now >= self._auto_ip_due \
                and self.state is DhcpState.SELECTING and not self._offers:
            self._auto_ip_due = None
            if not self.auto_ip_forbidden:
                log.info("no acceptable offer in %.1f s: asking for a link-local address",
                         self.s.discover_timeout)
                self._events.append(AutoIpWanted())
        if self._timer is None or now < self._timer:
            return
        self._timer = None
        match self.state:
            case DhcpState.INIT:
                self._send_discover(now, first=True)
            case DhcpState.SELECTING | DhcpState.AUTO_IP:
                if self._offers:
                    self._choose_offer(now)
                else:
                    self._send_discover(now, first=False)
            case DhcpState.REQUESTING | DhcpState.REBOOTING:
                if self._tries >= REQUEST_TRIES:
                    log.info("no answer to REQUEST after %d tries", self._tries)
                    self.counters["request-timeout"] += 1
                    self._requested_address = None
                    self._enter_init(now, delay=0.0)
                else:
                    self._send_request(now)
            case DhcpState.INIT_REBOOT:
                self._set_state(DhcpState.REBOOTING)
                self._begin_exchange(now)
                self._send_request(now)
            case DhcpState.DECLINING:
                self._enter_init(now, delay=0.0)
            case DhcpState.BOUND | DhcpState.RENEWING | DhcpState.REBINDING | \
                    DhcpState.NO_CARRIER:
                self._lease_timer(now)
            case _:
                pass

    def address_conflict(self, address: str, mac: str, defended: bool, now: float) -> None:
        """The driver's RFC 5227 2.4 watch (arp.Defender) saw our address claimed. Given
        up: DHCPDECLINE (RFC 2131 3.1 5, as dhcpcd does), the lease lost, a new one
        sought after DECLINE_WAIT."""
        lease = self.lease
        if lease is None or lease.address != address or self.state not in (
                DhcpState.BOUND, DhcpState.RENEWING, DhcpState.REBINDING):
            self.counters["stale-conflict"] += 1
            return
        self._events.append(AddressConflict(address, mac, defended))
        self.counters["conflict-defended" if defended else "conflict-declined"] += 1
        if defended:
            return
        log.warning("address %s claimed again by %s: declining it", address, mac)
        self._decline(address, lease.server_id)
        self._events.append(LeaseLost(lease, "address-conflict"))
        self.lease = None
        self._requested_address = None
        self._set_state(DhcpState.DECLINING)
        self._timer = now + DECLINE_WAIT

    def _decline(self, address: str, server_id: str) -> None:
        msg = self._message(MessageType.DECLINE, extra={
            o.REQUESTED_ADDRESS: _ip(address), o.SERVER_ID: _ip(server_id)},
            with_params=False)
        self._outbox.append(Datagram(build(msg), BROADCAST))

    def probe_result(self, address: str, conflict: bool, now: float) -> None:
        if self.state is not DhcpState.PROBING or self._pending is None \
                or self._pending.address != address:
            self.counters["stale-probe-result"] += 1
            return
        pending, self._pending = self._pending, None
        if conflict:
            log.warning("address %s is in use on the link: declining it", address)
            self._decline(address, pending.server_id)
            self._events.append(AddressDeclined(address, pending.server_id))
            self.counters["declined"] += 1
            if self.lease is not None:  # a renewal moved us to an address in use
                self._events.append(LeaseLost(self.lease, "new-address-in-use"))
                self.lease = None
            self._set_state(DhcpState.DECLINING)
            self._timer = now + DECLINE_WAIT
        else:
            self._bind(pending, now)

    def receive_datagram(self, data: bytes, now: float) -> None:
        try:
            msg = parse(data)
        except ParseError as exc:
            self._ignore("malformed", str(exc))
            return
        if msg.op != BOOTREPLY:
            return self._ignore("not-a-reply")
        if msg.hardware_address != self.s.mac[: msg.hlen] or msg.hlen != len(self.s.mac):
            return self._ignore("wrong-chaddr")
        if msg.xid != self._xid:
            return self._ignore("wrong-xid")
        mtype = msg.message_type
        if mtype is None:
            return self._ignore("no-message-type")
        cid = msg.options.get(o.CLIENT_ID)
        if cid is not None and cid != self.s.client_id:
            return self._ignore("wrong-client-id", server=self._server_id(msg) or "?")  # RFC 6842
        server = self._server_id(msg)
        if server is None:
            return self._ignore("no-server-id", server=msg.siaddr)
        if self.s.server_allowlist and server not in self.s.server_allowlist:
            return self._ignore("server-not-allowed", server=server)
        match (self.state, mtype):
            case (DhcpState.SELECTING | DhcpState.AUTO_IP, MessageType.OFFER):
                self._on_offer(msg, now)
            case (DhcpState.REQUESTING | DhcpState.REBOOTING | DhcpState.RENEWING
                  | DhcpState.REBINDING, MessageType.ACK):
                self._on_ack(msg, server, now)
            case (DhcpState.REQUESTING | DhcpState.REBOOTING | DhcpState.RENEWING
                  | DhcpState.REBINDING, MessageType.NAK):
                self._on_nak(msg, server, now)
            case _:
                self._ignore("unexpected", f"{mtype.name} in {self.state.value}")

    # -- receiving ---------------------------------------------------------------------

    def _ignore(self, reason: str, detail: str = "", server: str | None = None) -> None:
        """Drop a message, counted. A reply to our own request (`server` known) that is
        refused is also logged at the default level, once per server and reason, so that
        "why no address?" is answered by the journal; the rest (other clients' replies,
        stray or late messages) only at debug."""
        self.counters[reason] += 1
        if server is not None and (server, reason) not in self._logged:
            if len(self._logged) > 256:
                self._logged.clear()
            self._logged.add((server, reason))
            log.warning("refused a reply from %s: %s%s", server, reason,
                        f" ({detail})" if detail and detail != server else "")
            return
        log.debug("ignoring a message: %s %s", reason, detail)

    def _server_id(self, msg: DhcpMessage) -> str | None:
        raw = msg.options.get(o.SERVER_ID)
        try:
            server = o.address(raw, o.SERVER_ID) if raw is not None else None
        except ParseError:
            return None
        return server if server is not None and _usable_address(server) else None

    def _on_offer(self, msg: DhcpMessage, now: float) -> None:
        if msg.options.get(o.AUTO_CONFIGURE) == b"\x00":
            self.auto_ip_forbidden = True  # RFC 2563 2.3: DoNotAutoConfigure
        if not _usable_address(msg.yiaddr):
            return self._ignore("bad-offer", msg.yiaddr, server=self._server_id(msg))
        self._offers.append(msg)
        if self.s.offer_window <= 0:
            self._choose_offer(now)
        elif len(self._offers) == 1:
            self._timer = now + self.s.offer_window

    def _choose_offer(self, now: float) -> None:
        # With a window: the offer carrying most of what we asked for; first one on a tie.
        best = max(self._offers, key=lambda m: sum(c in m.options for c in self.s.requested))
        self._offers = []
        self._offer = best
        self._set_state(DhcpState.REQUESTING)
        self._tries = 0
        self._send_request(now)

    def _on_ack(self, msg: DhcpMessage, server: str, now: float) -> None:
        expected = self._expected_address()
        if expected is not None and msg.yiaddr != expected and self.state in (
                DhcpState.REQUESTING, DhcpState.REBOOTING):
            return self._ignore("ack-for-another-address", msg.yiaddr, server=server)
        if self.state is DhcpState.REQUESTING and self._offer is not None \
                and server != self._server_id(self._offer):
            return self._ignore("ack-from-another-server", server, server=server)
        if self.state is DhcpState.RENEWING and self.lease and server != self.lease.server_id:
            return self._ignore("ack-from-another-server", server, server=server)
        if not _usable_address(msg.yiaddr):
            return self._ignore("bad-ack", msg.yiaddr, server=server)
        lease = Lease.from_ack(msg, now, self.s.wall_clock(), self.s.hostname,
                               self.s.configured_offset)
        if lease.lease_time == 0:  # absent or undecodable (a short one is raised)
            return self._ignore("ack-without-lease-time", server=server)
        if lease.rejected:
            self.counters["rejected-options"] += len(lease.rejected)
            for code in lease.rejected:
                self.validation[f"dhcp-option-{code}"] += 1
            # Once per server and refusal, not at every renewal.
            fresh = [n for n in lease.notes if (server, n) not in self._logged]
            if len(self._logged) > 256:
                self._logged.clear()
            self._logged.update((server, n) for n in fresh)
            if fresh:
                log.warning("ACK from %s: refused %s", server, "; ".join(fresh))
        if self.state in (DhcpState.RENEWING, DhcpState.REBINDING):
            old = self.lease
            if old is not None and old.address != lease.address and self.s.arp_probe:
                # A renewal that moves us: probed first, like any new address (RFC
                # 5227 2.1); the old lease stands meanwhile.
                self._pending = lease
                self._set_state(DhcpState.PROBING)
                self._timer = None
                self._events.append(ProbeRequested(lease.address))
                return
            self.lease = lease
            self._enter_bound(now)
            if old is not None and old.address != lease.address:
                self._events.append(LeaseBound(lease))
                self._events.append(AddressChanged(old.address, lease))
            else:
                self._events.append(LeaseRenewed(lease))
            return
        if self.s.arp_probe:
            self._pending = lease
            self._set_state(DhcpState.PROBING)
            self._timer = None
            self._events.append(ProbeRequested(lease.address))
        else:
            self._bind(lease, now)

    def _on_nak(self, msg: DhcpMessage, server: str, now: float) -> None:
        if self.state is DhcpState.REQUESTING and self._offer is not None \
                and server != self._server_id(self._offer):
            return self._ignore("nak-from-another-server", server, server=server)
        self.counters["nak"] += 1
        text = sanitize(msg.options.get(o.MESSAGE, b"").decode("latin-1"), 80)
        log.info("NAK from %s in %s: %s", server, self.state.value, text)
        if self.lease is not None and self.state in (DhcpState.RENEWING, DhcpState.REBINDING,
                                                     DhcpState.REBOOTING):
            self._events.append(LeaseLost(self.lease, "nak"))
            self.lease = None
        self._requested_address = None
        self._naks += 1
        # Back off on repeated NAKs: 0, 2, 4, ... 64 s (plus jitter), reset on binding.
        delay = 0.0 if self._naks == 1 else min(2.0 ** (self._naks - 1), BACKOFF_MAX)
        self._enter_init(now, delay=delay + (self.rng.uniform(0, 1) if delay else 0.0))

    def _bind(self, lease: Lease, now: float) -> None:
        old = self.lease
        self.lease = lease
        self._naks = 0
        self.auto_ip_forbidden = False  # a new lease: a later loss starts the question again
        self._auto_ip_due = None
        self.auto_ip_address = None  # the lease replaces it; the driver removes it
        self._enter_bound(now)
        self._events.append(LeaseBound(lease))
        if old is not None and old.address != lease.address:
            self._events.append(AddressChanged(old.address, lease))

    # -- lease timers ------------------------------------------------------------------

    def _enter_bound(self, now: float) -> None:
        self._set_state(DhcpState.BOUND)
        assert self.lease is not None
        self._timer = self.lease.bound_at + self.lease.t1

    def _lease_timer(self, now: float) -> None:
        lease = self.lease
        if lease is None:
            return self._enter_init(now, delay=0.0)
        t1, t2 = lease.bound_at + lease.t1, lease.bound_at + lease.t2
        expiry = lease.expires_at
        if now >= expiry:
            log.warning("lease on %s expired", lease.address)
            self._events.append(LeaseLost(lease, "expired"))
            self.lease = None
            self._requested_address = lease.address  # ask for it again, politely
            if self.state is DhcpState.NO_CARRIER:
                return  # nothing is sent until carrier returns
            return self._enter_init(now, delay=0.0)
        if self.state is DhcpState.NO_CARRIER:
            self._timer = expiry
            return
        if now >= t2:
            if self.state is not DhcpState.REBINDING:
                self._set_state(DhcpState.REBINDING)
                self._events.append(LeaseExpiring(lease))
                self._begin_exchange(now)
            self._send_request(now, ciaddr=lease.address, destination=BROADCAST)
            self._timer = min(now + max(RENEW_MIN_WAIT, (expiry - now) / 2), expiry)
        elif now >= t1:
            if self.state is not DhcpState.RENEWING:
                self._set_state(DhcpState.RENEWING)
                self._begin_exchange(now)
            self._send_request(now, ciaddr=lease.address, destination=lease.server_id)
            self._timer = min(now + max(RENEW_MIN_WAIT, (t2 - now) / 2), t2)
        else:
            self._timer = t1

    # -- sending -------------------------------------------------------------------------

    def _enter_init(self, now: float, delay: float) -> None:
        self._set_state(DhcpState.INIT)
        self._offers, self._offer, self._pending = [], None, None
        self._timer = now + delay

    def _enter_init_reboot(self, now: float) -> None:
        self._set_state(DhcpState.INIT_REBOOT)
        self._timer = now + self._initial_delay()

    def _initial_delay(self) -> float:
        low, high = self.s.initial_delay
        return self.rng.uniform(low, high) if high > 0 else 0.0

    def _begin_exchange(self, now: float) -> None:
        self._xid = self.rng.getrandbits(32)
        self._started_at = now
        self._tries = 0

    def _backoff(self) -> float:
        """RFC 2131 4.1: 4, 8, 16, 32, 64, 64... seconds, each +-1 s."""
        base = min(4.0 * 2 ** (self._tries - 1), BACKOFF_MAX)
        return max(1.0, base + self.rng.uniform(-1.0, 1.0))

    def _send_discover(self, now: float, first: bool) -> None:
        if first:
            self._set_state(DhcpState.SELECTING)
            self._begin_exchange(now)
            if self.auto_ip_address is not None:
                self._set_state(DhcpState.AUTO_IP)  # still on the link-local address
            elif self.s.auto_ip:
                self._auto_ip_due = now + self.s.discover_timeout
        self._tries += 1
        extra = {}
        if self._requested_address:
            extra[o.REQUESTED_ADDRESS] = _ip(self._requested_address)
        if self.s.auto_ip:
            # RFC 2563 2.2: a client that may auto-configure says so (AutoConfigure = 1);
            # a server answers "do not" (0) only to clients that sent the option.
            extra[o.AUTO_CONFIGURE] = b"\x01"
        msg = self._message(MessageType.DISCOVER, extra=extra, now=now)
        self._outbox.append(Datagram(build(msg), BROADCAST))
        self._timer = now + self._backoff()

    def _send_request(self, now: float, ciaddr: str = "0.0.0.0",
                      destination: str = BROADCAST) -> None:
        self._tries += 1
        extra: dict[int, bytes] = {}
        if self.state is DhcpState.REQUESTING and self._offer is not None:
            extra[o.REQUESTED_ADDRESS] = _ip(self._offer.yiaddr)
            extra[o.SERVER_ID] = self._offer.options[o.SERVER_ID]
        elif self.state is DhcpState.REBOOTING and self._requested_address:
            extra[o.REQUESTED_ADDRESS] = _ip(self._requested_address)
        msg = self._message(MessageType.REQUEST, ciaddr=ciaddr, extra=extra, now=now,
                            broadcast=ciaddr == "0.0.0.0")
        self._outbox.append(Datagram(build(msg), destination))
        if self.state in (DhcpState.REQUESTING, DhcpState.REBOOTING):
            self._timer = now + self._backoff()

    def _message(self, mtype: MessageType, ciaddr: str = "0.0.0.0",
                 extra: dict[int, bytes] | None = None, now: float | None = None,
                 broadcast: bool = True, with_params: bool = True) -> DhcpMessage:
        opts: dict[int, bytes] = {o.MESSAGE_TYPE: bytes((mtype,)), o.CLIENT_ID: self.s.client_id}
        opts.update(extra or {})
        if with_params:
            opts[o.MAX_MESSAGE_SIZE] = MAX_MESSAGE_SIZE.to_bytes(2, "big")
            opts[o.PARAMETER_REQUEST_LIST] = bytes(self.s.requested)
            if self.s.hostname:
                opts[o.HOST_NAME] = self.s.hostname.split(".")[0].encode("ascii")
                opts[o.CLIENT_FQDN] = o.encode_client_fqdn(self.s.hostname)
        secs = 0 if now is None else min(int(now - self._started_at), 0xFFFF)
        return DhcpMessage(op=BOOTREQUEST, xid=self._xid, chaddr=pad_chaddr(self.s.mac),
                           hlen=len(self.s.mac), secs=max(secs, 0), ciaddr=ciaddr,
                           flags=FLAG_BROADCAST if broadcast else 0, options=opts)

    def _expected_address(self) -> str | None:
        if self.state is DhcpState.REQUESTING and self._offer is not None:
            return self._offer.yiaddr
        if self.state is DhcpState.REBOOTING:
            return self._requested_address
        return None

    def _set_state(self, state: DhcpState) -> None:
        if state is not self.state:
            log.debug("%s -> %s", self.state.value, state.value)
            self.state = state


def _ip(address: str) -> bytes:
    return ipaddress.IPv4Address(address).packed


def _usable_address(address: str) -> bool:
    ip = ipaddress.IPv4Address(address)
    return not (ip.is_unspecified or ip.is_multicast or ip.is_loopback
                or address == BROADCAST or ip.is_reserved)
