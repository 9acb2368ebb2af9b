"""A DHCP lease: what the server gave, decoded, validated and completed with PS3.15
Table F.1-2's defaults, plus when it was bound (CLOCK_BOOTTIME and the wall clock).

`Lease.from_ack()` never raises for a bad option: an option that does not decode or
does not validate is left out (its default applies) and named in `rejected`, so one
malformed option from a server costs that option, not the lease. Options without which
there is no lease (server id, lease time) are checked by the client before binding.
"""

from __future__ import annotations

import ipaddress
from dataclasses import asdict, dataclass, field
from typing import Any

from profiles.errors import ParseError
from profiles.network_address import options as o
from profiles.network_address.codec import DhcpMessage

INFINITE = 0xFFFFFFFF


@dataclass(frozen=True, slots=True)
class Lease:
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

        def get(code: int, decode):
            if code not in opts:
                return None
            try:
                return decode(opts[code], code)
            except ParseError:
                rejected.append(code)
                return None

        address = ack.yiaddr
        mask = get(o.SUBNET_MASK, o.address)
        prefix = _prefix(mask) if mask else None
        if prefix is None:
            if mask:
                rejected.append(o.SUBNET_MASK)
            prefix = _classful_prefix(address)  # Table F.1-2: derived from network value
        network = ipaddress.IPv4Network((address, prefix), strict=False)
        broadcast = get(o.BROADCAST_ADDRESS, o.address) or str(network.broadcast_address)

        lease_time = get(o.LEASE_TIME, o.u32) or 0
        t1, t2 = sanitize_timers(lease_time, get(o.RENEWAL_TIME, o.u32),
                                 get(o.REBINDING_TIME, o.u32))

        classless = get(o.CLASSLESS_ROUTES, o.classless_routes)
        if classless is not None:
            # RFC 3442: with option 121 present, options 3 and 33 are ignored.
            routers = tuple(via for dst, via in classless if dst == "0.0.0.0/0")
            routes = tuple((dst, via) for dst, via in classless if dst != "0.0.0.0/0")
        else:
            routers = tuple(get(o.ROUTER, o.addresses) or ())
            routes = tuple(get(o.STATIC_ROUTES, o.static_routes) or ())

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
            rejected.append(o.INTERFACE_MTU)
            mtu = None
        auto = get(o.AUTO_CONFIGURE, o.u8)
        offset = get(o.TIME_OFFSET, o.i32)
        if offset is not None and not -86400 < offset < 86400:
            rejected.append(o.TIME_OFFSET)
            offset = None
        return cls(
            address=address, prefix=prefix, broadcast=broadcast,
            server_id=get(o.SERVER_ID, o.address) or ack.siaddr,
            lease_time=lease_time, t1=t1, t2=t2, bound_at=now, bound_wall=wall,
            router=routers, routes=routes,
            dns=tuple(get(o.DNS_SERVERS, o.addresses) or ()),
            domain=domain,
            search=tuple(get(o.DOMAIN_SEARCH, o.domain_search) or ()),
            hostname=name, fqdn=fqdn,
            ntp=tuple(get(o.NTP_SERVERS, o.addresses) or ()),
            time_offset=offset if offset is not None else configured_offset,
            tz_posix=get(o.TZ_POSIX, o.tz_posix),
            tz_name=get(o.TZ_NAME, o.tz_name),
            mtu=mtu, auto_configure=auto,
            options=dict(opts), rejected=tuple(sorted(set(rejected))),
        )

    # -- JSON (CONTRACTS.md "dhcp --json") ------------------------------------------------

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
    def from_record(cls, record: dict[str, Any]) -> Lease:
        """Inverse of to_record; ValueError/KeyError/TypeError for a damaged record."""
        data = dict(record)
        data["options"] = {int(k): bytes.fromhex(v) for k, v in data["options"].items()}
        for key in ("router", "dns", "search", "ntp", "rejected"):
            data[key] = tuple(data[key])
        data["routes"] = tuple((str(d), str(v)) for d, v in data["routes"])
        lease = cls(**data)
        ipaddress.IPv4Address(lease.address)
        if not 0 <= lease.prefix <= 32:
            raise ValueError("prefix out of range")
        return lease


def sanitize_timers(lease_time: int, t1: int | None, t2: int | None) -> tuple[float, float]:
    """RFC 2131 4.4.5 defaults (0.5 and 0.875 of the lease), and 0 < T1 < T2 < lease
    enforced as systemd-networkd does: a server's impossible values are replaced."""
    if lease_time == INFINITE:
        return float(INFINITE), float(INFINITE)
    t2f = float(t2) if t2 is not None and 0 < t2 < lease_time else lease_time * 0.875
    if t1 is not None and 0 < t1 < t2f:
        return float(t1), t2f
    return (lease_time * 0.5 if lease_time * 0.5 < t2f else t2f / 2), t2f


def _prefix(mask: str) -> int | None:
    try:
        return ipaddress.IPv4Network(f"0.0.0.0/{mask}").prefixlen
    except ValueError:
        return None  # not a contiguous mask


def _classful_prefix(address: str) -> int:
    first = int(address.split(".")[0])
    return 8 if first < 128 else 16 if first < 192 else 24
