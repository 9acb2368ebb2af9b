"""`dicom-agent dhcp` against real dnsmasq and Kea in the netns lab."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time

import pytest
from agent_helpers import (
    AGENT,
    PYTHON,
    agent,
    dhcp_once,
    ip_json,
    pcap_records,
    read_line,
    wait_until,
    write_config,
)

from profiles.network_address import options as o

CONTRACT_KEYS = {"state", "interface", "address", "prefix", "broadcast", "router", "routes",
                 "dns", "domain", "search", "hostname", "fqdn", "ntp", "time_offset",
                 "tz_posix", "tz_name", "mtu", "lease_time", "t1", "t2", "server_id",
                 "expires_at", "auto_configure", "options"}


def discovers(lab, mac: str) -> int:
    return len(re.findall(rf"DHCPDISCOVER\(eth0\)[^\n]*{mac}", lab.dhcp_log()))


@pytest.mark.parametrize("flavour", ["dnsmasq", "kea"])
def test_once_acquires_applies_and_prints_the_contract_json(flavour, request):
    dev = request.getfixturevalue("device" if flavour == "dnsmasq" else "kea_device")
    name = f"dev{dev.index}"
    lease = dhcp_once(dev, "--hostname", name)
    assert set(lease) >= CONTRACT_KEYS
    assert lease["state"] == "bound" and lease["interface"] == "eth0"
    assert re.fullmatch(r"192\.0\.2\.1\d\d", lease["address"]) and lease["prefix"] == 24
    assert lease["broadcast"] == "192.0.2.255" and lease["server_id"] == "192.0.2.1"
    assert lease["router"] == ["192.0.2.1"]
    assert lease["routes"] == [{"dst": "198.51.100.0/24", "via": "192.0.2.1"}]
    assert lease["dns"] == ["192.0.2.1"] and lease["domain"] == "hospital.test"
    assert lease["search"] == ["hospital.test"] and lease["mtu"] == 1500
    assert lease["ntp"] == ["192.0.2.11", "192.0.2.12", "192.0.2.13"]
    assert lease["time_offset"] == 3600
    assert lease["lease_time"] == (120 if flavour == "dnsmasq" else 20)
    assert lease["fqdn"] == f"{name}.hospital.test" and lease["hostname"] == name
    assert lease["options"]["121"] == "18c63364c000020100c0000201"
    # What the kernel holds: the address with a finite lifetime, routes (121 over 3), MTU.
    (link,) = ip_json(dev, "addr", "show", "dev", "eth0")
    (inet,) = [a for a in link["addr_info"] if a["family"] == "inet"]
    assert inet["local"] == lease["address"] and inet["prefixlen"] == 24
    assert 0 < inet["valid_life_time"] <= lease["lease_time"] + 10 + 1
    assert 0 < inet["preferred_life_time"] <= lease["lease_time"]
    assert link["mtu"] == 1500
    routes = {(r["dst"], r.get("gateway")) for r in ip_json(dev, "route")
              if r.get("protocol") == "dhcp"}
    assert routes == {("default", "192.0.2.1"), ("198.51.100.0/24", "192.0.2.1")}
    resolv = (dev.run_dir / "agent-run" / "resolv.conf").read_text()
    assert "nameserver 192.0.2.1\n" in resolv and "search hospital.test\n" in resolv
    saved = json.loads((dev.run_dir / "agent-state" / "lease-eth0.json").read_text())
    assert saved["lease"]["address"] == lease["address"] and saved["boot_id"]
    # The remote network is reachable through the route option 121 gave.
    assert dev.run(["busybox", "ping", "-c", "1", "-W", "2", "198.51.100.10"]).returncode == 0


def test_an_interface_that_is_down_is_set_up_as_on_a_real_machine(lab, device):
    """At power-on nobody else sets the NIC up (found in the VM: the agent waited for a
    carrier that never came): the agent does, as dhcpcd and systemd-networkd do."""
    device.ip("link", "set", "eth0", "down")
    assert "UP" not in device.ip("-o", "link", "show", "eth0").split(">")[0]
    lease = dhcp_once(device)
    assert lease["address"].startswith("192.0.2.")
    assert "state UP" in device.ip("-o", "link", "show", "eth0")


def test_restart_in_the_same_boot_reuses_the_lease_without_discover(lab, device):
    first = dhcp_once(device)
    before = discovers(lab, device.mac)
    again = dhcp_once(device)
    assert again["address"] == first["address"]
    assert discovers(lab, device.mac) == before


def test_init_reboot_confirms_a_lease_saved_in_another_boot(lab, device):
    first = dhcp_once(device)
    path = device.run_dir / "agent-state" / "lease-eth0.json"
    record = json.loads(path.read_text())
    record["boot_id"] = "another-boot"
    path.write_text(json.dumps(record))
    device.ip("addr", "flush", "dev", "eth0")
    before = discovers(lab, device.mac)
    again = dhcp_once(device)
    assert again["address"] == first["address"]
    assert discovers(lab, device.mac) == before  # REQUEST only: INIT-REBOOT
    assert re.search(rf"DHCPREQUEST\(eth0\) {first['address']} {device.mac}", lab.dhcp_log())


def test_init_reboot_on_another_network_is_nakked_and_starts_over(lab, device):
    dhcp_once(device)
    path = device.run_dir / "agent-state" / "lease-eth0.json"
    record = json.loads(path.read_text())
    record["boot_id"] = "another-boot"
    record["lease"]["address"] = "198.51.100.77"
    record["lease"]["bound_wall"] = time.time()
    path.write_text(json.dumps(record))
    device.ip("addr", "flush", "dev", "eth0")
    lease = dhcp_once(device)
    assert lease["address"].startswith("192.0.2.")
    assert re.search(rf"DHCPNAK\(eth0\) 198\.51\.100\.77 {device.mac}", lab.dhcp_log())


def test_conflict_is_declined_and_another_address_taken(lab, device, host):
    taken = dhcp_once(device)["address"]
    # Someone else now holds that address; the device forgets its lease and asks again
    # (dnsmasq offers it the same address: the probe must catch it).
    device.ip("addr", "flush", "dev", "eth0")
    (device.run_dir / "agent-state" / "lease-eth0.json").unlink()
    host.ip("addr", "add", f"{taken}/24", "dev", "eth0")
    proc = agent(device, "dhcp", "--interface", "eth0", "--initial-delay", "0", "--once",
                 "--json", "--timeout", "60")
    assert proc.returncode == 0, proc.stderr
    lease = json.loads(proc.stdout)
    assert lease["address"] != taken
    assert re.search(rf"DHCPDECLINE\(eth0\) {taken} {device.mac}", lab.dhcp_log())


def test_kea_ddns_publishes_the_device_name(kea_lab, kea_device):
    name = f"ct{kea_device.index}"
    lease = dhcp_once(kea_device, "--hostname", name)
    assert lease["fqdn"] == f"{name}.hospital.test"
    asker = kea_lab.add_device()
    try:
        asker.configure_static()
        deadline, answer = time.monotonic() + 10, ""
        while time.monotonic() < deadline:
            answer = asker.run(["dig", "+short", f"{name}.hospital.test"]).stdout.strip()
            if answer:
                break
            time.sleep(0.2)
        assert answer == lease["address"]
    finally:
        kea_lab.remove_device(asker)


def test_kea_short_lease_renews_rebinds_expires_and_recovers(kea_lab, kea_device):
    proc = kea_device.popen([AGENT, "dhcp", "--interface", "eth0",
                             "--no-probe", "--initial-delay", "0", "--json"])
    try:
        bound = read_line(proc, 15)
        assert bound and bound["event"] == "lease-bound", proc.stderr.read() if not bound else ""
        t0 = time.monotonic()
        renewed = read_line(proc, 15)
        assert renewed["event"] == "lease-renewed"
        renewed_at = time.monotonic()
        assert renewed_at - t0 >= 8  # not before T1 = 10 s (less the read's latency)
        assert renewed["address"] == bound["address"]
        kea_lab.stop_dhcp_server()
        try:
            expiring = read_line(proc, 25)
            assert expiring["event"] == "lease-expiring"
            assert time.monotonic() - renewed_at >= 16  # T2 = 17.5 s after renewal
            lost = read_line(proc, 6)
            assert lost["event"] == "lease-lost" and lost["address"] == bound["address"]
            assert time.monotonic() - renewed_at >= 18.5  # expiry = 20 s after it
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and [
                    a for i in ip_json(kea_device, "addr", "show", "dev", "eth0")
                    for a in i["addr_info"] if a["family"] == "inet"]:
                time.sleep(0.1)
            assert not [a for i in ip_json(kea_device, "addr", "show", "dev", "eth0")
                        for a in i["addr_info"] if a["family"] == "inet"]
        finally:
            kea_lab.start_dhcp_server()
        back = read_line(proc, 30)
        assert back and back["event"] == "lease-bound"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
    assert proc.returncode == 0, proc.stderr.read()


ROGUE = r'''
import sys
from scapy.all import BOOTP, DHCP, IP, UDP, Ether, conf, sendp
conf.verb = 0
mac = bytes.fromhex(sys.argv[1].replace(":", ""))
xid = int(sys.argv[2])
def frame(payload):
    return (Ether(dst="ff:ff:ff:ff:ff:ff") / IP(src="192.0.2.66", dst="255.255.255.255")
            / UDP(sport=67, dport=68) / payload)
good = BOOTP(op=2, xid=xid, chaddr=mac, yiaddr="192.0.2.250")
offer = lambda **kw: good / DHCP(options=[("message-type", "ack"), ("server_id", "192.0.2.66"),
                                          ("lease_time", 30), *kw.get("extra", []), "end"])
packets = [
    bytes(offer())[:250],                                            # truncated options
    bytes(good)[:236] + b"\x63\x82\x53\x63" + bytes((12, 200)) + b"x" * 10,   # overlong
    bytes(good)[:236] + b"\x63\x82\x53\x64" + bytes((53, 1, 5, 255)),         # bad cookie
    bytes(BOOTP(op=2, xid=xid ^ 0xFFFF, chaddr=mac) / DHCP(options=[("message-type", "ack"),
          ("server_id", "192.0.2.1"), ("lease_time", 30), "end"])),          # wrong xid
    bytes(offer()),                                                  # server not allowed
    bytes(offer(extra=[("hostname", b"x; reboot")])),
]
for p in packets * 3:
    sendp(frame(p), iface="eth0")
print(len(packets) * 3)
'''


def test_rogue_and_malformed_packets_never_crash_or_change_the_lease(lab, device, host):
    proc = device.popen([AGENT, "dhcp", "--interface", "eth0", "--no-probe",
                         "--initial-delay", "0", "--json"])
    try:
        bound = read_line(proc, 15)
        assert bound and bound["event"] == "lease-bound"
        saved = json.loads((device.run_dir / "agent-state" / "lease-eth0.json").read_text())
        (host.run_dir / "rogue.py").write_text(ROGUE)
        sent = host.run([PYTHON, str(host.run_dir / "rogue.py"), device.mac, "0"],
                        timeout=60)
        assert sent.returncode == 0, sent.stderr
        assert sent.stdout.strip() == "18"
        assert read_line(proc, 2) is None  # no lease event
        assert proc.poll() is None  # still running
        after = json.loads((device.run_dir / "agent-state" / "lease-eth0.json").read_text())
        assert after["lease"]["address"] == bound["address"] == saved["lease"]["address"]
        (link,) = ip_json(device, "addr", "show", "dev", "eth0")
        assert [a["local"] for a in link["addr_info"] if a["family"] == "inet"] == [
            bound["address"]]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
    assert proc.returncode == 0


CAPTURE = r'''
import json, sys
from scapy.all import BOOTP, DHCP, rdpcap
out = []
for pkt in rdpcap(sys.argv[1]):
    if BOOTP in pkt and pkt[BOOTP].op == 1:
        opts = {o[0]: [v.hex() if isinstance(v, bytes) else v for v in o[1:]]
                for o in pkt[DHCP].options if isinstance(o, tuple)}
        out.append({"secs": pkt[BOOTP].secs, "flags": int(pkt[BOOTP].flags), "options": opts})
print(json.dumps(out))
'''


def test_capture_shows_what_the_agent_puts_on_the_wire(lab, device):
    pcap = lab.run / f"capture-{device.index}.pcap"
    dump = lab.srv_popen(["tcpdump", "-i", "eth0", "-U", "-w", str(pcap),
                          f"udp port 67 and ether src {device.mac}"])
    try:
        assert "listening on" in dump.stderr.readline()  # tcpdump is capturing
        dhcp_once(device, "--hostname", "ct01")
        assert wait_until(lambda: pcap_records(pcap) >= 2)  # DISCOVER and REQUEST written
    finally:
        dump.terminate()
        dump.wait(10)
    (lab.run / "read_capture.py").write_text(CAPTURE)
    proc = lab.srv_exec([PYTHON, str(lab.run / "read_capture.py"), str(pcap)])
    assert proc.returncode == 0, proc.stderr
    sent = json.loads(proc.stdout)
    kinds = [m["options"]["message-type"][0] for m in sent]
    assert kinds[:2] == [1, 3]  # DISCOVER, REQUEST
    discover = sent[0]
    assert discover["options"]["param_req_list"] == [list(o.REQUESTED)]
    assert discover["options"]["client_id"][0].startswith("ff")  # RFC 4361
    assert discover["options"]["hostname"] == ["63743031"]
    assert discover["flags"] == 0x8000 and discover["secs"] == 0
    fqdn = discover["options"]["client_FQDN"][0]
    assert fqdn.startswith("05") and "0463743031" in fqdn  # S|E flags, partial name ct01


def test_a_device_that_may_auto_configure_says_so_in_discover(lab, device):
    """RFC 2563 2.2: option 116 = 1 in DISCOVER (a server may then answer "do not")."""
    pcap = lab.run / f"capture-{device.index}.pcap"
    dump = lab.srv_popen(["tcpdump", "-i", "eth0", "-U", "-w", str(pcap),
                          f"udp port 67 and ether src {device.mac}"])
    config = write_config(device, network="auto_ip = true\narp_probe = false\n"
                                          "initial_delay = [0.0, 0.0]")
    try:
        assert "listening on" in dump.stderr.readline()
        proc = agent(device, "dhcp", "--config", config, "--once", "--json")
        assert proc.returncode == 0, proc.stderr
        assert wait_until(lambda: pcap_records(pcap) >= 1)
    finally:
        dump.terminate()
        dump.wait(10)
    (lab.run / "read_capture.py").write_text(CAPTURE)
    read = lab.srv_exec([PYTHON, str(lab.run / "read_capture.py"), str(pcap)])
    discover = json.loads(read.stdout)[0]
    assert discover["options"]["message-type"] == [1]
    assert discover["options"]["auto-config"] == [1]


RESOLVE = r'''
import asyncio, dataclasses, json
from profiles.network_address.resolver_io import Resolver, ResolveError
async def main():
    r = Resolver(("192.0.2.9", "192.0.2.1"), ("hospital.test",))  # .9: nobody answers
    out = {"ldap": await r.addresses("ldap"),
           "srv": [dataclasses.astuple(s) for s in await r.srv("_ldap._tcp.hospital.test")]}
    try:
        await r.addresses("nothere")
    except ResolveError as exc:
        out["missing"] = str(exc)
    print(json.dumps(out))
asyncio.run(main())
'''


def test_resolver_answers_from_the_lab_dns(host):
    proc = host.run([PYTHON, "-c", RESOLVE], timeout=30)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["ldap"] == ["192.0.2.1"]
    assert sorted(out["srv"]) == [[0, 100, 389, "ldap.hospital.test"],
                                  [10, 100, 389, "ldap-backup.hospital.test"]]
    assert out["missing"].startswith("nothere: ")


def test_carrier_loss_stops_sending_and_its_return_confirms_the_lease(lab, device):
    proc = device.popen([AGENT, "dhcp", "--interface", "eth0", "--no-probe",
                         "--initial-delay", "0", "--json"])
    port = f"p-dev{device.index}"
    try:
        bound = read_line(proc, 15)
        assert bound and bound["event"] == "lease-bound"
        before = discovers(lab, device.mac)
        requests = len(re.findall(rf"DHCPREQUEST\(eth0\) {bound['address']} {device.mac}",
                                  lab.dhcp_log()))
        lab_sw = ["ip", "-n", lab.switch, "link", "set", port]
        assert subprocess.run([*lab_sw, "down"]).returncode == 0
        time.sleep(1.0)
        assert subprocess.run([*lab_sw, "up"]).returncode == 0
        again = read_line(proc, 15)  # INIT-REBOOT: the same lease confirmed
        assert again and again["event"] == "lease-bound", proc.stderr.read() if not again else ""
        assert again["address"] == bound["address"]
        assert discovers(lab, device.mac) == before
        assert len(re.findall(rf"DHCPREQUEST\(eth0\) {bound['address']} {device.mac}",
                              lab.dhcp_log())) == requests + 1
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)


def test_auto_ip_without_a_server_then_a_lease_replaces_it(lab, device):
    config = write_config(device, network='auto_ip = true\ndiscover_timeout = 2.0\n'
                                          'initial_delay = [0.0, 0.0]\narp_probe = false')
    lab.stop_dhcp_server()
    proc = device.popen([AGENT, "dhcp", "--config", config, "--json"])
    try:
        auto = read_line(proc, 20)  # 2 s without offer, then RFC 3927 probing (~3-9 s)
        assert auto and auto["event"] == "auto-ip", proc.stderr.read() if not auto else ""
        assert auto["state"] == "auto-ip" and auto["address"].startswith("169.254.")
        (link,) = ip_json(device, "addr", "show", "dev", "eth0")
        assert [(a["local"], a["prefixlen"], a["scope"]) for a in link["addr_info"]
                if a["family"] == "inet"] == [(auto["address"], 16, "link")]
        lab.start_dhcp_server()
        lines = [read_line(proc, 90) for _ in range(2)]
        assert [line and line["event"] for line in lines] == ["auto-ip-removed", "lease-bound"]
        assert lines[0]["reason"] == "lease"
        (link,) = ip_json(device, "addr", "show", "dev", "eth0")
        assert [a["local"] for a in link["addr_info"] if a["family"] == "inet"] == [
            lines[1]["address"]]
    finally:
        lab.start_dhcp_server()
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)


def test_once_gives_up_with_exit_1_when_no_allowed_server_answers(lab, device):
    config = write_config(device, network='server_allowlist = ["192.0.2.250"]')
    proc = agent(device, "dhcp", "--config", config, "--once", "--no-probe",
                 "--initial-delay", "0", "--timeout", "3")
    assert proc.returncode == 1
    # Why, in the log at its default level: the offers refused, once per server and reason.
    lines = proc.stderr.strip().splitlines()
    assert lines[-1] == "dhcp: no lease on eth0 within 3 s (state selecting)"
    assert lines[:-1] == ["WARNING profiles.network_address.dhcp_client: refused a reply "
                          "from 192.0.2.1: server-not-allowed"]
    assert re.search(rf"DHCPOFFER\(eth0\) 192\.0\.2\.\d+ {device.mac}", lab.dhcp_log())


@pytest.mark.parametrize("release", [True, False])
def test_release_on_stop_only_when_configured(lab, device, release):
    config = write_config(device, network=f"release_on_stop = {str(release).lower()}\n"
                                          "arp_probe = false\ninitial_delay = [0.0, 0.0]")
    proc = device.popen([AGENT, "dhcp", "--config", config, "--json"])
    bound = read_line(proc, 15)
    assert bound and bound["event"] == "lease-bound"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 0
    pattern = rf"DHCPRELEASE\(eth0\) {bound['address']} {device.mac}"
    # A RELEASE shows at once; its absence can only be watched for a while.
    released = wait_until(lambda: re.search(pattern, lab.dhcp_log()), 5 if release else 1)
    assert released is release


def test_static_routes_of_option_33_are_applied_only_without_option_121(lab, device, host):
    """Table F.1-2's option 33 from dnsmasq: applied as host routes through its gateway
    when the server sends no usable option 121 (dnsmasq, told to leave 121 out, sends it
    empty: malformed, refused — it had wiped the default route), ignored beside a real one
    (RFC 3442); the lease's broadcast address is the one the kernel holds (pyroute2)."""
    from test_multihomed import kernel_routes

    lab.device_options(device.mac, {121: "", 33: "198.51.100.7,192.0.2.1"})
    lease = dhcp_once(device)
    assert lease["routes"] == [{"dst": "198.51.100.7/32", "via": "192.0.2.1"}]
    assert lease["router"] == ["192.0.2.1"] and lease["options"]["121"] == ""
    ours = {r[:4] for r in kernel_routes(device) if r[4] == 16}
    assert ours == {("198.51.100.7/32", "eth0", "192.0.2.1", 1024),
                    ("0.0.0.0/0", "eth0", "192.0.2.1", 1024)}
    assert ("eth0", lease["address"], 24, lease["broadcast"]) in kernel_routes(device,
                                                                              "addresses")
    # The same option 33 beside the lab's option 121: ignored.
    lab.device_options(host.mac, {33: "198.51.100.7,192.0.2.1"})
    lease = dhcp_once(host)
    assert "33" in lease["options"] and "121" in lease["options"]
    assert lease["routes"] == [{"dst": "198.51.100.0/24", "via": "192.0.2.1"}]
