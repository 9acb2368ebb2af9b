"""DNS messages for the F.1.1 resolver (RFC 1035 4.1): one question out, a response in.

The resolver asks for A and SRV records and follows CNAMEs, so this is all of DNS it
needs: a query encoded; a response decoded into its header and its answer and authority
records, with A, CNAME, SRV and SOA's minimum read and every other type kept as bytes.
A response is hostile input: every length is checked against what is there, and any
fault is a ParseError, never anything else. Names go through dnsname.py (the one name
codec: pointers strictly backwards, at most 255 octets, odd octets as `\\DDD`).

(Written here instead of dnspython, whose import costs ~70 ms of CPU and ~5.6 MiB at
every boot; dnspython checks it in the tests and does RFC 2136 for unicast DNS-SD, off
the boot path.)
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from profiles.errors import ParseError
from profiles.network_address import dnsname

A, CNAME, SOA, SRV = 1, 5, 6, 33
IN = 1
TYPE_NAMES = {A: "A", CNAME: "CNAME", SOA: "SOA", SRV: "SRV"}
NOERROR, NXDOMAIN = 0, 3
RCODE_NAMES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP",
               5: "REFUSED"}
QR, TC, RD = 0x8000, 0x0200, 0x0100
HEADER = struct.Struct("!HHHHHH")
MAX_NAME = dnsname.MAX_NAME


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
    """A host or service name, final dot or not, as wire labels (dnsname.to_wire)."""
    return dnsname.to_wire(name)


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
    """A response's header, answer and authority records (class IN only); ParseError
    for anything malformed. The additional section is not read."""
    if len(wire) < HEADER.size:
        raise ParseError("shorter than a DNS header")
    ident, flags, qdcount, ancount, nscount, _ = HEADER.unpack_from(wire)
    offset = HEADER.size
    for _ in range(qdcount):
        _, offset = _name(wire, offset)
        offset += 4
    if offset > len(wire):
        raise ParseError("question runs past the end")
    answer, offset = _records(wire, offset, ancount)
    authority, _ = _records(wire, offset, nscount)
    return Response(ident, flags, answer, authority)


def _records(wire: bytes, offset: int, count: int) -> tuple[list[Record], int]:
    out = []
    for _ in range(count):
        name, offset = _name(wire, offset)
        if offset + 10 > len(wire):
            raise ParseError("record header runs past the end")
        rtype, rclass, ttl, length = struct.unpack_from("!HHIH", wire, offset)
        offset += 10
        end = offset + length
        if end > len(wire):
            raise ParseError("record data runs past the end")
        data = _rdata(wire, offset, end, rtype)
        if rclass == IN:
            out.append(Record(name, rtype, ttl if ttl < 2**31 else 0, data))  # RFC 2181 8
        offset = end
    return out, offset


def _rdata(wire: bytes, offset: int, end: int, rtype: int) -> object:
    if rtype == A:
        if end - offset != 4:
            raise ParseError("A record not 4 octets")
        return ".".join(str(b) for b in wire[offset:end])
    if rtype == CNAME:
        target, after = _name(wire, offset)
        data: object = target
    elif rtype == SRV:
        if end - offset < 7:
            raise ParseError("SRV record too short")
        priority, weight, port = struct.unpack_from("!HHH", wire, offset)
        target, after = _name(wire, offset + 6)
        data = (priority, weight, port, target)
    elif rtype == SOA:
        _, after = _name(wire, offset)
        _, after = _name(wire, after)
        if after + 20 != end:
            raise ParseError("SOA record of the wrong length")
        return struct.unpack_from("!I", wire, after + 16)[0]
    else:
        return bytes(wire[offset:end])
    if after != end:
        raise ParseError(f"{TYPE_NAMES[rtype]} record of the wrong length")
    return data


def _name(wire: bytes, offset: int) -> tuple[str, int]:
    """(the name at `offset` as text with the final dot, the offset after it)."""
    name, after = dnsname.read_name(wire, offset)
    return name + ".", after
