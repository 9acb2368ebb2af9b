"""What the agent learns is applied to the device (issue 15, part 1): its own resolver
gets the site DNS, so a DICOM application using the system resolver reaches the archive
the directory names (DCMTK echoscu, a real peer); lookups carry addresses; the UTC
offset follows a DST rule's transition as it happens."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import time

from agent_helpers import (
    PYTHON,
    REPO,
    agent,
    default_device,
    read_line,
    wait_until,
    write_config,
)
from test_agent import ask, sock, start, stop, wait_for

from profiles.time_sync import timezone_io

FAST = 'arp_probe = false\ninitial_delay = [0.0, 0.0]\nresolver = "auto"'


def rule_switching_in(seconds: int) -> str:
    """A POSIX TZ whose daylight time (+1 h) begins `seconds` from now: standard time is
    UTC, so the rule's local time is UTC; it ends next month."""
    at = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=seconds)
    weekday = (at.weekday() + 1) % 7  # POSIX: 0 is Sunday
    week = (at.day - 1) // 7 + 1
    start = f"M{at.month}.{week}.{weekday}/{at.hour}:{at.minute:02d}:{at.second:02d}"
    return f"UTC0DST-1,{start},M{at.month % 12 + 1}.1.0"


def test_the_device_resolves_site_names_and_follows_a_dst_transition(lab, device):
    lab.device_options(device.mac, {100: f'"{rule_switching_in(25)}"'})
    scp = lab.srv_popen(["storescp", "-aet", "ARCHIVE", "11112"])
    hooks = device.run_dir / "hooks"
    hooks.mkdir()
    seen = device.run_dir / "hook-events"
    (hooks / "10-log").write_text(f'#!/bin/sh\necho "$1 $DICOM_AGENT_UTC_OFFSET" >> {seen}\n')
    (hooks / "10-log").chmod(0o755)
    config = write_config(device, network=FAST, agent_section=f'hooks_dir = "{hooks}"',
                          directory='domain = "hospital.test"',
                          device_section=default_device(device.index))
    proc = start(device, config)
    try:
        snap = wait_for(device, lambda s: s["network"]["state"] == "bound"
                        and s["directory"]["state"] != "locating")
        # F.1.3.4: the device's own /etc/resolv.conf (bind-mounted in the lab) has the
        # lease's DNS, not only the agent's record in its runtime directory.
        system = (device.run_dir / "resolv.conf").read_text()
        assert "nameserver 192.0.2.1" in system and "search hospital.test" in system
        answer = ask(device, {"v": 1, "op": "lookup", "aet": "ARCHIVE", "refresh": False})
        assert answer["connections"][0]["hostname"] == "pacs1.hospital.test"
        assert answer["connections"][0]["addresses"] == ["198.51.100.10"]
        # A real DICOM peer on the device, through the system resolver, by host name.
        echo = device.run(["echoscu", "-aet", f"DEV{device.index}", "-aec", "ARCHIVE",
                           "pacs1.hospital.test", "11112"], timeout=30)
        assert echo.returncode == 0, echo.stderr
        cli = agent(device, "lookup", "ARCHIVE", "--json", "--socket", str(sock(device)))
        assert '"addresses": ["198.51.100.10"]' in cli.stdout
        # Option 100's rule: standard time now, daylight time in a few seconds.
        assert snap["time"]["utc_offset_s"] == 0
        after = wait_for(device, lambda s: s["time"]["utc_offset_s"] == 3600, 60)
        assert after["time"]["utc_offset_source"] == "dhcp-posix-tz"
        # No zone of the tz database follows that rule: none applied (set_timezone's
        # default in sntp mode is on), and option 2's zone is not taken instead.
        assert after["time"]["timezone"]["applied"] is False
        assert "no zone here follows that rule" in after["time"]["timezone"]["reason"]
        # The hook runs in the background, after the snapshot changed: wait for it.
        assert wait_until(lambda: "time-offset-changed 3600" in seen.read_text())
    finally:
        err = stop(proc)
        scp.terminate()
        scp.wait(10)
    assert proc.returncode == 0 and "failed (restart" not in err, err


def test_a_new_lease_changes_servers_and_offset_at_once(lab, device):
    """G.1.1 and G.1.1.4 at a lease event: a renewal without option 42 gives the manual
    servers (never nothing); its new option 2 changes the UTC offset and fires the
    hook."""
    hooks = device.run_dir / "hooks"
    hooks.mkdir()
    seen = device.run_dir / "hook-events"
    (hooks / "10-log").write_text(f'#!/bin/sh\necho "$1 $DICOM_AGENT_UTC_OFFSET" >> {seen}\n')
    (hooks / "10-log").chmod(0o755)
    config = write_config(device, network=FAST.replace('"auto"', '"file"'),
                          agent_section=f'hooks_dir = "{hooks}"',
                          time_section='mode = "observe"\nservers = ["192.0.2.12"]',
                          directory="enabled = false")
    proc = start(device, config)
    try:
        dhcp = wait_for(device, lambda s: s["time"]["source"] == "dhcp" and s["time"]["synced"])
        assert sorted(x["address"] for x in dhcp["time"]["servers"]) == [
            "192.0.2.11", "192.0.2.12", "192.0.2.13"]
        assert dhcp["time"]["utc_offset_s"] == 3600  # the lab's option 2
        lab.device_options(device.mac, {42: "", 2: "7200"})
        assert ask(device, {"v": 1, "op": "renew"})["ok"] is True
        manual = wait_for(device, lambda s: s["time"]["source"] == "manual"
                          and s["network"]["ntp"] == [], 40)
        # At once: what is in use now, before the next round's figures.
        assert [x["address"] for x in manual["time"]["servers"]] == ["192.0.2.12"]
        assert manual["time"]["utc_offset_s"] == 7200
        asked = wait_for(device, lambda s: s["time"]["selected"] == "192.0.2.12"
                         and s["time"]["synced"], 40)
        assert asked["time"]["servers"][0]["accepted"] is True
        assert wait_until(lambda: seen.exists()
                          and "time-offset-changed 7200" in seen.read_text())
    finally:
        stop(proc)


def test_the_lease_zone_becomes_the_local_time(lab, device):
    """G.1.1.4 applied (set_timezone): the lab's option 2 (3600 s) as Etc/GMT-1, then a
    renewal with option 101 as that zone — the link in the device's own state directory
    (never this machine's /etc/localtime), which the C library reads as the local time;
    status and the time-offset-changed hook say which zone."""
    hooks = device.run_dir / "hooks"
    hooks.mkdir()
    seen = device.run_dir / "hook-events"
    (hooks / "10-log").write_text(f'#!/bin/sh\necho "$1 $DICOM_AGENT_TIMEZONE" >> {seen}\n')
    (hooks / "10-log").chmod(0o755)
    state = device.run_dir / "agent-state"
    config = write_config(device, network=FAST.replace('"auto"', '"file"'),
                          agent_section=f'hooks_dir = "{hooks}"',
                          time_section='mode = "observe"\nset_timezone = true',
                          directory="enabled = false", state_dir=str(state))
    link = state / "localtime"
    proc = start(device, config)
    try:
        first = wait_for(device, lambda s: s["time"]["timezone"]["applied"])
        assert first["time"]["timezone"] == {"zone": "Etc/GMT-1", "applied": True,
                                             "reason": "option 2: 3600 s"}
        assert timezone_io.current(state) == "Etc/GMT-1"
        assert local(link) == "+0100"
        assert (state / "timezone").read_text() == "Etc/GMT-1\n"
        assert wait_until(lambda: seen.exists()
                          and "time-offset-changed Etc/GMT-1" in seen.read_text())
        lab.device_options(device.mac, {101: '"America/New_York"'})
        assert ask(device, {"v": 1, "op": "renew"})["ok"] is True
        then = wait_for(device, lambda s: s["time"]["timezone"]["zone"] == "America/New_York",
                        40)
        assert then["time"]["timezone"]["applied"] and then["time"]["tz"] == "America/New_York"
        assert local(link) == ("-0400" if then["time"]["utc_offset_s"] == -4 * 3600
                               else "-0500")
        assert wait_until(lambda: "time-offset-changed America/New_York" in seen.read_text())
    finally:
        stop(proc)
    assert timezone_io.current(state) == "America/New_York"  # kept for the next start


def local(link) -> str:
    """The UTC offset a C library program reads through the link, as `date +%z`."""
    return subprocess.run(["date", "+%z"], env={"TZ": f":{link}"}, capture_output=True,
                          text=True, check=True).stdout.strip()


def test_chrony_mode_follows_a_server_change(lab, device):
    """A new lease with other NTP servers: the sources file is rewritten and chronyd
    (a real one on the device, -x) reloads them."""
    sourcedir, sock = device.start_chronyd()
    config = write_config(device, network=FAST.replace('"auto"', '"file"'),
                          time_section=f'mode = "chrony"\nchrony_sourcedir = "{sourcedir}"\n'
                                       f'chronyc_socket = "{sock}"',
                          directory="enabled = false")
    proc = start(device, config)
    try:
        wait_for(device, lambda s: s["time"]["source"] == "dhcp"
                 and len(s["time"]["servers"]) == 3, 40)
        lab.device_options(device.mac, {42: "192.0.2.13"})
        assert ask(device, {"v": 1, "op": "renew"})["ok"] is True
        assert wait_until(lambda: (sourcedir / "eth0.sources").read_text().splitlines()[1:]
                          == ["server 192.0.2.13 iburst"], 20)
        after = wait_for(device, lambda s: [x["address"] for x in s["time"]["servers"]]
                         == ["192.0.2.13"] and s["time"].get("chrony"), 20)
        assert after["time"]["last_error"] is None
        chronyd = device.run(["chronyc", "-h", str(sock), "-n", "-c", "sources"]).stdout
        assert [line.split(",")[2] for line in chronyd.splitlines()] == ["192.0.2.13"]
    finally:
        stop(proc)


def test_autodiscovery_keeps_listening_and_follows_servers_heard_and_lost(lab, device):
    """G.1.1 held over time: the daemon hears the lab's announcing servers (broadcast
    and 224.0.1.1), then a new one, uses them before option 42, and drops the new one
    once it goes quiet — without a lease event."""
    config = write_config(device, network=FAST.replace('"auto"', '"file"'),
                          time_section='mode = "observe"\nbroadcast_discovery = true\n'
                                       "broadcast_window = 2.0",
                          directory="enabled = false")
    proc = start(device, config)
    extra = None
    try:
        def servers(s):
            return sorted(x["address"] for x in s["time"]["servers"])

        snap = wait_for(device, lambda s: s["time"]["source"] == "autodiscovery"
                        and servers(s) == ["192.0.2.12", "192.0.2.13"]
                        and s["time"]["selected"] is not None, 40)
        assert snap["time"]["selected"] in ("192.0.2.12", "192.0.2.13")
        extra = lab.start_ntp_announcer("192.0.2.14", "224.0.1.1")
        heard = wait_for(device, lambda s: "192.0.2.14" in servers(s), 30)
        assert {"address": "192.0.2.14", "via": "multicast"} in heard["time"]["autodiscovery"]
        lab.stop_ntp_announcer(extra)
        # Quiet for 3 of its 2 s intervals (at least the 2 s window): lost.
        lost = wait_for(device, lambda s: "192.0.2.14" not in servers(s), 30)
        assert lost["time"]["source"] == "autodiscovery"
        assert servers(lost) == ["192.0.2.12", "192.0.2.13"]
        # A renewal (option 42 in it) does not override what autodiscovery heard.
        expires = lost["network"]["lease_expires_in"]
        assert ask(device, {"v": 1, "op": "renew"})["ok"] is True
        after = wait_for(device, lambda s: s["network"]["lease_expires_in"] > expires + 1)
        assert after["time"]["source"] == "autodiscovery" and servers(after) == servers(lost)
    finally:
        if extra is not None:
            lab.stop_ntp_announcer(extra)
        stop(proc)


def test_a_host_claiming_our_address_is_defended_then_the_address_is_declined(
        lab, device, host):
    """RFC 5227 2.4 on the lab link: a second host claims the device's address; the
    agent defends it once (its announcement seen by the claimer) and, claimed again
    within 10 s, gives it up: DHCPDECLINE, lease lost, a new address — with the
    address-conflict hook and counters."""
    hooks = device.run_dir / "hooks"
    hooks.mkdir()
    seen = device.run_dir / "hook-events"
    (hooks / "10-log").write_text(
        f'#!/bin/sh\necho "$1 $DICOM_AGENT_ADDRESS $DICOM_AGENT_CONFLICT_DEFENDED" >> {seen}\n')
    (hooks / "10-log").chmod(0o755)
    config = write_config(device, network='arp_probe = true\ninitial_delay = [0.0, 0.0]\n'
                                          'resolver = "file"',
                          agent_section=f'hooks_dir = "{hooks}"', directory="enabled = false")
    proc = start(device, config)
    claimer = [str(REPO / ".venv" / "bin" / "python"),
               str(REPO / "netns-fixtures" / "clients" / "arp_claim.py")]
    try:
        first = wait_for(device, lambda s: s["network"].get("address") is not None, 40)
        address = first["network"]["address"]
        mac = (device.run(["cat", "/sys/class/net/eth0/address"]).stdout.strip())
        time.sleep(3)  # past the two initial announcements (RFC 5227 2.3, 2 s apart)
        # A busy LAN: ARP for other addresses never reaches the agent (the kernel filter).
        other = address.rsplit(".", 1)[0] + ".254"  # nobody's
        noise = json.loads(host.run([*claimer, "--noise", other, "300"], timeout=30).stdout)
        assert noise["sent"] == 300
        quiet = ask(device, {"v": 1, "op": "status"})
        assert quiet["counters"]["dhcp"].get("arp-watched", 0) == 0
        answer = json.loads(host.run([*claimer, address, "3"], timeout=20).stdout)
        assert answer == {"claimed": address, "defended_by": mac}
        defended = wait_for(device, lambda s: s["counters"]["dhcp"].get(
            "conflict-defended") == 1)
        assert defended["counters"]["dhcp"]["arp-watched"] >= 1  # the claim came through
        assert defended["network"]["address"] == address  # kept: defended
        again = json.loads(host.run([*claimer, address, "1"], timeout=20).stdout)
        assert again["defended_by"] is None  # the second claim is not defended
        moved = wait_for(device, lambda s: s["network"]["state"] == "bound"
                         and s["network"]["address"] not in (None, address), 60)
        assert moved["counters"]["dhcp"]["conflict-declined"] == 1
        assert "DHCPDECLINE" in lab.dhcp_log() and address in lab.dhcp_log()
        assert wait_until(lambda: seen.exists() and
                          f"address-conflict {address} no" in seen.read_text())
        lines = seen.read_text().splitlines()
        assert f"address-conflict {address} yes" in lines
        assert lines.index(f"address-conflict {address} yes") < lines.index(
            f"address-conflict {address} no")
        assert any(line.startswith("lease-lost") for line in lines)
    finally:
        stop(proc)


def test_a_server_saying_do_not_auto_configure_is_honoured(lab, device):
    """RFC 2563: the DISCOVER carries option 116 (auto_ip permitted); a server of a
    network that forbids auto-configuration answers with no address and 116 = 0; past
    discover_timeout the agent configures no link-local address, and says why."""
    lab.stop_dhcp_server()
    responder = None
    proc = None
    try:
        responder = lab.srv_popen([PYTHON, str(REPO / "netns-fixtures" / "clients" /
                                               "no_autoconf_dhcp.py"), device.mac])
        assert read_line(responder, 30) == {"listening": True}, responder.stderr.read()
        config = write_config(device, network='arp_probe = false\ninitial_delay = [0.0, 0.0]\n'
                                              'auto_ip = true\ndiscover_timeout = 2.0\n'
                                              'resolver = "file"',
                              directory="enabled = false")
        proc = start(device, config)
        first = read_line(responder, 20)
        assert first["option_116"] == "01" and first["answered"]  # asked, and told no
        snap = wait_for(device, lambda s: s["network"].get("auto_ip_forbidden") is True, 20)
        time.sleep(4)  # twice discover_timeout: a permitted agent would have auto-IP now
        snap = ask(device, {"v": 1, "op": "status"})
        assert "address" not in snap["network"] and snap["network"]["auto_ip_forbidden"]
        assert not [a for a in device.addresses() if a.startswith("169.254.")]
        assert json.dumps(snap["network"]).count("169.254") == 0
    finally:
        if proc is not None:
            stop(proc)
        if responder is not None:
            lab._stop([responder])
        lab.start_dhcp_server()
