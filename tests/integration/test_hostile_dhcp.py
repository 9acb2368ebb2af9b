"""A hostile DHCP server against the live daemon (issue 10): one daemon, cycles driven by
the socket's `renew` and the server's NAKs, a status request after every packet, and at
the end a real server's lease that still works. Seeded; `make fuzz` runs thousands of
packets with a random seed (DICOM_AGENT_FUZZ_SEED, DICOM_AGENT_FUZZ_PACKETS)."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from agent_helpers import AGENT, PYTHON, read_line, write_config
from test_agent import ask, stop, wait_for

HOSTILE = str(Path(__file__).resolve().parents[2] / "netns-fixtures" / "clients"
              / "hostile_dhcp.py")
SEED = int(os.environ.get("DICOM_AGENT_FUZZ_SEED", "20261129"))
PACKETS = int(os.environ.get("DICOM_AGENT_FUZZ_PACKETS", "100"))
YIADDR = "192.0.2.222"
FAST = 'arp_probe = false\ninitial_delay = [0.0, 0.0]'
STATUS = {"v": 1, "op": "status"}


def test_a_hostile_dhcp_server_never_takes_the_daemon_down(lab, device):
    print(f"hostile DHCP campaign: seed {SEED}, {PACKETS} packets")
    lab.stop_dhcp_server()
    try:
        responder = lab.srv_popen([PYTHON, HOSTILE, device.mac, str(SEED), YIADDR])
        assert read_line(responder, 30) == {"listening": True}, responder.stderr.read()
        config = write_config(device, network=FAST, directory="enabled = false")
        # Its log goes to a file: thousands of lines would fill a pipe nobody reads until
        # the end, and a daemon blocked writing its log answers nothing.
        log = device.run_dir / "agent.log"
        with open(log, "w") as sink:
            proc = device.popen([AGENT, "run", "--config", config],
                                stdout=subprocess.DEVNULL, stderr=sink)
        kinds: dict[str, int] = {}
        try:
            sent = 0
            while sent < PACKETS:
                line = read_line(responder, 6)
                if line is None:  # the client waits on a timer of its own: nudge it
                    assert proc.poll() is None
                    assert ask(device, STATUS)["v"] == 1
                    ask(device, {"v": 1, "op": "renew"})
                    line = read_line(responder, 60)
                    assert line is not None, "no DHCP packet for a minute; the server: " + (
                        responder.stderr.read() if responder.poll() is not None else "alive")
                sent = line["n"]
                kinds[line["reply"]] = kinds.get(line["reply"], 0) + 1
                # After every packet: alive, and the status socket answers.
                assert proc.poll() is None, f"daemon ended after packet {sent}: {line}"
                snap = ask(device, STATUS)
                if line["reply"] == "ack":
                    bound = wait_for(device, lambda s: s["network"]["state"] == "bound"
                                     and s["network"].get("address") == YIADDR, 20)
                    assert bound["supervision"]["address"]["restarts"] == 0
                    ask(device, {"v": 1, "op": "renew"})
            snap = ask(device, STATUS)
            assert all(r["restarts"] == 0 for r in snap["supervision"].values()), \
                snap["supervision"]
            refused = snap["counters"]["validation"]
            assert refused and sum(refused.values()) > 0
        finally:
            responder.terminate()
            responder.wait(10)
        print(f"replies {kinds}, refused {refused}")
        assert kinds.get("nak", 0) > 0 and kinds.get("ack", 0) > 0
        # The real server is back: whatever the hostile leases applied, the device gets
        # a working lease from it (its REQUEST for the hostile address is NAKed first).
        # A hostile lease may leave no way to reach a server by unicast (a /32 prefix,
        # an off-link router): a cable re-plug makes the client ask again by broadcast
        # (INIT-REBOOT, RFC 2131 3.2), as a technician would.
        lab.start_dhcp_server()
        port = ["ip", "-n", lab.switch, "link", "set", f"p-dev{device.index}"]
        subprocess.run([*port, "down"], check=True)
        subprocess.run([*port, "up"], check=True)
        t0 = time.monotonic()
        while time.monotonic() - t0 < 60:
            snap = ask(device, STATUS)
            if snap["network"].get("address", YIADDR) != YIADDR and \
                    snap["network"]["state"] == "bound":
                break
            time.sleep(0.5)
        assert snap["network"]["address"] != YIADDR, snap["network"]
        assert snap["network"]["router"] == ["192.0.2.1"]
        answer = device.run(["dig", "+short", "+time=2", "+tries=2", "@192.0.2.1",
                             "ldap.hospital.test"])
        assert answer.stdout.strip() == "192.0.2.1", answer.stdout + answer.stderr
        routes = device.ip("-4", "route")
        assert "198.51.100.99" not in routes and "203.0.113.1" not in routes, routes
        assert device.ip("-j", "link", "show", "eth0").count('"mtu":1500') == 1
    finally:
        lab.start_dhcp_server()
        if "proc" in locals():
            stop(proc)
            err = log.read_text()
            print("daemon log (tail):\n" + err[-6000:])  # shown when the test fails
            assert proc.returncode == 0, err
            # Nothing of ours failed (zeroconf may warn, with a traceback, while a
            # hostile /32 leaves it no route for multicast: its own log, not a fault).
            for fault in ("failed (restart", "never retrieved", "Unhandled exception"):
                assert fault not in err, err[-3000:]


def test_a_lease_time_of_zero_binds_for_the_floor_and_the_log_says_why(lab, device):
    """A raw server answering with option 51 = 0: bound for 20 s (dhcpcd's floor), with a
    warning naming the server and the value at the default log level (it stayed in
    acquiring-address, silently)."""
    from agent_helpers import agent

    lab.stop_dhcp_server()
    try:
        responder = lab.srv_popen([PYTHON, HOSTILE, device.mac, "1", YIADDR, "51=00000000"])
        assert read_line(responder, 30) == {"listening": True}, responder.stderr.read()
        proc = agent(device, "dhcp", "--interface", "eth0", "--no-probe", "--initial-delay",
                     "0", "--once", "--json", timeout=60)
        assert proc.returncode == 0, proc.stderr
        import json
        lease = json.loads(proc.stdout)
        assert lease["address"] == YIADDR and lease["lease_time"] == 20 and lease["t1"] == 10
        assert "ACK from 192.0.2.1: refused option 51: 0 s is below the 20 s floor: bound " \
               "for 20 s" in proc.stderr
    finally:
        lab._stop([responder])
        lab.start_dhcp_server()


def test_forty_copies_of_one_dns_server_are_one_nameserver_line(lab, device):
    """Option 6 from dnsmasq naming one server forty times (and another after): two
    servers, in order, in the lease and in the device's resolv.conf."""
    from agent_helpers import dhcp_once

    lab.device_options(device.mac, {6: ",".join(["192.0.2.1"] * 40 + ["192.0.2.53"])})
    lease = dhcp_once(device)
    assert lease["dns"] == ["192.0.2.1", "192.0.2.53"]
    resolv = (device.run_dir / "agent-run" / "resolv.conf").read_text()
    assert [line for line in resolv.splitlines() if line.startswith("nameserver")] == [
        "nameserver 192.0.2.1", "nameserver 192.0.2.53"]
