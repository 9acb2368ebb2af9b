"""Lease from an ACK: Table F.1-2 defaults, RFC 3442 precedence, hostile strings refused."""

from __future__ import annotations

import json

import pytest

from profiles.errors import ParseError
from profiles.network_address import options as o
from profiles.network_address.codec import BOOTREPLY, DhcpMessage
from profiles.network_address.lease import Lease


def ack(**opts: bytes) -> DhcpMessage:
    base = {o.MESSAGE_TYPE: b"\x05", o.SERVER_ID: bytes((192, 0, 2, 1)),
            o.LEASE_TIME: (3600).to_bytes(4, "big")}
    base.update({int(k[1:]): v for k, v in opts.items()})
    return DhcpMessage(op=BOOTREPLY, xid=1, yiaddr="192.0.2.57", options=base)


def lease(requested="ct01", offset=7200, **opts: bytes) -> Lease:
    return Lease.from_ack(ack(**opts), now=100.0, wall=1_800_000_000.0,
                          requested_hostname=requested, configured_offset=offset)


def test_absent_options_get_table_f12_defaults():
    got = lease()
    assert (got.prefix, got.broadcast) == (24, "192.0.2.255")  # derived (class C)
    assert got.router == () and got.dns == () and got.ntp == () and got.routes == ()
    assert got.hostname == "ct01" and got.domain is None and got.fqdn == "ct01"
    assert got.time_offset == 7200 and got.mtu is None and got.auto_configure is None
    assert (got.t1, got.t2) == (1800.0, 3150.0) and got.rejected == ()


def test_options_decoded():
    got = lease(_1=bytes((255, 255, 255, 128)), _3=bytes((192, 0, 2, 1)),
                _6=bytes((192, 0, 2, 1, 192, 0, 2, 2)), _12=b"ct01-assigned",
                _15=b"hospital.test", _26=(1400).to_bytes(2, "big"), _2=(-3600).to_bytes(
                    4, "big", signed=True), _42=bytes((192, 0, 2, 11)),
                _100=b"CET-1CEST,M3.5.0,M10.5.0/3", _101=b"Europe/Berlin", _116=b"\x01",
                _119=b"\x08hospital\x04test\x00\x03lab\xc0\x00")
    assert (got.prefix, got.broadcast) == (25, "192.0.2.127")
    assert got.router == ("192.0.2.1",) and got.dns == ("192.0.2.1", "192.0.2.2")
    assert got.hostname == "ct01-assigned" and got.fqdn == "ct01-assigned.hospital.test"
    assert got.mtu == 1400 and got.time_offset == -3600 and got.ntp == ("192.0.2.11",)
    assert got.tz_posix == "CET-1CEST,M3.5.0,M10.5.0/3" and got.tz_name == "Europe/Berlin"
    assert got.search == ("hospital.test", "lab.hospital.test") and got.auto_configure == 1


def test_a_qualified_option_12_is_split_into_hostname_and_fqdn():
    got = lease(_12=b"dev2-assigned.hospital.test", _15=b"hospital.test")
    assert (got.hostname, got.fqdn) == ("dev2-assigned", "dev2-assigned.hospital.test")
    got = lease(requested="ct01.hospital.test")
    assert (got.hostname, got.fqdn) == ("ct01", "ct01.hospital.test")


def test_classless_routes_override_router_and_static_routes():
    got = lease(_3=bytes((192, 0, 2, 254)), _33=bytes((10, 0, 0, 1, 192, 0, 2, 254)),
                _121=bytes((24, 198, 51, 100, 192, 0, 2, 1, 0, 192, 0, 2, 1)))
    assert got.router == ("192.0.2.1",)
    assert got.routes == (("198.51.100.0/24", "192.0.2.1"),)


def test_static_routes_used_without_121():
    got = lease(_33=bytes((203, 0, 113, 5, 192, 0, 2, 254)))
    assert got.routes == (("203.0.113.5/32", "192.0.2.254"),)


@pytest.mark.parametrize("code,value", [
    (12, b"ct01; reboot"),          # CVE-2011-2716 style shell metacharacters
    (12, b"ct01\n"),
    (15, b"../../etc"),
    (101, b"../../../etc/passwd"),
    (101, b"/etc/localtime"),
    (100, b":/etc/localtime"),
    (26, (40).to_bytes(2, "big")),   # below the minimum MTU
    (3, bytes((192, 0, 2))),          # not a multiple of 4
    (1, bytes((255, 0, 255, 0))),     # not a contiguous mask
    (121, bytes((33, 1, 2, 3, 4, 5, 6, 7, 8))),
    (119, b"\x08hospital\xc0\x05"),  # compression loop
    (2, (100000).to_bytes(4, "big")),
    # issue 10: values that decode but cannot be used
    (100, b"CET-1CEST,M13.5.0,M10.5.0/3"),   # month 13
    (100, b"CET-1CEST,M3.6.0,M10.5.0/3"),    # week 6
    (100, b"CET-1CEST,M3.5.7,M10.5.0/3"),    # day 7
    (100, b"XXX-25"),                        # an offset of more than a day
    (100, b"CET-1:75"),                      # 75 minutes
    (1, bytes(4)),                           # netmask 0.0.0.0
    (3, bytes(4)),                           # router 0.0.0.0
    (3, b"\xff" * 4),                        # router 255.255.255.255
    (3, bytes((192, 0, 2, 57))),             # the leased address itself
    (6, bytes(4)),                           # DNS 0.0.0.0
    (6, bytes((127, 0, 0, 1))),              # DNS on loopback
    (42, bytes((224, 0, 1, 1))),             # a multicast NTP server
    (28, bytes((10, 0, 0, 255))),            # a broadcast outside the subnet
    (28, bytes((192, 0, 2, 57))),            # the leased address as broadcast
    (121, bytes((0, 255, 255, 255, 255))),   # a default route via broadcast
    (33, bytes((10, 0, 0, 1, 127, 0, 0, 1))),  # a static route via loopback
    (51, (1).to_bytes(4, "big")),            # a 1-s lease
])
def test_bad_values_cost_only_their_option(code, value):
    got = lease(**{f"_{code}": value})
    assert code in got.rejected
    assert got.address == "192.0.2.57" and got.hostname in ("ct01",)
    (note,) = [n for n in got.notes if n.startswith(f"option {code}:")]
    assert all(" " <= c <= "~" for c in note)  # sanitized for a log line


def test_refused_values_fall_back_to_defaults_and_keep_the_good_ones():
    got = lease(_1=bytes(4), _28=bytes((10, 0, 0, 255)), _51=(1).to_bytes(4, "big"),
                _6=bytes((127, 0, 0, 1, 192, 0, 2, 1)), _42=bytes((224, 0, 1, 1, 192, 0, 2, 11)))
    assert (got.prefix, got.broadcast) == (24, "192.0.2.255")  # classful, derived
    assert got.lease_time == 20 and got.t1 == 10.0  # dhcpcd's floor
    assert got.dns == ("192.0.2.1",) and got.ntp == ("192.0.2.11",)
    # RFC 3442: 0.0.0.0 as a router means on-link, and is kept for a non-default route
    got = lease(_121=bytes((24, 198, 51, 100, 0, 0, 0, 0)))
    assert got.routes == (("198.51.100.0/24", "0.0.0.0"),) and got.rejected == ()


def test_an_off_link_router_is_kept_for_the_driver_to_reach():
    got = lease(_3=bytes((198, 51, 100, 99)))
    assert got.router == ("198.51.100.99",) and got.rejected == ()


def test_client_fqdn_from_the_server_is_the_assigned_name():
    wire = b"\x05\x00\x00\x04ct01\x08hospital\x04test\x00"
    got = lease(_81=wire)
    assert got.fqdn == "ct01.hospital.test" and got.hostname == "ct01"
    assert o.client_fqdn(b"\x01\x00\x00ws.hospital.test") == (1, "ws.hospital.test")
    with pytest.raises(ParseError):
        o.client_fqdn(b"\x00")


def test_fqdn_encoding_partial_and_full_names():
    assert o.encode_client_fqdn("ct01") == b"\x05\x00\x00\x04ct01"
    assert o.encode_client_fqdn("ct01.hospital.test") == \
        b"\x05\x00\x00\x04ct01\x08hospital\x04test\x00"


def test_record_round_trip_and_damage():
    got = lease(_121=bytes((24, 198, 51, 100, 192, 0, 2, 1)))
    assert Lease.from_record(got.to_record()) == got
    record = got.to_record()
    record["address"] = "not an address"
    with pytest.raises(ValueError):
        Lease.from_record(record)


@pytest.mark.parametrize("key,value", [
    ("options", []), ("lease_time", "3600"), ("prefix", True), ("prefix", 33),
    ("router", "192.0.2.1"), ("router", [["x"]]), ("routes", [["10.0.0.1/8", "x"]]),
    ("hostname", "a b"), ("tz_posix", "CET-1CEST,M13.5.0,M10.5.0/3"), ("t1", float("nan")),
    ("bound_at", float("inf")), ("mtu", 9), ("options", {"x": "00"}), ("rejected", [[1]]),
    ("dns", [[[[[]]]]]), ("surprise", 1),
])
def test_a_record_of_the_wrong_shape_is_refused(key, value):
    record = json.loads(json.dumps(lease().to_record()))  # as read from the file
    record[key] = value
    with pytest.raises(ValueError):
        Lease.from_record(record)
    del record[key]
    if key in ("lease_time", "prefix", "t1", "bound_at"):
        with pytest.raises(ValueError):
            Lease.from_record(record)  # a missing required field too


def test_json_has_the_contract_fields():
    got = lease(_121=bytes((24, 198, 51, 100, 192, 0, 2, 1, 0, 192, 0, 2, 1)))
    data = got.to_json("bound", "eth0", now=1000.0)
    assert set(data) >= {"state", "interface", "address", "prefix", "broadcast", "router",
                         "routes", "dns", "domain", "search", "hostname", "fqdn", "ntp",
                         "time_offset", "tz_posix", "tz_name", "mtu", "lease_time", "t1", "t2",
                         "server_id", "expires_at", "auto_configure", "options"}
    assert data["routes"] == [{"dst": "198.51.100.0/24", "via": "192.0.2.1"}]
    assert data["expires_at"] == 1_800_003_600.0 and data["lease_expires_in"] == 2700.0
    assert data["options"]["51"] == "00000e10"


@pytest.mark.parametrize("data,names", [
    (b"\x08hospital\x04test\x00", ["hospital.test"]),
    (b"\x08hospital\x04test\x00\x03lab\xc0\x00\x03mri\xc0\x0f", [
        "hospital.test", "lab.hospital.test", "mri.lab.hospital.test"]),
])
def test_domain_search_compression(data, names):
    assert o.domain_search(data) == names


@pytest.mark.parametrize("data", [
    b"\xc0\x00",                       # points at itself
    b"\x03abc\xc0\x05",                # points forward
    b"\x03ab",                         # label past the end
    b"\x40abc\x00",                    # reserved label type
    b"\x3f" + b"a" * 63 + b"\x3f" + b"a" * 63 + b"\x3f" + b"a" * 63 + b"\x3f" + b"a" * 63
    + b"\x00",                         # 257 bytes
])
def test_bad_names_raise_parse_error(data):
    with pytest.raises(ParseError):
        o.domain_search(data)


def test_the_route_plan_reaches_an_off_link_gateway_first_and_only_once():
    from profiles.network_address.interface_io import RT_SCOPE_LINK, route_plan

    got = lease(_121=bytes((24, 198, 51, 100, 198, 51, 100, 99, 24, 203, 0, 113, 0, 0, 0, 0,
                            0, 198, 51, 100, 99)))
    assert route_plan(got) == [
        ("host route 198.51.100.99", {"dst": "198.51.100.99/32", "scope": RT_SCOPE_LINK}),
        ("route 198.51.100.0/24", {"dst": "198.51.100.0/24", "gateway": "198.51.100.99"}),
        ("route 203.0.113.0/24", {"dst": "203.0.113.0/24", "scope": RT_SCOPE_LINK}),
        ("default route", {"dst": "0.0.0.0/0", "gateway": "198.51.100.99"})]
    on_link = lease(_3=bytes((192, 0, 2, 1)))
    assert route_plan(on_link) == [("default route", {"dst": "0.0.0.0/0",
                                                      "gateway": "192.0.2.1"})]


def test_a_server_named_many_times_is_kept_once_in_the_order_first_named():
    """Forty copies of one DNS server (and repeats among routers and NTP servers) are
    one entry each, the order kept: resolv.conf has three nameserver lines at most."""
    one, two = bytes((192, 0, 2, 53)), bytes((192, 0, 2, 54))
    got = lease(_6=one * 40 + two + one, _3=two + two, _42=two + one + two)
    assert got.dns == ("192.0.2.53", "192.0.2.54")
    assert got.router == ("192.0.2.54",) and got.ntp == ("192.0.2.54", "192.0.2.53")
    assert got.rejected == ()


def test_a_lease_time_of_zero_is_raised_to_the_floor_and_named():
    got = lease(_51=(0).to_bytes(4, "big"))
    assert got.lease_time == 20 and got.rejected == (51,)
    (note,) = got.notes
    assert note == "option 51: 0 s is below the 20 s floor: bound for 20 s"


def test_an_empty_or_malformed_option_121_is_left_out_and_3_and_33_stand():
    """dnsmasq sends `dhcp-option=121` with no value as a zero-length option: malformed
    (RFC 3442: at least one route), so it is refused and the router (3) and static routes
    (33) are used — it had wiped the default route."""
    got = lease(_121=b"", _3=bytes((192, 0, 2, 1)),
                _33=bytes((198, 51, 100, 7, 192, 0, 2, 1)))
    assert got.router == ("192.0.2.1",)
    assert got.routes == (("198.51.100.7/32", "192.0.2.1"),) and got.rejected == (121,)
    got = lease(_121=bytes((33, 1, 2, 3, 4, 5, 6, 7, 8)), _3=bytes((192, 0, 2, 1)))
    assert got.router == ("192.0.2.1",) and got.rejected == (121,)
