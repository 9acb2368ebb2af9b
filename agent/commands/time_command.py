"""`dicom-agent time ... --once`: the Time Synchronization profile on its own (the field
engineer's ntpdig). Prints the status's `time` object."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from pathlib import Path

from agent.adapters.timekeeping import Timekeeping
from agent.config import AgentSettings, TimeSettings, load_config
from profiles.errors import ConfigError
from profiles.network_address.dhcp_io import Paths, load_saved_lease
from profiles.network_address.lease import Lease


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
    manual = [s for s in (args.servers or "").split(",") if s]
    keeper = Timekeeping(settings, mode, interface or "eth0")
    report = asyncio.run(keeper.once(lease, manual or None))
    if args.json:
        print(json.dumps(report))
    else:
        _print(report)
    return 0 if report["synced"] or any(s["accepted"] for s in report["servers"]) else 1


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
    if report.get("utc_offset_reason"):
        print(f"  passed over: {report['utc_offset_reason']}")
    for failure in report["unresolved"]:
        print(f"  unresolved: {failure}")
    if report.get("last_error"):
        print(f"  error: {report['last_error']}")
