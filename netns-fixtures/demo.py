"""`make demo`: bring the lab up, show each server answering a device, tear it all down.

The agent's boot sequence joins this demo profile by profile. Now: the agent takes a
DHCP lease with the PS3.15 Table F.1-2 options (`dicom-agent dhcp --once`); then the
device finds the LDAP server by DNS SRV, the agent measures the three NTP servers
DHCP named (`dicom-agent time --once`, observing: no clock is touched), the DICOM
configuration root is found over plain LDAP, StartTLS and LDAPS, and the device
configurations are validated by `dicom-agent check-config`.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from lab import BASE_DN, Lab

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
AGENT = REPO / ".venv" / "bin" / "dicom-agent"


def step(title: str) -> None:
    print(f"\n== {title}", flush=True)


def show(proc: subprocess.CompletedProcess, ok: bool | None = None) -> bool:
    good = proc.returncode == 0 if ok is None else ok
    for line in (proc.stdout or "").strip().splitlines():
        print(f"   {line}")
    if not good:
        for line in (proc.stderr or "").strip().splitlines()[-5:]:
            print(f"   ! {line}")
    return good


def main() -> int:
    if os.geteuid() != 0:
        print("make demo needs root: it builds network namespaces", file=sys.stderr)
        return 2
    lab = Lab(prefix="dcmd", devices=1)
    failures = 0
    step("bringing the lab up (namespaces, dnsmasq, 3 x chronyd, slapd)")
    with lab:
        print(lab.describe())
        dev = lab.devices[1]

        step(f"{dev.ns}: dicom-agent dhcp --once (PS3.15 Annex F: RFC 5227 probe on)")
        t0 = time.monotonic()
        proc = dev.run([str(AGENT), "dhcp", "--interface", "eth0", "--hostname", "ct01",
                        "--initial-delay", "0", "--once"])
        failures += not show(proc)
        print(f"   bound in {(time.monotonic() - t0) * 1000:.0f} ms (ARP probe included); "
              f"eth0 now {dev.addresses()}")
        resolv = (dev.run_dir / "agent-run" / "resolv.conf").read_text().strip()
        print("   resolv.conf written by the agent: " + "; ".join(resolv.splitlines()[1:]))
        (dev.run_dir / "resolv.conf").write_text(resolv + "\n")  # the device links to it

        step("DNS: _ldap._tcp SRV records (PS3.15 H.1.4.1) and the name DHCP published")
        failures += not show(dev.run(["dig", "+short", "SRV", "_ldap._tcp.hospital.test"]))
        failures += not show(dev.run(["dig", "+short", "ct01.hospital.test"]))

        step("dicom-agent time --once (PS3.15 Annex G: servers from DHCP option 42)")
        failures += not show(dev.run([str(AGENT), "time", "--once"]))

        step("LDAP: anonymous search for dicomConfigurationRoot (PS3.15 H.1.2)")
        env = dict(os.environ, LDAPTLS_CACERT=str(lab.run / "tls" / "ca.pem"))
        for label, url, extra in [("plain", "ldap://ldap.hospital.test", []),
                                  ("StartTLS", "ldap://ldap.hospital.test", ["-ZZ"]),
                                  ("LDAPS", "ldaps://ldap.hospital.test", [])]:
            proc = dev.run(["ldapsearch", "-x", "-LLL", "-H", url, *extra, "-b", BASE_DN,
                            "(objectClass=dicomConfigurationRoot)", "dn"], env=env)
            print(f"   {label:8} {proc.stdout.strip() or proc.stderr.strip()}")
            failures += proc.returncode != 0

        step("device configuration: dicom-agent check-config")
        for example in sorted((REPO / "agent" / "examples").glob("*.toml")):
            failures += not show(subprocess.run([str(AGENT), "check-config", str(example)],
                                                capture_output=True, text=True))
        step("tearing the lab down")
    print(f"   namespaces left: {[n for n in os.listdir('/run/netns') if n.startswith('dcmd-')]}"
          if os.path.isdir("/run/netns") else "   namespaces left: []")
    print("\ndemo " + ("finished: every server answered" if not failures
                       else f"FAILED: {failures} step(s) did not answer"))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
