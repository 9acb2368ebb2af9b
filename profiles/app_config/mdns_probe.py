"""RFC 6762 8.2, simultaneous probe tie-breaking, as a pure function: two hosts probing
for one name at the same time compare the records each proposes (its probe's authority
section); the host whose records are lexicographically later wins, the other defers one
second and probes again — by then the winner answers for the name and the loser renames
(8.1). Records are (class without the cache-flush bit, type, raw uncompressed rdata)."""

from __future__ import annotations

Record = tuple[int, int, bytes]
CLASS_MASK = 0x7FFF


def name_wire(name: str) -> bytes:
    """A domain name, uncompressed, as it appears in rdata."""
    out = b""
    for label in name.rstrip(".").split("."):
        raw = label.encode()
        out += bytes([len(raw)]) + raw
    return out + b"\x00"


def srv_rdata(priority: int, weight: int, port: int, target: str) -> bytes:
    return priority.to_bytes(2, "big") + weight.to_bytes(2, "big") + \
        port.to_bytes(2, "big") + name_wire(target)


def record(class_: int, type_: int, rdata: bytes) -> Record:
    return class_ & CLASS_MASK, type_, rdata


def tiebreak(ours: list[Record], theirs: list[Record]) -> int:
    """> 0 when our proposal wins, < 0 when it loses, 0 when they are the same data
    (8.2.1: sorted by class, type, rdata; compared pairwise; the first difference decides,
    the later wins; a list that runs out first loses)."""
    a, b = sorted(ours), sorted(theirs)
    for x, y in zip(a, b, strict=False):
        if x != y:
            return 1 if x > y else -1
    return (len(a) > len(b)) - (len(a) < len(b))
