"""A real device (issue 28): Debian 12 with the package installed, booted in qemu on the
lab's link (netns-fixtures/vm.py), its real-time clock years in the past. One VM per run:
first boot, then a reboot, then a power cut — its state read from the reporter on its
second serial port, never by logging in. Nothing here touches this machine's clock or
interfaces: the VM's clock and NIC are its own."""

from __future__ import annotations

import json
import time

import pytest
from lab import ADMIN_DN, ADMIN_PASSWORD, DEVICES_DN, REGISTRAR_DN, REGISTRY_DN
from test_agent import logged
from vm import SNTP_DEVICE, make, sntp_device

pytestmark = [pytest.mark.vm, pytest.mark.timeout(900)]

MAC = "02:dc:00:00:00:99"
NAME = "VMCT1"
# Years after the lab's time: an RTC in the past is moved up to systemd's own build time
# at boot (its clock epoch), so a past RTC is only months off on Debian 12.
RTC = "2031-06-01T00:00:00"
BOOT = 420.0  # s: power-on to ready under TCG, with room


@pytest.fixture(scope="module")
def machine(lab, debs):
    site = SNTP_DEVICE.format(registrar=REGISTRAR_DN, name=NAME)
    machine = make("vm1", lab.run, lab.switch, MAC, debs[0],
                   {"/etc/dicom-agent/agent.toml.d/50-site.toml": site},
                   lambda root: sntp_device(root, lab.run / "tls" / "ca.pem"), rtc=RTC)
    try:
        yield machine
    finally:
        machine.remove()
        for cmd in (["ldapdelete", "-r", f"dicomDeviceName={NAME},{DEVICES_DN}"],
                    ["ldapdelete", f"dicomAETitle={NAME}_SCP,{REGISTRY_DN}"]):
            lab.srv_exec([cmd[0], "-x", "-H", "ldap://192.0.2.1", "-D", ADMIN_DN, "-w",
                          ADMIN_PASSWORD, *cmd[1:]])


def ready(report) -> bool:
    s = report.get("status")
    return isinstance(s, dict) and s.get("state") == "ready"


def test_power_on_steps_the_clock_from_years_off_registers_and_reboots_clean(lab, machine):
    machine.boot()
    first = machine.wait(lambda r: r.get("status") is not None, BOOT)
    assert first["vm_time"] > time.time() + 3 * 365 * 86400  # the RTC's 2031
    up = machine.wait(ready, BOOT)
    print(f"power-on to ready (TCG): {time.time() - machine.started[-1]:.1f} s")
    status = up["status"]
    # The network, the clock (stepped at the first update: the step policy's first
    # sync), the directory over TLS once the clock was right.
    assert status["network"]["interface"] == "ens2" and status["degraded"] == []
    assert status["time"]["clock_control"] == {"allowed": True, "guards": []}
    assert status["time"]["synced"] and status["time"]["correction"] == "step"
    assert status["time"]["offset_ms"] < -3 * 365 * 86400 * 1000
    assert status["directory"]["state"] == "registered"
    assert status["directory"]["ae_titles"] == [f"{NAME}_SCP"]
    # (A line's time is read before its status: the next line's is after the step.)
    next_line = machine.wait(lambda r: r.get("status") is not None, 30, after=up)
    assert abs(next_line["vm_time"] - time.time()) < 10  # the VM's clock is the lab's
    # Then slewed: a minute on, an independent client in the VM (ntpdig) measures the
    # lab's server within 10 ms.
    settled = machine.wait(lambda r: isinstance(r.get("ntp"), dict)
                           and r["vm_time"] > next_line["vm_time"] + 60, 180, after=up)
    print("ntpdig after a minute:", json.dumps(settled["ntp"]))
    assert abs(settled["ntp"]["offset"]) < 0.010, settled["ntp"]


def test_a_reboot_confirms_the_saved_lease_and_keeps_the_device(lab, machine):
    """`systemctl reboot` in the VM: a new boot ID, INIT-REBOOT with the saved lease (a
    REQUEST, no DISCOVER), the same address, titles and directory entry; ready again."""
    before = machine.last(ready)
    discovers = logged(lab, "DHCPDISCOVER", MAC)
    machine.command("reboot")
    again = machine.wait(lambda r: ready(r) and r["boot_id"] != before["boot_id"], BOOT,
                         after=before)
    s, t = again["status"], before["status"]
    assert s["network"]["address"] == t["network"]["address"]
    assert s["directory"]["ae_titles"] == t["directory"]["ae_titles"]
    assert s["directory"]["device_dn"] == t["directory"]["device_dn"]
    assert logged(lab, "DHCPDISCOVER", MAC) == discovers  # INIT-REBOOT: no DISCOVER
    assert logged(lab, "DHCPREQUEST", MAC) >= 2
    assert entries(lab) == 1


def test_a_power_cut_boots_as_clean(lab, machine):
    before = machine.last(ready)
    discovers = logged(lab, "DHCPDISCOVER", MAC)
    machine.power_cut()
    machine.boot()
    again = machine.wait(lambda r: ready(r) and r["boot_id"] != before["boot_id"], BOOT,
                         after=before)
    s, t = again["status"], before["status"]
    assert (s["network"]["address"], s["directory"]["ae_titles"]) == (
        t["network"]["address"], t["directory"]["ae_titles"])
    assert logged(lab, "DHCPDISCOVER", MAC) == discovers
    assert entries(lab) == 1


def entries(lab) -> int:
    out = lab.srv_exec(["ldapsearch", "-x", "-LLL", "-H", "ldap://192.0.2.1", "-b",
                        DEVICES_DN, f"(dicomDeviceName={NAME})", "dn"]).stdout
    return sum(line.startswith("dn:") for line in out.splitlines())
