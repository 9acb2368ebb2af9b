"""DHCP message codec: the BOOTP header (RFC 951/2131) and RFC 2132 options, strictly.

Theory of operation
-------------------
`parse(data)` returns a `DhcpMessage` or raises `ParseError`; nothing else leaves it,
whatever the bytes (a property test feeds it arbitrary input). Every length is checked
before it is used. Options are read from the options field, then — when option 52
(overload) says so — from `file`, then from `sname` (RFC 2131 4.1, RFC 3396 3); every
instance of a code is concatenated in that order (RFC 3396 long options). The result
keeps, per code, the concatenated value in order of first appearance.

`build(msg)` writes the options field only (never overloads), splitting values longer
than 255 bytes over several instances (RFC 3396), ends it with END and pads the whole
message to the 300-byte BOOTP minimum that old relays expect.
"""

from __future__ import annotations

import enum
import socket
import struct
from dataclasses import dataclass, field

from profiles.errors import ParseError

MAGIC_COOKIE = b"\x63\x82\x53\x63"
HEADER = struct.Struct("!BBBBIHH4s4s4s4s16s64s128s")  # 236 bytes, RFC 2131 figure 1
MIN_LENGTH = HEADER.size + len(MAGIC_COOKIE)  # 240
BOOTP_MIN_SIZE = 300  # RFC 1542 2.1: relays may drop shorter BOOTP messages
BOOTREQUEST, BOOTREPLY = 1, 2
FLAG_BROADCAST = 0x8000

PAD, END = 0, 255
OPT_OVERLOAD = 52
OPT_MESSAGE_TYPE = 53


class MessageType(enum.IntEnum):
    DISCOVER = 1
    OFFER = 2
    REQUEST = 3
    DECLINE = 4
    ACK = 5
    NAK = 6
    RELEASE = 7
    INFORM = 8


@dataclass(frozen=True, slots=True)
class DhcpMessage:
    """One DHCP/BOOTP message. Addresses are dotted-quad strings; chaddr keeps all 16 bytes."""

    op: int
    xid: int
    chaddr: bytes = bytes(16)
    htype: int = 1
    hlen: int = 6
    hops: int = 0
    secs: int = 0
    flags: int = 0
    ciaddr: str = "0.0.0.0"
    yiaddr: str = "0.0.0.0"
    siaddr: str = "0.0.0.0"
    giaddr: str = "0.0.0.0"
    sname: bytes = bytes(64)
    file: bytes = bytes(128)
    options: dict[int, bytes] = field(default_factory=dict)

    @property
    def message_type(self) -> MessageType | None:
        value = self.options.get(OPT_MESSAGE_TYPE)
        if value is None or len(value) != 1:
            return None
        try:
            return MessageType(value[0])
        except ValueError:
            return None

    @property
    def hardware_address(self) -> bytes:
        return self.chaddr[: self.hlen]


def _ip(raw: bytes) -> str:
    return socket.inet_ntoa(raw)


def _raw_ip(address: str) -> bytes:
    try:
        return socket.inet_aton(address)
    except OSError as exc:
        raise ValueError(f"not an IPv4 address: {address!r}") from exc


def _read_options(data: bytes, base: int, found: dict[int, bytearray],
                  order: list[int]) -> None:
    """Read one options area, appending each instance's value to found[code]."""
    pos, end = 0, len(data)
    while pos < end:
        code = data[pos]
        pos += 1
        if code == PAD:
            continue
        if code == END:
            return
        if pos >= end:
            raise ParseError(f"option {code} has no length byte", offset=base + pos - 1)
        length = data[pos]
        pos += 1
        if pos + length > end:
            raise ParseError(f"option {code} length {length} overruns its field",
                             offset=base + pos - 2)
        if code not in found:
            found[code] = bytearray()
            order.append(code)
        found[code] += data[pos: pos + length]
        pos += length
    # A field that runs out without END is tolerated (a common server slip); an
    # option that would run past it is not.


def parse(data: bytes) -> DhcpMessage:
    """Decode a DHCP message; ParseError (with the offset) on anything malformed."""
    if len(data) < MIN_LENGTH:
        raise ParseError(f"{len(data)} bytes: shorter than the {MIN_LENGTH}-byte header",
                         offset=len(data))
    (op, htype, hlen, hops, xid, secs, flags, ciaddr, yiaddr, siaddr, giaddr, chaddr,
     sname, file) = HEADER.unpack_from(data)
    if data[HEADER.size:MIN_LENGTH] != MAGIC_COOKIE:
        raise ParseError("no DHCP magic cookie", offset=HEADER.size)
    if op not in (BOOTREQUEST, BOOTREPLY):
        raise ParseError(f"op {op} is neither BOOTREQUEST nor BOOTREPLY", offset=0)
    if hlen > 16:
        raise ParseError(f"hlen {hlen} exceeds the 16-byte chaddr field", offset=2)
    found: dict[int, bytearray] = {}
    order: list[int] = []
    _read_options(data[MIN_LENGTH:], MIN_LENGTH, found, order)
    overload = 0
    if OPT_OVERLOAD in found:
        value = bytes(found[OPT_OVERLOAD])
        if len(value) != 1 or value[0] not in (1, 2, 3):
            raise ParseError(f"option 52 (overload) must be 1, 2 or 3, got {value.hex()}",
                             offset=MIN_LENGTH)
        overload = value[0]
        # RFC 2131 4.1: 'file' is read before 'sname'.
        if overload & 1:
            _read_options(file, 108, found, order)
        if overload & 2:
            _read_options(sname, 44, found, order)
    return DhcpMessage(
        op=op, htype=htype, hlen=hlen, hops=hops, xid=xid, secs=secs, flags=flags,
        ciaddr=_ip(ciaddr), yiaddr=_ip(yiaddr), siaddr=_ip(siaddr), giaddr=_ip(giaddr),
        chaddr=chaddr,
        sname=bytes(64) if overload & 2 else sname,
        file=bytes(128) if overload & 1 else file,
        options={code: bytes(found[code]) for code in order},
    )


def encode_options(options: dict[int, bytes]) -> bytes:
    """Options as TLVs, long values split over instances (RFC 3396), END-terminated."""
    out = bytearray()
    for code, value in options.items():
        if not 0 < code < 255:
            raise ValueError(f"option code {code} cannot be encoded")
        if code == OPT_OVERLOAD:
            raise ValueError("build() does not overload sname/file")
        chunks = [value[i: i + 255] for i in range(0, len(value), 255)] or [b""]
        for chunk in chunks:
            out += bytes((code, len(chunk))) + chunk
    out.append(END)
    return bytes(out)


def build(msg: DhcpMessage) -> bytes:
    """Encode a message; ValueError for a message that cannot be encoded (a caller bug)."""
    if len(msg.chaddr) != 16 or len(msg.sname) != 64 or len(msg.file) != 128:
        raise ValueError("chaddr, sname and file must be 16, 64 and 128 bytes")
    header = HEADER.pack(msg.op, msg.htype, msg.hlen, msg.hops, msg.xid, msg.secs, msg.flags,
                         _raw_ip(msg.ciaddr), _raw_ip(msg.yiaddr), _raw_ip(msg.siaddr),
                         _raw_ip(msg.giaddr), msg.chaddr, msg.sname, msg.file)
    data = header + MAGIC_COOKIE + encode_options(msg.options)
    return data.ljust(BOOTP_MIN_SIZE, b"\x00")


def pad_chaddr(mac: bytes) -> bytes:
    return mac.ljust(16, b"\x00")
