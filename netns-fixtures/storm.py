"""A boot storm: N devices start `dicom-agent run` at the same moment (issues 14 and 18).

Each device is the archive example (two acceptor AEs, DNS-SD on, ARP probe off, no initial
delay) with its own name and AE title templates shared by all, so every device reserves
titles from one range at once. The directory is found through the lab's `_ldap._tcp` SRV:
the single slapd, or the replicated providers with the "replicated" layout. Used by
`make bench` (30 and 40 devices) and by a test (a few devices).
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench_agent import AGENT, cpu_seconds, status
from bench_agent import config as archive_config
from lab import DEVICES_DN, REGISTRY_DN, Device, Lab


@dataclass
class Booted:
    name: str
    ready_s: float | None = None  # from the storm's start
    cpu_s: float | None = None  # user+sys of the agent at ready
    titles: list[str] = field(default_factory=list)
    operations: int | None = None  # LDAP requests sent, at ready
    replica_conflicts: int = 0
    server: str | None = None  # the directory it registered on


@dataclass
class Storm:
    tag: str
    devices: list[Device]
    procs: list[subprocess.Popen]
    booted: list[Booted]
    started: float  # time.monotonic() at the start

    def stop(self) -> None:
        """SIGTERM each agent by its PID, then wait (SIGKILL after 20 s)."""
        for proc in self.procs:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()


def _config(lab: Lab, dev: Device, name: str, tag: str) -> Path:
    path = archive_config(lab, dev)
    text = path.read_text()
    text = text.replace('hostname = "archive2"', f'hostname = "{name.lower()}"')
    text = text.replace('name = "ARCHIVE2"', f'name = "{name}"')
    text = text.replace('title = "ARCHIVE2_STORE"', f'title_template = "{tag}ST{{n}}"')
    text = text.replace('title = "ARCHIVE2_QR"', f'title_template = "{tag}QR{{n}}"')
    path.write_text(text)
    return path


def start(lab: Lab, n: int, tag: str) -> Storm:
    """N fresh devices, their agents started together."""
    devices = [lab.add_device() for _ in range(n)]
    names = [f"{tag}{dev.index}" for dev in devices]
    configs = [_config(lab, dev, name, tag) for dev, name in zip(devices, names, strict=True)]
    logs = [open(dev.run_dir / "agent.log", "w") for dev in devices]  # noqa: SIM115
    started = time.monotonic()
    procs = [dev.popen([AGENT, "run", "--config", str(cfg)], stdout=subprocess.DEVNULL,
                       stderr=log)
             for dev, cfg, log in zip(devices, configs, logs, strict=True)]
    for log in logs:  # the agents have them
        log.close()
    return Storm(tag, devices, procs, [Booted(name) for name in names], started)


def wait_ready(storm: Storm, timeout: float) -> None:
    """Poll every agent until all are ready (or the timeout): the time each got there,
    its CPU then and its directory figures."""
    deadline = time.monotonic() + timeout
    pending = set(range(len(storm.devices)))
    while pending and time.monotonic() < deadline:
        for i in sorted(pending):
            dev, proc, booted = storm.devices[i], storm.procs[i], storm.booted[i]
            snap = status(dev.run_dir / "agent-run" / "status.sock")
            if snap is None or snap["state"] != "ready":
                continue
            booted.ready_s = time.monotonic() - storm.started
            booted.cpu_s = cpu_seconds(proc.pid)
            booted.titles = list(snap["directory"]["ae_titles"])
            booted.operations = snap["counters"]["directory"].get("operations")
            booted.server = snap["directory"]["server"]
            pending.discard(i)
        time.sleep(0.05)


def refresh_titles(storm: Storm) -> None:
    """The titles each agent says it has now (after giving any way)."""
    for dev, booted in zip(storm.devices, storm.booted, strict=True):
        snap = status(dev.run_dir / "agent-run" / "status.sock")
        if snap is not None:
            booted.titles = list(snap["directory"]["ae_titles"])
            booted.replica_conflicts = snap["counters"]["directory"].get(
                "replica-conflicts", 0)


def directory_view(lab: Lab, address: str, tag: str) -> tuple[set[str], dict[str, list[str]]]:
    """On one server: the storm's titles in the registry, and each title's AE holders."""
    argv = ["ldapsearch", "-x", "-LLL", "-o", "ldif-wrap=no", "-H", f"ldap://{address}"]
    # (dicomAETitle has no substring matching rule in H.1.3: filtered here.)
    out = lab.srv_exec([*argv, "-b", REGISTRY_DN, "-s", "one", "dicomAETitle"]).stdout
    registry = {x.split(": ", 1)[1] for x in out.splitlines()
                if x.startswith(f"dicomAETitle: {tag}")}
    out = lab.srv_exec([*argv, "-b", DEVICES_DN, "(objectClass=dicomNetworkAE)",
                        "dicomAETitle"]).stdout
    holders: dict[str, list[str]] = {}
    dn = None
    for line in out.splitlines():
        if line.startswith("dn: "):
            dn = line[4:]
        elif line.startswith(f"dicomAETitle: {tag}") and dn:
            holders.setdefault(line.split(": ", 1)[1], []).append(dn)
    return registry, holders


def converged(lab: Lab, storm: Storm, addresses: list[str]) -> dict | None:
    """None until every server agrees with the agents: each title an agent holds is in
    the registry with exactly one AE holder, no title is held twice, nothing else of the
    storm's in the registry (no orphan). Then the figures."""
    refresh_titles(storm)
    held = [t for b in storm.booted for t in b.titles]
    if len(held) != len(set(held)) or len(held) != 2 * len(storm.booted):
        return None
    for address in addresses:
        registry, holders = directory_view(lab, address, storm.tag)
        if registry != set(held) or any(len(h) != 1 for h in holders.values()) \
                or set(holders) != set(held):
            return None
    return {"titles": len(held)}


def settle(lab: Lab, storm: Storm, addresses: list[str], timeout: float) -> float | None:
    """Seconds from the storm's start until converged (None: not within the timeout)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if converged(lab, storm, addresses) is not None:
            return time.monotonic() - storm.started
        time.sleep(0.5)
    return None


def duplicates(lab: Lab, storm: Storm, addresses: list[str]) -> int:
    """Titles held by more than one device's AE, on any of the servers."""
    return sum(1 for address in addresses
               for h in directory_view(lab, address, storm.tag)[1].values() if len(h) > 1)


def summary(storm: Storm) -> dict:
    ready = sorted(b.ready_s for b in storm.booted if b.ready_s is not None)
    cpu = [b.cpu_s for b in storm.booted if b.cpu_s is not None]
    ops = [b.operations for b in storm.booted if b.operations is not None]

    def pct(values: list[float], p: float) -> float:
        return values[min(len(values) - 1, round(p * (len(values) - 1)))] if values \
            else float("nan")

    return {"n": len(storm.booted), "ready": len(ready), "p50_s": pct(ready, 0.5),
            "p95_s": pct(ready, 0.95), "cpu_s_per_device": statistics.mean(cpu) if cpu
            else float("nan"), "ops_per_device": statistics.mean(ops) if ops else float("nan"),
            "ops_max": max(ops) if ops else 0}


def bench(lab: Lab, n: int, tag: str, addresses: list[str], timeout: float = 300) -> dict:
    """`make bench`: a storm of n, its figures, time to converge and duplicates left."""
    run = start(lab, n, tag)
    try:
        wait_ready(run, timeout)
        out = summary(run)
        out["converged_s"] = settle(lab, run, addresses, timeout)
        out["duplicates"] = duplicates(lab, run, addresses)
        out["replica_conflicts"] = sum(b.replica_conflicts for b in run.booted)
        out["servers"] = {s: sum(1 for b in run.booted if b.server == s)
                          for s in sorted({b.server for b in run.booted if b.server})}
    finally:
        end(lab, run)
        remove(lab, run, addresses[0])
    return out


def remove(lab: Lab, storm: Storm, address: str) -> None:
    """The storm's devices and titles out of the directory (replicated to the others)."""
    lab.unregister([booted.name for booted in storm.booted],
                   sorted(directory_view(lab, address, storm.tag)[0]), address)


def end(lab: Lab, storm: Storm) -> None:
    storm.stop()
    for dev in storm.devices:
        lab.remove_device(dev)
