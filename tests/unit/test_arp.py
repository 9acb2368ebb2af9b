"""RFC 5227 probing and RFC 3927 link-local addressing, time advanced by hand."""

from __future__ import annotations

import random
import socket

import pytest

from profiles.network_address.arp import (
    DEFEND_INTERVAL,
    ETH_P_ARP,
    MAX_CONFLICTS,
    REPLY,
    REQUEST,
    ArpPacket,
    ArpProber,
    Conflict,
    Defender,
    LinkLocal,
    claim_filter,
    filter_bytes,
    parse_arp,
    run_filter,
)

MAC = bytes.fromhex("02dc00000001")
OTHER = bytes.fromhex("02dc000000ff")


def run_until_quiet(core, now: float, limit: int = 50) -> tuple[float, list[bytes]]:
    frames = []
    for _ in range(limit):
        timer = core.get_timer()
        if timer is None:
            break
        now = timer
        core.handle_timer(now)
        frames += core.frames_to_send()
    return now, frames


def test_probe_three_times_then_announce_twice():
    prober = ArpProber("192.0.2.57", MAC, random.Random(3), now=0.0)
    now, frames = run_until_quiet(prober, 0.0)
    packets = [parse_arp(f) for f in frames]
    assert prober.result is False
    probes = [p for p in packets if p.sender_ip == "0.0.0.0"]
    announces = [p for p in packets if p.sender_ip == "192.0.2.57"]
    assert len(probes) == 3 and len(announces) == 2
    assert all(p.op == REQUEST and p.target_ip == "192.0.2.57" and p.sender_mac == MAC
               for p in packets)
    assert 3.0 <= now <= 9.0  # 0-1 s wait, 1-2 s gaps, 2 s to decide, 2 s between announces


def test_a_reply_from_the_owner_is_a_conflict_our_own_echo_is_not():
    prober = ArpProber("192.0.2.57", MAC, random.Random(3), now=0.0)
    prober.handle_timer(prober.get_timer())
    prober.receive(ArpPacket(REQUEST, MAC, "0.0.0.0", bytes(6), "192.0.2.57").to_bytes(), 1.0)
    assert prober.result is None
    prober.receive(b"\x00\x01junk", 1.0)
    assert prober.result is None
    prober.receive(ArpPacket(REPLY, OTHER, "192.0.2.57", MAC, "0.0.0.0").to_bytes(), 1.1)
    assert prober.result is True and prober.conflicting_mac == OTHER
    assert prober.get_timer() is None


def test_another_prober_for_the_same_address_is_a_conflict():
    prober = ArpProber("192.0.2.57", MAC, random.Random(3), now=0.0)
    prober.receive(ArpPacket(REQUEST, OTHER, "0.0.0.0", bytes(6), "192.0.2.57").to_bytes(), 0.1)
    assert prober.result is True


def test_link_local_first_candidate_comes_from_the_mac():
    first = LinkLocal(MAC, random.Random(1), 0.0)
    again = LinkLocal(MAC, random.Random(2), 0.0)
    run_until_quiet(first, 0.0)
    run_until_quiet(again, 0.0)
    assert first.address == again.address
    assert first.address.startswith("169.254.")
    third = int(first.address.split(".")[2])
    assert 1 <= third <= 254


def test_link_local_conflict_moves_on_and_rate_limits_after_ten():
    ll = LinkLocal(MAC, random.Random(1), 0.0)
    now, tried = 0.0, set()
    for _ in range(MAX_CONFLICTS):
        prober = ll._prober
        tried.add(prober.address)
        ll.receive(ArpPacket(REPLY, OTHER, prober.address, MAC, "0.0.0.0").to_bytes(), now)
        now += 0.1
    assert ll.conflicts == MAX_CONFLICTS and len(tried) >= MAX_CONFLICTS - 1
    assert ll._prober is None and ll.get_timer() == now - 0.1 + 60.0
    now, _ = run_until_quiet(ll, now)
    assert ll.address is not None  # after the rate-limit wait, probing resumed and won


def test_link_local_defends_once_then_gives_up():
    ll = LinkLocal(MAC, random.Random(1), 0.0)
    now, _ = run_until_quiet(ll, 0.0)
    address = ll.address
    claim = ArpPacket(REQUEST, OTHER, address, bytes(6), address).to_bytes()
    ll.receive(claim, now + 1)
    (defence,) = [parse_arp(f) for f in ll.frames_to_send()]
    assert defence.sender_ip == address and defence.sender_mac == MAC
    assert ll.address == address
    ll.receive(claim, now + 5)  # again within DEFEND_INTERVAL: give it up
    assert ll.address is None and ll.get_timer() is not None
    run_until_quiet(ll, now + 5)
    assert ll.address is not None and ll.address != address


def claim(sender_ip: str, mac: bytes = bytes.fromhex("02bb00000001")) -> bytes:
    return ArpPacket(REPLY, mac, sender_ip, bytes(6), "192.0.2.1").to_bytes()


def test_a_claim_is_defended_once_then_given_up_within_the_defend_interval():
    d = Defender("192.0.2.100", MAC)
    assert d.receive(claim("192.0.2.77"), 0.0) is None  # someone else's address
    assert d.receive(claim("192.0.2.100", MAC), 0.0) is None  # our own frame
    first = d.receive(claim("192.0.2.100"), 1.0)
    assert first == Conflict("192.0.2.100", bytes.fromhex("02bb00000001"), True)
    (announce,) = d.frames_to_send()
    pkt = parse_arp(announce)
    assert (pkt.sender_ip, pkt.target_ip, pkt.sender_mac) == ("192.0.2.100", "192.0.2.100",
                                                              MAC)
    second = d.receive(claim("192.0.2.100"), 1.0 + DEFEND_INTERVAL)
    assert second.defended is False and d.frames_to_send() == []
    # Quiet for longer than the interval: defended again.
    assert d.receive(claim("192.0.2.100"), 30.0).defended is True


def test_the_kernel_filter_keeps_only_claims_on_our_address():
    program = claim_filter("192.0.2.100")
    assert run_filter(program, claim("192.0.2.100"))
    assert not run_filter(program, claim("192.0.2.101"))
    assert not run_filter(program, claim("0.0.0.0"))  # another host's probe: the kernel
    assert not run_filter(program, b"\x00" * 10)  # a runt
    assert len(filter_bytes(program)) == 8 * len(program)  # struct sock_filter


@pytest.mark.integration  # privileged: an AF_PACKET socket: CAP_NET_RAW
def test_the_filter_is_accepted_by_the_kernel():
    """SO_ATTACH_FILTER on a real AF_PACKET socket (bound to lo: no traffic leaves)."""
    import ctypes
    import struct

    s = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_ARP))
    try:
        program = claim_filter("192.0.2.100")
        code = ctypes.create_string_buffer(filter_bytes(program))
        s.setsockopt(socket.SOL_SOCKET, 26, struct.pack("HL", len(program),
                                                        ctypes.addressof(code)))
    finally:
        s.close()
