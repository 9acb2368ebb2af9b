"""The DHCP client core, driven by hand against a fake server core, time advanced by hand."""

from __future__ import annotations

import ipaddress
import itertools
import random

import pytest
from fake_dhcp_server import FakeServer
from hypothesis import given, settings
from hypothesis import strategies as st

from profiles.network_address import options as o
from profiles.network_address.codec import (
    FLAG_BROADCAST,
    DhcpMessage,
    MessageType,
    build,
    parse,
)
from profiles.network_address.dhcp_client import (
    BROADCAST,
    AddressChanged,
    AddressConflict,
    AddressDeclined,
    AutoIpWanted,
    ClientSettings,
    DhcpClient,
    DhcpState,
    LeaseBound,
    LeaseExpiring,
    LeaseLost,
    LeaseRenewed,
    ProbeRequested,
    generate_client_id,
)
from profiles.network_address.lease import Lease

MAC = bytes.fromhex("02dc00000001")
CID = generate_client_id("eth0", random.Random(1))


def client(**kw) -> DhcpClient:
    settings = ClientSettings(mac=MAC, client_id=CID, hostname="ct01", initial_delay=(0, 0),
                              arp_probe=False, wall_clock=lambda: 1_800_000_000.0)
    for key, value in kw.items():
        setattr(settings, key, value)
    return DhcpClient(settings, random.Random(42))


def events(c: DhcpClient) -> list:
    out = []
    while (e := c.next_event()) is not None:
        out.append(e)
    return out


def exchange(c: DhcpClient, server: FakeServer, now: float) -> list:
    """Deliver everything the client sends to the server and the answers back."""
    sent = c.datagrams_to_send()
    for d in sent:
        for reply in server.handle(d.payload):
            c.receive_datagram(reply, now)
    return sent


def acquire(c: DhcpClient, server: FakeServer, now: float = 0.0) -> Lease:
    c.start(now)
    c.handle_timer(c.get_timer())
    while c.state is not DhcpState.BOUND:
        assert exchange(c, server, now), f"client stuck in {c.state}"
    return c.lease


def test_client_id_is_rfc_4361_duid_uuid():
    assert CID[0] == 0xFF and CID[5:7] == b"\x00\x04" and len(CID) == 23
    assert generate_client_id("eth0", random.Random(1)) == CID  # the same seed, the same id


def test_init_to_bound_with_the_requested_options_on_the_wire():
    c, server = client(), FakeServer()
    c.start(0.0)
    assert c.state is DhcpState.INIT and c.get_timer() == 0.0
    c.handle_timer(0.0)
    (discover,) = c.datagrams_to_send()
    assert discover.destination == BROADCAST
    msg = parse(discover.payload)
    assert msg.message_type is MessageType.DISCOVER and msg.flags == FLAG_BROADCAST
    assert msg.hardware_address == MAC and msg.options[o.CLIENT_ID] == CID
    assert list(msg.options[o.PARAMETER_REQUEST_LIST]) == list(o.REQUESTED)
    for code in (1, 2, 3, 6, 12, 15, 26, 28, 33, 42, 116, 121, 51, 54, 58, 59, 81, 100, 101,
                 119):
        assert code in msg.options[o.PARAMETER_REQUEST_LIST]
    assert msg.options[o.HOST_NAME] == b"ct01"
    assert msg.options[o.CLIENT_FQDN] == b"\x05\x00\x00\x04ct01"  # S|E, partial name
    offer = server.handle(discover.payload)[0]
    c.receive_datagram(offer, 0.1)
    (request,) = c.datagrams_to_send()
    req = parse(request.payload)
    assert req.message_type is MessageType.REQUEST and req.xid == msg.xid
    assert req.options[o.REQUESTED_ADDRESS] == bytes((192, 0, 2, 100))
    assert req.options[o.SERVER_ID] == bytes((192, 0, 2, 1))
    c.receive_datagram(server.handle(request.payload)[0], 0.2)
    assert c.state is DhcpState.BOUND
    (bound,) = events(c)
    assert isinstance(bound, LeaseBound) and bound.lease.address == "192.0.2.100"
    assert bound.lease.dns == ("192.0.2.1",) and bound.lease.ntp == ("192.0.2.11", "192.0.2.12")
    assert bound.lease.fqdn == "ct01.hospital.test"
    assert c.get_timer() == pytest.approx(0.2 + 1800)


def test_discover_retransmits_4_8_16_32_64_64_with_jitter_and_same_xid():
    c = client()
    c.start(0.0)
    now, gaps, xids = 0.0, [], set()
    for _ in range(7):
        c.handle_timer(now)
        (d,) = c.datagrams_to_send()
        xids.add(parse(d.payload).xid)
        gaps.append(c.get_timer() - now)
        now = c.get_timer()
    for gap, base in zip(gaps, [4, 8, 16, 32, 64, 64, 64], strict=True):
        assert base - 1 <= gap <= base + 1
    assert len(set(round(g, 6) for g in gaps)) == 7  # jitter really varies
    assert len(xids) == 1


def test_initial_delay_comes_from_the_rng_within_the_configured_bounds():
    delays = []
    for seed in range(20):
        c = DhcpClient(ClientSettings(mac=MAC, client_id=CID, initial_delay=(1.0, 3.0)),
                       random.Random(seed))
        c.start(100.0)
        delays.append(c.get_timer() - 100.0)
    assert all(1.0 <= d <= 3.0 for d in delays) and len(set(delays)) > 10


def test_secs_counts_from_the_start_of_the_exchange():
    c = client()
    c.start(10.0)
    c.handle_timer(10.0)
    assert parse(c.datagrams_to_send()[0].payload).secs == 0
    c.handle_timer(c.get_timer())
    assert parse(c.datagrams_to_send()[0].payload).secs in (3, 4, 5)


def test_renew_at_t1_unicast_then_renewed():
    c, server = client(), FakeServer()
    lease = acquire(c, server)
    events(c)
    c.handle_timer(1799.0)
    assert c.datagrams_to_send() == []  # not yet
    c.handle_timer(1800.0)
    assert c.state is DhcpState.RENEWING
    (renew,) = c.datagrams_to_send()
    msg = parse(renew.payload)
    assert renew.destination == "192.0.2.1" and msg.ciaddr == lease.address
    assert msg.flags == 0 and o.REQUESTED_ADDRESS not in msg.options
    assert o.SERVER_ID not in msg.options
    c.receive_datagram(server.handle(renew.payload)[0], 1800.5)
    assert c.state is DhcpState.BOUND
    (renewed,) = events(c)
    assert isinstance(renewed, LeaseRenewed) and renewed.lease.bound_at == 1800.5
    assert c.get_timer() == pytest.approx(1800.5 + 1800)


def test_unanswered_renewal_rebinds_at_t2_then_expires():
    c, server = client(), FakeServer()
    acquire(c, server)
    events(c)
    c.handle_timer(1800.0)
    c.datagrams_to_send()
    # RENEWING: half the time left to T2 (3150), at least 60 s, never past T2.
    assert c.get_timer() == pytest.approx(1800 + 675)
    c.handle_timer(2475.0)
    assert c.datagrams_to_send()[0].destination == "192.0.2.1"
    assert c.get_timer() == pytest.approx(2475 + 337.5)
    now, renewals = c.get_timer(), []
    while now < 3150:
        c.handle_timer(now)
        renewals.append(now)
        assert c.state is DhcpState.RENEWING and c.datagrams_to_send()
        now = c.get_timer()
    assert now == 3150.0  # the last wait stops at T2
    assert all(b - a >= 60 for a, b in itertools.pairwise(renewals))
    c.handle_timer(3150.0)
    assert c.state is DhcpState.REBINDING
    (rebind,) = c.datagrams_to_send()
    assert rebind.destination == BROADCAST and parse(rebind.payload).ciaddr == "192.0.2.100"
    (expiring,) = events(c)
    assert isinstance(expiring, LeaseExpiring)
    assert c.get_timer() == pytest.approx(3150 + 225)
    now = c.get_timer()
    while now < 3600:
        c.handle_timer(now)
        assert c.state is DhcpState.REBINDING and c.datagrams_to_send()[0].destination == BROADCAST
        now = c.get_timer()
    assert now == 3600.0
    c.handle_timer(now)
    lost = [e for e in events(c) if isinstance(e, LeaseLost)]
    assert [(e.reason, e.lease.address) for e in lost] == [("expired", "192.0.2.100")]
    assert c.state is DhcpState.INIT and c.lease is None
    c.handle_timer(c.get_timer())
    d = parse(c.datagrams_to_send()[0].payload)
    assert d.message_type is MessageType.DISCOVER
    assert d.options[o.REQUESTED_ADDRESS] == bytes((192, 0, 2, 100))  # asks for it back


def test_twenty_second_lease_renews_at_10_rebinds_at_17_5_expires_at_20():
    c, server = client(), FakeServer(lease_time=20)
    acquire(c, server)
    assert c.get_timer() == 10.0
    c.handle_timer(10.0)
    assert c.state is DhcpState.RENEWING and c.get_timer() == 17.5
    c.datagrams_to_send()
    c.handle_timer(17.5)
    assert c.state is DhcpState.REBINDING and c.get_timer() == 20.0
    c.datagrams_to_send()
    c.handle_timer(20.0)
    assert c.state is DhcpState.INIT
    assert [type(e) for e in events(c)] == [LeaseBound, LeaseExpiring, LeaseLost]


@pytest.mark.parametrize("t1,t2,expected", [
    (None, None, (1800.0, 3150.0)),
    (600, 1200, (600.0, 1200.0)),
    (3000, 2000, (1800.0, 2000.0)),   # T1 > T2: T1 back to its default
    (3000, 900, (450.0, 900.0)),      # ... or half of T2 when that is below it
    (100, 4000, (100.0, 3150.0)),     # T2 > lease: T2 replaced
    (0, 0, (1800.0, 3150.0)),
])
def test_t1_t2_are_sanitized(t1, t2, expected):
    lease = acquire(client(), FakeServer(t1=t1, t2=t2))
    assert (lease.t1, lease.t2) == expected


def test_a_nak_message_is_logged_without_its_control_characters(caplog):
    c = client()
    server = FakeServer(nak_requests=True, nak_message=b"no \x1b[31mlease\x07\r\n\xff")
    c.start(0.0)
    c.handle_timer(0.0)
    with caplog.at_level("INFO", logger="profiles.network_address.dhcp_client"):
        exchange(c, server, 0.0)
        exchange(c, server, 0.0)
    (line,) = [r.getMessage() for r in caplog.records if "NAK from" in r.getMessage()]
    assert line.endswith("no \\x1b[31mlease\\x07\\x0d\\x0a\\xff")
    assert all(" " <= ch <= "~" for ch in line)


def test_nak_while_requesting_goes_back_to_init_and_backs_off():
    c, server = client(), FakeServer(nak_requests=True)
    c.start(0.0)
    c.handle_timer(0.0)
    exchange(c, server, 0.0)  # DISCOVER -> OFFER -> REQUEST
    exchange(c, server, 0.0)  # REQUEST -> NAK
    assert c.state is DhcpState.INIT and c.get_timer() == 0.0  # first NAK: at once
    assert c.counters["nak"] == 1
    c.handle_timer(0.0)
    exchange(c, server, 0.0)
    exchange(c, server, 0.0)
    assert c.state is DhcpState.INIT and 2.0 <= c.get_timer() <= 3.0


def test_nak_while_renewing_loses_the_lease():
    c, server = client(), FakeServer()
    acquire(c, server)
    events(c)
    c.handle_timer(1800.0)
    server.nak_requests = True
    exchange(c, server, 1800.0)
    (lost,) = events(c)
    assert isinstance(lost, LeaseLost) and lost.reason == "nak"
    assert c.state is DhcpState.INIT and c.lease is None


def test_renewal_with_another_address_says_so():
    c, server = client(), FakeServer()
    acquire(c, server)
    events(c)
    c.handle_timer(1800.0)
    (renew,) = c.datagrams_to_send()
    c.receive_datagram(server.reply(parse(renew.payload), MessageType.ACK, "192.0.2.150"), 1801)
    bound, changed = events(c)
    assert isinstance(bound, LeaseBound) and isinstance(changed, AddressChanged)
    assert (changed.old_address, changed.lease.address) == ("192.0.2.100", "192.0.2.150")


def test_a_renewal_that_moves_the_address_probes_it_first():
    """RFC 5227 2.1 for a changed address too: the old lease stands while probing."""
    for conflict in (False, True):
        c, server = client(arp_probe=True), FakeServer()
        c.start(0.0)
        c.handle_timer(0.0)
        while c.state is not DhcpState.PROBING:
            exchange(c, server, 0.0)
        c.probe_result("192.0.2.100", conflict=False, now=2.0)
        old = c.lease
        events(c)
        c.handle_timer(1802.0)
        (renew,) = c.datagrams_to_send()
        c.receive_datagram(server.reply(parse(renew.payload), MessageType.ACK, "192.0.2.150"),
                           1803)
        assert events(c) == [ProbeRequested("192.0.2.150")] and c.lease == old
        c.probe_result("192.0.2.150", conflict=conflict, now=1808)
        if not conflict:
            bound, changed = events(c)
            assert isinstance(bound, LeaseBound) and changed.old_address == "192.0.2.100"
            assert c.lease.address == "192.0.2.150"
        else:
            (decline,) = c.datagrams_to_send()
            assert parse(decline.payload).message_type is MessageType.DECLINE
            assert events(c) == [AddressDeclined("192.0.2.150", "192.0.2.1"),
                                 LeaseLost(old, "new-address-in-use")]
            assert c.lease is None and c.state is DhcpState.DECLINING


def test_a_claim_on_the_bound_address_is_defended_then_declined():
    """RFC 5227 2.4: the driver's watch reports claims; defended once, the second one
    gives the address up with a DHCPDECLINE and the lease lost."""
    c, server = client(), FakeServer()
    lease = acquire(c, server)
    events(c)
    c.address_conflict("192.0.2.100", "02:bb:00:00:00:01", defended=True, now=100.0)
    assert events(c) == [AddressConflict("192.0.2.100", "02:bb:00:00:00:01", True)]
    assert c.state is DhcpState.BOUND and c.datagrams_to_send() == []
    c.address_conflict("192.0.2.100", "02:bb:00:00:00:01", defended=False, now=105.0)
    (decline,) = c.datagrams_to_send()
    msg = parse(decline.payload)
    assert msg.message_type is MessageType.DECLINE
    assert msg.options[o.REQUESTED_ADDRESS] == bytes((192, 0, 2, 100))
    assert events(c) == [AddressConflict("192.0.2.100", "02:bb:00:00:00:01", False),
                         LeaseLost(lease, "address-conflict")]
    assert c.state is DhcpState.DECLINING and c.get_timer() == 115.0
    assert c.counters["conflict-defended"] == 1 and c.counters["conflict-declined"] == 1
    c.address_conflict("192.0.2.100", "02:bb:00:00:00:01", defended=False, now=106.0)
    assert c.counters["stale-conflict"] == 1  # no lease any more: nothing to give up


def test_replies_that_do_not_fit_are_counted_and_ignored():
    c, server = client(), FakeServer()
    c.start(0.0)
    c.handle_timer(0.0)
    (discover,) = c.datagrams_to_send()
    request = parse(discover.payload)
    bad = [
        (b"\x02" * 100, "malformed"),
        (server.reply(request, MessageType.OFFER, "192.0.2.100", xid=request.xid + 1),
         "wrong-xid"),
        (server.reply(request, MessageType.OFFER, "192.0.2.100",
                      chaddr=bytes.fromhex("02dc00000099") + bytes(10)), "wrong-chaddr"),
        (server.reply(request, MessageType.ACK, "192.0.2.100"), "unexpected"),
        (server.reply(request, MessageType.OFFER, "0.0.0.0"), "bad-offer"),
        (server.reply(request, MessageType.OFFER, "192.0.2.100", op=1), "not-a-reply"),
    ]
    for data, counter in bad:
        c.receive_datagram(data, 0.5)
        assert c.counters[counter] == 1, counter
        assert c.state is DhcpState.SELECTING
    no_sid = FakeServer()
    reply = parse(no_sid.reply(request, MessageType.OFFER, "192.0.2.100"))
    del reply.options[o.SERVER_ID]
    c.receive_datagram(build(reply), 0.5)
    assert c.counters["no-server-id"] == 1 and c.datagrams_to_send() == []


def test_allowlist_drops_other_servers():
    c = client(server_allowlist=("192.0.2.1",))
    rogue, good = FakeServer(server_id="192.0.2.66"), FakeServer()
    c.start(0.0)
    c.handle_timer(0.0)
    (discover,) = c.datagrams_to_send()
    c.receive_datagram(rogue.handle(discover.payload)[0], 0.1)
    assert c.state is DhcpState.SELECTING and c.counters["server-not-allowed"] == 1
    c.receive_datagram(good.handle(discover.payload)[0], 0.2)
    assert c.state is DhcpState.REQUESTING


def test_offer_window_collects_and_takes_the_most_complete_offer():
    c = client(offer_window=1.0)
    thin = FakeServer(server_id="192.0.2.5")
    rich = FakeServer(server_id="192.0.2.1", extra={o.INTERFACE_MTU: b"\x05\xdc"})
    c.start(0.0)
    c.handle_timer(0.0)
    (discover,) = c.datagrams_to_send()
    c.receive_datagram(thin.handle(discover.payload)[0], 0.1)
    c.receive_datagram(rich.handle(discover.payload)[0], 0.3)
    assert c.state is DhcpState.SELECTING and c.get_timer() == pytest.approx(1.1)
    c.handle_timer(1.1)
    (request,) = c.datagrams_to_send()
    assert parse(request.payload).options[o.SERVER_ID] == bytes((192, 0, 2, 1))


def test_ack_from_another_server_while_requesting_is_ignored():
    c, server = client(), FakeServer()
    c.start(0.0)
    c.handle_timer(0.0)
    exchange(c, server, 0.0)
    (request,) = c.datagrams_to_send()
    other = FakeServer(server_id="192.0.2.9")
    c.receive_datagram(other.reply(parse(request.payload), MessageType.ACK, "192.0.2.100"), 1)
    assert c.state is DhcpState.REQUESTING and c.counters["ack-from-another-server"] == 1


def test_probe_conflict_declines_waits_ten_seconds_and_gets_another_address():
    c, server = client(arp_probe=True), FakeServer()
    c.start(0.0)
    c.handle_timer(0.0)
    exchange(c, server, 0.0)
    exchange(c, server, 0.0)
    assert c.state is DhcpState.PROBING
    (probe,) = events(c)
    assert probe == ProbeRequested("192.0.2.100")
    c.probe_result("192.0.2.100", conflict=True, now=1.5)
    (decline,) = c.datagrams_to_send()
    msg = parse(decline.payload)
    assert msg.message_type is MessageType.DECLINE
    assert msg.options[o.REQUESTED_ADDRESS] == bytes((192, 0, 2, 100))
    assert msg.options[o.SERVER_ID] == bytes((192, 0, 2, 1))
    server.handle(decline.payload)
    assert events(c) == [AddressDeclined("192.0.2.100", "192.0.2.1")]
    assert c.state is DhcpState.DECLINING and c.get_timer() == 11.5
    c.handle_timer(11.5)
    c.handle_timer(c.get_timer())
    exchange(c, server, 12.0)
    exchange(c, server, 12.0)
    c.probe_result("192.0.2.101", conflict=False, now=13.0)
    assert c.state is DhcpState.BOUND and c.lease.address == "192.0.2.101"


def test_stale_probe_result_is_ignored():
    c = client(arp_probe=True)
    c.probe_result("192.0.2.1", conflict=True, now=0)
    assert c.counters["stale-probe-result"] == 1 and c.datagrams_to_send() == []


def saved_lease(bound_at: float, wall: float, lease_time: int = 3600) -> Lease:
    return acquire(client(wall_clock=lambda: wall),
                   FakeServer(lease_time=lease_time), now=bound_at)


def test_restart_in_the_same_boot_reuses_the_lease_without_sending():
    saved = saved_lease(bound_at=100.0, wall=1_800_000_000.0)
    c = client()
    c.start(500.0, saved=saved, same_boot=True)
    assert c.state is DhcpState.BOUND and c.datagrams_to_send() == []
    assert events(c) == [LeaseBound(saved)]
    assert c.get_timer() == 100.0 + 1800.0  # exact: BOOTTIME stamps are kept


def test_restart_in_the_same_boot_past_t1_renews_at_once():
    saved = saved_lease(bound_at=100.0, wall=0)
    c = client()
    c.start(2000.0, saved=saved, same_boot=True)
    assert c.state is DhcpState.RENEWING
    assert c.datagrams_to_send()[0].destination == "192.0.2.1"


def test_restart_in_the_same_boot_after_expiry_starts_over():
    saved = saved_lease(bound_at=100.0, wall=0)
    c = client()
    c.start(5000.0, saved=saved, same_boot=True)
    assert c.state is DhcpState.INIT and events(c) == []


def test_another_boot_confirms_with_init_reboot():
    saved = saved_lease(bound_at=100.0, wall=1_800_000_000.0)
    c, server = client(wall_clock=lambda: 1_800_000_600.0), FakeServer()
    c.start(5.0, saved=saved, same_boot=False)
    assert c.state is DhcpState.INIT_REBOOT
    c.handle_timer(c.get_timer())
    assert c.state is DhcpState.REBOOTING
    (request,) = c.datagrams_to_send()
    msg = parse(request.payload)
    assert msg.message_type is MessageType.REQUEST and msg.ciaddr == "0.0.0.0"
    assert msg.options[o.REQUESTED_ADDRESS] == bytes((192, 0, 2, 100))
    assert o.SERVER_ID not in msg.options and request.destination == BROADCAST
    c.receive_datagram(server.handle(request.payload)[0], 5.1)
    assert c.state is DhcpState.BOUND and c.lease.bound_at == 5.1


def test_another_boot_on_another_network_gets_nak_and_starts_over():
    saved = saved_lease(bound_at=100.0, wall=1_800_000_000.0)
    c = client(wall_clock=lambda: 1_800_000_600.0)
    other_net = FakeServer(server_id="198.51.100.1",
                           pool=[f"198.51.100.{n}" for n in range(100, 110)])
    c.start(5.0, saved=saved, same_boot=False)
    c.handle_timer(c.get_timer())
    exchange(c, other_net, 5.0)
    assert c.state is DhcpState.INIT and c.counters["nak"] == 1
    assert events(c) == []  # nothing was applied, nothing is lost
    c.handle_timer(c.get_timer())
    d = parse(c.datagrams_to_send()[0].payload)
    assert d.message_type is MessageType.DISCOVER and o.REQUESTED_ADDRESS not in d.options


def test_the_wall_clock_at_power_on_never_keeps_the_saved_address_from_init_reboot():
    """The wall clock at power-on is the one the agent has yet to set: years ahead, a
    valid lease looks expired (the VM's RTC did that). INIT-REBOOT all the same, the
    server deciding; the apparent expiry is counted."""
    saved = saved_lease(bound_at=100.0, wall=1_800_000_000.0)
    c = client(wall_clock=lambda: 1_800_000_000.0 + 5 * 365 * 86400)
    c.start(5.0, saved=saved, same_boot=False)
    assert c.state is DhcpState.INIT_REBOOT and c.counters["saved-lease-expired-by-clock"] == 1
    c.handle_timer(c.get_timer())
    d = parse(c.datagrams_to_send()[0].payload)
    assert d.message_type is MessageType.REQUEST and o.REQUESTED_ADDRESS in d.options
    # A wall clock that went backwards: INIT-REBOOT, nothing counted.
    c = client(wall_clock=lambda: 1_000_000_000.0)
    c.start(5.0, saved=saved, same_boot=False)
    assert c.state is DhcpState.INIT_REBOOT and c.counters["saved-lease-expired-by-clock"] == 0


def test_rebooting_without_answer_falls_back_to_discover():
    saved = saved_lease(bound_at=100.0, wall=1_800_000_000.0)
    c = client(wall_clock=lambda: 1_800_000_010.0)
    c.start(0.0, saved=saved, same_boot=False)
    now = c.get_timer()
    for _ in range(4):
        c.handle_timer(now)
        assert c.datagrams_to_send()
        now = c.get_timer()
    c.handle_timer(now)
    assert c.state is DhcpState.INIT and c.counters["request-timeout"] == 1


def test_release_on_stop_is_unicast_to_the_server():
    c, server = client(), FakeServer()
    lease = acquire(c, server)
    c.stop(10.0, release=True)
    (release,) = c.datagrams_to_send()
    msg = parse(release.payload)
    assert release.destination == "192.0.2.1" and msg.message_type is MessageType.RELEASE
    assert msg.ciaddr == lease.address and msg.options[o.SERVER_ID] == bytes((192, 0, 2, 1))
    assert c.state is DhcpState.STOPPED and c.get_timer() is None


def test_no_transmission_without_carrier_then_init_reboot():
    c, server = client(), FakeServer()
    acquire(c, server)
    events(c)
    c.carrier_lost(100.0)
    assert c.state is DhcpState.NO_CARRIER
    c.handle_timer(1800.0)  # T1 passes without carrier: nothing is sent
    assert c.datagrams_to_send() == []
    c.carrier_regained(1900.0)
    assert c.state is DhcpState.INIT_REBOOT
    c.handle_timer(c.get_timer())
    assert parse(c.datagrams_to_send()[0].payload).options[o.REQUESTED_ADDRESS] == \
        ipaddress.IPv4Address("192.0.2.100").packed


def test_expiry_without_carrier_loses_the_lease_silently():
    c, server = client(), FakeServer(lease_time=20)
    acquire(c, server)
    events(c)
    c.carrier_lost(1.0)
    c.handle_timer(20.0)
    assert [type(e) for e in events(c)] == [LeaseLost]
    assert c.state is DhcpState.NO_CARRIER and c.datagrams_to_send() == []


@settings(max_examples=300, deadline=None)
@given(junk=st.lists(st.binary(max_size=600), max_size=6))
def test_arbitrary_datagrams_never_raise_or_touch_the_lease(junk):
    c, server = client(), FakeServer()
    lease = acquire(c, server)
    for state_step in range(2):
        for data in junk:
            c.receive_datagram(data, 10.0 + state_step)
        assert c.lease == lease
        c.handle_timer(1800.0)  # into RENEWING for the second round


def test_auto_ip_is_asked_for_after_discover_timeout_and_a_lease_replaces_it():
    c, server = client(auto_ip=True, discover_timeout=5.0), FakeServer()
    c.start(0.0)
    c.handle_timer(0.0)
    c.datagrams_to_send()
    now = 0.0
    while c.state is DhcpState.SELECTING and not c._events:
        now = c.get_timer()
        c.handle_timer(now)
        c.datagrams_to_send()
    assert now == 5.0 and [type(e) for e in events(c)] == [AutoIpWanted]
    c.auto_ip_configured("169.254.10.20", 11.0)
    assert c.state is DhcpState.AUTO_IP
    now = c.get_timer()
    c.handle_timer(now)  # DISCOVER goes on
    (discover,) = c.datagrams_to_send()
    for reply in server.handle(discover.payload):
        c.receive_datagram(reply, now)
    exchange(c, server, now)
    assert c.state is DhcpState.BOUND and c.auto_ip_address is None
    assert [type(e) for e in events(c)] == [LeaseBound]


def no_address_offer(c: DhcpClient) -> bytes:
    """RFC 2563: an OFFER with no address and option 116 = 0 (do not auto-configure)."""
    request = parse(c.datagrams_to_send()[0].payload)
    return build(DhcpMessage(op=2, xid=request.xid, chaddr=request.chaddr,
                             options={53: b"\x02", 54: bytes((192, 0, 2, 1)), 116: b"\x00"}))


def test_auto_ip_needs_permission_and_no_server_saying_no():
    c = client(auto_ip=False, discover_timeout=1.0)
    c.start(0.0)
    for now in (0.0, 1.0, 2.0, 5.0, 13.0):
        c.handle_timer(now)
    assert events(c) == []
    # RFC 2563: a server with no address to give says "do not auto-configure".
    c = client(auto_ip=True, discover_timeout=5.0)
    c.start(0.0)
    c.handle_timer(0.0)
    c.receive_datagram(no_address_offer(c), 0.5)
    assert c.auto_ip_forbidden and c.counters["bad-offer"] == 1
    for now in (4.0, 5.0, 6.0):
        c.handle_timer(now)
    assert events(c) == []


def test_discover_carries_option_116_only_with_the_permission_and_a_new_link_asks_again():
    for permitted in (True, False):
        c = client(auto_ip=permitted, discover_timeout=5.0)
        c.start(0.0)
        c.handle_timer(0.0)
        (discover,) = c.datagrams_to_send()
        assert parse(discover.payload).options.get(116) == (b"\x01" if permitted else None)
    c = client(auto_ip=True, discover_timeout=5.0)
    c.start(0.0)
    c.handle_timer(0.0)
    c.receive_datagram(no_address_offer(c), 0.5)
    assert c.auto_ip_forbidden
    c.carrier_lost(1.0)
    c.carrier_regained(2.0)  # maybe another network, whose servers may say otherwise
    assert not c.auto_ip_forbidden


def test_a_server_outside_the_allowlist_cannot_forbid_auto_ip():
    c = client(auto_ip=True, discover_timeout=5.0, server_allowlist=("192.0.2.250",))
    c.start(0.0)
    c.handle_timer(0.0)
    c.receive_datagram(no_address_offer(c), 0.5)
    assert not c.auto_ip_forbidden
    c.handle_timer(5.0)
    assert events(c) == [AutoIpWanted()]


def test_renew_now_asks_the_server_at_once():
    c, server = client(), FakeServer()
    acquire(c, server)
    events(c)
    assert c.renew_now(100.0)
    (renew,) = c.datagrams_to_send()
    assert renew.destination == "192.0.2.1" and parse(renew.payload).ciaddr == "192.0.2.100"
    c.receive_datagram(server.handle(renew.payload)[0], 100.1)
    assert [type(e) for e in events(c)] == [LeaseRenewed] and c.state is DhcpState.BOUND
    assert not client().renew_now(0.0)  # nothing to renew


def test_a_lease_time_of_zero_binds_for_the_floor_and_the_journal_says_why(caplog):
    """A server answering with option 51 = 0: bound for 20 s (dhcpcd's floor), with a
    warning naming the server and the value; the next renewal is at 10 s."""
    c, server = client(), FakeServer(lease_time=0)
    with caplog.at_level("WARNING", logger="profiles.network_address.dhcp_client"):
        lease = acquire(c, server)
    assert c.state is DhcpState.BOUND and lease.lease_time == 20
    assert c.get_timer() == pytest.approx(10.0)
    (line,) = [r.getMessage() for r in caplog.records]
    assert line.startswith("ACK from 192.0.2.1: refused option 51: 0 s is below the 20 s")


def test_each_refused_reply_is_logged_once_per_server_and_reason(caplog):
    """Replies to our own request that are refused are logged at the default level —
    once per server and reason, however often they come — so "why no address?" is
    answered by the journal; they are all counted."""
    c = client(server_allowlist=("192.0.2.250",))
    server = FakeServer()
    c.start(0.0)
    c.handle_timer(0.0)
    with caplog.at_level("WARNING", logger="profiles.network_address.dhcp_client"):
        for n in range(5):
            c.handle_timer(c.get_timer())
            exchange(c, server, float(n))
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["refused a reply from 192.0.2.1: server-not-allowed"]
    assert c.counters["server-not-allowed"] >= 5
    assert c.state is DhcpState.SELECTING
