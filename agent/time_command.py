"""`dicom-agent time ... --once`: the Time Synchronization profile on its own (the field
engineer's ntpdig). Prints the status's `time` object."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import random
import socket
import sys
import time
from pathlib import Path

from agent.config import AgentSettings, TimeSettings, load_config
from profiles.errors import ConfigError
from profiles.network_address.driver import Paths, load_saved_lease
from profiles.network_address.lease import Lease
from profiles.network_address.resolver import ResolveError, Resolver
from profiles.time_sync import chrony
from profiles.time_sync.driver import SntpDriver, SystemClock, hear_broadcasts
from profiles.time_sync.sntp import SntpClient
from profiles.time_sync.sources import choose_servers, offset_and_control

CHRONY_WAIT = 20.0  # s for chronyd to select a source after a reload


def _saved_lease(state_dir: Path, interface: str | None) -> Lease | str | None:
    files = sorted(state_dir.glob("lease-*.json"))
    if interface:
        files = [f for f in files if f.name == f"lease-{interface}.json"]
    elif len(files) > 1:
        names = ", ".join(f.name[6:-5] for f in files)
        return f"time: leases for several interfaces ({names}): pick one with --interface"
    if not files:
        return None
    lease, _ = load_saved_lease(Paths(state_dir, state_dir, files[0].name[6:-5]))
    return lease


async def _resolve(names: list[str], lease: Lease | None) -> tuple[list[str], list[str]]:
    """Addresses for the servers (names through the F.1.1 resolver), and what failed."""
    resolver = Resolver(lease.dns if lease else (), lease.search if lease else ())
    addresses, failed = [], []
    for name in names:
        try:
            if lease and lease.dns:
                addresses += (await resolver.addresses(name))[:1]
            else:
                info = await asyncio.get_running_loop().getaddrinfo(name, None,
                                                                    family=socket.AF_INET)
                addresses.append(info[0][4][0])
        except (ResolveError, OSError) as exc:
            failed.append(f"{name}: {exc}")
    return addresses, failed


def run_time_command(args: argparse.Namespace) -> int:
    logging.basicConfig(level=os.environ.get("DICOM_AGENT_LOG", "WARNING").upper(),
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if not args.once:
        print("time: only --once is offered here; the daemon (dicom-agent run) keeps time",
              file=sys.stderr)
        return 2
    settings, agent = TimeSettings(), AgentSettings()
    interface = args.interface
    if args.config:
        try:
            config = load_config(args.config)
        except ConfigError as exc:
            print("\n".join(exc.lines()), file=sys.stderr)
            return 2
        settings, agent = config.time, config.agent
        interface = interface or config.network.interface
    state_dir = Path(args.state_dir) if args.state_dir else agent.state_dir
    lease = _saved_lease(state_dir, interface)
    if isinstance(lease, str):
        print(lease, file=sys.stderr)
        return 2
    mode = args.mode or "observe"  # the config's mode only when --mode says so
    report = asyncio.run(_run(args, settings, mode, lease, interface or "eth0"))
    if args.json:
        print(json.dumps(report))
    else:
        _print(report)
    return 0 if report["synced"] or any(s["accepted"] for s in report["servers"]) else 1


async def _run(args: argparse.Namespace, settings: TimeSettings, mode: str,
               lease: Lease | None, interface: str) -> dict:
    heard = []
    if settings.broadcast_discovery and not args.servers:
        heard = await hear_broadcasts(settings.broadcast_window)
    manual = [s for s in (args.servers or "").split(",") if s] or list(settings.servers)
    if args.servers:
        source, names = "manual", manual
    else:
        source, names = choose_servers(heard, lease.ntp if lease else (), manual)
    addresses, failed = await _resolve(names, lease)
    report = {"mode": mode, "source": source if addresses else "internal", "servers": [],
              "selected": None, "offset_ms": None, "synced": False,
              **offset_and_control(lease, settings.utc_offset, mode, time.time()),
              "correction": None, "unresolved": failed}
    if not addresses:
        return report
    if mode == "chrony":
        await chrony.hand_over(settings.chrony_sourcedir, interface, addresses,
                               settings.chronyc_socket)
        report["chrony"] = state = await _chrony_settled(settings.chronyc_socket)
        selected = [s for s in state["sources"] if s["state"] == "selected"]
        report["servers"] = [{"address": s["address"], "offset_ms": s["offset_ms"],
                              "delay_ms": None, "stratum": s["stratum"],
                              "accepted": s["state"] in ("selected", "combined"),
                              "reason": None if s["state"] in ("selected", "combined")
                              else s["state"]} for s in state["sources"]]
        report["selected"] = selected[0]["address"] if selected else None
        report["synced"] = bool(selected) and state["tracking"]["leap"] != "Not synchronised"
        report["offset_ms"] = state["tracking"]["offset_ms"]
        report["clock_control"]["allowed"] = False  # chronyd's business
        return report
    core = SntpClient(random.Random(os.urandom(16)), settings.step_threshold_ms / 1000,
                      SystemClock(), may_adjust=report["clock_control"]["allowed"])
    result = await SntpDriver(core).round(addresses)
    report.update(servers=list(result.servers), selected=result.selected,
                  offset_ms=None if result.offset is None else round(result.offset * 1000, 3),
                  synced=result.synced, correction=result.correction)
    return report


async def _chrony_settled(socket_path: Path) -> dict:
    """chronyd's state once it has selected a source (or CHRONY_WAIT has passed)."""
    deadline = time.monotonic() + CHRONY_WAIT
    while True:
        state = await chrony.state(socket_path)
        if any(s["state"] == "selected" for s in state["sources"]) \
                or time.monotonic() > deadline:
            return state
        await asyncio.sleep(0.5)


def _print(report: dict) -> None:
    offset = "-" if report["offset_ms"] is None else f"{report['offset_ms']:+.3f} ms"
    print(f"time ({report['mode']}): source {report['source']}, selected "
          f"{report['selected'] or '-'}, offset {offset}, "
          f"{'synchronized' if report['synced'] else 'NOT synchronized'}")
    for s in report["servers"]:
        mark = "accepted" if s["accepted"] else f"rejected: {s['reason']}"
        off = "-" if s["offset_ms"] is None else f"{s['offset_ms']:+.3f} ms"
        delay = "-" if s["delay_ms"] is None else f"{s['delay_ms']:.3f} ms"
        print(f"  {s['address']:15} offset {off:>12} delay {delay:>10} "
              f"stratum {s['stratum'] or '-'}  {mark}")
    print(f"  UTC offset {report['utc_offset_s']:+d} s ({report['utc_offset_source']}"
          f"{', ' + report['tz'] if report['tz'] else ''}); local time {report['local_time']}")
    control = report["clock_control"]
    print("  clock control: " + ("allowed" if control["allowed"] else
                                 "off (" + ("; ".join(control["guards"]) or report["mode"])
                                 + ")"))
    for failure in report["unresolved"]:
        print(f"  unresolved: {failure}")
