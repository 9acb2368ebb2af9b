"""rtnetlink.py's messages without a socket, with pyroute2 as the oracle: each side
decodes the other's messages to the same fields; acknowledgements, refusals (with and
without the kernel's extended-ack text), multipart dumps and stale answers."""

from __future__ import annotations

import errno
import struct

import pytest
from pyroute2.netlink import nlmsgerr
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from profiles.network_address import rtnetlink as rt


def test_attributes_are_padded_to_four_bytes_and_read_back():
    data = rt.attribute(1, b"\x02\xdc\x00") + rt.attribute(4, struct.pack("=I", 1500)) + \
        rt.attribute(0x8003, b"x")  # NLA_F_NESTED set: the type without it
    assert len(rt.attribute(1, b"\x02\xdc\x00")) == 8
    assert rt.attributes(data) == {1: b"\x02\xdc\x00", 4: struct.pack("=I", 1500), 3: b"x"}


def test_a_truncated_attribute_or_message_is_not_read():
    data = rt.attribute(1, b"abcd") + struct.pack("=HH", 200, 2) + b"short"
    assert rt.attributes(data) == {1: b"abcd"}
    whole = rt.message(rt.RTM_GETLINK, 0, 1, rt.link_body(1))
    assert rt.split(whole + whole[:10]) == rt.split(whole)
    assert rt.split(struct.pack("=IHHII", 8, 2, 0, 1, 0)) == []  # a length below the header


@pytest.mark.parametrize("dst, gateway, scope, metric", [
    ("0.0.0.0/0", "192.0.2.1", 0, 1024),
    ("198.51.100.0/24", None, rt.RT_SCOPE_LINK, 1024),
    ("192.0.2.77/32", None, rt.RT_SCOPE_LINK, 0),
    ("203.0.113.0/25", "192.0.2.9", 0, 4294967295),
])
def test_our_route_requests_read_by_pyroute2(dst, gateway, scope, metric):
    data = rt.message(rt.RTM_NEWROUTE, rt.NLM_F_CREATE | rt.NLM_F_ACK, 7,
                      rt.route_body(dst, 3, 16, scope, rt.RTN_UNICAST, gateway, metric))
    m = rtmsg(data)
    m.decode()
    assert m["header"]["type"] == rt.RTM_NEWROUTE and m["header"]["sequence_number"] == 7
    assert m["header"]["flags"] == rt.NLM_F_REQUEST | rt.NLM_F_CREATE | rt.NLM_F_ACK
    assert not m["header"]["flags"] & rt.NLM_F_REPLACE  # never in place of another's route
    network, length = dst.split("/")
    assert (m["family"], m["dst_len"], m["table"], m["proto"], m["scope"], m["type"]) == \
        (2, int(length), 254, 16, scope, 1)
    assert m.get_attr("RTA_DST") == (network if int(length) else None)
    assert m.get_attr("RTA_GATEWAY") == gateway
    assert m.get_attr("RTA_OIF") == 3 and m.get_attr("RTA_PRIORITY") == metric


def test_pyroute2s_route_messages_read_by_ours():
    def kernel_says(**attrs) -> bytes:
        m = rtmsg()
        m["header"]["type"], m["header"]["sequence_number"] = rt.RTM_NEWROUTE, 9
        m["header"]["flags"] = rt.NLM_F_MULTI
        m.update(family=2, dst_len=attrs.pop("dst_len"), table=254, proto=attrs.pop("proto"),
                 scope=attrs.pop("scope", 0), type=1)
        m["attrs"] = list(attrs.items())
        m.encode()
        return bytes(m.data)

    data = kernel_says(dst_len=24, proto=16, RTA_DST="198.51.100.0", RTA_OIF=3,
                       RTA_GATEWAY="192.0.2.1", RTA_PRIORITY=1024, RTA_TABLE=254) + \
        kernel_says(dst_len=0, proto=4, RTA_OIF=2, RTA_GATEWAY="10.99.0.1") + \
        kernel_says(dst_len=24, proto=2, scope=rt.RT_SCOPE_LINK, RTA_DST="10.99.0.0",
                    RTA_OIF=2, RTA_TABLE=1000)
    routes = [rt.parse_route(m.body) for m in rt.split(data)]
    assert routes == [
        rt.Route("198.51.100.0/24", 254, 16, 0, 1, 3, "192.0.2.1", 1024),
        rt.Route("0.0.0.0/0", 254, 4, 0, 1, 2, "10.99.0.1", 0),
        rt.Route("10.99.0.0/24", 1000, 2, rt.RT_SCOPE_LINK, 1, 2, None, 0),
    ]
    assert rt.parse_route(b"\x0a" + bytes(11)) is None  # IPv6: not ours to read
    assert rt.parse_route(b"\x02") is None


def test_our_address_requests_read_by_pyroute2():
    body = rt.address_body(3, "192.0.2.57", 24, "192.0.2.255", valid=3601, preferred=3540)
    m = ifaddrmsg(rt.message(rt.RTM_NEWADDR, rt.NLM_F_CREATE | rt.NLM_F_REPLACE, 1, body))
    m.decode()
    assert (m["family"], m["prefixlen"], m["index"], m["scope"]) == (2, 24, 3, 0)
    assert m.get_attr("IFA_LOCAL") == m.get_attr("IFA_ADDRESS") == "192.0.2.57"
    assert m.get_attr("IFA_BROADCAST") == "192.0.2.255"
    assert m.get_attr("IFA_CACHEINFO")["ifa_valid"] == 3601
    assert m.get_attr("IFA_CACHEINFO")["ifa_preferred"] == 3540
    forever = ifaddrmsg(rt.message(rt.RTM_NEWADDR, 0, 2, rt.address_body(
        3, "169.254.7.7", 16, scope=rt.RT_SCOPE_LINK)))
    forever.decode()
    assert forever.get_attr("IFA_CACHEINFO") is None and forever["scope"] == 253


def error(seq: int, code: int, text: str | None = None, capped: bool = True,
          request: bytes = b"") -> bytes:
    """An NLMSG_ERROR as the kernel sends it, made by pyroute2."""
    m = nlmsgerr()
    m["header"]["type"], m["header"]["sequence_number"] = rt.NLMSG_ERROR, seq
    m["error"] = -code
    quoted = request[:16] if capped else request
    flags = (rt.NLM_F_CAPPED if capped else 0) | (rt.NLM_F_ACK_TLVS if text else 0)
    m["header"]["flags"] = flags
    if text:
        m["attrs"] = [("NLMSGERR_ATTR_MSG", text)]
    m.encode()
    data = bytes(m.data)
    # pyroute2 leaves out the quoted request: put it between the error code and the TLVs.
    body = data[16:20] + quoted + b"\0" * (-len(quoted) % 4) + data[20:]
    return struct.pack("=IHHII", 16 + len(body), rt.NLMSG_ERROR, flags, seq, 0) + body


def test_an_acknowledgement_ends_the_exchange_with_the_answers_before_it():
    link = rt.message(rt.RTM_NEWLINK, 0, 5, rt.link_body(2) + rt.attribute(rt.IFLA_MTU,
                                                                           b"\xdc\x05\0\0"))
    exchange = rt.Exchange(5)
    assert exchange.feed(link) is False
    assert exchange.feed(error(5, 0)) is True
    assert [m.kind for m in exchange.answers] == [rt.RTM_NEWLINK]


def test_a_refusal_carries_the_kernels_text_capped_or_not():
    request = rt.message(rt.RTM_NEWROUTE, rt.NLM_F_CREATE | rt.NLM_F_ACK, 3,
                         rt.route_body("0.0.0.0/0", 3, 16, gateway="203.0.113.1", metric=1024))
    for capped in (True, False):
        exchange = rt.Exchange(3)
        with pytest.raises(rt.NetlinkError) as refused:
            exchange.feed(error(3, errno.ENETUNREACH, "Nexthop has invalid gateway",
                                capped=capped, request=request))
        assert refused.value.errno == errno.ENETUNREACH and isinstance(refused.value, OSError)
        assert refused.value.strerror == "ENETUNREACH: Nexthop has invalid gateway"
    with pytest.raises(rt.NetlinkError) as plain:  # an older kernel: no text
        rt.Exchange(4).feed(error(4, errno.EEXIST, request=request))
    assert plain.value.errno == errno.EEXIST and plain.value.strerror == "EEXIST"
    with pytest.raises(rt.NetlinkError):  # too short to say which error
        rt.Exchange(1).feed(struct.pack("=IHHII", 18, rt.NLMSG_ERROR, 0, 1, 0) + b"\0\0")


def test_a_dump_runs_over_datagrams_to_done_and_stale_answers_are_skipped():
    def route(seq: int, net: str) -> bytes:
        return rt.message(rt.RTM_NEWROUTE, rt.NLM_F_MULTI, seq,
                          rt.route_body(net, 2, 16, metric=1024))

    done = struct.pack("=IHHII", 20, rt.NLMSG_DONE, rt.NLM_F_MULTI, 8, 0) + bytes(4)
    exchange = rt.Exchange(8)
    # An answer to request 7 (it timed out) arrives first: skipped, counted.
    assert exchange.feed(error(7, 0) + route(8, "198.51.100.0/24")) is False
    assert exchange.feed(route(8, "203.0.113.0/24")) is False
    assert exchange.feed(done) is True
    assert exchange.stale == 1
    assert [rt.parse_route(m.body).dst for m in exchange.answers] == [
        "198.51.100.0/24", "203.0.113.0/24"]


def test_setting_a_link_up_changes_only_iff_up():
    body = rt.up_body(7)
    family, _kind, index, flags, change = rt.IFINFOMSG.unpack(body)
    assert (family, index, flags, change) == (0, 7, rt.IFF_UP, rt.IFF_UP)
    assert rt.link_flags(rt.IFINFOMSG.pack(0, 1, 7, 0x1003, 0)) & rt.IFF_UP
