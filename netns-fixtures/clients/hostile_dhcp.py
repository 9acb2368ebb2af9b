"""A hostile DHCP server for one client: structurally valid OFFER/ACK packets (built with
scapy, independently of the agent's codec) whose option values come from a dictionary of
what misconfigured and rogue servers send. Runs in the lab's server namespace with the
lab's own DHCP server stopped.

Usage: hostile_dhcp.py MAC SEED YIADDR [CODE=HEX ...]

With CODE=HEX arguments it is one fixed misbehaviour instead: every reply carries the sane
options with those codes replaced (e.g. 51=00000000: a lease time of 0), and no NAK.

Every reply is printed as a JSON line (`{"n", "reply", "options"}`), so a test can drive
cycles (the agent's `renew`) and check the daemon after each packet. Replies are never
made unacceptable on purpose (wrong xid, no lease time, a bad yiaddr or server id): those
paths are the codec's and the client core's tests; here every packet is one the client
binds with, so each must pass the agent's validation boundary. One NAK in ten (with
control characters in its message) is sent instead of an ACK, never twice in a row.
"""

from __future__ import annotations

import json
import random
import socket
import sys

from scapy.layers.dhcp import BOOTP, DHCP

SERVER = "192.0.2.1"
SO_BINDTODEVICE = 25


def ip(text: str) -> bytes:
    return socket.inet_aton(text)


def u32(n: int) -> bytes:
    return (n & 0xFFFFFFFF).to_bytes(4, "big")


def name(text: str) -> bytes:
    return text.encode("latin-1")


def wire(*labels: bytes) -> bytes:
    return b"".join(bytes((len(x),)) + x for x in labels) + b"\x00"


# option code -> values a hostile or broken server sends (raw bytes)
HOSTILE: dict[int, list[bytes]] = {
    1: [ip("0.0.0.0"), ip("255.0.255.0"), ip("255.255.255.255"), ip("255.255.255.254"),
        b"\xff\xff"],
    2: [u32(-999999), u32(86400), u32(2**31 - 1), b"\x00"],
    3: [ip("0.0.0.0"), ip("255.255.255.255"), ip("198.51.100.99"), ip("224.0.0.1"),
        ip("127.0.0.1"), ip("192.0.2.1") * 3, b"\xc0\x00\x02", ip("240.0.0.1")],
    6: [ip("0.0.0.0"), ip("127.0.0.1"), ip("224.0.0.251") + ip("192.0.2.1"), b"",
        ip("255.255.255.255")],
    12: [name("ct01; reboot"), name("a" * 64), name("\x00\x01\x02"), name("-bad-"),
         name("a..b"), name("x" * 255), name("ok\n")],
    15: [name("../../etc"), name("hospital.test\x00evil"), name("$(id)"), name("." * 40)],
    26: [(0).to_bytes(2, "big"), (67).to_bytes(2, "big"), (9000).to_bytes(2, "big"),
         (65535).to_bytes(2, "big"), b"\x05"],
    28: [ip("0.0.0.0"), ip("10.0.0.255"), ip("192.0.2.222")],
    33: [ip("10.0.0.1") + ip("127.0.0.1"), ip("10.0.0.1") + ip("198.51.100.99"), b"\x01"],
    42: [ip("224.0.1.1"), ip("0.0.0.0") + ip("192.0.2.11"), ip("127.0.0.1")],
    51: [u32(1), u32(19), u32(0xFFFFFFFF)],
    58: [u32(0), u32(0xFFFFFFFF), u32(1)],
    59: [u32(0), u32(0xFFFFFFFF), u32(2)],
    81: [b"\x05\x00\x00" + wire(b"ct01", b"hospital", b"test"), b"\x04\x00\x00\xc0\x00",
         b"\x00", b"\x01\x00\x00bad name", b"\x04\x00\x00\x3fabc"],
    100: [name("CET-1CEST,M13.5.0,M10.5.0/3"), name("XXX-99"), name(":/etc/localtime"),
          name("CET-1CEST,M3.6.0,M10.5.7/3"), name("A" * 200), name("CET-1:99")],
    101: [name("../../etc/passwd"), name("Europe/Berlin\x00x"), name("Nowhere/Zone"),
          name("/etc/localtime")],
    119: [b"\xc0\x00", b"\x03abc\xc0\x05", wire(b"a" * 63) * 4, b"\x08hospital\x04te"],
    121: [bytes((33, 1, 2, 3, 4, 5, 6, 7, 8)), bytes((0,)) + ip("255.255.255.255"),
          bytes((0,)) + ip("198.51.100.99"), bytes((24, 198, 51, 100)) + ip("0.0.0.0"),
          bytes((8, 10)) + ip("127.0.0.1"), bytes((32,)) + ip("203.0.113.1") + ip("192.0.2.1")
          + bytes((0,)) + ip("192.0.2.1"), bytes((24, 1, 2))],
}
SANE: dict[int, bytes] = {1: ip("255.255.255.0"), 3: ip("192.0.2.1"), 6: ip("192.0.2.1"),
                          51: u32(600)}


def options_for(rng: random.Random, kind: str, fixed: dict[int, bytes] | None = None
                ) -> list[tuple[int, bytes]]:
    chosen = dict(SANE)
    if fixed:
        chosen.update(fixed)
    else:
        for code in rng.sample(sorted(HOSTILE), rng.randint(1, 6)):
            chosen[code] = rng.choice(HOSTILE[code])
    out = [(53, bytes((2 if kind == "offer" else 5,))), (54, ip(SERVER))]
    for code, value in chosen.items():
        if len(value) > 255 or (len(value) > 4 and rng.random() < 0.2):
            # RFC 3396: a long option split into several instances, concatenated
            rest = value
            while rest:
                cut = rng.randint(1, min(len(rest), 255))
                out.append((code, rest[:cut]))
                rest = rest[cut:]
        else:
            out.append((code, value))
    return out


def main() -> None:
    mac, seed, yiaddr = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    fixed = {int(code): bytes.fromhex(value)
             for code, value in (arg.split("=", 1) for arg in sys.argv[4:])}
    rng = random.Random(seed)
    chaddr = bytes.fromhex(mac.replace(":", ""))
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    sock.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, b"eth0")
    sock.bind(("0.0.0.0", 67))
    print(json.dumps({"listening": True}), flush=True)
    sent, last_nak = 0, False
    while True:
        data, _ = sock.recvfrom(4096)
        try:
            req = BOOTP(data)
            opts = dict(o for o in req[DHCP].options if isinstance(o, tuple) and len(o) == 2)
        except Exception:
            continue
        if req.op != 1 or req.chaddr[:6] != chaddr:
            continue
        mtype = opts.get("message-type")
        if mtype == 1:
            kind, options = "offer", options_for(rng, "offer", fixed)
        elif mtype == 3:
            if not fixed and not last_nak and rng.random() < 0.1:
                text = "no \x1b[31mlease\x07 for you\r\n" + "\x00" * rng.randint(0, 3)
                kind, options = "nak", [(53, b"\x06"), (54, ip(SERVER)), (56, name(text))]
            else:
                kind, options = "ack", options_for(rng, "ack", fixed)
        else:
            continue  # DECLINE, RELEASE, INFORM: nothing to answer
        last_nak = kind == "nak"
        reply = BOOTP(op=2, xid=req.xid, flags=req.flags, ciaddr=req.ciaddr,
                      yiaddr="0.0.0.0" if kind == "nak" else yiaddr, siaddr=SERVER,
                      chaddr=chaddr) / DHCP(options=[*options, "end"])
        sock.sendto(bytes(reply), ("255.255.255.255", 68))
        sent += 1
        print(json.dumps({"n": sent, "reply": kind,
                          "options": [[c, v.hex()] for c, v in options]}), flush=True)


if __name__ == "__main__":
    main()
