"""The real device's half of `make bench` (issue 28 item 6): power-on to ready in the VM,
beside the stock stack the agent replaces, booted from the same image.

- agent: the package as the VM test has it (sntp mode, chronyd masked, registration over
  TLS); the figures are qemu start -> the first report bound and synced (the stock
  stack's own finish line) and -> `ready` (address, clock stepped from the RTC's 2031,
  directory, DNS-SD);
- stock: the same image with the agent disabled, systemd-networkd (DHCP on en*) with
  systemd-networkd-wait-online, and chronyd given the lab's server (its Debian pool line
  taken out); the figure is qemu start -> the first report where wait-online has
  finished and chronyd's leap status is Normal (it stepped the clock: `makestep 1 3`).
Both under the same accelerator (vm.accelerator: TCG here), measured on the host's clock
from the reporter's lines (±1 s).
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

from devroot import site_device
from lab import Lab
from vm import VM, make, sntp_device

MAC = "02:dc:00:00:00:98"
RTC = "2031-06-01T00:00:00"
# The stock stack's state on ttyS1 beside the reporter's (a line of its own).
STOCK_SH = """#!/bin/sh
while :; do
  online=$(systemctl is-active systemd-networkd-wait-online.service)
  leap=$(chronyc -n -c tracking 2>/dev/null | cut -d, -f14)
  state="{\\"stock\\": true, \\"online\\": \\"$online\\", \\"leap\\": \\"$leap\\"}"
  echo "@@ $(date +%s.%N) $(cat /proc/sys/kernel/random/boot_id) $state" > /dev/ttyS1
  sleep 0.5
done
"""


def _stock(root: Path) -> None:
    units = root / "etc/systemd/system"
    for name in ("dicom-agent.service", "dicom-agent-wait-ready.service",
                 "dicom-ready.target", "dicom-lab-report.service"):
        (units / name).unlink(missing_ok=True)
        (units / name).symlink_to("/dev/null")  # masked: the stock stack alone
    network = root / "etc/systemd/network"
    network.mkdir(parents=True, exist_ok=True)
    (network / "20-wired.network").write_text("[Match]\nName=en*\n\n[Network]\nDHCP=ipv4\n")
    wants = units / "multi-user.target.wants"
    for unit in ("systemd-networkd.service", "systemd-networkd-wait-online.service"):
        link = wants / unit
        if not link.is_symlink():
            link.symlink_to(f"/lib/systemd/system/{unit}")
    sockets = units / "sockets.target.wants"
    sockets.mkdir(parents=True, exist_ok=True)
    (sockets / "systemd-networkd.socket").symlink_to("/lib/systemd/system/systemd-networkd.socket")
    online = units / "network-online.target.wants"
    online.mkdir(parents=True, exist_ok=True)
    (online / "systemd-networkd-wait-online.service").symlink_to(
        "/lib/systemd/system/systemd-networkd-wait-online.service")
    (root / "etc/chrony/sources.d/lab.sources").write_text("server 192.0.2.11 iburst\n")
    lib = root / "usr/local/lib/dicom-lab"
    (lib / "stock.sh").write_text(STOCK_SH)
    (units / "dicom-lab-stock.service").write_text(
        "[Unit]\nDescription=dicom-agent lab: the stock stack's state on ttyS1\n"
        "[Service]\nExecStart=/bin/sh /usr/local/lib/dicom-lab/stock.sh\n"
        "[Install]\nWantedBy=multi-user.target\n")
    (wants / "dicom-lab-stock.service").symlink_to("/etc/systemd/system/dicom-lab-stock.service")


def _power_on_to(machine: VM, *predicates, timeout: float = 420.0) -> list[float]:
    """Seconds from qemu's start to the first report meeting each predicate, in turn."""
    machine.boot()
    out = []
    for predicate in predicates:
        machine.wait(predicate, timeout)
        out.append(time.time() - machine.started[-1])
    return out


# Where the agent's boot goes, from the VM's journal (uptime, as journalctl's monotonic
# stamps): the marker line of each step, in order.
PHASES = (("unit started", "Starting dicom-agent.service"),
          ("interpreter up, configuration read", "starting -> waiting-for-link"),
          ("address bound (DHCP, RFC 5227 probe)", "(lease-bound)"),
          ("clock stepped", "(time-synced)"),
          ("ready (directory, TLS)", "-> ready"))


def phases(journal: list[str]) -> dict[str, float]:
    """Each phase's uptime (s) from the journal, for those found."""
    out = {}
    for name, marker in PHASES:
        for line in journal:
            if marker in line and line.startswith("["):
                out[name] = float(line[1:line.index("]")])
                break
    return out


def _status(report) -> dict:
    return report["status"] if isinstance(report.get("status"), dict) else {}


def vm_bench(lab: Lab, deb: Path, reps: int = 3) -> dict:
    """Medians of `reps` boots each way (both vary by seconds from boot to boot under
    TCG: chronyd's first sync most of all)."""
    out: dict[str, list[float]] = {"agent": [], "agent_synced": [], "stock": []}
    files = {"/etc/dicom-agent/agent.toml.d/50-site.toml":
             site_device("VMBENCH")}
    steps: dict[str, list[float]] = {}
    for _ in range(reps):
        agent = make("vmbench", lab.run, lab.switch, MAC, deb, files,
                     lambda root: sntp_device(root, lab.run / "tls" / "ca.pem"), rtc=RTC)
        try:
            synced, ready = _power_on_to(
                agent, lambda r: _status(r).get("time", {}).get("synced")
                and _status(r).get("network", {}).get("state") == "bound",
                lambda r: _status(r).get("state") == "ready")
            out["agent_synced"].append(synced)
            out["agent"].append(ready)
            for name, at in phases(agent.journal()).items():
                steps.setdefault(name, []).append(at)
            accel = agent.accel
        finally:
            agent.remove()
            lab.unregister(["VMBENCH"], ["VMBENCH_SCP"])
        stock = make("vmstock", lab.run, lab.switch, MAC, deb, {}, _stock, rtc=RTC)
        try:
            out["stock"] += _power_on_to(stock, lambda r: _status(r).get("stock")
                                         and _status(r)["online"] == "active"
                                         and _status(r)["leap"] == "Normal")
        finally:
            stock.remove()
    return {"agent_s": statistics.median(out["agent"]),
            "agent_synced_s": statistics.median(out["agent_synced"]),
            "stock_s": statistics.median(out["stock"]), "reps": reps,
            "phases": {name: statistics.median(at) for name, at in steps.items()},
            "accel": accel}
