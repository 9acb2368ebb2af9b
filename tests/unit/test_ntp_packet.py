"""The SNTP core's packet codec with ntplib as its oracle (the design card's library: the
agent's own codec replaces it at run time, for the 2036 era and RFC 4330's checks): each
side reads the other's packets to the same fields, and both convert timestamps of this
era to the same Unix time — where ntplib stops at February 2036, ours goes on."""

from __future__ import annotations

import ntplib
import pytest
from hypothesis import given
from hypothesis import strategies as st

from profiles.time_sync import packet

U32 = st.integers(0, 2**32 - 1)
TIMESTAMP = st.integers(0, 2**64 - 1)


def seconds(timestamp: int) -> float:
    """A raw 64-bit NTP timestamp as ntplib holds it: seconds since 1900, a float."""
    return (timestamp >> 32) + (timestamp & 0xFFFFFFFF) / 2**32


fields = st.builds(
    packet.NtpPacket, leap=st.integers(0, 3), version=st.integers(1, 4),
    mode=st.integers(0, 7), stratum=st.integers(0, 255),
    poll=st.integers(0, 127),  # ntplib packs poll unsigned, RFC 5905 signed
    precision=st.integers(-128, 127),
    root_delay=U32.map(lambda v: v / 65536), root_dispersion=U32.map(lambda v: v / 65536),
    reference_id=st.binary(min_size=4, max_size=4), reference=TIMESTAMP, origin=TIMESTAMP,
    receive=TIMESTAMP, transmit=TIMESTAMP)


@given(fields)
def test_our_packets_read_by_ntplib(ours: packet.NtpPacket):
    theirs = ntplib.NTPPacket()
    theirs.from_data(ours.to_bytes())
    assert (theirs.leap, theirs.version, theirs.mode, theirs.stratum, theirs.poll,
            theirs.precision) == (ours.leap, ours.version, ours.mode, ours.stratum, ours.poll,
                                  ours.precision)
    assert theirs.root_delay == ours.root_delay
    assert theirs.root_dispersion == ours.root_dispersion
    assert theirs.ref_id == int.from_bytes(ours.reference_id, "big")
    for mine, its in ((ours.reference, theirs.ref_timestamp),
                      (ours.origin, theirs.orig_timestamp),
                      (ours.receive, theirs.recv_timestamp),
                      (ours.transmit, theirs.tx_timestamp)):
        assert its == pytest.approx(seconds(mine), abs=1e-6)


@given(leap=st.integers(0, 3), version=st.integers(1, 4), mode=st.integers(0, 7),
       stratum=st.integers(0, 255), poll=st.integers(0, 127),
       precision=st.integers(-128, 127), ref_id=U32,
       stamps=st.lists(st.integers(0, 2**32 - 1).map(float), min_size=4, max_size=4),
       fractions=st.lists(st.integers(0, 2**20 - 1).map(lambda f: f / 2**20), min_size=4,
                          max_size=4))
def test_ntplibs_packets_read_by_ours(leap, version, mode, stratum, poll, precision, ref_id,
                                      stamps, fractions):
    theirs = ntplib.NTPPacket(version=version, mode=mode)
    theirs.leap, theirs.stratum, theirs.poll, theirs.precision = leap, stratum, poll, precision
    theirs.root_delay, theirs.root_dispersion, theirs.ref_id = 1.5, 0.25, ref_id
    (theirs.ref_timestamp, theirs.orig_timestamp, theirs.recv_timestamp,
     theirs.tx_timestamp) = (s + f for s, f in zip(stamps, fractions, strict=True))
    ours = packet.parse(theirs.to_data())
    assert (ours.leap, ours.version, ours.mode, ours.stratum, ours.poll, ours.precision) == \
        (leap, version, mode, stratum, poll, precision)
    assert (ours.root_delay, ours.root_dispersion) == (1.5, 0.25)
    assert int.from_bytes(ours.reference_id, "big") == ref_id
    for mine, its in ((ours.reference, theirs.ref_timestamp),
                      (ours.origin, theirs.orig_timestamp),
                      (ours.receive, theirs.recv_timestamp),
                      (ours.transmit, theirs.tx_timestamp)):
        assert seconds(mine) == pytest.approx(its, abs=1e-6)


@given(st.floats(0, 2**31 - 1 - 2_208_988_800 + 2**31, allow_nan=False))
def test_both_convert_this_eras_timestamps_to_the_same_unix_time(unix: float):
    """Up to February 2036 (the end of era 0) the two agree; after it ntplib's
    conversion is 136 years early and ours is right (the pivot: the local clock)."""
    timestamp = packet.from_unix(unix)
    assert packet.to_unix(timestamp, unix) == pytest.approx(
        ntplib.ntp_to_system_time(seconds(timestamp)), abs=1e-6)


def test_after_2036_ntplib_wraps_and_ours_does_not():
    unix = 2_200_000_000.0  # 2039-09-18, era 1
    timestamp = packet.from_unix(unix)
    assert packet.to_unix(timestamp, unix) == pytest.approx(unix, abs=1e-6)
    assert ntplib.ntp_to_system_time(seconds(timestamp)) == pytest.approx(unix - 2**32,
                                                                          abs=1e-6)
