"""DHCP option values (RFC 2132 and friends): typed decoding, validation, client encoding.

Every decoder takes the raw (already RFC 3396-concatenated) value and returns a typed
value or raises ParseError. Strings a server sends — host name, domain, search list,
time zone — are validated before anything uses them (udhcpc CVE-2011-2716 passed a
server's host name with shell metacharacters straight to a script).
"""

from __future__ import annotations

import ipaddress
import re
import socket
import struct

from profiles.errors import ParseError
from profiles.network_address import dnsname

SUBNET_MASK = 1
TIME_OFFSET = 2
ROUTER = 3
DNS_SERVERS = 6
HOST_NAME = 12
DOMAIN_NAME = 15
INTERFACE_MTU = 26
BROADCAST_ADDRESS = 28
STATIC_ROUTES = 33
NTP_SERVERS = 42
REQUESTED_ADDRESS = 50
LEASE_TIME = 51
MESSAGE_TYPE = 53
SERVER_ID = 54
PARAMETER_REQUEST_LIST = 55
MESSAGE = 56
MAX_MESSAGE_SIZE = 57
RENEWAL_TIME = 58
REBINDING_TIME = 59
CLIENT_ID = 61
CLIENT_FQDN = 81
TZ_POSIX = 100  # RFC 4833 PCode
TZ_NAME = 101  # RFC 4833 TCode
AUTO_CONFIGURE = 116  # RFC 2563
DOMAIN_SEARCH = 119  # RFC 3397
CLASSLESS_ROUTES = 121  # RFC 3442

# PS3.15 Table F.1-2 plus what lease maintenance and DDNS need, in the order we ask.
REQUESTED = (SUBNET_MASK, TIME_OFFSET, ROUTER, DNS_SERVERS, HOST_NAME, DOMAIN_NAME,
             INTERFACE_MTU, BROADCAST_ADDRESS, STATIC_ROUTES, NTP_SERVERS, LEASE_TIME,
             SERVER_ID, RENEWAL_TIME, REBINDING_TIME, CLIENT_FQDN, TZ_POSIX, TZ_NAME,
             AUTO_CONFIGURE, DOMAIN_SEARCH, CLASSLESS_ROUTES)

_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")
_TZ_NAME = re.compile(r"[A-Za-z0-9_+-]+(/[A-Za-z0-9_+-]+)*")
_TZ_POSIX = re.compile(r"[A-Za-z0-9<>+,.:/-]+")


def addresses(value: bytes, code: int) -> list[str]:
    """A list of IPv4 addresses (options 3, 6, 42, ...): a non-empty multiple of 4 bytes."""
    if not value or len(value) % 4:
        raise ParseError(f"option {code}: {len(value)} bytes is not a list of addresses")
    return [socket.inet_ntoa(value[i: i + 4]) for i in range(0, len(value), 4)]


def address(value: bytes, code: int) -> str:
    if len(value) != 4:
        raise ParseError(f"option {code}: an address needs 4 bytes, got {len(value)}")
    return socket.inet_ntoa(value)


def u32(value: bytes, code: int) -> int:
    if len(value) != 4:
        raise ParseError(f"option {code}: needs 4 bytes, got {len(value)}")
    return struct.unpack("!I", value)[0]


def i32(value: bytes, code: int) -> int:
    if len(value) != 4:
        raise ParseError(f"option {code}: needs 4 bytes, got {len(value)}")
    return struct.unpack("!i", value)[0]


def u16(value: bytes, code: int) -> int:
    if len(value) != 2:
        raise ParseError(f"option {code}: needs 2 bytes, got {len(value)}")
    return struct.unpack("!H", value)[0]


def u8(value: bytes, code: int) -> int:
    if len(value) != 1:
        raise ParseError(f"option {code}: needs 1 byte, got {len(value)}")
    return value[0]


def text(value: bytes, code: int) -> str:
    """NVT ASCII (RFC 2132 2): trailing NULs dropped; no other control characters."""
    value = value.rstrip(b"\x00")
    if not value or any(b < 0x20 or b > 0x7E for b in value):
        raise ParseError(f"option {code}: not printable ASCII: {value[:40]!r}")
    return value.decode("ascii")


def hostname(value: bytes, code: int) -> str:
    """RFC 1123 host name, bare label or qualified; anything else is refused."""
    name = text(value, code).rstrip(".")
    if len(name) > 253 or not all(_LABEL.fullmatch(label) for label in name.split(".")):
        raise ParseError(f"option {code}: not an RFC 1123 host name: {name[:64]!r}")
    return name


def tz_name(value: bytes, code: int = TZ_NAME) -> str:
    """A tz database name (Europe/Berlin): no absolute path, no '..', no odd characters."""
    name = text(value, code)
    if len(name) > 64 or not _TZ_NAME.fullmatch(name):
        raise ParseError(f"option {code}: not a tz database name: {name[:64]!r}")
    return name


def tz_posix(value: bytes, code: int = TZ_POSIX) -> str:
    """A POSIX TZ string (CET-1CEST,M3.5.0,M10.5.0/3), fully validated (profiles.posix_tz:
    offsets, months, weeks, days in range); the ':file' form is refused."""
    tz = text(value, code)
    if len(tz) > 128 or tz.startswith(":") or ".." in tz or not _TZ_POSIX.fullmatch(tz):
        raise ParseError(f"option {code}: not a POSIX TZ string: {tz[:64]!r}")
    from profiles import posix_tz  # only for option 100: its rules cost ~3 ms to import

    try:
        posix_tz.parse(tz)
    except ValueError as exc:
        raise ParseError(f"option {code}: {tz[:64]!r}: {exc}") from None
    return tz


def domain_search(value: bytes, code: int = DOMAIN_SEARCH) -> list[str]:
    """RFC 3397: RFC 1035 names, compression pointers relative to the option's start."""
    return [hostname(name.encode("ascii"), code) for name in dnsname.read_names(value) if name]


def classless_routes(value: bytes, code: int = CLASSLESS_ROUTES) -> list[tuple[str, str]]:
    """RFC 3442: (destination/prefix, router) pairs; the destination has width/8 octets.
    An empty option is malformed (RFC 3442: at least one route, 5 octets)."""
    if not value:
        raise ParseError(f"option {code}: empty (at least one route is needed)")
    routes, pos = [], 0
    while pos < len(value):
        width = value[pos]
        if width > 32:
            raise ParseError(f"option {code}: prefix length {width} > 32", offset=pos)
        significant = (width + 7) // 8
        if pos + 1 + significant + 4 > len(value):
            raise ParseError(f"option {code}: route at {pos} overruns the option", offset=pos)
        dest = value[pos + 1: pos + 1 + significant].ljust(4, b"\x00")
        router = value[pos + 1 + significant: pos + 5 + significant]
        try:
            network = ipaddress.IPv4Network((socket.inet_ntoa(dest), width))
        except ValueError:
            raise ParseError(f"option {code}: host bits set in route at {pos}",
                             offset=pos) from None
        routes.append((str(network), socket.inet_ntoa(router)))
        pos += 5 + significant
    return routes


def static_routes(value: bytes, code: int = STATIC_ROUTES) -> list[tuple[str, str]]:
    """RFC 2132 5.8: (destination host, router) pairs; classful, so /32 host routes here."""
    if not value or len(value) % 8:
        raise ParseError(f"option {code}: {len(value)} bytes is not a list of address pairs")
    return [(socket.inet_ntoa(value[i: i + 4]) + "/32", socket.inet_ntoa(value[i + 4: i + 8]))
            for i in range(0, len(value), 8)]


def client_fqdn(value: bytes, code: int = CLIENT_FQDN) -> tuple[int, str]:
    """RFC 4702: (flags, name). The E flag says the name is in DNS wire format."""
    if len(value) < 3:
        raise ParseError(f"option {code}: needs at least 3 bytes, got {len(value)}")
    flags, raw = value[0], value[3:]
    if not raw:
        return flags, ""
    if flags & 0x04:  # E: wire format; a partial name has no root label (RFC 4702 2.3.1)
        wire = raw if raw.endswith(b"\x00") else raw + b"\x00"
        name, used = dnsname.read_name(wire, 0)
        if used != len(wire):
            raise ParseError(f"option {code}: {len(wire) - used} bytes after the name")
        raw = name.encode("ascii")
    return flags, hostname(raw, code)


# -- what the client sends ---------------------------------------------------------------

def encode_client_fqdn(fqdn: str) -> bytes:
    """RFC 4702 option 81 with S=1 (ask the server to update A and PTR), E=1 (wire
    format), rcodes 0 (RFC 4702 2.2: the client sets them to 0). A bare label is a
    partial name, sent without the root label (RFC 4702 2.3.1)."""
    return bytes((0x05, 0, 0)) + dnsname.to_wire(fqdn, absolute="." in fqdn.rstrip("."))


def encode_client_id(mac: bytes, htype: int = 1) -> bytes:
    return bytes((htype,)) + mac
