"""A fake DHCP server core for unit tests: answers a client's datagrams with real bytes."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from profiles.network_address import options as o
from profiles.network_address.codec import BOOTREPLY, DhcpMessage, MessageType, build, parse


@dataclass
class FakeServer:
    server_id: str = "192.0.2.1"
    pool: list[str] = field(default_factory=lambda: [f"192.0.2.{n}" for n in range(100, 110)])
    lease_time: int = 3600
    t1: int | None = None
    t2: int | None = None
    extra: dict[int, bytes] = field(default_factory=dict)
    nak_requests: bool = False
    nak_message: bytes = b""
    leases: dict[bytes, str] = field(default_factory=dict)  # client id -> address
    seen: list[DhcpMessage] = field(default_factory=list)

    def reply(self, request: DhcpMessage, mtype: MessageType, yiaddr: str = "0.0.0.0",
              **overrides) -> bytes:
        opts = {o.MESSAGE_TYPE: bytes((mtype,)),
                o.SERVER_ID: ipaddress.IPv4Address(self.server_id).packed}
        if mtype is MessageType.NAK and self.nak_message:
            opts[o.MESSAGE] = self.nak_message
        if mtype is not MessageType.NAK:
            opts.update({
                o.LEASE_TIME: self.lease_time.to_bytes(4, "big"),
                o.SUBNET_MASK: bytes((255, 255, 255, 0)),
                o.ROUTER: bytes((192, 0, 2, 1)),
                o.DNS_SERVERS: bytes((192, 0, 2, 1)),
                o.DOMAIN_NAME: b"hospital.test",
                o.NTP_SERVERS: bytes((192, 0, 2, 11, 192, 0, 2, 12)),
            })
            if self.t1 is not None:
                opts[o.RENEWAL_TIME] = self.t1.to_bytes(4, "big")
            if self.t2 is not None:
                opts[o.REBINDING_TIME] = self.t2.to_bytes(4, "big")
            opts.update(self.extra)
        msg = DhcpMessage(op=BOOTREPLY, xid=request.xid, chaddr=request.chaddr,
                          hlen=request.hlen, yiaddr=yiaddr, options=opts)
        for key, value in overrides.items():
            object.__setattr__(msg, key, value)
        return build(msg)

    def handle(self, payload: bytes) -> list[bytes]:
        request = parse(payload)
        self.seen.append(request)
        cid = request.options[o.CLIENT_ID]
        match request.message_type:
            case MessageType.DISCOVER:
                address = self.leases.get(cid) or self.pool[len(self.leases) % len(self.pool)]
                self.leases[cid] = address
                return [self.reply(request, MessageType.OFFER, address)]
            case MessageType.REQUEST:
                if self.nak_requests:
                    return [self.reply(request, MessageType.NAK)]
                wanted = request.options.get(o.REQUESTED_ADDRESS)
                address = (str(ipaddress.IPv4Address(wanted)) if wanted
                           else request.ciaddr)
                if address not in self.pool:
                    return [self.reply(request, MessageType.NAK)]
                self.leases[cid] = address
                return [self.reply(request, MessageType.ACK, address)]
            case MessageType.DECLINE:
                self.pool.remove(str(ipaddress.IPv4Address(request.options[o.REQUESTED_ADDRESS])))
                self.leases.pop(cid, None)
        return []
