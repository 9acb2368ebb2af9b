"""A DHCP lease: what the server gave, decoded, validated and completed with PS3.15
Table F.1-2's defaults, plus when it was bound (CLOCK_BOOTTIME and the wall clock).

`Lease.from_ack()` never raises for a bad option: an option that does not decode or
does not validate is left out (its default applies) and named in `rejected`, with a
sanitized reason in `notes`, so one malformed option from a server costs that option,
not the lease. Options without which there is no lease (server id, lease time) are
checked by the client before binding.

The validation boundary of Annex F (limits from the RFCs, dhcpcd and systemd-networkd):
- subnet mask (1): contiguous, prefix 1-32; else the classful default;
- broadcast (28): inside the subnet and not the leased address; else derived;
- routers (3), static routes (33), classless routes (121): a gateway must be a unicast
  address other than the leased one (121 also allows 0.0.0.0, on-link); bad entries are
  dropped, the rest kept; an off-link gateway is allowed (the driver adds an on-link
  host route first, as networkd and dhcpcd do);
- routers (3), DNS (6), NTP (42) servers: unicast, not loopback, not the leased address;
  a server named twice is kept once, in the order first named;
- MTU (26): 68-65535 (the driver also checks the link's maximum);
- lease time (51): at least MIN_LEASE s (dhcpcd's floor), so a 1-s lease cannot make the
  client renew and run hooks constantly; 0 is raised to the floor too (a device bound for
  20 s, and warned about, rather than no address at all);
- time offset (2): within a day; POSIX TZ (100): fully validated (profiles.posix_tz);
  tz name (101): a tz database name, no path; names (12, 15, 81, 119): RFC 1123.
"""

from __future__ import annotations

import ipaddress
from dataclasses import asdict, dataclass, field
from typing import Any

from profiles.errors import ParseError
from profiles.network_address import options as o
from profiles.network_address.codec import DhcpMessage

INFINITE = 0xFFFFFFFF
MIN_LEASE = 20  # s: dhcpcd's floor ("minimum lease is 20 seconds")


@dataclass(frozen=True, slots=True)
class Lease:
    """A bound DHCP lease: the address and every option kept, validated."""

    address: str
    prefix: int
    broadcast: str
    server_id: str
    lease_time: int  # seconds, relative to bound_at (INFINITE: never expires)
    t1: float
    t2: float
    bound_at: float  # CLOCK_BOOTTIME seconds when the ACK arrived
    bound_wall: float  # wall-clock seconds at the same moment (informational)
    router: tuple[str, ...] = ()
    routes: tuple[tuple[str, str], ...] = ()  # (destination/prefix, via)
    dns: tuple[str, ...] = ()
    domain: str | None = None
    search: tuple[str, ...] = ()
    hostname: str | None = None
    fqdn: str | None = None
    ntp: tuple[str, ...] = ()
    time_offset: int | None = None
    tz_posix: str | None = None
    tz_name: str | None = None
    mtu: int | None = None
    auto_configure: int | None = None
    options: dict[int, bytes] = field(default_factory=dict)
    rejected: tuple[int, ...] = ()
    notes: tuple[str, ...] = ()  # why each rejected option was refused (sanitized)

    # -- time ---------------------------------------------------------------------------

    @property
    def expires_at(self) -> float:
        """CLOCK_BOOTTIME of expiry (inf for an infinite lease)."""
        return float("inf") if self.lease_time == INFINITE else self.bound_at + self.lease_time

    def remaining(self, now: float) -> float:
        return max(0.0, self.expires_at - now)

    # -- building -----------------------------------------------------------------------

    @classmethod
    def from_ack(cls, ack: DhcpMessage, now: float, wall: float,
                 requested_hostname: str | None = None,
                 configured_offset: int | None = None) -> Lease:
        """Decode an ACK's options (their absence or damage falls back to Table F.1-2)."""
        opts = ack.options
        rejected: list[int] = []
        notes: list[str] = []

        def refuse(code: int, why: str) -> None:
            rejected.append(code)
            notes.append(f"option {code}: {sanitize(why)}")

        def get(code: int, decode):
            if code not in opts:
                return None
            try:
                return decode(opts[code], code)
            except ParseError as exc:
                refuse(code, str(exc).removeprefix(f"option {code}: "))
                return None

        address = ack.yiaddr
        mask = get(o.SUBNET_MASK, o.address)
        prefix = _prefix(mask) if mask else None
        if prefix is None:
            if mask:
                refuse(o.SUBNET_MASK, f"{mask} is not a usable netmask")
            prefix = _classful_prefix(address)  # Table F.1-2: derived from network value
        network = ipaddress.IPv4Network((address, prefix), strict=False)
        broadcast = get(o.BROADCAST_ADDRESS, o.address)
        if broadcast is not None and (ipaddress.IPv4Address(broadcast) not in network
                                      or broadcast == address):
            refuse(o.BROADCAST_ADDRESS, f"{broadcast} is not a broadcast address of "
                                        f"{network}")
            broadcast = None
        broadcast = broadcast or str(network.broadcast_address)

        def servers(code: int, allow_any: bool = False) -> tuple[str, ...]:
            """A list option's usable addresses; the rest dropped, the option named."""
            values = get(code, o.addresses) or []
            good = [a for a in values if _unicast(a, address) or (allow_any and a == ANY)]
            if len(good) != len(values):
                refuse(code, "not a usable server: " + ", ".join(
                    a for a in values if a not in good))
            return tuple(dict.fromkeys(good))  # a server named twice is asked once

        def gateways(code: int, pairs: list[tuple[str, str]] | None
                     ) -> list[tuple[str, str]]:
            pairs = pairs or []
            good = [(dst, via) for dst, via in pairs
                    if _unicast(via, address) or (code == o.CLASSLESS_ROUTES and via == ANY)]
            if len(good) != len(pairs):
                refuse(code, "not a usable gateway: " + ", ".join(
                    via for _, via in pairs if (_, via) not in good))
            return good

        lease_time = get(o.LEASE_TIME, o.u32)
        if lease_time is not None and lease_time < MIN_LEASE:  # 0 included, as dhcpcd
            refuse(o.LEASE_TIME, f"{lease_time} s is below the {MIN_LEASE} s floor: "
                                 f"bound for {MIN_LEASE} s")
            lease_time = MIN_LEASE
        lease_time = lease_time or 0  # absent or undecodable: the client refuses the ACK
        t1, t2 = sanitize_timers(lease_time, get(o.RENEWAL_TIME, o.u32),
                                 get(o.REBINDING_TIME, o.u32))

        decoded = get(o.CLASSLESS_ROUTES, o.classless_routes)
        if decoded is not None:  # a malformed (or empty) 121 is refused: 3 and 33 stand
            classless = gateways(o.CLASSLESS_ROUTES, decoded)
            # RFC 3442: with option 121 present, options 3 and 33 are ignored.
            routers = tuple(via for dst, via in classless if dst == "0.0.0.0/0" and via != ANY)
            routes = tuple((dst, via) for dst, via in classless if dst != "0.0.0.0/0")
        else:
            routers = servers(o.ROUTER)
            routes = tuple(gateways(o.STATIC_ROUTES, get(o.STATIC_ROUTES, o.static_routes)))

        host = get(o.HOST_NAME, o.hostname)
        domain = get(o.DOMAIN_NAME, o.hostname)
        fqdn_option = get(o.CLIENT_FQDN, o.client_fqdn)
        fqdn = fqdn_option[1] if fqdn_option and fqdn_option[1] else None
        if host and "." in host:  # Kea sends option 12 qualified, dnsmasq bare
            fqdn = fqdn or host
        name = host or fqdn or requested_hostname
        if name and not fqdn:
            fqdn = name if "." in name or not domain else f"{name}.{domain}"
        name = name.split(".")[0] if name else None
        mtu = get(o.INTERFACE_MTU, o.u16)
        if mtu is not None and mtu < 68:  # RFC 2132 5.1: the minimum legal MTU
            refuse(o.INTERFACE_MTU, f"{mtu} is below the minimum MTU of 68")
            mtu = None
        auto = get(o.AUTO_CONFIGURE, o.u8)
        offset = get(o.TIME_OFFSET, o.i32)
        if offset is not None and not -86400 < offset < 86400:
            refuse(o.TIME_OFFSET, f"{offset} s is not within a day of UTC")
            offset = None
        return cls(
            address=address, prefix=prefix, broadcast=broadcast,
            server_id=get(o.SERVER_ID, o.address) or ack.siaddr,
            lease_time=lease_time, t1=t1, t2=t2, bound_at=now, bound_wall=wall,
            router=routers, routes=routes,
            dns=servers(o.DNS_SERVERS),
            domain=domain,
            search=tuple(get(o.DOMAIN_SEARCH, o.domain_search) or ()),
            hostname=name, fqdn=fqdn,
            ntp=servers(o.NTP_SERVERS),
            time_offset=offset if offset is not None else configured_offset,
            tz_posix=get(o.TZ_POSIX, o.tz_posix),
            tz_name=get(o.TZ_NAME, o.tz_name),
            mtu=mtu, auto_configure=auto,
            options=dict(opts), rejected=tuple(sorted(set(rejected))), notes=tuple(notes),
        )

    # -- JSON (`dhcp --json`, dicom-agent(8)) ------------------------------------------------

    def to_json(self, state: str, interface: str, now: float) -> dict[str, Any]:
        wall_expiry = (None if self.lease_time == INFINITE
                       else round(self.bound_wall + self.lease_time, 1))
        return {
            "state": state, "interface": interface, "address": self.address,
            "prefix": self.prefix, "broadcast": self.broadcast, "router": list(self.router),
            "routes": [{"dst": dst, "via": via} for dst, via in self.routes],
            "dns": list(self.dns), "domain": self.domain, "search": list(self.search),
            "hostname": self.hostname, "fqdn": self.fqdn, "ntp": list(self.ntp),
            "time_offset": self.time_offset, "tz_posix": self.tz_posix,
            "tz_name": self.tz_name, "mtu": self.mtu, "lease_time": self.lease_time,
            "t1": self.t1, "t2": self.t2, "server_id": self.server_id,
            "expires_at": wall_expiry, "lease_expires_in": round(self.remaining(now), 1),
            "auto_configure": self.auto_configure,
            "options": {str(code): value.hex() for code, value in self.options.items()},
        }

    # -- persistence ---------------------------------------------------------------------

    def to_record(self) -> dict[str, Any]:
        record = asdict(self)
        record["options"] = {str(k): v.hex() for k, v in self.options.items()}
        return record

    @classmethod
    def from_record(cls, record: Any) -> Lease:
        """Inverse of to_record, checked for shape as well as syntax (a state file is an
        input too): ValueError for anything a saved lease cannot be."""
        if not isinstance(record, dict):
            raise ValueError("a lease record is an object")
        unknown = set(record) - _RECORD_FIELDS
        if unknown:
            raise ValueError(f"unknown fields {sorted(unknown)[:5]}")
        try:
            data = {key: _FIELD_CHECKS[key](record[key]) for key in record}
            return cls(**data)
        except KeyError as exc:
            raise ValueError(f"field {exc} missing") from None
        except TypeError as exc:
            raise ValueError(str(exc)) from None

def sanitize_timers(lease_time: int, t1: int | None, t2: int | None) -> tuple[float, float]:
    """RFC 2131 4.4.5 defaults (0.5 and 0.875 of the lease), and 0 < T1 < T2 < lease
    enforced as systemd-networkd does: a server's impossible values are replaced."""
    if lease_time == INFINITE:
        return float(INFINITE), float(INFINITE)
    # Below half the lease floor a server's T1/T2 would have the client renew (and run
    # hooks) every few seconds: replaced like impossible ones.
    floor = MIN_LEASE / 2
    t2f = float(t2) if t2 is not None and floor <= t2 < lease_time else lease_time * 0.875
    if t1 is not None and floor <= t1 < t2f:
        return float(t1), t2f
    return (lease_time * 0.5 if lease_time * 0.5 < t2f else t2f / 2), t2f


ANY = "0.0.0.0"


def _unicast(value: str, own: str) -> bool:
    """An address a server or gateway can have: not 0.0.0.0, broadcast, multicast,
    loopback or reserved (240/4), and not the device's own address."""
    a = ipaddress.IPv4Address(value)
    return not (a.is_unspecified or a.is_multicast or a.is_loopback or a.is_reserved
                or value == own)


def sanitize(text: str, limit: int = 120) -> str:
    """Printable ASCII for a log line: anything else as \\xNN, cut at `limit`."""
    out = "".join(c if " " <= c <= "~" else f"\\x{ord(c) & 0xFF:02x}" for c in text)
    return out if len(out) <= limit else out[: limit - 3] + "..."


def _prefix(mask: str) -> int | None:
    try:
        prefix = ipaddress.IPv4Network(f"0.0.0.0/{mask}").prefixlen
    except ValueError:
        return None  # not a contiguous mask
    return prefix or None  # 0.0.0.0 is no netmask


def _classful_prefix(address: str) -> int:
    first = int(address.split(".")[0])
    return 8 if first < 128 else 16 if first < 192 else 24


# -- the shape of a saved lease --------------------------------------------------------

def _ipv4(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not an address")
    return str(ipaddress.IPv4Address(value))


def _number(value: Any, low: float, high: float) -> Any:
    if isinstance(value, bool) or not isinstance(value, int | float) \
            or not low <= value <= high:
        raise ValueError(f"{value!r} is not a number in {low}..{high}")
    return value


def _strings(value: Any, item) -> tuple:
    if not isinstance(value, list | tuple) or len(value) > 64:
        raise ValueError(f"{str(value)[:40]!r} is not a short list")
    return tuple(item(v) for v in value)


def _route(value: Any) -> tuple[str, str]:
    if not isinstance(value, list | tuple) or len(value) != 2 or not isinstance(value[0], str):
        raise ValueError(f"{str(value)[:40]!r} is not a route")
    return str(ipaddress.IPv4Network(value[0])), _ipv4(value[1])


def _options(value: Any) -> dict[int, bytes]:
    if not isinstance(value, dict) or len(value) > 255:
        raise ValueError("options is not an object of options")
    out = {}
    for key, hexed in value.items():
        if not (isinstance(key, str) and key.isdigit() and 0 < int(key) < 255
                and isinstance(hexed, str) and len(hexed) <= 2 * 4096):
            raise ValueError(f"option {key!r} is not a saved option")
        out[int(key)] = bytes.fromhex(hexed)
    return out


def _note(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not a note")
    return sanitize(value)


def _optional(check):
    return lambda v: None if v is None else check(v)


def _checked_name(decode):
    def check(value: Any) -> str | None:
        if value is None:
            return None
        if not isinstance(value, str):
            raise ValueError(f"{value!r} is not a string")
        try:
            return decode(value.encode("ascii"), 0)
        except (ParseError, UnicodeEncodeError) as exc:
            raise ValueError(str(exc)) from None
    return check


_U32 = 0xFFFFFFFF
_FIELD_CHECKS = {
    "address": _ipv4, "prefix": lambda v: int(_number(v, 0, 32)), "broadcast": _ipv4,
    "server_id": _ipv4, "lease_time": lambda v: int(_number(v, 0, _U32)),
    "t1": lambda v: float(_number(v, 0, _U32)), "t2": lambda v: float(_number(v, 0, _U32)),
    "bound_at": lambda v: float(_number(v, 0, 1e12)),
    "bound_wall": lambda v: float(_number(v, 0, 1e12)),
    "router": lambda v: _strings(v, _ipv4), "dns": lambda v: _strings(v, _ipv4),
    "ntp": lambda v: _strings(v, _ipv4), "routes": lambda v: _strings(v, _route),
    "domain": _checked_name(o.hostname), "search": lambda v: _strings(
        v, _checked_name(o.hostname)),
    "hostname": _checked_name(o.hostname), "fqdn": _checked_name(o.hostname),
    "time_offset": _optional(lambda v: int(_number(v, -86400, 86400))),
    "tz_posix": _checked_name(o.tz_posix), "tz_name": _checked_name(o.tz_name),
    "mtu": _optional(lambda v: int(_number(v, 68, 65535))),
    "auto_configure": _optional(lambda v: int(_number(v, 0, 255))),
    "options": _options, "rejected": lambda v: _strings(v, lambda c: int(_number(c, 0, 255))),
    "notes": lambda v: _strings(v, _note),
}
_RECORD_FIELDS = frozenset(_FIELD_CHECKS)

