"""Another host claiming an address (RFC 5227 2.4): one gratuitous ARP reply from this
namespace's eth0, built with scapy (independently of the agent's ARP code), then up to
WAIT seconds listening for the owner's defence (an ARP Announcement of that address from
another MAC). Prints one JSON line: {"claimed": ADDRESS, "defended_by": MAC|null}.

Usage: arp_claim.py ADDRESS [WAIT]
       arp_claim.py --noise ADDRESS COUNT   (COUNT ARP replies for ADDRESS, nothing else:
                                             a busy LAN's traffic for other addresses)
"""

from __future__ import annotations

import json
import select
import socket
import sys
import time
from pathlib import Path

from scapy.layers.l2 import ARP, Ether

ETH_P_ARP = 0x0806


def main() -> int:
    noise = sys.argv[1] == "--noise"
    args = sys.argv[2:] if noise else sys.argv[1:]
    address, wait = args[0], float(args[1]) if len(args) > 1 else 3.0
    mine = Path("/sys/class/net/eth0/address").read_text().strip()
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ARP))
    sock.bind(("eth0", ETH_P_ARP))
    frame = Ether(src=mine, dst="ff:ff:ff:ff:ff:ff") / ARP(
        op=2, hwsrc=mine, psrc=address, hwdst="ff:ff:ff:ff:ff:ff", pdst=address)
    if noise:
        for _ in range(int(wait)):
            sock.send(bytes(frame))
        print(json.dumps({"sent": int(wait), "for": address}), flush=True)
        return 0
    sock.send(bytes(frame))
    deadline = time.monotonic() + wait
    defender = None
    while defender is None and time.monotonic() < deadline:
        ready, _, _ = select.select([sock], [], [], max(deadline - time.monotonic(), 0))
        if not ready:
            break
        pkt = Ether(sock.recv(2048))
        # The owner's defence is an ARP Announcement (sender and target address both
        # ours, RFC 5227 2.3/2.4), not its kernel's ordinary ARP traffic.
        if ARP in pkt and pkt[ARP].psrc == address and pkt[ARP].pdst == address \
                and pkt[ARP].hwsrc != mine:
            defender = pkt[ARP].hwsrc
    print(json.dumps({"claimed": address, "defended_by": defender}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
