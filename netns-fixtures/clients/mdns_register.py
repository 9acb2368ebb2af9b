"""Advertise one DICOM service by DNS-SD with python-zeroconf, then wait to be ended.

Usage: mdns_register.py INTERFACE_ADDRESS AET PORT [SECONDS]. The lab uses it to prove
that its mDNS browser sees what a device advertises; the agent's own advertiser is
profiles/app_config (PS3.15 H.2).
"""

import socket
import sys
import time

from zeroconf import IPVersion, ServiceInfo, Zeroconf

address, aet, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
seconds = float(sys.argv[4]) if len(sys.argv) > 4 else 60.0
zc = Zeroconf(interfaces=[address], ip_version=IPVersion.V4Only)
info = ServiceInfo("_dicom._tcp.local.", f"{aet}._dicom._tcp.local.",
                   addresses=[socket.inet_aton(address)], port=port,
                   properties={"AET": aet, "PrimaryDeviceType": "CT"},
                   server=f"{socket.gethostname()}.local.")
zc.register_service(info)
print("registered", flush=True)
try:
    time.sleep(seconds)
finally:
    zc.unregister_service(info)
    zc.close()
