"""The DHCP codec: round trips, arbitrary bytes, RFC 3396 and overload, and scapy as oracle."""

from __future__ import annotations

import re
import socket
import struct

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from scapy.layers.dhcp import BOOTP, DHCP, DHCPOptions

from profiles.errors import ParseError
from profiles.network_address.codec import (
    HEADER,
    MAGIC_COOKIE,
    DhcpMessage,
    MessageType,
    build,
    encode_options,
    parse,
)

ipv4 = st.integers(0, 2**32 - 1).map(lambda n: socket.inet_ntoa(struct.pack("!I", n)))
option_codes = st.integers(1, 254).filter(lambda c: c != 52)
messages = st.builds(
    DhcpMessage,
    op=st.sampled_from([1, 2]), xid=st.integers(0, 2**32 - 1),
    chaddr=st.binary(min_size=16, max_size=16), htype=st.integers(0, 255),
    hlen=st.integers(0, 16), hops=st.integers(0, 255), secs=st.integers(0, 65535),
    flags=st.integers(0, 65535), ciaddr=ipv4, yiaddr=ipv4, siaddr=ipv4, giaddr=ipv4,
    sname=st.binary(min_size=64, max_size=64), file=st.binary(min_size=128, max_size=128),
    options=st.dictionaries(option_codes, st.binary(max_size=600), max_size=12),
)


@settings(max_examples=400)
@given(messages)
def test_round_trip(msg):
    assert parse(build(msg)) == msg


@settings(max_examples=2000)
@given(st.binary(max_size=700))
def test_arbitrary_bytes_parse_or_raise_parse_error(data):
    try:
        msg = parse(data)
    except ParseError as exc:
        assert exc.offset is not None
    else:
        assert msg.op in (1, 2)


@settings(max_examples=1000)
@given(messages, st.data())
def test_damaged_messages_parse_or_raise_parse_error(msg, data):
    wire = bytearray(build(msg))
    cut = data.draw(st.integers(0, len(wire)))
    flips = data.draw(st.lists(st.tuples(st.integers(0, len(wire) - 1), st.integers(0, 255)),
                               max_size=8))
    for pos, value in flips:
        wire[pos] = value
    try:
        parsed = parse(bytes(wire[:cut]))
    except ParseError as exc:
        assert exc.offset is not None
    else:
        assert parsed.xid == int.from_bytes(wire[4:8], "big")


def header(**kw) -> bytes:
    fields = dict(op=2, htype=1, hlen=6, hops=0, xid=7, secs=0, flags=0, ciaddr=bytes(4),
                  yiaddr=bytes(4), siaddr=bytes(4), giaddr=bytes(4), chaddr=bytes(16),
                  sname=bytes(64), file=bytes(128))
    fields.update(kw)
    return HEADER.pack(*fields.values()) + MAGIC_COOKIE


def test_long_options_are_concatenated_in_options_file_sname_order():
    # RFC 3396: option 200 split over the options field, 'file' and 'sname' (overload 3).
    file = (bytes((200, 3)) + b"def" + bytes((255,))).ljust(128, b"\x00")
    sname = (bytes((200, 2)) + b"gh" + bytes((12, 4)) + b"ct01" + bytes((255,))).ljust(64, b"\0")
    data = header(file=file, sname=sname) + bytes((53, 1, 5, 52, 1, 3, 200, 3)) + b"abc" + b"\xff"
    msg = parse(data)
    assert msg.options == {53: b"\x05", 52: b"\x03", 200: b"abcdefgh", 12: b"ct01"}
    assert msg.message_type is MessageType.ACK
    assert msg.sname == bytes(64) and msg.file == bytes(128)  # they held options


def test_without_overload_sname_and_file_are_data():
    sname = b"server".ljust(64, b"\0")
    msg = parse(header(sname=sname) + bytes((53, 1, 2, 255)))
    assert msg.sname == sname and msg.options == {53: b"\x02"}


@pytest.mark.parametrize("data,message", [
    (header()[:239], "shorter than the 240-byte header"),
    (header()[:236] + b"\x63\x82\x53\x64" + b"\xff", "no DHCP magic cookie"),
    (header(op=3) + b"\xff", "op 3 is neither BOOTREQUEST nor BOOTREPLY"),
    (header(hlen=17) + b"\xff", "hlen 17 exceeds the 16-byte chaddr field"),
    (header() + bytes((12, 10)) + b"short", "option 12 length 10 overruns its field"),
    (header() + bytes((53,)), "option 53 has no length byte"),
    (header() + bytes((52, 1, 4, 255)), "option 52 (overload) must be 1, 2 or 3, got 04"),
    (header(file=bytes((12, 200)).ljust(128, b"\0")) + bytes((52, 1, 1, 255)),
     "option 12 length 200 overruns its field"),
])
def test_malformed_input_is_named_with_its_offset(data, message):
    with pytest.raises(ParseError, match=re.escape(message)) as info:
        parse(data)
    assert info.value.offset is not None


def test_missing_end_is_tolerated_and_pad_skipped():
    assert parse(header() + bytes((0, 0, 53, 1, 1))).options == {53: b"\x01"}


def test_builder_splits_long_values_and_pads_to_bootp_minimum():
    wire = build(DhcpMessage(op=1, xid=1, options={53: b"\x01", 77: bytes(300)}))
    assert len(wire) == 240 + 3 + (2 + 255) + (2 + 45) + 1
    assert wire[240:243] == bytes((53, 1, 1))
    assert wire[243:245] == bytes((77, 255)) and wire[500:502] == bytes((77, 45))
    assert len(build(DhcpMessage(op=1, xid=1))) == 300


def test_builder_refuses_what_it_cannot_encode():
    with pytest.raises(ValueError):
        encode_options({52: b"\x01"})
    with pytest.raises(ValueError):
        build(DhcpMessage(op=1, xid=1, chaddr=b"short"))


# -- scapy as an independent oracle --------------------------------------------------------

# Codes whose scapy field type we mirror (IPField lists, Int/Short/Byte fields, strings),
# plus unassigned codes that scapy keeps as raw bytes.
IP_LISTS = {1: 1, 3: None, 6: None, 28: 1, 42: None, 50: 1, 54: 1}
INTS = {51: 4, 58: 4, 59: 4, 26: 2, 57: 2, 116: 1}
STRINGS = (12, 15, 61, 100, 101)
RAW = (224, 230, 240)


def option_values() -> st.SearchStrategy[dict[int, bytes]]:
    ips = {c: st.lists(ipv4, min_size=1, max_size=n or 4).map(
        lambda a: b"".join(socket.inet_aton(x) for x in a)) for c, n in IP_LISTS.items()}
    ints = {c: st.binary(min_size=n, max_size=n) for c, n in INTS.items()}
    strings = {c: st.text("abcdefghijklmnopqrstuvwxyz0123456789-.", min_size=1, max_size=40)
               .map(str.encode) for c in STRINGS}
    raw = {c: st.binary(min_size=1, max_size=40) for c in RAW}
    return st.fixed_dictionaries({}, optional={**ips, **ints, **strings, **raw})


def scapy_view(code: int, raw: bytes) -> tuple:
    """What scapy's DHCP layer makes of an option value, computed from the raw bytes."""
    if code in IP_LISTS:
        return tuple(socket.inet_ntoa(raw[i:i + 4]) for i in range(0, len(raw), 4))
    if code in INTS:
        return (int.from_bytes(raw, "big"),)
    return (raw,)


def scapy_name(code: int):
    entry = DHCPOptions.get(code)
    return code if entry is None else entry if isinstance(entry, str) else entry.name


@settings(max_examples=300, deadline=None)
@given(msg=messages, opts=option_values(), mtype=st.sampled_from(list(MessageType)))
def test_scapy_decodes_what_we_build(msg, opts, mtype):
    ours = DhcpMessage(**{**{f: getattr(msg, f) for f in msg.__dataclass_fields__},
                          "options": {53: bytes((mtype,)), **opts}, "htype": 1})
    pkt = BOOTP(build(ours))
    assert (pkt.op, pkt.xid, pkt.secs, pkt.flags, pkt.hops) == (
        ours.op, ours.xid, ours.secs, ours.flags, ours.hops)
    assert (pkt.ciaddr, pkt.yiaddr, pkt.siaddr, pkt.giaddr) == (
        ours.ciaddr, ours.yiaddr, ours.siaddr, ours.giaddr)
    assert (pkt.chaddr, pkt.sname, pkt.file) == (ours.chaddr, ours.sname, ours.file)
    decoded = {}
    for item in pkt[DHCP].options:
        if item in ("end", "pad"):
            continue
        decoded[item[0]] = tuple(item[1:])
    expected = {scapy_name(c): scapy_view(c, v) for c, v in ours.options.items() if c != 53}
    expected["message-type"] = (int(mtype),)
    assert decoded == expected


@settings(max_examples=300, deadline=None)
@given(xid=st.integers(0, 2**32 - 1), yiaddr=ipv4, opts=option_values(),
       mac=st.binary(min_size=6, max_size=6), mtype=st.sampled_from(list(MessageType)))
def test_we_decode_what_scapy_builds(xid, yiaddr, opts, mac, mtype):
    assume(opts)
    scapy_opts = [("message-type", int(mtype))]
    for code, raw in opts.items():
        scapy_opts.append((scapy_name(code), *scapy_view(code, raw)))
    wire = bytes(BOOTP(op=2, xid=xid, yiaddr=yiaddr, chaddr=mac) / DHCP(options=[*scapy_opts,
                                                                                 "end"]))
    msg = parse(wire)
    assert (msg.op, msg.xid, msg.yiaddr, msg.hardware_address) == (2, xid, yiaddr, mac)
    assert msg.message_type is mtype
    assert msg.options == {53: bytes((mtype,)), **opts}
