"""The whole agent (`dicom-agent run`) on a lab device, against every real server."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

from agent_helpers import AGENT, agent, write_config
from lab import ADMIN_DN, ADMIN_PASSWORD, CONFIG_ROOT_DN, REGISTRAR_DN

EXAMPLES = Path(__file__).resolve().parents[2] / "agent" / "examples"
DEVICES = f"cn=Devices,{CONFIG_ROOT_DN}"
REGISTRY = f"cn=Unique AE Titles Registry,{CONFIG_ROOT_DN}"


def archive_config(lab, device, name: str, hooks: bool = False, tls: bool = True) -> str:
    """The archive example (acceptor AEs on a plain and a TLS connection) on this device."""
    section = (EXAMPLES / "archive.toml").read_text().split("[device]", 1)[1]
    section = "[device]" + section.replace('name = "ARCHIVE2"', f'name = "{name}"').replace(
        "ARCHIVE2_", f"{name}_")
    directory = registrar_section(lab, device) if tls else \
        'domain = "hospital.test"\nrefresh_interval = 2.0'
    agent_section = f'hooks_dir = "{device.run_dir / "hooks"}"\nhook_timeout = 5.0' \
        if hooks else ""
    return write_config(device, network=f'hostname = "{name.lower()}"\narp_probe = false\n'
                                        "initial_delay = [0.0, 0.0]",
                        agent_section=agent_section, directory=directory,
                        device_section=section)


def sock(device) -> Path:
    return device.run_dir / "agent-run" / "status.sock"


def ask(device, request: dict) -> dict:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(str(sock(device)))
        s.sendall(json.dumps(request).encode() + b"\n")
        return json.loads(s.makefile().readline())


def wait_for(device, predicate, timeout: float = 40.0) -> dict:
    deadline = time.monotonic() + timeout
    last: dict = {}
    while time.monotonic() < deadline:
        try:
            last = ask(device, {"v": 1, "op": "status"})
            if predicate(last):
                return last
        except (OSError, ValueError):
            pass
        time.sleep(0.2)
    raise AssertionError(f"timed out; last snapshot: {json.dumps(last)[:2000]}")


def start(device, config: str) -> subprocess.Popen:
    return device.popen([AGENT, "run", "--config", config], stdout=subprocess.DEVNULL)


def stop(proc: subprocess.Popen) -> str:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    return err


def logged(lab, message: str, address: str) -> int:
    """How often dnsmasq logged `message` (DHCPDISCOVER, DHCPREQUEST...) for an address or MAC."""
    return len(re.findall(rf"{message}\(eth0\)[^\n]*{re.escape(address)}", lab.dhcp_log()))


def cleanup(host, name: str) -> None:
    admin = ["-x", "-H", "ldap://192.0.2.1", "-D", ADMIN_DN, "-w", ADMIN_PASSWORD]
    host.run(["ldapdelete", *admin, "-r", f"dicomDeviceName={name},{DEVICES}"])
    for suffix in ("STORE", "QR"):
        host.run(["ldapdelete", *admin, f"dicomAETitle={name}_{suffix},{REGISTRY}"])


def test_boot_to_ready_with_every_profile_then_goodbye(lab, device):
    name = f"AGT{device.index}"
    proc = start(device, archive_config(lab, device, name))
    try:
        snap = wait_for(device, lambda s: s["state"] == "ready")
        assert snap["degraded"] == []
        assert snap["network"]["state"] == "bound"
        assert snap["network"]["fqdn"] == f"{name.lower()}.hospital.test"
        assert snap["time"]["source"] == "dhcp" and snap["time"]["synced"]
        assert snap["time"]["utc_offset_s"] == 3600
        saved_time = json.loads((device.run_dir / "agent-state" / "time.json").read_text())
        assert saved_time["source"] == "dhcp" and saved_time["synced"] is True
        assert snap["directory"]["state"] == "registered"
        assert snap["directory"]["ae_titles"] == [f"{name}_STORE", f"{name}_QR"]
        assert {s["name"] for s in snap["dnssd"]["services"]} == {
            f"{name}_STORE._dicom._tcp.local.", f"{name}_STORE._dicom-tls._tcp.local.",
            f"{name}_QR._dicom-tls._tcp.local."}
        # An independent browser in the server namespace sees the advertisement.
        seen = lab.avahi_browse("_dicom._tcp", until=lambda f: any(
            s["name"] == f"{name}_STORE" for s in f))
        mine = [s for s in seen if s["name"] == f"{name}_STORE"]
        assert mine and mine[0]["port"] == "11112" and mine[0]["txt"] == {
            "AET": f"{name}_STORE", "PrimaryDeviceType": "ARCHIVE"}
        assert mine[0]["address"] == snap["network"]["address"]
        # The directory holds the device; lookups go through the agent.
        listed = device.run(["ldapsearch", "-x", "-LLL", "-H", "ldap://192.0.2.1", "-b",
                             DEVICES, f"(dicomDeviceName={name})", "dn"]).stdout
        assert f"dicomDeviceName={name}" in listed
        lookup = agent(device, "lookup", "ARCHIVE", "--socket", str(sock(device)), "--json")
        assert lookup.returncode == 0
        assert json.loads(lookup.stdout)["connections"][0]["port"] == 11112
        status = agent(device, "status", "--socket", str(sock(device)))
        assert status.stdout.startswith("state: ready\n")
        # The operator's ops: renew at once, refresh one cached entry, purge the cache.
        address = snap["network"]["address"]
        renews = logged(lab, "DHCPREQUEST", address)
        assert ask(device, {"v": 1, "op": "renew"}) == {"v": 1, "ok": True}
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and logged(lab, "DHCPREQUEST", address) == renews:
            time.sleep(0.1)
        assert logged(lab, "DHCPREQUEST", address) > renews
        cache = device.run_dir / "agent-state" / "cache"
        assert list(cache.glob("*.json"))  # the ARCHIVE lookup above was cached
        refreshed = agent(device, "lookup", "ARCHIVE", "--refresh", "--json", "--socket",
                          str(sock(device)))
        assert json.loads(refreshed.stdout)["source"] == "directory"
        assert ask(device, {"v": 1, "op": "purge-cache"}) == {"v": 1, "ok": True}
        assert not list(cache.glob("*.json"))
        query = agent(device, "query", "--cluster", "neuroradiology", "--json", "--socket",
                      str(sock(device)))
        assert [r["aet"] for r in json.loads(query.stdout)["results"]] == ["ARCHIVE"]
        assert stop(proc) is not None and proc.returncode == 0
        # Goodbye packets: the browser no longer lists the service.
        gone = lab.avahi_browse("_dicom._tcp", until=lambda f: not any(
            s["name"] == f"{name}_STORE" for s in f))
        assert not [s for s in gone if s["name"] == f"{name}_STORE"]
        assert not sock(device).exists()
    finally:
        stop(proc)
        cleanup(device, name)


def test_kill_9_and_restart_keep_the_lease_and_the_titles(lab, device):
    name = f"K9{device.index}"
    config = archive_config(lab, device, name)
    proc = start(device, config)
    try:
        first = wait_for(device, lambda s: s["state"] == "ready")
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        discovers = logged(lab, "DHCPDISCOVER", device.mac)
        proc = start(device, config)  # the stale socket is replaced
        again = wait_for(device, lambda s: s["state"] == "ready")
        assert again["network"]["address"] == first["network"]["address"]
        assert again["directory"]["ae_titles"] == first["directory"]["ae_titles"]
        assert logged(lab, "DHCPDISCOVER", device.mac) == discovers
    finally:
        stop(proc)
        cleanup(device, name)


def test_directory_down_at_boot_then_back(lab, device):
    name = f"DN{device.index}"
    config = archive_config(lab, device, name)
    lab.stop_ldap()
    proc = None
    try:
        proc = start(device, config)
        snap = wait_for(device, lambda s: s["state"] == "ready")
        assert snap["degraded"] == ["directory-unavailable"]
        assert snap["directory"]["state"] == "unavailable"
        # Fixed titles are advertised even without the directory.
        assert len(snap["dnssd"]["services"]) == 3
    finally:
        lab.start_ldap()
    try:
        # The agent retries (5 s, then doubling): registration completes once slapd is back.
        snap = wait_for(device, lambda s: s["directory"]["state"] == "registered", 40)
        assert snap["degraded"] == [] and snap["state"] == "ready"
        assert snap["directory"]["ae_titles"] == [f"{name}_STORE", f"{name}_QR"]
    finally:
        if proc is not None:
            stop(proc)
        cleanup(device, name)


HOOK = """#!/bin/sh
echo "$1 $DICOM_AGENT_ADDRESS $DICOM_AGENT_AE_TITLES" >> "{log}"
if [ "$1" = lease-lost ]; then ip -4 -o addr show dev eth0 >> "{log}"; fi
"""


def test_lease_loss_runs_the_hook_before_the_address_goes_and_withdraws(kea_lab, kea_device):
    device, lab = kea_device, kea_lab
    name = f"LL{device.index}"
    hooks = device.run_dir / "hooks"
    hooks.mkdir()
    log = device.run_dir / "hooks.log"
    (hooks / "10-record").write_text(HOOK.format(log=log))
    (hooks / "10-record").chmod(0o755)
    (hooks / "20-hang").write_text("#!/bin/sh\n[ \"$1\" = ready ] && sleep 60\nexit 0\n")
    (hooks / "20-hang").chmod(0o755)
    proc = start(device, archive_config(lab, device, name, hooks=True, tls=False))
    try:
        ready = wait_for(device, lambda s: s["state"] == "ready", 60)
        address = ready["network"]["address"]
        lab.stop_dhcp_server()
        try:
            lost = wait_for(device, lambda s: s["state"] == "acquiring-address", 40)
            assert lost["dnssd"]["services"] == []
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and address in device.ip("-4", "addr"):
                time.sleep(0.1)
            assert address not in device.ip("-4", "addr")  # gone, after the hook
        finally:
            lab.start_dhcp_server()
        text = log.read_text()
        events = [line.split()[0] for line in text.splitlines() if not line[0].isdigit()]
        assert events[0] == "lease-bound"
        assert {"time-synced", "ready", "lease-expiring", "lease-lost"} <= set(events)
        assert f"ready {address} {name}_STORE {name}_QR" in text  # the hook environment
        lost_at = text.index("lease-lost")
        assert f"inet {address}/24" in text[lost_at:]  # the address was still there
        assert proc.poll() is None  # the hanging hook was cut off, the agent lives
    finally:
        stop(proc)


def test_a_dns_sd_name_conflict_renames_the_instance_and_keeps_the_title(lab, device):
    other = lab.add_device()
    procs = []
    try:
        for dev in (device, other):
            section = (EXAMPLES / "workstation.toml").read_text().split("[device]", 1)[1]
            section = ("[device]" + section.replace('title_template = "WS{n:02d}"',
                                                    'title = "TWIN"')
                       .replace('name = "WS-READING-1"', f'name = "TWIN{dev.index}"'))
            config = write_config(dev, network=f'hostname = "twin{dev.index}"\n'
                                               'arp_probe = false\ninitial_delay = [0.0, 0.0]',
                                  directory="enabled = false", device_section=section)
            procs.append(start(dev, config))
            wait_for(dev, lambda s: s["state"] == "ready")
        names = [ask(dev, {"v": 1, "op": "status"})["dnssd"]["services"][0]
                 for dev in (device, other)]
        assert names[0]["name"] == "TWIN._dicom._tcp.local."
        assert names[1]["name"] != names[0]["name"] and "TWIN" in names[1]["name"]
        assert names[0]["txt"]["AET"] == names[1]["txt"]["AET"] == "TWIN"
    finally:
        for proc in procs:
            stop(proc)
        lab.remove_device(other)


def test_two_devices_probing_one_name_at_the_same_instant_never_both_keep_it(lab, device):
    """RFC 6762 8.2: two agents started together, one instance name; in each of 10 trials
    one keeps it and the other renames — never both — and the simultaneous-probe
    tie-break itself ran (its counters), not only the one-after-another path."""
    other = lab.add_device()
    title = f"SIM{device.index}"
    configs = []
    for dev in (device, other):
        section = (EXAMPLES / "workstation.toml").read_text().split("[device]", 1)[1]
        section = ("[device]" + section.replace('title_template = "WS{n:02d}"',
                                                f'title = "{title}"')
                   .replace('name = "WS-READING-1"', f'name = "SIM{dev.index}"'))
        configs.append(write_config(dev, network=f'hostname = "sim{dev.index}"\n'
                                                 'arp_probe = false\n'
                                                 'initial_delay = [0.0, 0.0]',
                                    directory="enabled = false", device_section=section))
    tiebreaks, renamed = 0, 0
    try:
        for trial in range(10):
            procs = [start(dev, config) for dev, config in zip((device, other), configs,
                                                              strict=True)]
            try:
                snaps = [wait_for(dev, lambda s: s["state"] == "ready"
                                  and s["dnssd"]["services"]) for dev in (device, other)]
                names = sorted(s["dnssd"]["services"][0]["name"] for s in snaps)
                assert names == [f"{title}-2._dicom._tcp.local.",
                                 f"{title}._dicom._tcp.local."], (trial, names)
                counts = [s["counters"]["dnssd"] for s in snaps]
                tiebreaks += sum(c["probe-tiebreaks-lost"] + c["probe-tiebreaks-won"]
                                 for c in counts)
                renamed += sum(c["renamed"] for c in counts)
            finally:
                for proc in procs:
                    stop(proc)
        print(f"simultaneous probing: {tiebreaks} tie-breaks in 10 trials, {renamed} renames")
        assert renamed == 10  # one rename per trial, by one of the two
        assert tiebreaks > 0, "the tie-break never ran: the agents did not probe together"
    finally:
        lab.remove_device(other)


def test_a_lookup_the_directory_cannot_answer_is_found_through_avahi(lab, device):
    """H.2: a title the directory does not know, advertised by another host's avahi-daemon
    (the server namespace's, on its own host name and address), is answered from DNS-SD."""
    i = device.index
    title = f"AVAHI{i}"
    published = lab.avahi_publish(title, "_dicom._tcp", 11112,
                                  {"AET": title, "PrimaryDeviceType": "MR"},
                                  host=f"modality{i}", address="198.51.100.10")
    section = (EXAMPLES / "ct.toml").read_text().split("[device]", 1)[1]
    config = write_config(device, network=f'hostname = "av{i}"\narp_probe = false\n'
                                          "initial_delay = [0.0, 0.0]",
                          directory=registrar_section(lab, device),
                          device_section="[device]" + section.replace(
                              'name = "CT01"', f'name = "AV{i}"').replace(
                              'title = "CT01_SCU"', f'title = "AV{i}_SCU"'))
    proc = start(device, config)
    try:
        wait_for(device, lambda s: s["state"] == "ready")
        answer = {}
        deadline = time.monotonic() + 15
        while not answer.get("found") and time.monotonic() < deadline:
            answer = ask(device, {"v": 1, "op": "lookup", "aet": title})
            time.sleep(0.3)
        assert answer["found"] and answer["source"] == "dnssd", answer
        [conn] = answer["connections"]
        assert (conn["hostname"], conn["port"], conn["addresses"]) == (
            "198.51.100.10", 11112, ["198.51.100.10"])
        unknown = ask(device, {"v": 1, "op": "lookup", "aet": f"NOBODY{i}"})
        assert unknown["found"] is False and unknown["source"] == "directory"
    finally:
        stop(proc)
        for p in published:
            p.terminate()
            p.wait(10)
        lab.unregister([f"AV{i}"], [f"AV{i}_SCU"])


def test_chrony_mode_hands_the_lease_servers_to_chronyd(lab, device):
    sourcedir, chrony_sock = device.start_chronyd()
    section = (EXAMPLES / "ct.toml").read_text().split("[device]", 1)[1]
    config = write_config(device, network='hostname = "ct-chrony"\narp_probe = false\n'
                                          "initial_delay = [0.0, 0.0]",
                          time_section=f'mode = "chrony"\nchrony_sourcedir = "{sourcedir}"\n'
                                       f'chronyc_socket = "{chrony_sock}"',
                          directory="enabled = false",
                          device_section="[device]" + section)
    proc = start(device, config)
    try:
        snap = wait_for(device, lambda s: s["state"] == "ready", 40)
        assert snap["degraded"] == []  # ready only once chronyd selected a source
        assert snap["time"]["mode"] == "chrony" and snap["time"]["synced"]
        assert snap["time"]["selected"] in ("192.0.2.11", "192.0.2.12", "192.0.2.13")
        assert "server 192.0.2.11 iburst" in (sourcedir / "eth0.sources").read_text()
        assert snap["time"]["chrony"]["tracking"]["stratum"] == 9
    finally:
        stop(proc)


def test_a_new_address_is_re_announced_and_written_to_the_directory(lab, device):
    name = f"MV{device.index}"
    section = (EXAMPLES / "workstation.toml").read_text().split("[device]", 1)[1]
    section = "[device]" + section.replace('title_template = "WS{n:02d}"',
                                           f'title = "{name}"').replace(
        'name = "WS-READING-1"', f'name = "{name}"')
    # No host name: the connection's dicomHostname is the address (H.1.1.3).
    config = write_config(device, network='arp_probe = false\ninitial_delay = [0.0, 0.0]',
                          directory=registrar_section(lab, device),
                          device_section=section)
    proc = start(device, config)
    try:
        first = wait_for(device, lambda s: s["state"] == "ready")
        old = first["network"]["address"]
        lab.reserve(device.mac, "192.0.2.150")
        ask(device, {"v": 1, "op": "renew"})  # dnsmasq NAKs the old address
        moved = wait_for(device, lambda s: s["state"] == "ready"
                         and s["network"].get("address") == "192.0.2.150", 40)
        assert moved["network"]["address"] != old
        seen = lab.avahi_browse("_dicom._tcp", until=lambda f: any(
            s["name"] == name and s["address"] == "192.0.2.150" for s in f))
        assert [s["address"] for s in seen if s["name"] == name] == ["192.0.2.150"]
        deadline = time.monotonic() + 20
        hostname = ""
        while time.monotonic() < deadline and hostname != "192.0.2.150":
            out = device.run(["ldapsearch", "-x", "-LLL", "-H", "ldap://192.0.2.1", "-b",
                              f"dicomDeviceName={name},{DEVICES}", "(cn=dicom)",
                              "dicomHostname"]).stdout
            hostname = (re.findall(r"dicomHostname: (\S+)", out) or [""])[0]
            time.sleep(0.3)
        assert hostname == "192.0.2.150"
    finally:
        stop(proc)
        cleanup(device, name)
        admin = ["-x", "-H", "ldap://192.0.2.1", "-D", ADMIN_DN, "-w", ADMIN_PASSWORD]
        device.run(["ldapdelete", *admin, f"dicomAETitle={name},{REGISTRY}"])


def registrar_section(lab, device) -> str:
    secret = device.run_dir / "registrar.pw"
    secret.write_text("registrarpw\n")
    secret.chmod(0o600)
    return ('domain = "hospital.test"\nsecurity = "tls"\n'
            f'ca_file = "{lab.run / "tls" / "ca.pem"}"\n'
            f'bind_dn = "{REGISTRAR_DN}"\npassword_file = "{secret}"')


def test_reload_takes_the_device_part_and_names_what_needs_a_restart(lab, device):
    section = "[device]" + (EXAMPLES / "ct.toml").read_text().split("[device]", 1)[1]
    config = write_config(device, network='hostname = "rl"\narp_probe = false\n'
                                          "initial_delay = [0.0, 0.0]",
                          directory="enabled = false", device_section=section)
    proc = start(device, config)
    try:
        wait_for(device, lambda s: s["state"] == "ready")
        path = Path(config)
        path.write_text(path.read_text().replace('title = "CT01_SCU"', 'title = "CT01_NEW"'))
        assert ask(device, {"v": 1, "op": "reload"}) == {"v": 1, "ok": True,
                                                         "restart_needed": []}
        assert ask(device, {"v": 1, "op": "status"})["directory"]["ae_titles"] == ["CT01_NEW"]
        path.write_text(path.read_text().replace('mode = "observe"', 'mode = "sntp"'))
        assert ask(device, {"v": 1, "op": "reload"})["restart_needed"] == ["time"]
        # The operator's command, and SIGHUP (the unit's ExecReload=), do the same.
        path.write_text(path.read_text().replace('title = "CT01_NEW"', 'title = "CT01_CMD"'))
        done = agent(device, "reload", "--socket", str(sock(device)))
        assert done.returncode == 0 and done.stdout.startswith("reloaded; a restart is "
                                                               "needed for [time]"), done
        assert ask(device, {"v": 1, "op": "status"})["directory"]["ae_titles"] == ["CT01_CMD"]
        path.write_text(path.read_text().replace('title = "CT01_CMD"', 'title = "CT01_HUP"'))
        proc.send_signal(signal.SIGHUP)
        wait_for(device, lambda s: s["directory"]["ae_titles"] == ["CT01_HUP"], 10)
        path.write_text(path.read_text().replace('role = "SCU"', 'role = "scu"'))
        bad = ask(device, {"v": 1, "op": "reload"})
        assert bad["error"]["code"] == "bad-request" and "role" in bad["error"]["message"]
        refused = agent(device, "reload", "--socket", str(sock(device)))
        assert refused.returncode == 1 and "role" in refused.stderr
        proc.send_signal(signal.SIGHUP)  # refused too: the configuration in force stays
        assert wait_for(device, lambda s: s["state"] == "ready")["directory"][
            "ae_titles"] == ["CT01_HUP"]
    finally:
        err = stop(proc)
    assert "reload refused, the configuration in force is kept" in err


def test_carrier_loss_shows_waiting_for_link_and_its_return_confirms_the_lease(lab, device):
    section = "[device]" + (EXAMPLES / "ct.toml").read_text().split("[device]", 1)[1]
    config = write_config(device, network='hostname = "cr"\narp_probe = false\n'
                                          "initial_delay = [0.0, 0.0]",
                          directory="enabled = false", device_section=section)
    proc = start(device, config)
    port = ["ip", "-n", lab.switch, "link", "set", f"p-dev{device.index}"]
    try:
        first = wait_for(device, lambda s: s["state"] == "ready")
        subprocess.run([*port, "down"], check=True)
        down = wait_for(device, lambda s: s["state"] == "waiting-for-link", 10)
        assert down["network"]["state"] == "no-carrier"
        subprocess.run([*port, "up"], check=True)
        back = wait_for(device, lambda s: s["state"] == "ready", 20)
        assert back["network"]["address"] == first["network"]["address"]
    finally:
        subprocess.run([*port, "up"])
        stop(proc)


def test_without_a_device_the_agent_answers_lookups_and_registers_nothing(lab, device):
    """No [device]: address, time and lookups; directory state lookup-only (not a
    degraded condition), nothing registered, nothing advertised, `ready`."""
    config = write_config(device, network='arp_probe = false\ninitial_delay = [0.0, 0.0]',
                          directory='domain = "hospital.test"', device_section="# none")
    proc = start(device, config)
    try:
        snap = wait_for(device, lambda s: s["state"] == "ready")
        assert snap["directory"]["state"] == "lookup-only" and snap["degraded"] == []
        assert snap["directory"]["ae_titles"] == [] and snap["dnssd"]["services"] == []
        answer = ask(device, {"v": 1, "op": "lookup", "aet": "ARCHIVE", "refresh": False})
        assert answer["found"] and answer["source"] == "directory"
    finally:
        stop(proc)
    assert not (device.run_dir / "agent-state" / "device-id").exists()  # no identity made
