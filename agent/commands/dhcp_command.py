"""`dicom-agent dhcp`: the Network Address Management profile on its own (the field
engineer's `dhcpcd -1`, and what the benchmark and outside checks run)."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from dataclasses import replace
from pathlib import Path

from agent.adapters.address import EVENT_NAMES, Address
from agent.config import (
    AgentSettings,
    NetworkSettings,
    hostname_problem,
    interface_problem,
    load_config,
)
from profiles.errors import ConfigError
from profiles.network_address.dhcp_client import DhcpEvent, LeaseBound
from profiles.network_address.dhcp_io import AutoIpConfigured, AutoIpRemoved, boottime


def _settings(args: argparse.Namespace
              ) -> tuple[NetworkSettings, AgentSettings, int | None] | str:
    """Config file first, flags over it; a usage error comes back as its message. The
    preset UTC offset (Table F.1-2's default for option 2) is `time.utc_offset` of the
    configuration, as in the daemon; none without a configuration."""
    preset = None
    if args.config:
        try:
            config = load_config(args.config)
        except ConfigError as exc:
            return "\n".join(exc.lines())
        network, agent, preset = config.network, config.agent, config.time.utc_offset
    else:
        if not args.interface:
            return "dhcp: --interface is needed without --config"
        network, agent = NetworkSettings(interface=args.interface), AgentSettings()
    changes = {}
    if args.interface:
        changes["interface"] = args.interface
    if args.hostname:
        changes["hostname"] = args.hostname
    if args.no_probe:
        changes["arp_probe"] = False
    if args.initial_delay is not None:
        changes["initial_delay"] = (0.0, max(args.initial_delay, 0.0))
    for key, check in (("interface", interface_problem), ("hostname", hostname_problem)):
        if key in changes and (reason := check(changes[key])):
            return f"--{key}: {reason}"
    network = replace(network, **changes)
    if args.state_dir:
        agent = replace(agent, state_dir=Path(args.state_dir))
    return network, agent, preset


def run_dhcp_command(args: argparse.Namespace) -> int:
    logging.basicConfig(level=os.environ.get("DICOM_AGENT_LOG", "WARNING").upper(),
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    got = _settings(args)
    if isinstance(got, str):
        print(got, file=sys.stderr)
        return 2
    network, agent, preset = got
    if getattr(args, "print_client_id", False):
        address = Address(network, agent, preset, lambda event: asyncio.sleep(0), 0.0, False)
        print(address.client_id().hex(":"))
        return 0
    try:
        return asyncio.run(_run(args, network, agent, preset))
    except KeyboardInterrupt:
        return 1
    except OSError as exc:
        print(f"dhcp: {exc}", file=sys.stderr)
        return 1


async def _run(args: argparse.Namespace, network: NetworkSettings, agent: AgentSettings,
               preset: int | None) -> int:
    bound = asyncio.Event()
    address: Address

    async def on_event(event: DhcpEvent | AutoIpConfigured | AutoIpRemoved) -> None:
        if isinstance(event, AutoIpConfigured | AutoIpRemoved) and not args.once:
            print(json.dumps({
                "event": "auto-ip" if isinstance(event, AutoIpConfigured)
                else "auto-ip-removed", "state": address.state,
                "interface": network.interface, "address": event.address, "prefix": 16,
                **({"reason": event.reason} if isinstance(event, AutoIpRemoved) else {})}),
                flush=True)
            return
        name = EVENT_NAMES.get(type(event))
        if name is None:
            return
        if args.once:
            if isinstance(event, LeaseBound):
                bound.set()
            return
        lease = event.lease if hasattr(event, "lease") else None
        line = {"event": name}
        if lease is not None:
            line.update(lease.to_json(address.state, network.interface, boottime()))
        print(json.dumps(line), flush=True)

    # --once leaves the lease in place: no RELEASE on its way out
    address = Address(network, agent, preset, on_event, grace=agent.hook_timeout,
                      release_on_stop=network.release_on_stop and not args.once)
    task = asyncio.create_task(address.run())
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, address.stop)
    if not args.once:
        await task
        return 0
    waiter = asyncio.create_task(bound.wait())
    done, _ = await asyncio.wait({task, waiter}, timeout=args.timeout or 60.0,
                                 return_when=asyncio.FIRST_COMPLETED)
    if task in done:  # the driver ended by itself: its error says why
        waiter.cancel()
        task.result()
        return 1
    if waiter not in done:
        waiter.cancel()
        state = address.state
        address.stop()
        await task
        print(f"dhcp: no lease on {network.interface} within "
              f"{args.timeout or 60.0:g} s (state {state})", file=sys.stderr)
        return 1
    lease = address.client.lease
    address.stop()
    await task
    _print_lease(lease.to_json("bound", network.interface, boottime()), args.json)
    return 0


def _print_lease(data: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(data))
        return
    print(f"{data['interface']}: {data['address']}/{data['prefix']} from {data['server_id']}, "
          f"lease {data['lease_time']} s (T1 {data['t1']:g}, T2 {data['t2']:g})")
    for key in ("router", "dns", "domain", "search", "hostname", "fqdn", "ntp", "mtu",
                "time_offset"):
        value = data[key]
        if value not in (None, [], ""):
            print(f"  {key}: {' '.join(value) if isinstance(value, list) else value}")
    for route in data["routes"]:
        print(f"  route: {route['dst']} via {route['via']}")
