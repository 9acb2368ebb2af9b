"""The SNTP core against fake servers, with a simulated true time and hand-advanced clocks."""

from __future__ import annotations

import random
from dataclasses import dataclass

import pytest

from profiles.time_sync import packet
from profiles.time_sync.sntp import (
    BURST,
    POLL_MAX,
    POLL_MIN,
    RoundResult,
    SntpClient,
    StepPolicy,
)

WALL_2026 = 1_795_000_000.0
WALL_2040 = 2_220_000_000.0  # past the NTP era rollover of February 2036


@dataclass
class FakeNtp:
    address: str
    lie: float = 0.0  # seconds this server is wrong by
    delay: float = 0.0004  # round trip
    stratum: int = 2
    leap: int = 0
    mode: int = 4
    kiss: str | None = None
    answer: bool = True
    zero_transmit: bool = False
    wrong_origin: bool = False
    root_dispersion: float = 0.0002

    def reply(self, request: bytes, true_time: float) -> bytes | None:
        if not self.answer:
            return None
        req = packet.parse(request)
        t = true_time + self.delay / 2 + self.lie
        stratum = 0 if self.kiss else self.stratum
        refid = self.kiss.encode() if self.kiss else b"GPS\x00"
        return packet.NtpPacket(
            self.leap, 4, self.mode, stratum, 6, -20, 0.0001, self.root_dispersion, refid,
            packet.from_unix(t - 10), req.transmit ^ (1 if self.wrong_origin else 0),
            packet.from_unix(t), 0 if self.zero_transmit else packet.from_unix(t + 0.00005),
        ).to_bytes()


class Recorder:
    def __init__(self):
        self.calls: list[tuple[str, float]] = []

    def step(self, offset: float) -> None:
        self.calls.append(("step", offset))

    def slew(self, offset: float) -> None:
        self.calls.append(("slew", offset))


def run_round(c: SntpClient, servers: list[FakeNtp], now: float, true_base: float,
              our_error: float, sent: list[str] | None = None) -> tuple[RoundResult, float]:
    """Drive one round to its result; our clock reads true time + our_error."""
    by_address = {s.address: s for s in servers}
    for _ in range(200):
        timer = c.get_timer()
        assert timer is not None
        now = max(now, timer)
        true = true_base + now
        c.handle_timer(now, true + our_error)
        for d in c.datagrams_to_send():
            if sent is not None:
                sent.append(d.destination)
            reply = by_address[d.destination].reply(d.payload, true)
            if reply is not None:
                delay = by_address[d.destination].delay
                c.receive_datagram(reply, d.destination, now + delay,
                                   true + delay + our_error)
        if (event := c.next_event()) is not None:
            return event, now
    raise AssertionError("no round result")


def client(**kw) -> SntpClient:
    return SntpClient(random.Random(7), **kw)


@pytest.mark.parametrize("base", [WALL_2026, WALL_2040])
def test_offset_measured_on_both_sides_of_the_2036_era(base):
    c = client()
    c.set_servers(["192.0.2.11"], 0.0)
    result, _ = run_round(c, [FakeNtp("192.0.2.11")], 0.0, base, our_error=-0.25)
    assert result.synced and result.selected == "192.0.2.11"
    assert result.offset == pytest.approx(0.25, abs=1e-4)
    (server,) = result.servers
    assert server["accepted"] and server["stratum"] == 2
    assert server["delay_ms"] == pytest.approx(0.35, abs=0.02)


def test_burst_keeps_the_lowest_delay_sample():
    c = client()
    c.set_servers(["192.0.2.11"], 0.0)
    server = FakeNtp("192.0.2.11")
    delays = iter([0.004, 0.0005, 0.003, 0.002])
    now, sent = 0.0, 0
    while (event := c.next_event()) is None:
        now = c.get_timer()
        c.handle_timer(now, WALL_2026 + now)
        for d in c.datagrams_to_send():
            sent += 1
            server.delay = next(delays)
            c.receive_datagram(server.reply(d.payload, WALL_2026 + now), d.destination,
                               now + server.delay, WALL_2026 + now + server.delay)
    assert sent == BURST
    assert event.servers[0]["delay_ms"] == pytest.approx(0.45, abs=0.01)


@pytest.mark.parametrize("bad,reason", [
    (dict(mode=3), "not a server reply (mode 3)"),
    (dict(stratum=16), "unsynchronized (stratum 16)"),
    (dict(leap=3), "unsynchronized (leap indicator 3)"),
    (dict(zero_transmit=True), "zero transmit timestamp"),
    (dict(kiss="XYZZ"), "kiss-o'-death XYZZ"),
    (dict(answer=False), "no answer"),
])
def test_each_rfc_4330_rejection_names_its_reason(bad, reason):
    c = client()
    c.set_servers(["192.0.2.11"], 0.0)
    result, _ = run_round(c, [FakeNtp("192.0.2.11", **bad)], 0.0, WALL_2026, 0.0)
    assert not result.synced and result.selected is None
    assert result.servers[0]["reason"] == reason and not result.servers[0]["accepted"]


def test_a_reply_that_does_not_echo_our_nonce_is_dropped_and_counted():
    c = client()
    c.set_servers(["192.0.2.11"], 0.0)
    result, _ = run_round(c, [FakeNtp("192.0.2.11", wrong_origin=True)], 0.0, WALL_2026, 0.0)
    assert c.counters["bogus-origin"] == BURST
    assert result.servers[0]["reason"] == "no answer"
    c.receive_datagram(b"\x00" * 10, "192.0.2.11", 1.0, WALL_2026)
    c.receive_datagram(b"\x24" + bytes(47), "192.0.2.99", 1.0, WALL_2026)
    assert c.counters["malformed"] == 1 and c.counters["unknown-source"] == 1


def test_kiss_of_death_deny_drops_the_server_rate_backs_it_off():
    c = client()
    c.set_servers(["192.0.2.11", "192.0.2.12", "192.0.2.13"], 0.0)
    servers = [FakeNtp("192.0.2.11", kiss="DENY"), FakeNtp("192.0.2.12", kiss="RATE"),
               FakeNtp("192.0.2.13")]
    sent: list[str] = []
    result, now = run_round(c, servers, 0.0, WALL_2026, 0.0, sent)
    assert sent.count("192.0.2.11") == 1 and sent.count("192.0.2.12") == 1  # burst cut short
    assert c.servers["192.0.2.11"].dropped
    backoff = c.servers["192.0.2.12"].rate_backoff
    assert backoff >= POLL_MIN
    sent.clear()
    result, now = run_round(c, servers, now, WALL_2026, 0.0, sent)
    assert "192.0.2.11" not in sent  # DENY: never asked again
    assert sent.count("192.0.2.12") == 1  # RATE again: asked once, then it backs off more
    assert c.servers["192.0.2.12"].rate_backoff == 2 * backoff
    assert sent.count("192.0.2.13") == BURST
    assert result.selected == "192.0.2.13"


def test_a_falseticker_among_three_is_outvoted():
    c = client()
    addrs = ["192.0.2.11", "192.0.2.12", "192.0.2.13"]
    c.set_servers(addrs, 0.0)
    servers = [FakeNtp(addrs[0]), FakeNtp(addrs[1], lie=5.0), FakeNtp(addrs[2], delay=0.0006)]
    result, _ = run_round(c, servers, 0.0, WALL_2026, our_error=0.010)
    assert result.synced and result.selected == addrs[0]
    assert result.offset == pytest.approx(-0.010, abs=1e-4)
    liar = next(s for s in result.servers if s["address"] == addrs[1])
    assert not liar["accepted"] and liar["reason"].startswith("falseticker")
    assert liar["offset_ms"] == pytest.approx(4990, abs=1)


def test_no_majority_means_not_synced():
    c = client()
    addrs = ["192.0.2.11", "192.0.2.12", "192.0.2.13"]
    c.set_servers(addrs, 0.0)
    servers = [FakeNtp(addrs[0]), FakeNtp(addrs[1], lie=5.0), FakeNtp(addrs[2], lie=-7.0)]
    result, _ = run_round(c, servers, 0.0, WALL_2026, 0.0)
    assert not result.synced and result.selected is None
    assert {s["reason"] for s in result.servers} == {"no majority of servers agrees"}


@pytest.mark.parametrize("error,expected", [(-0.5, ("step", 0.5)), (-0.02, ("slew", 0.02))])
def test_step_above_the_threshold_slew_below(error, expected):
    recorder = Recorder()
    c = client(actuator=recorder, may_adjust=True, step_threshold=0.128)
    c.set_servers(["192.0.2.11"], 0.0)
    result, _ = run_round(c, [FakeNtp("192.0.2.11")], 0.0, WALL_2026, our_error=error)
    ((kind, offset),) = recorder.calls
    assert kind == expected[0] and offset == pytest.approx(expected[1], abs=1e-4)
    assert result.correction == expected[0]


def test_a_core_that_may_not_adjust_only_measures():
    recorder = Recorder()
    c = client(actuator=recorder, may_adjust=False)
    c.set_servers(["192.0.2.11"], 0.0)
    result, _ = run_round(c, [FakeNtp("192.0.2.11")], 0.0, WALL_2026, our_error=-3.0)
    assert recorder.calls == [] and result.correction is None and result.synced


def test_poll_doubles_to_1024_while_stable_and_falls_back_to_64():
    c = client()
    c.set_servers(["192.0.2.11"], 0.0)
    server = FakeNtp("192.0.2.11")
    now, polls = 0.0, []
    for _ in range(6):
        _, now = run_round(c, [server], now, WALL_2026, 0.001)
        polls.append(c.poll)
    assert polls == [128.0, 256.0, 512.0, 1024.0, POLL_MAX, POLL_MAX]
    next_round = c.get_timer()
    assert next_round == pytest.approx(now + POLL_MAX, abs=1.5)
    _, now = run_round(c, [server], now, WALL_2026, 1.0)  # clock off by 1 s: back to 64
    assert c.poll == POLL_MIN


def test_a_new_server_set_starts_a_round_at_once():
    c = client()
    c.set_servers(["192.0.2.11"], 0.0)
    _, now = run_round(c, [FakeNtp("192.0.2.11")], 0.0, WALL_2026, 0.0)
    assert c.get_timer() > now + 60
    c.set_servers(["192.0.2.12"], now + 1)
    assert c.get_timer() == now + 1 and list(c.servers) == ["192.0.2.12"]


def test_a_server_kept_in_a_new_set_soon_after_a_round_waits_its_interval_not_out():
    """A server heard by autodiscovery joins the set seconds after a round: the server
    kept from the last set is asked again once its 15 s minimum interval has passed —
    not left out of the round as "backing off" until the next poll."""
    c = client()
    c.set_servers(["192.0.2.11"], 0.0)
    _, now = run_round(c, [FakeNtp("192.0.2.11")], 0.0, WALL_2026, 0.0)
    c.set_servers(["192.0.2.11", "192.0.2.12"], now + 2)
    sent: list[str] = []
    result, end = run_round(c, [FakeNtp("192.0.2.11"), FakeNtp("192.0.2.12")], now + 2,
                            WALL_2026, 0.0, sent)
    assert {s["address"]: s["accepted"] for s in result.servers} == {
        "192.0.2.11": True, "192.0.2.12": True}
    assert end >= now + 15  # 11's minimum interval was kept
    assert sent.index("192.0.2.12") < sent.index("192.0.2.11")


def test_packet_era_conversion_round_trips():
    for unix in (0.5, WALL_2026 + 0.25, 2_085_978_496.0 - 1, 2_085_978_496.0 + 1, WALL_2040):
        assert packet.to_unix(packet.from_unix(unix), unix + 1000) == pytest.approx(unix,
                                                                                   abs=1e-6)


# -- the clock step policy (issue 11) ------------------------------------------------------

YEARS_5 = -157_680_000.0
ADDRS = ["192.0.2.11", "192.0.2.12", "192.0.2.13"]


def adjusting(policy: StepPolicy, servers: list[str]) -> tuple[SntpClient, Recorder]:
    recorder = Recorder()
    c = SntpClient(random.Random(7), 0.128, recorder, may_adjust=True, policy=policy)
    c.set_servers(servers, 0.0)
    return c, recorder


def test_one_lying_server_cannot_step_the_clock_by_years():
    policy = StepPolicy(floor=WALL_2026 - 86400)
    c, recorder = adjusting(policy, ADDRS[:1])
    result, now = run_round(c, [FakeNtp(ADDRS[0])], 0.0, WALL_2026, our_error=0.0)
    assert result.correction == "slew"  # the first sync, honest
    liar = [FakeNtp(ADDRS[0], lie=YEARS_5)]
    result, _ = run_round(c, liar, now + 1, WALL_2026, our_error=0.0)
    assert result.correction == "refused" and "needs three agreeing servers" in result.refused
    assert recorder.calls[1:] == [] and c.counters["correction-refused"] == 1
    # An operator who knows better accepts it (accept-time-step): applied once.
    policy.accept()
    result, _ = run_round(c, liar, now + 2000, WALL_2026, our_error=0.0)
    assert result.correction == "step" and recorder.calls[-1][1] == pytest.approx(YEARS_5)
    assert not policy.accepted


def test_a_step_to_before_the_floor_is_refused_even_at_the_first_sync():
    c, recorder = adjusting(StepPolicy(floor=WALL_2026 - 86400), ADDRS[:1])
    result, _ = run_round(c, [FakeNtp(ADDRS[0], lie=YEARS_5)], 0.0, WALL_2026, 0.0)
    assert result.correction == "refused" and "before" in result.refused
    assert recorder.calls == []


def test_two_servers_that_disagree_are_no_majority():
    c, recorder = adjusting(StepPolicy(), ADDRS[:2])
    liar = FakeNtp(ADDRS[1], lie=YEARS_5, root_dispersion=0.0)
    result, _ = run_round(c, [FakeNtp(ADDRS[0]), liar], 0.0, WALL_2026, 0.0)
    assert not result.synced and recorder.calls == []


def test_three_agreeing_servers_may_correct_beyond_the_limit():
    c, recorder = adjusting(StepPolicy(), ADDRS)
    honest = [FakeNtp(a) for a in ADDRS]
    _, now = run_round(c, honest, 0.0, WALL_2026, 0.0)
    result, _ = run_round(c, honest, now + 1, WALL_2026, our_error=-2000.0)
    assert result.agreeing == 3 and result.correction == "step"
    assert recorder.calls[-1] == ("step", pytest.approx(2000.0, abs=0.01))


def test_steps_only_in_the_first_updates_since_the_process_started():
    policy = StepPolicy(step_updates=3)
    c, recorder = adjusting(policy, ADDRS[:1])
    now = 0.0
    for _ in range(2):
        _, now = run_round(c, [FakeNtp(ADDRS[0])], now, WALL_2026, our_error=-0.5)
        now += 1
    # The time task restarts: a new core, the same policy (counted from process start).
    c2, recorder2 = adjusting(policy, ADDRS[:1])
    for _ in range(2):
        _, now = run_round(c2, [FakeNtp(ADDRS[0])], now, WALL_2026, our_error=-0.5)
        now += 1
    kinds = [k for k, _ in recorder.calls + recorder2.calls]
    assert kinds == ["step", "step", "step", "slew"]


def test_a_sample_with_a_root_distance_over_1_5_s_is_not_used():
    c = client()
    c.set_servers(ADDRS[:1], 0.0)
    result, _ = run_round(c, [FakeNtp(ADDRS[0], root_dispersion=2.0)], 0.0, WALL_2026, 0.0)
    assert not result.synced
    assert result.servers[0]["reason"] == "root distance 2.00 s over 1.5 s"


def test_nonces_do_not_come_from_the_injected_random():
    a, b = client(), client()  # the same seed
    for c in (a, b):
        c.set_servers(ADDRS[:1], 0.0)
        c.handle_timer(0.0, WALL_2026)
    nonce_a = packet.parse(a.datagrams_to_send()[0].payload).transmit
    nonce_b = packet.parse(b.datagrams_to_send()[0].payload).transmit
    assert nonce_a != nonce_b


def test_autodiscovery_forgets_a_server_after_three_of_its_intervals():
    from profiles.time_sync.sntp_io import Listener

    listener = Listener("eth0", window=2.0)
    for t in (0.0, 4.0, 8.0):  # a server announcing every 4 s
        listener._last["192.0.2.14"] = t
        if t:
            listener._interval["192.0.2.14"] = 4.0
    listener.heard["192.0.2.14"] = "multicast"
    assert not listener.expire(now=8.0 + 11.9)  # three intervals not yet missed
    assert listener.expire(now=8.0 + 12.1) and listener.heard == {}
