"""The shipped units under a real systemd (issue 12): a minimal Debian root with the
package installed as an image build does (dpkg -i in a chroot), booted with
systemd-nspawn as PID 1, joined to a lab device's network namespace. The agent runs as its
own user with ambient capabilities; its directory password reaches it through
LoadCredential=. (The package's lifecycle — apt install, upgrade, remove, purge — is
test_package.py's.)"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from devroot import make, site_device, site_secrets
from lab import ADMIN_DN, ADMIN_PASSWORD
from test_agent import DEVICES, REGISTRY, logged

REPO = Path(__file__).resolve().parents[2]

CONFIG = """[network]
interface = "eth0"
hostname = "ct-systemd"
arp_probe = false
initial_delay = [0.0, 0.0]

[time]
mode = "observe"

"""


def until(predicate, timeout: float = 60.0, box=None):
    """`predicate()` once truthy; else fail, with the box's journal when given."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.25)
    journal = box.run(["journalctl", "-b", "--no-pager", "-n", "80"]).stdout if box else ""
    raise AssertionError(f"not within {timeout} s\n{journal}")


# Test only: a short watchdog (with the fault hook, SIGUSR2 stalls the event loop).
TEST_DROPIN = """[Service]
WatchdogSec=8
"""


def prepare(lab, box) -> None:
    """The lab's CA, the registrar's password as root's private file, the test drop-in."""
    site_secrets(box.root, lab.run / "tls" / "ca.pem")
    etc = box.root / "etc" / "dicom-agent"
    hook = etc / "hooks.d" / "10-record"  # root's, as an image ships it
    hook.write_text('#!/bin/sh\necho "$1 $(id -un)" >> /var/lib/dicom-agent/hooks.log\n')
    hook.chmod(0o755)
    # The fault hook beside the product: the launcher runs python3 -I (no PYTHONPATH).
    shutil.copy(REPO / "tests" / "faults" / "dicom_agent_faults.py",
                box.root / "usr" / "lib" / "dicom-agent" / "python")
    dropins = box.root / "etc" / "systemd" / "system" / "dicom-agent.service.d"
    (dropins / "test.conf").write_text(TEST_DROPIN)


def unregister(device, name: str) -> None:
    admin = ["-x", "-H", "ldap://192.0.2.1", "-D", ADMIN_DN, "-w", ADMIN_PASSWORD]
    device.run(["ldapdelete", *admin, "-r", f"dicomDeviceName={name},{DEVICES}"])
    device.run(["ldapdelete", *admin, f"dicomAETitle={name}_SCP,{REGISTRY}"])


def test_the_units_under_systemd_from_no_server_to_ready_kill_and_stop(lab, device, debs):
    name = f"SD{device.index}"
    box = make(f"dcmt-sd{device.index}", lab.run, device.ns,
               CONFIG + site_device(name), debs[0])
    prepare(lab, box)
    lab.stop_dhcp_server()
    try:
        box.boot()
        # No DHCP server: the unit is active (READY=1 when up), no timeout, no restart.
        agent = until(lambda: (s := box.show("dicom-agent", "ActiveState", "StatusText",
                                             "NRestarts"))["ActiveState"] == "active"
                      and s["StatusText"].startswith("acquiring-address") and s)
        assert agent["NRestarts"] == "0"
        waited = box.run(["dicom-agent", "wait", "--timeout", "5"])
        assert waited.returncode == 1 and "acquiring-address" in waited.stderr
        lab.start_dhcp_server()
        # The server is back: ready, the wait unit succeeds, the target is reached.
        until(lambda: box.show("dicom-agent", "StatusText")["StatusText"] == "ready")
        until(lambda: box.show("dicom-agent-wait-ready", "Result", "ActiveState")
              == {"Result": "success", "ActiveState": "active"})
        assert box.run(["systemctl", "is-active", "dicom-ready.target"]).stdout.strip() \
            == "active"
        address = box.run(["dicom-agent", "status", "--json"]).stdout
        discovers = logged(lab, "DHCPDISCOVER", device.mac)
        # kill -9: systemd restarts it; the same lease, without a DISCOVER.
        assert box.run(["systemctl", "kill", "-s", "KILL", "dicom-agent"]).returncode == 0
        until(lambda: box.show("dicom-agent", "NRestarts")["NRestarts"] == "1")
        until(lambda: box.show("dicom-agent", "StatusText")["StatusText"] == "ready")
        again = box.run(["dicom-agent", "status", "--json"]).stdout
        assert '"address": "' in again and again.split('"address": "')[1][:15] == \
            address.split('"address": "')[1][:15]
        assert logged(lab, "DHCPDISCOVER", device.mac) == discovers
        # Its own user, exactly the unit's capabilities: CAP_NET_BIND_SERVICE (10),
        # CAP_NET_ADMIN (12), CAP_NET_RAW (13), ambient, so effective for that user.
        uid = box.run(["id", "-u", "dicom-agent"]).stdout.strip()
        assert uid.isdigit() and uid != "0"
        main = box.show("dicom-agent", "MainPID")["MainPID"]
        status = box.run(["cat", f"/proc/{main}/status"]).stdout
        caps = {line.split(":")[0]: int(line.split()[1], 16) for line in status.splitlines()
                if line.startswith(("CapEff", "CapPrm", "CapBnd", "CapAmb"))}
        assert caps == {"CapEff": 0x3400, "CapPrm": 0x3400, "CapBnd": 0x3400,
                        "CapAmb": 0x3400}, caps
        assert [line.split()[1:] for line in status.splitlines()
                if line.startswith("Uid:")] == [[uid] * 4]
        # Registered over TLS with the password only systemd could read for it.
        assert box.run(["setpriv", "--reuid=dicom-agent", "--regid=dicom-agent",
                        "--clear-groups", "cat", "/etc/dicom-agent/credentials/registrar.pw"]
                       ).returncode != 0
        snap = box.run(["dicom-agent", "status", "--json"]).stdout
        assert '"state": "registered"' in snap and f'"{name}_SCP"' in snap, snap[:3000]
        # The lease's DNS server applied to the device's resolver, by the agent's user.
        resolv = box.run(["stat", "-c", "%U %a", "/etc/resolv.conf"]).stdout.split()
        assert resolv == ["dicom-agent", "644"]
        assert "nameserver 192.0.2.1" in (box.root / "etc" / "resolv.conf").read_text()
        # A hook owned by root ran, as the agent's user, in the state directory it owns.
        log = box.root / "var/lib/dicom-agent/hooks.log"
        hooks = until(lambda: log.exists() and "ready dicom-agent" in (text := log.read_text())
                      and text)
        assert "lease-bound dicom-agent" in hooks
        # A stalled event loop: no WATCHDOG=1, so systemd aborts it (the faulthandler
        # shows where it hung) and starts it again.
        assert box.run(["systemctl", "kill", "--kill-who=main", "-s", "USR2",
                        "dicom-agent"]).returncode == 0
        until(lambda: box.show("dicom-agent", "NRestarts")["NRestarts"] == "2", timeout=40)
        journal = box.run(["journalctl", "-u", "dicom-agent", "--no-pager"]).stdout
        assert "Watchdog timeout" in journal and "stall_the_loop_forever" in journal, \
            journal[-4000:]
        until(lambda: box.show("dicom-agent", "StatusText")["StatusText"] == "ready")
        # An independent browser sees the advertisement; systemctl stop says goodbye.
        name = f"{name}_SCP"
        seen = lab.avahi_browse("_dicom._tcp", until=lambda f: any(
            s["name"] == name for s in f))
        assert any(s["name"] == name for s in seen)
        assert box.run(["systemctl", "stop", "dicom-agent"]).returncode == 0
        stopped = box.show("dicom-agent", "Result", "ExecMainStatus", "ActiveState")
        assert stopped == {"Result": "success", "ExecMainStatus": "0",
                           "ActiveState": "inactive"}, stopped
        gone = lab.avahi_browse("_dicom._tcp", until=lambda f: not any(
            s["name"] == name for s in f))
        assert not any(s["name"] == name for s in gone)  # goodbye packets (RFC 6762 10.1)
    finally:
        lab.start_dhcp_server()
        box.stop()
        unregister(device, f"SD{device.index}")


CHRONY_CONFIG = """[network]
interface = "eth0"
arp_probe = false
initial_delay = [0.0, 0.0]

[time]
mode = "chrony"

[directory]
enabled = false

[device]
name = "SDCHRONY"

[[device.connection]]
name = "dicom"

[[device.ae]]
title = "SDCHRONY_SCU"
connections = ["dicom"]
"""
STORAGE_SCU = """
[[device.ae.transfer_capability]]
sop_class = "1.2.840.10008.5.1.4.1.1.2"
role = "SCU"
transfer_syntaxes = ["1.2.840.10008.1.2.1"]
"""

# Test only: chronyd without the clock (-x), so the container (no CAP_SYS_TIME) starts it.
CHRONY_TEST_DROPIN = """[Unit]
ConditionCapability=
[Service]
Environment=DAEMON_OPTS="-F 1 -x"
EnvironmentFile=
"""


def test_a_bad_config_is_not_restarted_and_chrony_mode_feeds_the_images_chronyd(
        lab, device, debs):
    """Exit 2 stops at once. The package's postinst drop-ins (SupplementaryGroups=_chrony;
    chronyd's socket opened to its group) let the unprivileged agent reload DHCP's NTP
    servers into a real chronyd."""
    box = make(f"dcmt-sc{device.index}", lab.run, device.ns, CHRONY_CONFIG, debs[0])
    dropins = box.root / "etc" / "systemd" / "system" / "chrony.service.d"
    assert (dropins / "50-dicom-agent.conf").exists()  # made by postinst: the image has chronyd
    unit = box.root / "etc" / "systemd" / "system" / "dicom-agent.service.d" / "50-time.conf"
    assert "SupplementaryGroups=_chrony" in unit.read_text()
    (dropins / "test.conf").write_text(CHRONY_TEST_DROPIN)
    try:
        box.boot()
        # An AE without a transfer capability: exit 2, failed, and not restarted in a loop.
        failed = until(lambda: (s := box.show("dicom-agent", "ActiveState", "ExecMainStatus",
                                              "NRestarts"))["ActiveState"] == "failed" and s)
        assert failed == {"ActiveState": "failed", "ExecMainStatus": "2", "NRestarts": "0"}
        time.sleep(3)  # RestartSec=2 has passed
        assert box.show("dicom-agent", "NRestarts", "ActiveState") == {
            "NRestarts": "0", "ActiveState": "failed"}
        journal = box.run(["journalctl", "-u", "dicom-agent", "--no-pager"]).stdout
        assert "transfer_capability: at least one" in journal
        config = box.root / "etc" / "dicom-agent" / "agent.toml"
        config.write_text(config.read_text() + STORAGE_SCU)
        assert box.run(["systemctl", "restart", "dicom-agent"]).returncode == 0
        until(lambda: box.show("dicom-agent", "StatusText")["StatusText"] == "ready",
              box=box)
        assert box.run(["systemctl", "is-active", "chrony"]).stdout.strip() == "active"
        sources = box.run(["stat", "-c", "%U %a", "/run/chrony-dhcp/eth0.sources"]).stdout
        assert sources.split() == ["dicom-agent", "644"]
        # chronyd took them (reload sources came from the agent's user) ...
        listed = until(lambda: "192.0.2.11" in (out := box.run(
            ["chronyc", "-n", "-c", "sources"]).stdout) and out)
        assert {"192.0.2.11", "192.0.2.12", "192.0.2.13"} <= set(
            line.split(",")[2] for line in listed.splitlines())
        # ... and the agent reads chronyd's state over the same socket, without error.
        snap = json.loads(box.run(["dicom-agent", "status", "--json"]).stdout)
        assert snap["time"]["last_error"] is None, snap["time"]
        assert {s["address"] for s in snap["time"]["servers"]} >= {"192.0.2.11"}
        groups = box.run(["id", "-nG", "dicom-agent"]).stdout.split()
        assert "_chrony" not in groups  # a member through the unit only, not in /etc/group
    finally:
        box.stop()
