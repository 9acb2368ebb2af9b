"""`dicom-agent time --once` against the lab's chronyd servers (no clock is ever touched)."""

from __future__ import annotations

import datetime as dt
import json
import sys
import time
import zoneinfo
from pathlib import Path

from agent_helpers import agent, dhcp_once, write_config

NTP = ["192.0.2.11", "192.0.2.12", "192.0.2.13"]


def time_once(device, *args: str) -> tuple[int, dict]:
    proc = agent(device, "time", "--once", "--json", *args)
    assert proc.returncode in (0, 1) and proc.stdout.strip(), proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def test_a_lab_device_is_recognised_as_a_network_namespace(host):
    proc = host.run([sys.executable, "-c",
                     "from profiles.time_sync.sources import clock_guards; "
                     "print(clock_guards())"])
    assert "network-namespace: the clock is the host's" in proc.stdout, proc.stderr


def test_the_three_servers_of_dhcp_option_42(device):
    dhcp_once(device)
    rc, report = time_once(device)
    assert rc == 0
    assert report["mode"] == "observe" and report["source"] == "dhcp"
    assert [s["address"] for s in report["servers"]] == NTP
    assert all(s["accepted"] and s["stratum"] == 8 for s in report["servers"])
    assert report["synced"] and report["selected"] in NTP
    assert abs(report["offset_ms"]) < 5  # one clock for the whole lab: the truth is 0
    assert report["utc_offset_s"] == 3600 and report["utc_offset_source"] == "dhcp-time-offset"
    assert report["clock_control"]["allowed"] is False
    assert report["correction"] is None


def test_sntp_mode_in_a_namespace_measures_but_never_adjusts(device):
    dhcp_once(device)
    rc, report = time_once(device, "--mode", "sntp")
    assert rc == 0 and report["mode"] == "sntp" and report["synced"]
    assert report["clock_control"]["allowed"] is False
    assert "network-namespace: the clock is the host's" in report["clock_control"]["guards"]
    assert report["correction"] is None


def test_manual_servers_by_name_when_dhcp_gives_none(host):
    config = write_config(host, time_section='mode = "observe"\n'
                                             'servers = ["ntp1.hospital.test", "192.0.2.12"]')
    rc, report = time_once(host, "--config", config)
    assert rc == 0 and report["source"] == "manual"
    assert [s["address"] for s in report["servers"]] == ["192.0.2.11", "192.0.2.12"]
    assert report["utc_offset_source"] == "preset" and report["utc_offset_s"] == 0


def test_internal_clock_when_nothing_answers_or_nothing_is_known(host):
    rc, report = time_once(host, "--servers", "192.0.2.99")
    assert rc == 1 and not report["synced"]
    assert report["servers"][0]["reason"] == "no answer"
    rc, report = time_once(host)  # no lease saved, no configuration
    assert rc == 1 and report["source"] == "internal" and report["servers"] == []


def test_a_lying_server_among_two_honest_ones_is_outvoted(lab, host):
    liar = lab.start_ntp_liar("192.0.2.14", 5.0)
    try:
        rc, report = time_once(host, "--servers", "192.0.2.11,192.0.2.14,192.0.2.12")
    finally:
        liar.terminate()
        liar.wait(5)
        lab.srv_exec(["ip", "addr", "del", "192.0.2.14/24", "dev", "eth0"])
    assert rc == 0 and report["synced"] and report["selected"] in ("192.0.2.11", "192.0.2.12")
    lying = next(s for s in report["servers"] if s["address"] == "192.0.2.14")
    assert not lying["accepted"] and lying["reason"].startswith("falseticker")
    assert 4900 < lying["offset_ms"] < 5100
    assert abs(report["offset_ms"]) < 5


def test_option_101_and_100_from_dhcp_set_the_utc_offset(lab):
    dev = lab.devices[3]  # dnsmasq gives dev3 options 100 and 101
    lease = dhcp_once(dev)
    assert lease["tz_name"] == "Europe/Berlin"
    assert lease["tz_posix"] == "CET-1CEST,M3.5.0,M10.5.0/3"
    _, report = time_once(dev)
    berlin = dt.datetime.now(zoneinfo.ZoneInfo("Europe/Berlin")).utcoffset().total_seconds()
    assert report["utc_offset_s"] == berlin and report["tz"] == "Europe/Berlin"
    assert report["utc_offset_source"] == "dhcp-tz-name"
    assert report["local_time"].endswith("+01:00" if berlin == 3600 else "+02:00")
    dev.ip("addr", "flush", "dev", "eth0")


def test_autodiscovery_hears_broadcast_and_multicast_servers_first(device):
    """G.1.1.1: the lab's third server broadcasts, its second announces to 224.0.1.1
    (joined on eth0); both are heard, each said how, and used before option 42."""
    dhcp_once(device)
    config = write_config(device, time_section='mode = "observe"\nbroadcast_discovery = true\n'
                                               "broadcast_window = 5.0")
    rc, report = time_once(device, "--config", config)
    assert rc == 0 and report["source"] == "autodiscovery"
    assert sorted(s["address"] for s in report["servers"]) == ["192.0.2.12", "192.0.2.13"]
    assert sorted(report["autodiscovery"], key=lambda h: h["address"]) == [
        {"address": "192.0.2.12", "via": "multicast"},
        {"address": "192.0.2.13", "via": "broadcast"}]


def test_chrony_mode_hands_the_servers_to_a_real_chronyd(device):
    dhcp_once(device)
    sourcedir, sock = device.start_chronyd()
    config = write_config(device, time_section=f'mode = "chrony"\n'
                                               f'chrony_sourcedir = "{sourcedir}"\n'
                                               f'chronyc_socket = "{sock}"')
    rc, report = time_once(device, "--config", config, "--mode", "chrony")
    assert (sourcedir / "eth0.sources").read_text().splitlines()[1:] == [
        f"server {a} iburst" for a in NTP]
    assert rc == 0, report
    assert report["mode"] == "chrony" and report["synced"]
    assert report["selected"] in NTP
    assert {s["address"] for s in report["chrony"]["sources"]} == set(NTP)
    assert report["chrony"]["tracking"]["stratum"] == 9
    assert abs(report["offset_ms"]) < 5



def test_nts_or_nothing_where_the_certificate_names_the_server_and_chronyd_authenticates(
        lab, device):
    """G.1.3 secure time, fail closed: with `nts = true` the agent hands chronyd only the
    server whose NTS-KE certificate names its address under the lab CA (192.0.2.11), with
    `nts`; the two without an NTS-KE service are left out, never written without `nts`.
    The device's chronyd, trusting that CA, authenticates it (chronyc authdata: NTS,
    cookies held). With a CA the certificate does not chain to, nothing passes: chronyd is
    given no server, time is unauthenticated and not synchronized, each server's reason
    said. Plain NTP is used only with `nts_fallback = true`."""
    dhcp_once(device)
    ca = lab.run / "tls" / "ca.pem"
    sourcedir, sock = device.start_chronyd(nts_ca=ca)
    config = write_config(device, time_section=f'mode = "chrony"\nnts = true\n'
                                               f'nts_ca_file = "{ca}"\n'
                                               f'chrony_sourcedir = "{sourcedir}"\n'
                                               f'chronyc_socket = "{sock}"')
    _, report = time_once(device, "--config", config, "--mode", "chrony")
    assert (sourcedir / "eth0.sources").read_text().splitlines()[1:] == [
        "server 192.0.2.11 iburst nts"]
    servers = report["nts"]["servers"]
    assert servers["192.0.2.11"]["certificate"] == "ok" and servers["192.0.2.11"]["used"]
    assert servers["192.0.2.12"]["certificate"].startswith("no NTS-KE service on port 4460")
    assert servers["192.0.2.12"]["used"] is False and report["nts"]["unauthenticated"] is False
    auth = {}
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        out = device.run(["chronyc", "-h", str(sock), "-n", "-c", "authdata"]).stdout
        auth = {line.split(",")[0]: line.split(",") for line in out.splitlines()}
        if "192.0.2.11" in auth and int(auth["192.0.2.11"][8]) > 0:
            break
        time.sleep(0.5)
    assert auth["192.0.2.11"][1] == "NTS" and int(auth["192.0.2.11"][8]) > 0, auth
    assert set(auth) == {"192.0.2.11"}  # no unauthenticated source at all
    # A certificate that does not chain to the configured CA (another CA stands for a site
    # CA the server's certificate does not chain to): refused, said so, and nothing is
    # written — chronyd drops its sources rather than run unauthenticated NTP.
    other = device.run_dir / "other-ca.pem"
    other.write_text((lab.run / "tls" / "registrar.pem").read_text())
    Path(config).write_text(Path(config).read_text().replace(str(ca), str(other)))
    _, report = time_once(device, "--config", config, "--mode", "chrony")
    assert report["nts"]["servers"]["192.0.2.11"]["certificate"].startswith(
        "certificate not accepted")
    assert report["nts"]["unauthenticated"] is True
    assert report["synced"] is False and report["source"] == "internal"
    assert (sourcedir / "eth0.sources").read_text().splitlines()[1:] == []
    out = device.run(["chronyc", "-h", str(sock), "-n", "-c", "sources"]).stdout
    assert out.strip() == "", out  # chronyd holds no source
    # Only when the site says so: plain NTP as a fallback, reported.
    Path(config).write_text(Path(config).read_text().replace(
        "nts = true", "nts = true\nnts_fallback = true"))
    _, report = time_once(device, "--config", config, "--mode", "chrony")
    assert (sourcedir / "eth0.sources").read_text().splitlines()[1:] == [
        "server 192.0.2.11 iburst", "server 192.0.2.12 iburst", "server 192.0.2.13 iburst"]
    assert report["nts"]["fallback"] is True and report["nts"]["unauthenticated"] is True


def test_the_daemon_says_time_unauthenticated_when_no_nts_server_passes(lab, device):
    """The daemon in chrony mode with NTS and a CA no server's certificate chains to:
    `time-unauthenticated` (with `internal-clock`), each server's reason in the status,
    and chronyd holds no source; nothing degrades the device's address."""
    from test_agent import start, stop, wait_for

    sourcedir, sock = device.start_chronyd()
    other = device.run_dir / "other-ca.pem"
    other.write_text((lab.run / "tls" / "registrar.pem").read_text())
    config = write_config(device, network="arp_probe = false\ninitial_delay = [0.0, 0.0]",
                          time_section=f'mode = "chrony"\nnts = true\n'
                                       f'nts_ca_file = "{other}"\n'
                                       f'chrony_sourcedir = "{sourcedir}"\n'
                                       f'chronyc_socket = "{sock}"')
    proc = start(device, config)
    try:
        snap = wait_for(device, lambda s: "time-unauthenticated" in s["degraded"])
        assert "internal-clock" in snap["degraded"] and snap["time"]["synced"] is False
        servers = snap["time"]["nts"]["servers"]
        assert servers["192.0.2.11"]["certificate"].startswith("certificate not accepted")
        assert not any(s["used"] for s in servers.values())
        assert snap["network"]["state"] == "bound"
        assert (sourcedir / "eth0.sources").read_text().splitlines()[1:] == []
    finally:
        stop(proc)


KEEP_TIME = r'''
import asyncio, json, random
from profiles.time_sync.sntp_io import SntpDriver
from profiles.time_sync.sntp import SntpClient

async def main():
    updates, results = asyncio.Queue(), asyncio.Queue()
    driver = SntpDriver(SntpClient(random.Random(1)))
    async def on_result(result):
        await results.put(result)
    task = asyncio.create_task(driver.run(updates, on_result))
    await updates.put(["192.0.2.11"])
    first = await asyncio.wait_for(results.get(), 10)
    await updates.put(["192.0.2.12", "192.0.2.13"])  # a new lease, other servers
    second = await asyncio.wait_for(results.get(), 10)
    task.cancel()
    print(json.dumps([first.selected, [s["address"] for s in second.servers],
                      driver.core.poll]))
asyncio.run(main())
'''


def test_a_new_server_set_is_taken_without_a_restart(host):
    proc = host.run([sys.executable, "-c", KEEP_TIME], timeout=60)
    assert proc.returncode == 0, proc.stderr
    first, second, poll = json.loads(proc.stdout)
    assert first == "192.0.2.11"
    assert second == ["192.0.2.12", "192.0.2.13"]
    assert poll == 128.0  # one good round at 64 s doubled it


def test_the_manual_servers_back_up_dhcps_while_it_is_silent(lab, device):
    """G.1.1.1: manual configuration "shall be provided as a backup". Option 42 names one
    server, which does not answer (a blackhole route on the device): the manual server is
    asked as well and the device keeps time (source still dhcp, `manual_backup`); when the
    DHCP server's answers again, at the next poll, the manual one is dropped."""
    from test_agent import start, stop, wait_for

    lab.device_options(device.mac, {42: "192.0.2.11"})
    device.ip("route", "add", "blackhole", "192.0.2.11/32")
    config = write_config(device, network="arp_probe = false\ninitial_delay = [0.0, 0.0]",
                          time_section='mode = "sntp"\nservers = ["192.0.2.13"]')
    proc = start(device, config)
    try:
        backed = wait_for(device, lambda s: s["time"]["manual_backup"]
                          and s["time"]["selected"] == "192.0.2.13", 60)
        t = backed["time"]
        assert t["source"] == "dhcp" and t["synced"]
        assert {s["address"] for s in t["servers"]} == {"192.0.2.11", "192.0.2.13"}
        assert "internal-clock" not in backed["degraded"]
        device.ip("route", "del", "blackhole", "192.0.2.11/32")
        # Asked again at the next poll (64-128 s), it answers; the round after asks it alone.
        back = wait_for(device, lambda s: not s["time"]["manual_backup"]
                        and [x["address"] for x in s["time"]["servers"]] == ["192.0.2.11"],
                        240)
        assert back["time"]["selected"] == "192.0.2.11" and back["time"]["source"] == "dhcp"
    finally:
        stop(proc)
