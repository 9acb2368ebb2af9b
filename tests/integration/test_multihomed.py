"""A multi-homed device: a second interface configured statically keeps its routes when
the agent binds a lease on eth0; the lease's routes go beside them at `route_metric`, and
only the agent's own are removed — also those an earlier run left. The kernel's table is
read with pyroute2 (the oracle of the agent's rtnetlink) inside the device namespace."""

from __future__ import annotations

import json

import pytest
from agent_helpers import PYTHON, dhcp_once, write_config

pytestmark = pytest.mark.integration

ROUTES = r'''
import json, sys
from pyroute2 import IPRoute
with IPRoute() as ipr:
    names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
    out = []
    if sys.argv[1:] == ["addresses"]:
        for a in ipr.get_addr(family=2):
            out.append([names.get(a["index"]), a.get_attr("IFA_LOCAL"), a["prefixlen"],
                        a.get_attr("IFA_BROADCAST")])
    else:
        for r in ipr.get_routes(family=2, table=254):
            dst = r.get_attr("RTA_DST")
            out.append([f"{dst or '0.0.0.0'}/{r['dst_len']}", names.get(r.get_attr("RTA_OIF")),
                        r.get_attr("RTA_GATEWAY"), r.get_attr("RTA_PRIORITY") or 0, r["proto"]])
print(json.dumps(out))
'''


def kernel_routes(device, what: str = "routes") -> set[tuple]:
    proc = device.run([PYTHON, "-c", ROUTES, what], timeout=30)
    assert proc.returncode == 0, proc.stderr
    return {tuple(r) for r in json.loads(proc.stdout)}


def second_nic(device) -> set[tuple]:
    """eth1, static: 10.99.0.2/24, a default route at metric 0 and 198.51.100.0/24 (which
    the lab's option 121 also routes) — what the service network of a modality might be."""
    device.ip("link", "add", "eth1", "type", "veth", "peer", "name", "eth1p")
    device.ip("link", "set", "eth1p", "up")
    device.ip("link", "set", "eth1", "up")
    device.ip("addr", "add", "10.99.0.2/24", "dev", "eth1")
    device.ip("route", "add", "default", "via", "10.99.0.1", "dev", "eth1", "metric", "0")
    device.ip("route", "add", "198.51.100.0/24", "via", "10.99.0.1", "dev", "eth1")
    return {("0.0.0.0/0", "eth1", "10.99.0.1", 0, 3),  # proto boot: `ip route add`
            ("198.51.100.0/24", "eth1", "10.99.0.1", 0, 3)}


def test_a_second_interfaces_static_routes_survive_the_lease_and_a_restart(device):
    static = second_nic(device)
    config = write_config(device, network="arp_probe = false\ninitial_delay = [0.0, 0.0]\n"
                                          "route_metric = 600")
    lease = dhcp_once(device, "--config", config)
    # The kernel's addresses, read by pyroute2: the lease's on eth0 with its broadcast,
    # eth1's untouched.
    assert {("eth0", lease["address"], 24, "192.0.2.255"), ("eth1", "10.99.0.2", 24, None)} \
        <= kernel_routes(device, "addresses")
    routes = kernel_routes(device)
    assert static <= routes, routes
    ours = {r for r in routes if r[1] == "eth0" and r[4] == 16}  # proto dhcp
    assert ours == {("0.0.0.0/0", "eth0", "192.0.2.1", 600, 16),
                    ("198.51.100.0/24", "eth0", "192.0.2.1", 600, 16)}
    # An earlier version's route at metric 0 (as the agent wrote them before), and a
    # restart at the default metric: the old ones found by proto dhcp and removed, the
    # new ones added once, eth1's untouched.
    device.ip("route", "add", "203.0.113.0/24", "via", "192.0.2.1", "dev", "eth0",
              "proto", "dhcp", "metric", "0")
    config = write_config(device, network="arp_probe = false\ninitial_delay = [0.0, 0.0]")
    dhcp_once(device, "--config", config)
    routes = kernel_routes(device)
    assert static <= routes, routes
    ours = {r for r in routes if r[1] == "eth0" and r[4] == 16}
    assert ours == {("0.0.0.0/0", "eth0", "192.0.2.1", 1024, 16),
                    ("198.51.100.0/24", "eth0", "192.0.2.1", 1024, 16)}
    # eth1's lower metric wins for what both reach, as its administrator configured.
    got = device.ip("-j", "route", "get", "198.51.100.10")
    assert json.loads(got)[0]["dev"] == "eth1"


def test_another_dhcp_client_on_the_interface_is_reported_and_not_fought(device):
    """busybox udhcpc holds eth0 when the daemon starts: `other-network-manager`, and no
    DHCP of the agent's; once it stops, the agent takes the address."""
    from agent_helpers import AGENT
    from test_agent import stop, wait_for

    other = device.popen(["busybox", "udhcpc", "-f", "-i", "eth0", "-s", "/bin/true",
                          "-t", "1000", "-T", "1"])
    config = write_config(device, network="arp_probe = false\ninitial_delay = [0.0, 0.0]")
    proc = device.popen([AGENT, "run", "--config", config])
    try:
        snap = wait_for(device, lambda s: "other-network-manager" in s["degraded"], 20)
        assert snap["network"]["state"] == "init" and "address" not in snap["network"]
        other.terminate()
        other.wait(10)
        snap = wait_for(device, lambda s: s["network"]["state"] == "bound", 40)
        assert "other-network-manager" not in snap["degraded"]
    finally:
        if other.poll() is None:
            other.kill()
        err = stop(proc)
    assert "eth0 is managed by udhcpc (pid" in err
