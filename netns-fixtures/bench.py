"""`make bench`: time the lab's servers and the reference DHCP/DNS/LDAP/NTP clients.

Each figure is the median of REPS whole-process runs on a fresh device namespace, minus
the cost of entering a device (measured the same way with `true`). The agent's own
figures and their ratios to these references join this table as its profiles land
(issue 3 onward); the references are measured in the same run so ratios compare like
with like.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

from lab import BASE_DN, Device, Lab

REPS = int(os.environ.get("BENCH_REPS", "7"))
CLIENTS = Path(__file__).resolve().parent / "clients"


def timed(device: Device, argv: list[str], env: dict | None = None) -> float:
    t0 = time.perf_counter()
    proc = device.run(argv, env=env, timeout=60)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed: {proc.stderr.strip()[-500:]}")
    return elapsed


def median_ms(lab: Lab, argv_for: Callable[[Device], list[str]], fresh: bool,
              env: dict | None = None, overhead: float = 0.0) -> float:
    samples = []
    for _ in range(REPS):
        dev = lab.add_device() if fresh else lab.devices[1]
        if not fresh:
            dev.configure_static()
        try:
            samples.append(timed(dev, argv_for(dev), env) - overhead)
        finally:
            if fresh:
                lab.remove_device(dev)
    return statistics.median(samples) * 1000


def main() -> int:
    if os.geteuid() != 0:
        print("make bench needs root: it builds network namespaces", file=sys.stderr)
        return 2
    rows: list[tuple[str, str, float]] = []
    ups = []
    for _ in range(3):
        lab = Lab(prefix="dcmb", devices=0)
        t0 = time.perf_counter()
        lab.up()
        ups.append(time.perf_counter() - t0)
        slapd_ms = lab.timings["ldap"] * 1000
        lab.down()
    rows.append(("lab", "whole lab up (dnsmasq flavour)", statistics.median(ups) * 1000))
    rows.append(("lab", "slapd: slapadd x3 + start until ready", slapd_ms))

    with Lab(prefix="dcmb", devices=1) as lab:
        dev = lab.devices[1]
        overhead = statistics.median(timed(dev, ["true"]) for _ in range(REPS))
        rows.append(("lab", "entering a device (ip netns exec + unshare), subtracted",
                     overhead * 1000))
        dhcp = {
            "udhcpc, INIT (start -> bound)": lambda d: [
                "busybox", "udhcpc", "-i", "eth0", "-f", "-q", "-n", "-t", "5", "-T", "2",
                "-s", str(CLIENTS / "udhcpc.script")],
            "dhclient, INIT": lambda d: [
                "dhclient", "-4", "-1", "-cf", str(CLIENTS / "dhclient.conf"),
                "-sf", str(CLIENTS / "dhclient.script"),
                "-lf", str(d.run_dir / "dhclient" / "leases"),
                "-pf", str(d.run_dir / "dhclient" / "pid"), "eth0"],
            "dhcpcd nodelay+noarp, INIT": lambda d: [
                "dhcpcd", "-f", str(CLIENTS / "dhcpcd.conf"), "-c", str(CLIENTS / "dhcpcd.script"),
                "-4", "-1", "-B", "-t", "30", "eth0"],
        }
        for name, argv_for in dhcp.items():
            rows.append(("dhcp", name, median_ms(lab, argv_for, True, overhead=overhead)))
        env = dict(os.environ, LDAPTLS_CACERT=str(lab.run / "tls" / "ca.pem"))
        search = ["-b", BASE_DN, "(objectClass=dicomConfigurationRoot)", "dn"]
        others = {
            ("dns", "dig SRV _ldap._tcp"): lambda d: [
                "dig", "+short", "@192.0.2.1", "SRV", "_ldap._tcp.hospital.test"],
            ("ntp", "ntpdig (Python SNTP client)"): lambda d: ["ntpdig", "-t", "2", "192.0.2.11"],
            ("ldap", "ldapsearch dicomConfigurationRoot"): lambda d: [
                "ldapsearch", "-x", "-LLL", "-H", "ldap://192.0.2.1", *search],
            ("ldap", "ldapsearch, StartTLS"): lambda d: [
                "ldapsearch", "-x", "-LLL", "-ZZ", "-H", "ldap://192.0.2.1", *search],
        }
        for (group, name), argv_for in others.items():
            rows.append((group, name, median_ms(lab, argv_for, False, env=env,
                                                overhead=overhead)))

    print(f"\ndicom-agent bench: medians of {REPS} runs (ms), this machine, one run\n")
    print(f"{'group':6} {'what':58} {'ms':>9}")
    for group, name, ms in rows:
        print(f"{group:6} {name:58} {ms:9.1f}")
    print("\nagent figures and agent/reference ratios: not yet (the DHCP client is issue 3)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
