"""The rtnetlink encoding (issue 18: the agent's own, in place of pyroute2): attributes
padded and read back, a request's acknowledgement and a refusal, on a real
NETLINK_ROUTE socket of this test's own (reads only: nothing is changed)."""

from __future__ import annotations

import asyncio
import errno
import socket
import struct

import pytest

from profiles.network_address import rtnetlink_io
from profiles.network_address.rtnetlink_io import (
    IFLA_ADDRESS,
    IFLA_MTU,
    NetlinkError,
    RtNetlink,
    attribute,
    attributes,
)


def test_attributes_are_padded_to_four_bytes_and_read_back():
    data = attribute(1, b"\x02\xdc\x00") + attribute(4, struct.pack("=I", 1500)) + \
        attribute(0x8003, b"x")  # NLA_F_NESTED set: the type without it
    assert len(attribute(1, b"\x02\xdc\x00")) == 8
    assert attributes(data) == {1: b"\x02\xdc\x00", 4: struct.pack("=I", 1500), 3: b"x"}


def test_a_truncated_attribute_is_not_read():
    data = attribute(1, b"abcd") + struct.pack("=HH", 200, 2) + b"short"
    assert attributes(data) == {1: b"abcd"}


def test_the_loopback_link_is_read_and_a_missing_link_refused():
    async def main():
        nl = RtNetlink()
        try:
            lo = await nl.link(socket.if_nametoindex("lo"))
            with pytest.raises(NetlinkError) as refused:
                await nl.link(2**31 - 1)
            return lo, refused.value
        finally:
            nl.close()

    lo, refused = asyncio.run(main())
    assert lo[IFLA_ADDRESS] == b"\0" * 6
    assert struct.unpack("=I", lo[IFLA_MTU])[0] >= 1280
    assert refused.errno == errno.ENODEV and isinstance(refused, OSError)


def test_route_messages_carry_no_destination_for_the_default_route():
    body = RtNetlink._route("0.0.0.0/0", 3, 16, 0, rtnetlink_io.RTN_UNICAST, "192.0.2.1")
    header = rtnetlink_io.RTMSG.unpack_from(body)
    assert header[1] == 0 and header[5] == 16  # dst_len 0, proto dhcp
    attrs = attributes(body[rtnetlink_io.RTMSG.size:])
    assert rtnetlink_io.RTA_DST not in attrs
    assert attrs[rtnetlink_io.RTA_GATEWAY] == socket.inet_aton("192.0.2.1")
    assert attrs[rtnetlink_io.RTA_OIF] == struct.pack("=I", 3)
    body = RtNetlink._route("198.51.100.0/24", 3, 16, 253, 1, None)
    assert attributes(body[rtnetlink_io.RTMSG.size:])[rtnetlink_io.RTA_DST] == \
        socket.inet_aton("198.51.100.0")
