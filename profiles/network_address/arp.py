"""RFC 5227 IPv4 address conflict detection as a sans-IO core.

`ArpProber(address, mac, rng, now)` waits 0-1 s, sends three ARP probes 1-2 s apart,
then waits 2 s more; a conflict is any ARP packet whose sender address is ours, or a
probe for our address from another machine (RFC 5227 2.1.1). With no conflict it
announces the address twice, 2 s apart (2.3). `Defender` watches an address in use
(2.4): defend once, give up at a second claim within DEFEND_INTERVAL. `claim_filter`
is the kernel filter that keeps the watching socket quiet on a busy LAN. Frames are ARP
payloads for an AF_PACKET SOCK_DGRAM socket: the driver adds the Ethernet header
(broadcast).
"""

from __future__ import annotations

import random
import socket
import struct
from dataclasses import dataclass

from profiles.errors import ParseError

PROBE_WAIT = 1.0  # s
PROBE_NUM = 3
PROBE_MIN, PROBE_MAX = 1.0, 2.0  # s
ANNOUNCE_WAIT = 2.0  # s
ANNOUNCE_NUM = 2
ANNOUNCE_INTERVAL = 2.0  # s
ETH_P_ARP = 0x0806
_ARP = struct.Struct("!HHBBH6s4s6s4s")  # RFC 826, Ethernet/IPv4: 28 bytes
REQUEST, REPLY = 1, 2


@dataclass(frozen=True, slots=True)
class ArpPacket:
    """An ARP packet for IPv4 over Ethernet, decoded."""

    op: int
    sender_mac: bytes
    sender_ip: str
    target_mac: bytes
    target_ip: str

    def to_bytes(self) -> bytes:
        return _ARP.pack(1, 0x0800, 6, 4, self.op, self.sender_mac,
                         socket.inet_aton(self.sender_ip), self.target_mac,
                         socket.inet_aton(self.target_ip))


def parse_arp(data: bytes) -> ArpPacket:
    if len(data) < _ARP.size:
        raise ParseError(f"ARP packet of {len(data)} bytes", offset=len(data))
    htype, ptype, hlen, plen, op, sha, spa, tha, tpa = _ARP.unpack_from(data)
    if (htype, ptype, hlen, plen) != (1, 0x0800, 6, 4):
        raise ParseError("not Ethernet/IPv4 ARP", offset=0)
    return ArpPacket(op, sha, socket.inet_ntoa(spa), tha, socket.inet_ntoa(tpa))


class ArpProber:
    """Probe `address`; `result` becomes True (conflict) or False (free to use)."""

    def __init__(self, address: str, mac: bytes, rng: random.Random, now: float):
        self.address = address
        self.mac = mac
        self.rng = rng
        self.result: bool | None = None
        self.conflicting_mac: bytes | None = None
        self._probes = 0
        self._announces = 0
        self._outbox: list[bytes] = []
        self._timer: float | None = now + rng.uniform(0, PROBE_WAIT)

    def get_timer(self) -> float | None:
        return self._timer

    def frames_to_send(self) -> list[bytes]:
        out, self._outbox = self._outbox, []
        return out

    def handle_timer(self, now: float) -> None:
        if self._timer is None or now < self._timer:
            return
        if self.result is None and self._probes < PROBE_NUM:
            self._probes += 1
            self._outbox.append(ArpPacket(REQUEST, self.mac, "0.0.0.0", bytes(6),
                                          self.address).to_bytes())
            last = self._probes == PROBE_NUM
            self._timer = now + (ANNOUNCE_WAIT if last else self.rng.uniform(PROBE_MIN,
                                                                             PROBE_MAX))
        elif self.result is None:
            self.result = False
            self._announce(now)
        elif self.result is False and self._announces < ANNOUNCE_NUM:
            self._announce(now)
        else:
            self._timer = None

    def _announce(self, now: float) -> None:
        self._announces += 1
        self._outbox.append(ArpPacket(REQUEST, self.mac, self.address, bytes(6),
                                      self.address).to_bytes())
        self._timer = now + ANNOUNCE_INTERVAL if self._announces < ANNOUNCE_NUM else None

    def receive(self, data: bytes, now: float) -> None:
        if self.result is not None:
            return
        try:
            pkt = parse_arp(data)
        except ParseError:
            return
        if pkt.sender_mac == self.mac:
            return  # our own frame, looped back
        other_prober = (pkt.op == REQUEST and pkt.sender_ip == "0.0.0.0"
                        and pkt.target_ip == self.address)
        if pkt.sender_ip == self.address or other_prober:
            self.result = True
            self.conflicting_mac = pkt.sender_mac
            self._timer = None


MAX_CONFLICTS = 10  # RFC 3927 9: then at most one attempt per RATE_LIMIT_INTERVAL
RATE_LIMIT_INTERVAL = 60.0  # s
DEFEND_INTERVAL = 10.0  # s


@dataclass(frozen=True, slots=True)
class Conflict:
    """Another machine claimed our address: `defended` (one announcement sent), or not
    (a second claim within DEFEND_INTERVAL: the address must be given up)."""
    address: str
    mac: bytes
    defended: bool


class Defender:
    """RFC 5227 2.4 ongoing conflict detection for an address in use: an ARP packet
    whose sender IP is ours and whose sender hardware address is not is a conflict.
    (b) The first one, with none in the last DEFEND_INTERVAL, is defended by one ARP
    Announcement; (c) another one inside DEFEND_INTERVAL means ceasing to use it —
    `receive` says which."""

    def __init__(self, address: str, mac: bytes):
        self.address = address
        self.mac = mac
        self.conflicts = 0
        self._last_conflict: float | None = None
        self._outbox: list[bytes] = []

    def frames_to_send(self) -> list[bytes]:
        out, self._outbox = self._outbox, []
        return out

    def receive(self, data: bytes, now: float) -> Conflict | None:
        try:
            pkt = parse_arp(data)
        except ParseError:
            return None
        if pkt.sender_ip != self.address or pkt.sender_mac == self.mac:
            return None
        self.conflicts += 1
        if self._last_conflict is not None and now - self._last_conflict <= DEFEND_INTERVAL:
            self._last_conflict = None
            return Conflict(self.address, pkt.sender_mac, defended=False)
        self._last_conflict = now
        self._outbox.append(ArpPacket(REQUEST, self.mac, self.address, bytes(6),
                                      self.address).to_bytes())
        return Conflict(self.address, pkt.sender_mac, defended=True)


def _pick(rng: random.Random) -> str:
    """RFC 3927 2.1: 169.254.1.0 to 169.254.254.255."""
    return f"169.254.{rng.randint(1, 254)}.{rng.randint(0, 255)}"


class LinkLocal:
    """RFC 3927 IPv4 link-local address: choose, probe, announce, defend.

    The first candidate comes from the MAC (2.1: the same address after every boot when
    it is free); later ones from the injected RNG. `address` is set once configured and
    cleared when a defence fails (2.5: another host keeps claiming it within
    DEFEND_INTERVAL); the caller watches it change."""

    def __init__(self, mac: bytes, rng: random.Random, now: float):
        self.mac = mac
        self.rng = rng
        self.address: str | None = None
        self.conflicts = 0
        self._defender: Defender | None = None
        self._outbox: list[bytes] = []
        self._prober: ArpProber | None = ArpProber(_pick(random.Random(mac)), mac, rng, now)
        self._wait_until: float | None = None

    def get_timer(self) -> float | None:
        if self._wait_until is not None:
            return self._wait_until
        return self._prober.get_timer() if self._prober is not None else None

    def frames_to_send(self) -> list[bytes]:
        out = self._outbox
        for core in (self._prober, self._defender):
            if core is not None:
                out += core.frames_to_send()
        self._outbox = []
        return out

    def handle_timer(self, now: float) -> None:
        if self._wait_until is not None:
            if now < self._wait_until:
                return
            self._wait_until = None
            self._prober = ArpProber(_pick(self.rng), self.mac, self.rng, now)
        if self._prober is None:
            return
        self._prober.handle_timer(now)
        self._check_prober(now)

    def receive(self, data: bytes, now: float) -> None:
        if self._prober is not None:
            self._prober.receive(data, now)
            self._check_prober(now)
            return
        if self.address is None or self._defender is None:
            return
        conflict = self._defender.receive(data, now)
        if conflict is not None and not conflict.defended:
            self.address = None  # 2.5 (b): give it up, start over
            self._defender = None
            self._restart(now)

    def _check_prober(self, now: float) -> None:
        prober = self._prober
        if prober.result is True:
            self.conflicts += 1
            self._restart(now)
        elif prober.result is False and self.address is None:
            self.address = prober.address
        if prober.result is False and prober.get_timer() is None:
            self._outbox += prober.frames_to_send()
            self._prober = None  # announced: defend from now on
            self._defender = Defender(prober.address, self.mac)

    def _restart(self, now: float) -> None:
        self._prober = None
        if self.conflicts >= MAX_CONFLICTS:
            self._wait_until = now + RATE_LIMIT_INTERVAL
        else:
            self._prober = ArpProber(_pick(self.rng), self.mac, self.rng, now)


# Classic BPF (linux/filter.h), run by the kernel on each ARP packet of the watching
# socket (AF_PACKET SOCK_DGRAM: offset 0 is the ARP header): keep a packet only when its
# sender IP address (offset 14) is ours, so a hospital LAN's ARP traffic never wakes the
# agent — only claims on its address do.
_BPF = struct.Struct("=HBBI")  # struct sock_filter: code, jt, jf, k
BPF_LD_W_ABS, BPF_JEQ_K, BPF_RET_K = 0x20, 0x15, 0x06
SENDER_IP_OFFSET = 14


def claim_filter(address: str) -> list[tuple[int, int, int, int]]:
    """The filter program for `address`, as (code, jt, jf, k) instructions."""
    ip = int.from_bytes(socket.inet_aton(address), "big")
    return [(BPF_LD_W_ABS, 0, 0, SENDER_IP_OFFSET),  # A = sender IP
            (BPF_JEQ_K, 0, 1, ip),  # A == ours ? next : skip one
            (BPF_RET_K, 0, 0, 0xFFFF),  # keep the packet
            (BPF_RET_K, 0, 0, 0)]  # drop it


def filter_bytes(program: list[tuple[int, int, int, int]]) -> bytes:
    return b"".join(_BPF.pack(*insn) for insn in program)


def run_filter(program: list[tuple[int, int, int, int]], packet: bytes) -> bool:
    """What the kernel does with `program` on `packet` (the tests' check of the filter;
    only the instructions claim_filter uses)."""
    pc, acc = 0, 0
    while pc < len(program):
        code, jt, jf, k = program[pc]
        if code == BPF_LD_W_ABS:
            if k + 4 > len(packet):
                return False
            acc = int.from_bytes(packet[k:k + 4], "big")
        elif code == BPF_JEQ_K:
            pc += jt if acc == k else jf
        elif code == BPF_RET_K:
            return k != 0
        pc += 1
    return False
