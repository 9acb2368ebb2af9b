"""A real device (issue 28): Debian 12 with the package installed, booted in qemu on the
lab's link (netns-fixtures/vm.py), its real-time clock years ahead. One VM per run, the
tests in order: first boot (sntp: the clock stepped, the local time zone set); a new
lease with another zone; a lying server's step refused; a reboot; then chronyd's turn
and a power cut — its state read from the reporter on its second serial port, never by
logging in. Nothing here touches this machine's clock, time zone or interfaces: the
VM's are its own."""

from __future__ import annotations

import json
import time

import pytest
from devroot import site_device
from lab import ADMIN_DN, ADMIN_PASSWORD, DEVICES_DN, REGISTRY_DN
from test_agent import logged
from vm import make, sntp_device

pytestmark = [pytest.mark.vm, pytest.mark.timeout(900)]

MAC = "02:dc:00:00:00:99"
NAME = "VMCT1"
# Years after the lab's time: an RTC in the past is moved up to systemd's own build time
# at boot (its clock epoch), so a past RTC is only months off on Debian 12.
RTC = "2031-06-01T00:00:00"
BOOT = 420.0  # s: power-on to ready under TCG, with room
LIAR = "192.0.2.16"  # an NTP server an hour ahead, for this VM only (option 42)


@pytest.fixture(scope="module")
def machine(lab, debs):
    site = site_device(NAME)
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
    first = machine.wait(lambda r: "date" in r, BOOT)
    assert first["vm_time"] > time.time() + 3 * 365 * 86400  # the RTC's 2031
    up = machine.wait(ready, BOOT)
    print(f"power-on to ready ({machine.accel}): {time.time() - machine.started[-1]:.1f} s")
    status = up["status"]
    # The network, the clock (stepped at the first update: the step policy's first
    # sync), the directory over TLS once the clock was right.
    assert status["network"]["interface"] == "ens2" and status["degraded"] == []
    assert status["time"]["clock_control"] == {"allowed": True, "guards": []}
    assert status["time"]["synced"] and status["time"]["correction"] == "step"
    assert status["time"]["offset_ms"] < -3 * 365 * 86400 * 1000
    assert status["directory"]["state"] == "registered"
    assert status["directory"]["ae_titles"] == [f"{NAME}_SCP"]
    next_line = machine.wait(lambda r: "date" in r, 30, after=up)
    assert abs(next_line["vm_time"] - time.time()) < 10  # the VM's clock is the lab's
    # Then slewed: a minute on, an independent client in the VM (ntpdig) measures the
    # lab's server within 10 ms.
    settled = machine.wait(lambda r: isinstance(r.get("ntp"), dict)
                           and r["vm_time"] > next_line["vm_time"] + 60, 180, after=up)
    print("ntpdig after a minute:", json.dumps(settled["ntp"]))
    assert abs(settled["ntp"]["offset"]) < 0.010, settled["ntp"]
    # G.1.1.4: the lab's option 2 (3600 s) is the local time, as `date` shows it.
    zoned = machine.wait(lambda r: zone(r) is not None and zone(r)["applied"], 60, after=up)
    assert zone(zoned) == {"zone": "Etc/GMT-1", "applied": True, "reason": "option 2: 3600 s"}
    shown = machine.wait(lambda r: "date" in r, 10, after=zoned)
    assert shown["date"] == {"z": "+0100", "Z": "+01"}


def test_a_new_lease_with_another_zone_changes_the_local_time(lab, machine):
    """Option 101 at the next renewal (the operator's `dicom-agent renew`): `date` in the
    VM shows New York's time."""
    before = machine.last(ready)
    lab.device_options(MAC, {101: '"America/New_York"'})
    machine.command("renew")
    changed = machine.wait(lambda r: zone(r) is not None
                           and zone(r)["zone"] == "America/New_York", 120, after=before)
    assert zone(changed)["applied"] and changed["status"]["time"]["tz"] == "America/New_York"
    shown = machine.wait(lambda r: "date" in r, 10, after=changed)
    assert shown["date"]["Z"] in ("EST", "EDT") and shown["date"]["z"] in ("-0500", "-0400")


def test_a_step_beyond_the_policy_is_refused_and_reported(lab, machine):
    """After the first sync, one server an hour ahead (option 42 names only it): more
    than step_limit_s with fewer than three agreeing servers — refused, reported
    (degraded clock-step-refused), and the VM's clock stays the lab's; the lab's servers
    again, and the condition clears."""
    before = machine.last(ready)
    liar = lab.start_ntp_liar(LIAR, 3600.0)
    try:
        lab.device_options(MAC, {42: LIAR})
        machine.command("renew")
        refused = machine.wait(lambda r: "clock-step-refused" in degraded(r), 120,
                               after=before)
        t = refused["status"]["time"]
        assert t["correction"] == "refused" and t["selected"] in (None, LIAR)
        assert "three agreeing servers" in t["correction_refused"], t
        assert abs(t["offset_ms"] - 3600_000) < 1000
        # The independent client still finds the VM's clock on the lab's.
        kept = machine.wait(lambda r: isinstance(r.get("ntp"), dict), 30, after=refused)
        assert abs(kept["ntp"]["offset"]) < 0.010, kept["ntp"]
    finally:
        lab.device_options(MAC, {42: None})
        liar.terminate()
        liar.wait(10)
    machine.command("renew")
    cleared = machine.wait(lambda r: ready(r) and "clock-step-refused" not in degraded(r)
                           and r["status"]["time"]["synced"], 180, after=refused)
    assert cleared["status"]["time"]["correction"] in ("slew", "step")


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
    # The local time zone is kept across the boot, before any lease: the first `date`.
    first = machine.wait(lambda r: "date" in r and r["boot_id"] != before["boot_id"], 10,
                         after=before)
    assert first["date"]["Z"] in ("EST", "EDT")


def test_chronyd_sets_the_clock_and_a_power_cut_boots_as_clean(lab, machine):
    """The image's own chronyd (no -x) sets the clock from the servers the agent hands
    it (chrony mode, as the package decided for this image); then the power is cut with
    the mode changed on disk: the next boot (its RTC years ahead again) is as clean."""
    before = machine.last(ready)
    discovers = logged(lab, "DHCPDISCOVER", MAC)
    machine.command("chrony")
    machine.wait(lambda r: r.get("cmd") == "chrony", 30, after=before)
    machine.power_cut()
    machine.boot()
    first = machine.wait(lambda r: "date" in r and r["boot_id"] != before["boot_id"], BOOT,
                         after=before)
    assert first["vm_time"] > time.time() + 3 * 365 * 86400  # the RTC's 2031 again
    again = machine.wait(lambda r: ready(r) and r["boot_id"] != before["boot_id"], BOOT,
                         after=before)
    s, t = again["status"], before["status"]
    assert s["time"]["mode"] == "chrony" and s["time"]["synced"], s["time"]
    assert s["time"]["selected"] in ("192.0.2.11", "192.0.2.12", "192.0.2.13")
    assert s["time"]["clock_control"]["allowed"] is False  # the agent's hands are off
    next_line = machine.wait(lambda r: "date" in r, 30, after=again)
    assert abs(next_line["vm_time"] - time.time()) < 10  # chronyd stepped it
    measured = machine.wait(lambda r: isinstance(r.get("ntp"), dict), 30, after=again)
    print("ntpdig under chronyd:", json.dumps(measured["ntp"]))
    assert abs(measured["ntp"]["offset"]) < 0.010, measured["ntp"]
    assert (s["network"]["address"], s["directory"]["ae_titles"]) == (
        t["network"]["address"], t["directory"]["ae_titles"])
    assert logged(lab, "DHCPDISCOVER", MAC) == discovers
    assert entries(lab) == 1


def zone(report) -> dict | None:
    s = report.get("status")
    return s["time"].get("timezone") if isinstance(s, dict) else None


def degraded(report) -> list:
    s = report.get("status")
    return s.get("degraded", []) if isinstance(s, dict) else []


def entries(lab) -> int:
    out = lab.srv_exec(["ldapsearch", "-x", "-LLL", "-H", "ldap://192.0.2.1", "-b",
                        DEVICES_DN, f"(dicomDeviceName={NAME})", "dn"]).stdout
    return sum(line.startswith("dn:") for line in out.splitlines())
