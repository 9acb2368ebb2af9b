"""A DHCP server of a network where auto-configuration is not wanted (RFC 2563 2.3): to
a DISCOVER that carries option 116 it answers an OFFER with no address (yiaddr 0.0.0.0)
and option 116 = 0, "DoNotAutoConfigure". Built with scapy, independently of the agent's
codec; runs in the lab's server namespace with the lab's DHCP server stopped. Prints a
JSON line per DISCOVER: {"discover": n, "option_116": hex or null, "answered": bool}.

Usage: no_autoconf_dhcp.py MAC
"""

from __future__ import annotations

import json
import socket
import sys

from scapy.layers.dhcp import BOOTP, DHCP

SERVER = "192.0.2.1"
SO_BINDTODEVICE = 25


def main() -> None:
    chaddr = bytes.fromhex(sys.argv[1].replace(":", ""))
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    sock.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, b"eth0")
    sock.bind(("0.0.0.0", 67))
    print(json.dumps({"listening": True}), flush=True)
    seen = 0
    while True:
        data, _ = sock.recvfrom(4096)
        try:
            req = BOOTP(data)
            opts = {o[0]: o[1] for o in req[DHCP].options if isinstance(o, tuple) and len(o) == 2}
        except Exception:
            continue
        if req.op != 1 or req.chaddr[:6] != chaddr or opts.get("message-type") != 1:
            continue
        seen += 1
        asked = opts.get("auto-config", opts.get(116))
        if isinstance(asked, int):
            asked = bytes([asked])
        answered = asked is not None  # RFC 2563 2.3: only to clients that sent 116
        if answered:
            reply = BOOTP(op=2, xid=req.xid, flags=req.flags, yiaddr="0.0.0.0", siaddr=SERVER,
                          chaddr=chaddr) / DHCP(options=[("message-type", 2),
                                                         ("server_id", SERVER),
                                                         (116, b"\x00"), "end"])
            sock.sendto(bytes(reply), ("255.255.255.255", 68))
        print(json.dumps({"discover": seen, "option_116": asked.hex() if asked else None,
                          "answered": answered}), flush=True)


if __name__ == "__main__":
    main()
