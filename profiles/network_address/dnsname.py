"""RFC 1035 domain names in DHCP options (119 domain search, 81 client FQDN).

A small strict reader instead of dnspython on the boot path (its import costs ~50 ms):
every length is checked, compression pointers must point backwards (so they cannot
loop), and a name is at most 255 bytes on the wire.
"""

from __future__ import annotations

from profiles.errors import ParseError

MAX_NAME = 255


def read_name(data: bytes, pos: int) -> tuple[str, int]:
    """The name starting at data[pos] and the position after it (after the first pointer)."""
    labels: list[str] = []
    after: int | None = None
    size = 1
    floor = pos  # a pointer must point before the label that holds it
    while True:
        if pos >= len(data):
            raise ParseError("name runs past the end of the option", offset=pos)
        length = data[pos]
        if length == 0:
            pos += 1
            break
        if length & 0xC0 == 0xC0:
            if pos + 1 >= len(data):
                raise ParseError("truncated compression pointer", offset=pos)
            target = ((length & 0x3F) << 8) | data[pos + 1]
            if target >= floor:
                raise ParseError(f"compression pointer to {target} does not point back",
                                 offset=pos)
            if after is None:
                after = pos + 2
            pos = floor = target
            continue
        if length & 0xC0:
            raise ParseError(f"reserved label type {length:#x}", offset=pos)
        end = pos + 1 + length
        if end > len(data):
            raise ParseError(f"label of {length} bytes runs past the end", offset=pos)
        size += length + 1
        if size > MAX_NAME:
            raise ParseError("name longer than 255 bytes", offset=pos)
        try:
            labels.append(data[pos + 1: end].decode("ascii"))
        except UnicodeDecodeError:
            raise ParseError("label is not ASCII", offset=pos) from None
        pos = end
    return ".".join(labels), after if after is not None else pos


def read_names(data: bytes) -> list[str]:
    """Every name in a sequence (RFC 3397 search list)."""
    names, pos = [], 0
    while pos < len(data):
        name, pos = read_name(data, pos)
        names.append(name)
    return names


def to_wire(name: str, absolute: bool = True) -> bytes:
    """Labels with their lengths; the root label only for an absolute name."""
    out = bytearray()
    for label in name.rstrip(".").split("."):
        raw = label.encode("ascii")
        if not 0 < len(raw) < 64:
            raise ValueError(f"bad label in {name!r}")
        out += bytes((len(raw),)) + raw
    if absolute:
        out.append(0)
    if len(out) > MAX_NAME:
        raise ValueError(f"name too long: {name!r}")
    return bytes(out)
