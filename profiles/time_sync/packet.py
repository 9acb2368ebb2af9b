"""NTP/SNTP packets (RFC 5905 figure 8, RFC 4330 4) and NTP timestamps across eras.

NTP timestamps count seconds since 1900 in 32 bits, so they wrap in February 2036 (era
1 begins). `to_unix()` takes the era that puts a timestamp nearest a pivot — the local
clock — as RFC 4330 3 suggests, so the client works on either side of 2036 (ntplib
does not). Only ParseError leaves `parse()`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from profiles.errors import ParseError

NTP_UNIX_DELTA = 2_208_988_800  # seconds from 1900-01-01 to 1970-01-01
ERA = 2**32
_PACKET = struct.Struct("!BBbbII4sQQQQ")  # 48 bytes
MODE_CLIENT, MODE_SERVER, MODE_BROADCAST = 3, 4, 5
LEAP_UNSYNCHRONIZED = 3


@dataclass(frozen=True, slots=True)
class NtpPacket:
    """An NTP packet's header (RFC 5905 7.3), decoded."""

    leap: int
    version: int
    mode: int
    stratum: int
    poll: int
    precision: int
    root_delay: float  # seconds
    root_dispersion: float  # seconds
    reference_id: bytes
    reference: int  # raw 64-bit NTP timestamps
    origin: int
    receive: int
    transmit: int

    @property
    def kiss_code(self) -> str | None:
        """Stratum 0 carries a kiss-o'-death code in the reference id (RFC 4330 8)."""
        if self.stratum != 0:
            return None
        return self.reference_id.decode("ascii", "replace").rstrip("\x00")

    def to_bytes(self) -> bytes:
        first = (self.leap << 6) | (self.version << 3) | self.mode
        return _PACKET.pack(first, self.stratum, self.poll, self.precision,
                            _short(self.root_delay), _short(self.root_dispersion),
                            self.reference_id, self.reference, self.origin, self.receive,
                            self.transmit)


def parse(data: bytes) -> NtpPacket:
    """The 48-byte header; extension fields and MACs after it are ignored."""
    if len(data) < _PACKET.size:
        raise ParseError(f"NTP packet of {len(data)} bytes", offset=len(data))
    first, stratum, poll, precision, rdelay, rdisp, refid, ref, orig, recv, xmit = \
        _PACKET.unpack_from(data)
    return NtpPacket(first >> 6, (first >> 3) & 7, first & 7, stratum, poll, precision,
                     rdelay / 65536.0, rdisp / 65536.0, refid, ref, orig, recv, xmit)


def request(transmit: int, version: int = 4) -> bytes:
    """A client-mode request whose transmit field is `transmit` (a nonce we remember)."""
    return NtpPacket(0, version, MODE_CLIENT, 0, 0, 0, 0.0, 0.0, bytes(4), 0, 0, 0,
                     transmit).to_bytes()


def to_unix(timestamp: int, pivot: float) -> float:
    """Unix seconds of a 64-bit NTP timestamp, in the era nearest `pivot` (Unix seconds)."""
    seconds = (timestamp >> 32) + (timestamp & 0xFFFFFFFF) / 2**32 - NTP_UNIX_DELTA
    era = round((pivot - seconds) / ERA)
    return seconds + era * ERA


def from_unix(unix: float) -> int:
    """The 64-bit NTP timestamp of Unix seconds (the era is implicit: it wraps)."""
    ntp = unix + NTP_UNIX_DELTA
    seconds = int(ntp // 1)
    fraction = int((ntp - seconds) * 2**32) & 0xFFFFFFFF
    return ((seconds % ERA) << 32) | fraction


def _short(value: float) -> int:
    return max(0, min(int(value * 65536), 0xFFFFFFFF))
