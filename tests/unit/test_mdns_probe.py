"""RFC 6762 8.2's tie-break (profiles/app_config/mdns_probe.py), with the RFC's own
example, and probe() deferring one second when it loses one (profiles/app_config/dnssd_io)."""

from __future__ import annotations

from profiles.app_config.mdns_probe import name_wire, record, srv_rdata, tiebreak

A, SRV, TXT, IN, FLUSH = 1, 33, 16, 1, 0x8000


def test_the_rfcs_example_the_later_address_wins():
    # 8.2: 169.254.99.200 beats 169.254.200.50 ("the first byte 0xA9 is equal, ... 0x63 <
    # 0xC8")... compared as raw bytes: 169.254.200.50 is later, so it wins.
    low = [record(IN, A, bytes([169, 254, 99, 200]))]
    high = [record(IN, A, bytes([169, 254, 200, 50]))]
    assert tiebreak(high, low) > 0 and tiebreak(low, high) < 0


def test_class_then_type_then_rdata_and_the_cache_flush_bit_is_ignored():
    ours = [record(IN | FLUSH, SRV, srv_rdata(0, 0, 104, "ct1.local")),
            record(IN | FLUSH, TXT, b"\x0cAET=CT1_SCP")]
    same = [record(IN, TXT, b"\x0cAET=CT1_SCP"), record(IN, SRV, srv_rdata(0, 0, 104,
                                                                            "ct1.local"))]
    assert tiebreak(ours, same) == 0  # identical data: no conflict
    other_port = [record(IN, SRV, srv_rdata(0, 0, 11112, "ct1.local")), same[0]]
    # sorted: TXT (16) before SRV (33); TXT equal; SRV port 104 < 11112: ours loses
    assert tiebreak(ours, other_port) < 0 and tiebreak(other_port, ours) > 0
    assert tiebreak(ours, [ours[1]]) > 0  # more records win when the rest is equal


def test_names_in_rdata_are_uncompressed_wire_labels():
    assert name_wire("ct1.local.") == b"\x03ct1\x05local\x00"
    assert srv_rdata(1, 2, 104, "a.local") == b"\x00\x01\x00\x02\x00\x68\x01a\x05local\x00"
