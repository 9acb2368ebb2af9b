"""`dicom-agent dhcp`: the Network Address Management profile on its own (the field
engineer's `dhcpcd -1`, and what the benchmark and outside checks run)."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import random
import signal
import sys
from dataclasses import replace
from pathlib import Path

from agent.config import (
    AgentSettings,
    NetworkSettings,
    dhcp_client_settings,
    hostname_problem,
    interface_problem,
    load_config,
)
from profiles.errors import ConfigError
from profiles.network_address.client import (
    AddressChanged,
    AddressDeclined,
    DhcpClient,
    DhcpEvent,
    LeaseBound,
    LeaseExpiring,
    LeaseLost,
    LeaseRenewed,
    generate_client_id,
)
from profiles.network_address.driver import (
    AutoIpConfigured,
    AutoIpRemoved,
    DhcpDriver,
    Paths,
    boottime,
    load_or_make_client_id,
    load_saved_lease,
)
from profiles.network_address.netlink import Netlink

EVENT_NAMES = {LeaseBound: "lease-bound", LeaseRenewed: "lease-renewed",
               LeaseExpiring: "lease-expiring", LeaseLost: "lease-lost",
               AddressChanged: "address-changed", AddressDeclined: "address-declined"}


def _settings(args: argparse.Namespace) -> tuple[NetworkSettings, AgentSettings] | str:
    """Config file first, flags over it; a usage error comes back as its message."""
    if args.config:
        try:
            config = load_config(args.config)
        except ConfigError as exc:
            return "\n".join(exc.lines())
        network, agent = config.network, config.agent
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
    return network, agent


def run_dhcp_command(args: argparse.Namespace) -> int:
    logging.basicConfig(level=os.environ.get("DICOM_AGENT_LOG", "WARNING").upper(),
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    got = _settings(args)
    if isinstance(got, str):
        print(got, file=sys.stderr)
        return 2
    network, agent = got
    try:
        return asyncio.run(_run(args, network, agent))
    except KeyboardInterrupt:
        return 1
    except OSError as exc:
        print(f"dhcp: {exc}", file=sys.stderr)
        return 1


async def _run(args: argparse.Namespace, network: NetworkSettings,
               agent: AgentSettings) -> int:
    rng = random.Random(os.urandom(16))
    paths = Paths(agent.state_dir, agent.runtime_dir, network.interface)
    netlink = await Netlink.open(network.interface)
    try:
        client_id = network.client_id or load_or_make_client_id(
            paths, lambda: generate_client_id(network.interface, rng))
        client = DhcpClient(dhcp_client_settings(network, await netlink.mac(), client_id), rng)
        bound = asyncio.Event()

        async def on_event(event: DhcpEvent | AutoIpConfigured | AutoIpRemoved) -> None:
            if isinstance(event, AutoIpConfigured | AutoIpRemoved) and not args.once:
                print(json.dumps({
                    "event": "auto-ip" if isinstance(event, AutoIpConfigured)
                    else "auto-ip-removed", "state": client.state.value,
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
                line.update(lease.to_json(client.state.value, network.interface, boottime()))
            print(json.dumps(line), flush=True)

        driver = DhcpDriver(client, paths, netlink, on_event, grace=agent.hook_timeout,
                            rng=rng,
                            # --once leaves the lease in place: no RELEASE on its way out
                            release_on_stop=network.release_on_stop and not args.once)
        saved, same_boot = load_saved_lease(paths)
        task = asyncio.create_task(driver.run(saved=saved, same_boot=same_boot))
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, driver.stop)
        if args.once:
            try:
                await asyncio.wait_for(bound.wait(), args.timeout or 60.0)
            except TimeoutError:
                state = client.state.value
                driver.stop()
                await task
                print(f"dhcp: no lease on {network.interface} within "
                      f"{args.timeout or 60.0:g} s (state {state})", file=sys.stderr)
                return 1
            lease = client.lease
            driver.stop()
            await task
            _print_lease(lease.to_json("bound", network.interface, boottime()), args.json)
            return 0
        await task
        return 0
    finally:
        netlink.close()


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
