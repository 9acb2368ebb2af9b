"""The shipped units under a real systemd (issue 12): a minimal Debian root booted with
systemd-nspawn as PID 1, joined to a lab device's network namespace, the product
installed with agent/install.py from a wheelhouse."""

from __future__ import annotations

import time

import pytest
from devroot import make, wheelhouse
from test_agent import logged

CONFIG = """[network]
interface = "eth0"
hostname = "ct-systemd"
arp_probe = false
initial_delay = [0.0, 0.0]

[time]
mode = "observe"

[directory]
enabled = false

[device]
name = "CTSYSD"

[[device.connection]]
name = "dicom"
port = 104

[[device.ae]]
title = "CTSYSD_SCP"
connections = ["dicom"]

[[device.ae.transfer_capability]]
sop_class = "1.2.840.10008.1.1"
role = "SCP"
transfer_syntaxes = ["1.2.840.10008.1.2"]
"""


@pytest.fixture(scope="session")
def wheels(lab):
    return wheelhouse(lab.run / "wheelhouse")


def until(predicate, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"not within {timeout} s")


def test_the_units_under_systemd_from_no_server_to_ready_kill_and_stop(lab, device, wheels):
    box = make(f"dcmt-sd{device.index}", lab.run, device.ns, CONFIG, wheels)
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
        # Exactly the unit's capabilities (root in the container, the bounding set cut):
        # CAP_NET_BIND_SERVICE (10), CAP_NET_ADMIN (12), CAP_NET_RAW (13).
        main = box.show("dicom-agent", "MainPID")["MainPID"]
        status = box.run(["cat", f"/proc/{main}/status"]).stdout
        caps = {line.split(":")[0]: int(line.split()[1], 16) for line in status.splitlines()
                if line.startswith(("CapEff", "CapBnd", "CapAmb"))}
        assert caps == {"CapEff": 0x3400, "CapBnd": 0x3400, "CapAmb": 0x3400}, caps
        # An independent browser sees the advertisement; systemctl stop says goodbye.
        name = "CTSYSD_SCP"
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
