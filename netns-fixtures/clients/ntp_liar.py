"""A small NTP server that answers every request `lie` seconds wrong (a falseticker).

Usage: ntp_liar.py ADDRESS LIE_SECONDS. It answers in server mode, stratum 2, echoing
the request's transmit timestamp as origin, as an honest server would — only its clock
is off. The tests use it to prove that the agent outvotes one liar among three.
"""

import socket
import sys
import time

from profiles.time_sync import packet

address, lie = sys.argv[1], float(sys.argv[2])
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind((address, 123))
print("listening", flush=True)
while True:
    data, peer = sock.recvfrom(512)
    try:
        req = packet.parse(data)
    except Exception:
        continue
    now = time.time() + lie
    reply = packet.NtpPacket(0, 4, packet.MODE_SERVER, 2, req.poll, -20, 0.0001, 0.0001,
                             b"LIAR", packet.from_unix(now - 1), req.transmit,
                             packet.from_unix(now), packet.from_unix(now + 0.00001))
    sock.sendto(reply.to_bytes(), peer)
