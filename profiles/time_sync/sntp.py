"""SNTP client (RFC 4330) as a sans-IO core: bursts, checks, selection, poll, correction.

Theory of operation
-------------------
Time runs in rounds. A round sends BURST requests to every usable server, BURST_SPACING
apart, each with a random 64-bit nonce in its transmit field (so a reply must echo it
as its origin timestamp: an off-path forger cannot). Replies are checked (RFC 4330 5:
mode 4, origin matches, stratum 1-15, leap != 3, non-zero transmit time; stratum 0 is a
kiss-o'-death: RATE backs that server off, DENY and RSTR drop it). Of each server's
good samples the lowest-delay one counts. When every request is answered or timed out
the round is judged: with two or more servers, Marzullo's interval intersection keeps
the majority that agrees and names the others falsetickers (two that disagree: no
majority, not synchronized); the truechimer with the smallest root distance is selected.
A sample whose root distance exceeds MAX_DISTANCE (1.5 s, as chrony's maxdistance) is
not used. Nonces come from `secrets`, not from the injected Random whose DHCP xids are
on the wire.

Then, if the core may adjust the clock, the StepPolicy (after chrony's makestep and
maxchange) decides: a step (|offset| > step threshold) only during the first
`step_updates` clock updates since the process started, a slew after; after the first
sync, a correction over `step_limit` needs at least three agreeing servers; no step ever
sets the clock before `floor` (the build, or the last saved report). A correction the
policy refuses is reported (`correction: "refused"`) until an operator accepts it
(`accept()`). The policy object outlives the core, so a crash loop of the time task
cannot become a step loop. The poll interval doubles from 64 s to 1024 s while the clock
stays within the threshold and falls back to 64 s when it does not; no server is asked
more often than every 15 s.

`now` is CLOCK_BOOTTIME (scheduling); `wall` is the clock being measured (CLOCK_REALTIME,
timestamps T1 and T4).
"""

from __future__ import annotations

import logging
import random
import secrets
from collections import deque
from dataclasses import dataclass, field
from typing import Protocol

from profiles.errors import ParseError
from profiles.time_sync import packet

log = logging.getLogger(__name__)

BURST = 4
BURST_SPACING = 0.25  # s between requests to one server
REPLY_TIMEOUT = 1.0  # s
POLL_MIN, POLL_MAX = 64.0, 1024.0  # s
SERVER_MIN_INTERVAL = 15.0  # s: never a round to one server more often
MAX_DISTANCE = 1.5  # s: a sample with a larger root distance is not used
NTP_PORT = 123


class ClockActuator(Protocol):
    """What corrects the clock (CAP_SYS_TIME). Injected: tests record the calls."""

    def step(self, offset: float) -> None: ...

    def slew(self, offset: float) -> None: ...


@dataclass(frozen=True, slots=True)
class Sample:
    """One measurement from one server."""

    offset: float  # s, server minus us
    delay: float  # s, round trip
    stratum: int
    root_delay: float
    root_dispersion: float

    @property
    def root_distance(self) -> float:
        """Half-width of the interval the true time lies in (RFC 5905 root distance)."""
        return self.delay / 2 + self.root_delay / 2 + self.root_dispersion


@dataclass
class ServerState:
    """One server during a round: its best sample, or why none counts."""

    address: str
    best: Sample | None = None
    reason: str | None = None  # why no sample counts (last rejection) or why it lost
    accepted: bool = False
    dropped: bool = False  # DENY/RSTR: never asked again
    not_before: float = 0.0  # RATE backs off; SERVER_MIN_INTERVAL
    rate_backoff: float = 0.0
    pending: dict[int, float] = field(default_factory=dict)  # nonce -> T1 (wall)
    deadlines: dict[int, float] = field(default_factory=dict)  # nonce -> timeout (now)
    to_send: int = 0
    next_send: float | None = None

    def report(self) -> dict:
        b = self.best
        return {"address": self.address,
                "offset_ms": round(b.offset * 1000, 3) if b else None,
                "delay_ms": round(b.delay * 1000, 3) if b else None,
                "stratum": b.stratum if b else None,
                "accepted": self.accepted, "reason": self.reason}


@dataclass(frozen=True, slots=True)
class RoundResult:
    """What a round found and what it would do to the clock."""

    servers: tuple[dict, ...]
    selected: str | None
    offset: float | None  # s
    synced: bool
    correction: str | None  # "step", "slew", "refused" or None
    agreeing: int = 0  # servers whose intervals hold the selected one's
    refused: str | None = None  # why the policy refused the correction


@dataclass
class StepPolicy:
    """When the clock may be stepped (kept for the life of the process)."""

    step_updates: int = 3
    step_limit: float = 1000.0  # s
    floor: float = 0.0  # wall-clock seconds the clock is never stepped before
    updates: int = 0  # clock corrections made since the process started
    synced_once: bool = False
    accepted: bool = False  # an operator accepted the refused correction
    refused: int = 0

    def decide(self, offset: float, agreeing: int, threshold: float, wall: float
               ) -> tuple[str, str | None]:
        """("step" | "slew" | "refused", why refused)."""
        why = None
        if abs(offset) > self.step_limit and self.synced_once and agreeing < 3:
            why = (f"a correction of {offset:+.0f} s after the first sync needs three "
                   f"agreeing servers, {agreeing} agree")
        elif wall + offset < self.floor:
            why = f"it would set the clock before {self.floor:.0f} (the floor)"
        if why is not None and not self.accepted:
            self.refused += 1
            return "refused", why
        self.accepted = False
        self.synced_once = True
        kind = "step" if abs(offset) > threshold and self.updates < self.step_updates \
            else "slew"
        self.updates += 1
        return kind, None

    def accept(self) -> None:
        """An operator's `accept-time-step`: the next refused correction is applied."""
        self.accepted = True


@dataclass(frozen=True, slots=True)
class Datagram:
    """An NTP request for the driver to send."""

    payload: bytes
    destination: str
    port: int = NTP_PORT


class SntpClient:
    def __init__(self, rng: random.Random, step_threshold: float = 0.128,
                 actuator: ClockActuator | None = None, may_adjust: bool = False,
                 policy: StepPolicy | None = None):
        self.rng = rng
        self.policy = policy or StepPolicy()
        self.step_threshold = step_threshold
        self.actuator = actuator
        self.may_adjust = may_adjust and actuator is not None
        self.servers: dict[str, ServerState] = {}
        self.poll = POLL_MIN
        self.counters: dict[str, int] = {}
        self.last: RoundResult | None = None
        self._round_due: float | None = None
        self._in_round = False
        self._outbox: list[Datagram] = []
        self._events: deque[RoundResult] = deque()
        self._wall = 0.0  # the clock's reading at the last input

    # -- driver interface --------------------------------------------------------------

    def set_servers(self, addresses: list[str], now: float) -> None:
        """A new server set (a new lease, say): a round starts at once if it changed."""
        if list(self.servers) == list(addresses):
            return
        self.servers = {a: self.servers.get(a) or ServerState(a) for a in addresses}
        self.poll = POLL_MIN
        self._in_round = False
        self._round_due = now if addresses else None

    def get_timer(self) -> float | None:
        times = [self._round_due] if self._round_due is not None and not self._in_round else []
        for s in self.servers.values():
            if s.next_send is not None:
                times.append(s.next_send)
            times.extend(s.deadlines.values())
        return min(times) if times else None

    def datagrams_to_send(self) -> list[Datagram]:
        out, self._outbox = self._outbox, []
        return out

    def next_event(self) -> RoundResult | None:
        return self._events.popleft() if self._events else None

    def handle_timer(self, now: float, wall: float) -> None:
        self._wall = wall
        if not self._in_round and self._round_due is not None and now >= self._round_due:
            self._start_round(now)
        for s in self.servers.values():
            for nonce, deadline in list(s.deadlines.items()):
                if now >= deadline:
                    del s.deadlines[nonce], s.pending[nonce]
                    if s.best is None:
                        s.reason = "no answer"
            if s.next_send is not None and now >= s.next_send:
                self._send(s, now, wall)
        self._maybe_finish(now)

    def receive_datagram(self, data: bytes, source: str, now: float, wall: float) -> None:
        self._wall = wall
        s = self.servers.get(source)
        if s is None:
            return self._count("unknown-source")
        try:
            pkt = packet.parse(data)
        except ParseError:
            return self._count("malformed")
        if pkt.origin not in s.pending:
            return self._count("bogus-origin")  # not an answer to anything we asked
        t1 = s.pending.pop(pkt.origin)
        s.deadlines.pop(pkt.origin, None)
        reason = self._check(pkt, s, now)
        if reason is None:
            t2 = packet.to_unix(pkt.receive, t1)
            t3 = packet.to_unix(pkt.transmit, t1)
            sample = Sample(offset=((t2 - t1) + (t3 - wall)) / 2,
                            delay=max((wall - t1) - (t3 - t2), 0.0),
                            stratum=pkt.stratum, root_delay=pkt.root_delay,
                            root_dispersion=pkt.root_dispersion)
            if s.best is None or sample.delay < s.best.delay:
                s.best = sample
            s.reason = None
        elif s.best is None:
            s.reason = reason
        self._maybe_finish(now)

    # -- rounds --------------------------------------------------------------------------

    def _start_round(self, now: float) -> None:
        self._in_round = True
        for s in self.servers.values():
            s.best, s.accepted = None, False
            if s.dropped:
                continue
            if now < s.not_before and s.rate_backoff > SERVER_MIN_INTERVAL:
                s.reason = s.reason or "backing off"  # a RATE kiss: left out this round
                continue
            # A round soon after the last (a new server set): this server is asked when
            # its minimum interval has passed, not left out of the round.
            start = max(now, s.not_before)
            s.to_send, s.next_send, s.reason = BURST, start, None
            s.not_before = start + max(SERVER_MIN_INTERVAL, s.rate_backoff)

    def _send(self, s: ServerState, now: float, wall: float) -> None:
        nonce = secrets.randbits(64) | 1  # unpredictable: the rng's xids are on the wire
        s.pending[nonce] = wall
        s.deadlines[nonce] = now + REPLY_TIMEOUT
        self._outbox.append(Datagram(packet.request(nonce), s.address))
        s.to_send -= 1
        s.next_send = now + BURST_SPACING if s.to_send > 0 else None

    def _check(self, pkt: packet.NtpPacket, s: ServerState, now: float) -> str | None:
        """RFC 4330 5 and 8; None when the reply may be used."""
        if pkt.mode != packet.MODE_SERVER:
            return f"not a server reply (mode {pkt.mode})"
        if pkt.version not in (3, 4):
            return f"unsupported version {pkt.version}"
        if pkt.stratum == 0:
            code = pkt.kiss_code
            if code in ("DENY", "RSTR"):
                s.dropped = True
                s.pending.clear()
                s.deadlines.clear()
                s.next_send = None
                log.warning("NTP server %s says %s: dropped", s.address, code)
            elif code == "RATE":
                s.rate_backoff = max(2 * s.rate_backoff, self.poll, SERVER_MIN_INTERVAL)
                s.not_before = now + s.rate_backoff
                s.next_send = None
                s.to_send = 0
            return f"kiss-o'-death {code}"
        if pkt.stratum > 15:
            return f"unsynchronized (stratum {pkt.stratum})"
        if pkt.leap == packet.LEAP_UNSYNCHRONIZED:
            return "unsynchronized (leap indicator 3)"
        if pkt.transmit == 0:
            return "zero transmit timestamp"
        distance = pkt.root_delay / 2 + pkt.root_dispersion
        if distance > MAX_DISTANCE:
            return f"root distance {distance:.2f} s over {MAX_DISTANCE} s"
        return None

    def _maybe_finish(self, now: float) -> None:
        if not self._in_round:
            return
        if any(s.pending or s.next_send is not None for s in self.servers.values()):
            return
        self._in_round = False
        result = self._judge()
        if result.synced and self.may_adjust and result.offset is not None:
            kind, why = self.policy.decide(result.offset, result.agreeing,
                                           self.step_threshold, self._wall)
            if kind == "step":
                self.actuator.step(result.offset)
            elif kind == "slew":
                self.actuator.slew(result.offset)
            else:
                self._count("correction-refused")
                log.warning("clock correction of %+.3f s refused: %s", result.offset, why)
            result = _with_correction(result, kind, why)
        stable = result.synced and abs(result.offset) <= self.step_threshold
        self.poll = min(self.poll * 2, POLL_MAX) if stable else POLL_MIN
        self._round_due = now + self.poll
        self.last = result
        self._events.append(result)

    def _judge(self) -> RoundResult:
        good = [s for s in self.servers.values() if s.best is not None]
        truechimers = marzullo(good) if len(good) >= 2 else good
        for s in good:
            s.accepted = s in truechimers
            if not s.accepted:
                s.reason = ("falseticker (outside the majority's interval)" if truechimers
                            else "no majority of servers agrees")
        selected = min(truechimers, key=lambda s: s.best.root_distance, default=None)
        reports = tuple(s.report() for s in self.servers.values())
        if selected is None:
            return RoundResult(reports, None, None, False, None)
        low = selected.best.offset - selected.best.root_distance
        high = selected.best.offset + selected.best.root_distance
        agreeing = sum(1 for s in good if s.best.offset - s.best.root_distance <= high
                       and s.best.offset + s.best.root_distance >= low)
        return RoundResult(reports, selected.address, selected.best.offset, True, None,
                           agreeing)

    def _count(self, what: str) -> None:
        self.counters[what] = self.counters.get(what, 0) + 1


def marzullo(servers: list[ServerState]) -> list[ServerState]:
    """The servers whose correctness intervals meet where most of them overlap; empty
    when no strict majority agrees (then nobody can be trusted)."""
    edges = []
    for s in servers:
        lam = s.best.root_distance
        edges.append((s.best.offset - lam, -1))
        edges.append((s.best.offset + lam, +1))
    edges.sort()
    best, count, low, high = 0, 0, 0.0, 0.0
    for i, (point, kind) in enumerate(edges):
        count -= kind
        if count > best:
            best, low = count, point
            high = edges[i + 1][0]
    if best * 2 <= len(servers):
        return []
    return [s for s in servers
            if s.best.offset - s.best.root_distance <= high
            and s.best.offset + s.best.root_distance >= low]


def _with_correction(result: RoundResult, kind: str, why: str | None = None) -> RoundResult:
    return RoundResult(result.servers, result.selected, result.offset, result.synced, kind,
                       result.agreeing, why)
