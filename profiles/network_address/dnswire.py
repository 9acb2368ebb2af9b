"""DNS messages for the F.1.1 resolver (RFC 1035 4.1): one question out, a response in.

The resolver asks for A and SRV records and follows CNAMEs, so this is all of DNS it
needs: a query encoded; a response decoded into its header and its answer and authority
records, with A, CNAME, SRV and SOA's minimum read and every other type kept as bytes.
A response is hostile input: every length is checked against what is there, a
compression pointer must point before the one followed last (no loops), a name is at
most 255 octets, and any fault is a ValueError, never anything else. Octets other than
letters, digits, `-` and `_` in a label come out as `\\DDD` (RFC 4343), so a label can
never smuggle a dot into a name; encode_name() refuses such names.

(dnspython did this until issue 18: importing it cost ~70 ms of CPU and ~5.6 MiB at
every boot. It still does RFC 2136 for unicast DNS-SD, off the boot path.)
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

A, CNAME, SOA, SRV = 1, 5, 6, 33
IN = 1
TYPE_NAMES = {A: "A", CNAME: "CNAME", SOA: "SOA", SRV: "SRV"}
NOERROR, NXDOMAIN = 0, 3
RCODE_NAMES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP",
               5: "REFUSED"}
QR, TC, RD = 0x8000, 0x0200, 0x0100
HEADER = struct.Struct("!HHHHHH")
MAX_NAME = 255  # octets on the wire (RFC 1035 3.1)
_PLAIN = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_")


@dataclass(frozen=True, slots=True)
class Record:
    """One resource record of a response (class IN)."""

    name: str  # absolute, with the final dot, case as sent
    type: int
    ttl: int
    data: object  # A: "192.0.2.1"; CNAME: "name."; SRV: (priority, weight, port, "target.");
    #               SOA: its minimum (int); any other type: the rdata bytes


@dataclass(frozen=True, slots=True)
class Response:
    """A response's id, flags and the records the resolver reads."""

    id: int
    flags: int
    answer: list[Record]
    authority: list[Record]

    @property
    def rcode(self) -> int:
        return self.flags & 0xF


def encode_name(name: str) -> bytes:
    """A host or service name, final dot or not, as wire labels."""
    labels = name.removesuffix(".").split(".") if name not in ("", ".") else []
    out = bytearray()
    for label in labels:
        raw = label.encode("ascii") if label.isascii() else b""
        if not raw or len(raw) > 63 or b"\\" in raw:
            raise ValueError(f"not a DNS name: {name!r}")
        out += bytes((len(raw),)) + raw
    out += b"\0"
    if len(out) > MAX_NAME:
        raise ValueError(f"name longer than {MAX_NAME} octets: {name[:40]!r}...")
    return bytes(out)


def query(name: str, rdtype: int, ident: int) -> bytes:
    """A recursive query (RD) for one name and type, class IN, no EDNS."""
    return HEADER.pack(ident, RD, 1, 0, 0, 0) + encode_name(name) + struct.pack("!HH", rdtype, IN)


def answers(query_wire: bytes, wire: bytes) -> bool:
    """Is `wire` a response to `query_wire`: same id, QR set, the same question (case
    aside)? Anything else on the socket is dropped, not taken as the answer."""
    question = query_wire[HEADER.size:]
    return (len(wire) >= HEADER.size + len(question) and wire[:2] == query_wire[:2]
            and bool(wire[2] & 0x80) and wire[4:6] == b"\0\1"
            and wire[HEADER.size:HEADER.size + len(question)].lower() == question.lower())


def decode(wire: bytes) -> Response:
    """A response's header, answer and authority records (class IN only); ValueError
    for anything malformed. The additional section is not read."""
    if len(wire) < HEADER.size:
        raise ValueError("shorter than a DNS header")
    ident, flags, qdcount, ancount, nscount, _ = HEADER.unpack_from(wire)
    offset = HEADER.size
    for _ in range(qdcount):
        _, offset = _name(wire, offset)
        offset += 4
    if offset > len(wire):
        raise ValueError("question runs past the end")
    answer, offset = _records(wire, offset, ancount)
    authority, _ = _records(wire, offset, nscount)
    return Response(ident, flags, answer, authority)


def _records(wire: bytes, offset: int, count: int) -> tuple[list[Record], int]:
    out = []
    for _ in range(count):
        name, offset = _name(wire, offset)
        if offset + 10 > len(wire):
            raise ValueError("record header runs past the end")
        rtype, rclass, ttl, length = struct.unpack_from("!HHIH", wire, offset)
        offset += 10
        end = offset + length
        if end > len(wire):
            raise ValueError("record data runs past the end")
        data = _rdata(wire, offset, end, rtype)
        if rclass == IN:
            out.append(Record(name, rtype, ttl if ttl < 2**31 else 0, data))  # RFC 2181 8
        offset = end
    return out, offset


def _rdata(wire: bytes, offset: int, end: int, rtype: int) -> object:
    if rtype == A:
        if end - offset != 4:
            raise ValueError("A record not 4 octets")
        return ".".join(str(b) for b in wire[offset:end])
    if rtype == CNAME:
        target, after = _name(wire, offset)
        data: object = target
    elif rtype == SRV:
        if end - offset < 7:
            raise ValueError("SRV record too short")
        priority, weight, port = struct.unpack_from("!HHH", wire, offset)
        target, after = _name(wire, offset + 6)
        data = (priority, weight, port, target)
    elif rtype == SOA:
        _, after = _name(wire, offset)
        _, after = _name(wire, after)
        if after + 20 != end:
            raise ValueError("SOA record of the wrong length")
        return struct.unpack_from("!I", wire, after + 16)[0]
    else:
        return bytes(wire[offset:end])
    if after != end:
        raise ValueError(f"{TYPE_NAMES[rtype]} record of the wrong length")
    return data


def _name(wire: bytes, offset: int) -> tuple[str, int]:
    """(the name at `offset` as text with the final dot, the offset after it)."""
    labels: list[str] = []
    after = None  # where the name ends in place, once a pointer was followed
    limit = offset  # a pointer must point before this: strictly backwards, no loops
    octets = 1
    while True:
        if offset >= len(wire):
            raise ValueError("name runs past the end")
        length = wire[offset]
        if length >= 0xC0:
            if offset + 1 >= len(wire):
                raise ValueError("pointer runs past the end")
            target = ((length & 0x3F) << 8) | wire[offset + 1]
            if target >= limit:
                raise ValueError("compression pointer does not point backwards")
            if after is None:
                after = offset + 2
            offset = limit = target
            continue
        if length >= 0x40:
            raise ValueError(f"unknown label type {length >> 6:#x}")
        if length == 0:
            return ".".join(labels) + ".", offset + 1 if after is None else after
        label = wire[offset + 1:offset + 1 + length]
        if len(label) != length:
            raise ValueError("label runs past the end")
        octets += length + 1
        if octets > MAX_NAME:
            raise ValueError(f"name longer than {MAX_NAME} octets")
        labels.append(label.decode("ascii") if _PLAIN.issuperset(label)
                      else "".join(chr(b) if b in _PLAIN else f"\\{b:03d}" for b in label))
        offset += 1 + length
