"""RFC 1035 domain names on the wire — the one codec for the DNS messages of the F.1.1
resolver (dnswire.py) and for the names in DHCP options 119 (domain search) and 81
(client FQDN).

Names are hostile input: every length is checked against what is there, a compression
pointer must point before the label that holds it (so it can never loop), a name is at
most 255 octets, and any fault is a ParseError, never anything else. Octets other than
letters, digits, `-` and `_` come out as `\\DDD` (RFC 4343), so a label can never smuggle a
dot into a name; `to_wire` refuses such names (and any label that is not 1-63 ASCII
octets). Names are text without the final dot.
"""

from __future__ import annotations

from profiles.errors import ParseError

MAX_NAME = 255  # octets on the wire (RFC 1035 3.1)
_PLAIN = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_")


def read_name(data: bytes, pos: int) -> tuple[str, int]:
    """The name starting at data[pos] and the position after it in place (after the
    first pointer, when one was followed)."""
    labels: list[str] = []
    after: int | None = None
    limit = pos  # a pointer must point before this: strictly backwards, no loops
    octets = 1
    while True:
        if pos >= len(data):
            raise ParseError("name runs past the end", offset=pos)
        length = data[pos]
        if length >= 0xC0:
            if pos + 1 >= len(data):
                raise ParseError("truncated compression pointer", offset=pos)
            target = ((length & 0x3F) << 8) | data[pos + 1]
            if target >= limit:
                raise ParseError(f"compression pointer to {target} does not point back",
                                 offset=pos)
            if after is None:
                after = pos + 2
            pos = limit = target
            continue
        if length >= 0x40:
            raise ParseError(f"reserved label type {length >> 6:#x}", offset=pos)
        if length == 0:
            return ".".join(labels), pos + 1 if after is None else after
        label = data[pos + 1:pos + 1 + length]
        if len(label) != length:
            raise ParseError(f"label of {length} octets runs past the end", offset=pos)
        octets += length + 1
        if octets > MAX_NAME:
            raise ParseError(f"name longer than {MAX_NAME} octets", offset=pos)
        labels.append(label.decode("ascii") if _PLAIN.issuperset(label)
                      else "".join(chr(b) if b in _PLAIN else f"\\{b:03d}" for b in label))
        pos += 1 + length


def read_names(data: bytes) -> list[str]:
    """Every name in a sequence (RFC 3397 search list)."""
    names, pos = [], 0
    while pos < len(data):
        name, pos = read_name(data, pos)
        names.append(name)
    return names


def to_wire(name: str, absolute: bool = True) -> bytes:
    """A host or service name, final dot or not, as wire labels; the root label only for
    an absolute name. ParseError for a name that is not one (an empty, over-long or
    non-ASCII label, a `\\` escape, over 255 octets)."""
    bare = name.removesuffix(".")
    out = bytearray()
    for label in bare.split(".") if bare else []:
        raw = label.encode("ascii") if label.isascii() else b""
        if not raw or len(raw) > 63 or b"\\" in raw:
            raise ParseError(f"not a DNS name: {name[:80]!r}")
        out += bytes((len(raw),)) + raw
    if absolute:
        out.append(0)
    if len(out) > MAX_NAME:
        raise ParseError(f"name longer than {MAX_NAME} octets: {name[:40]!r}...")
    return bytes(out)
