"""The Debian package's lifecycle in a plain Debian 12 device booted with systemd-nspawn
(netns-fixtures/devroot.py: no build tools, apt pointed at nothing but the image's own
packages and the .deb): apt install -> the unit runs as dicom-agent and reaches `ready`;
an upgrade to a rebuilt higher version while it runs -> restarted with the same identity,
titles and address and no second directory entry; remove -> stopped, units gone,
configuration and state kept; reinstall -> the same device; purge -> both gone; a
reinstall after the purge is a new device, which meets its old entry and stops at
`conflict` with a message naming the remedy."""

from __future__ import annotations

import json
import os
import shutil

from devroot import make, site_device, site_secrets
from lab import ADMIN_DN, ADMIN_PASSWORD
from test_agent import DEVICES, REGISTRY
from test_systemd_unit import CHRONY_TEST_DROPIN, until

# The site's drop-in, as an image build preseeds it: no [network] interface (the device's
# only Ethernet interface is taken) and no [time] mode (the package decided it).
SITE = """[network]
arp_probe = false
initial_delay = [0.0, 0.0]

"""


def preseed(lab, box, name: str) -> None:
    """The site's configuration before the package comes: its drop-in, the lab's CA,
    the registrar's password (root's, 0600)."""
    etc = box.root / "etc" / "dicom-agent"
    (etc / "agent.toml.d").mkdir(parents=True, exist_ok=True)
    (etc / "agent.toml.d" / "50-site.toml").write_text(SITE + site_device(name))
    site_secrets(box.root, lab.run / "tls" / "ca.pem")


def entries(device, name: str) -> list[str]:
    """The device entries in slapd that carry dicomDeviceName=name, and their markers."""
    out = device.run(["ldapsearch", "-x", "-LLL", "-H", "ldap://192.0.2.1", "-D", ADMIN_DN,
                      "-w", ADMIN_PASSWORD, "-b", DEVICES, f"(dicomDeviceName={name})",
                      "dicomSoftwareVersion"]).stdout
    return [line for line in out.splitlines() if line.startswith("dn:")]


def test_install_upgrade_remove_reinstall_purge_and_a_new_device(lab, device, debs):
    first, upgrade = debs
    name = f"PK{device.index}"
    box = make(f"dcmt-pk{device.index}", lab.run, device.ns)
    (box.root / "etc/systemd/system/chrony.service.d").mkdir(parents=True)
    (box.root / "etc/systemd/system/chrony.service.d/test.conf").write_text(CHRONY_TEST_DROPIN)
    preseed(lab, box, name)
    for deb in debs:
        shutil.copy(deb, box.root / "root" / deb.name)

    def apt(*args: str):
        done = box.run(["env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "-y", "-q",
                        *args], timeout=300)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        return done

    def ready() -> dict:
        until(lambda: box.show("dicom-agent", "StatusText")["StatusText"] == "ready",
              90, box=box)
        return json.loads(box.run(["dicom-agent", "status", "--json"]).stdout)

    def device_id() -> str:
        return (box.root / "var/lib/dicom-agent/device-id").read_text().strip()

    try:
        box.boot()
        apt("install", f"/root/{first.name}")
        snap = ready()
        # Its own user; the clock decided by the install (this image has chronyd).
        uid = box.run(["id", "-u", "dicom-agent"]).stdout.strip()
        main = box.show("dicom-agent", "MainPID")["MainPID"]
        status = box.run(["cat", f"/proc/{main}/status"]).stdout
        assert [line.split()[1:] for line in status.splitlines()
                if line.startswith("Uid:")] == [[uid] * 4]
        assert uid != "0"
        shown = box.run(["dicom-agent", "check-config", "--show"]).stdout
        assert "/usr/lib/dicom-agent/agent.toml.d/00-time-mode.toml" in shown
        assert snap["time"]["mode"] == "chrony" and snap["network"]["interface"] == "eth0"
        assert snap["directory"]["state"] == "registered"
        identity, titles = device_id(), snap["directory"]["ae_titles"]
        address = snap["network"]["address"]
        assert titles == [f"{name}_SCP"] and len(entries(device, name)) == 1
        # The local time zone: /etc/localtime through the agent's state directory, the
        # lab's option 2 (3600 s) applied as Etc/GMT-1; `date` in the device shows it.
        assert os.readlink(box.root / "etc/localtime") == "/var/lib/dicom-agent/localtime"
        until(lambda: json.loads(box.run(["dicom-agent", "status", "--json"]).stdout)
              ["time"]["timezone"]["applied"], 30, box=box)
        assert box.run(["date", "+%z"]).stdout.strip() == "+0100"
        assert (box.root / "var/lib/dicom-agent/timezone").read_text() == "Etc/GMT-1\n"

        # An upgrade while it runs: restarted, the same device.
        apt("install", f"/root/{upgrade.name}")
        assert box.run(["dpkg-query", "-W", "-f", "${Version}", "dicom-agent"]).stdout \
            == upgrade.name.split("_")[1]
        assert box.show("dicom-agent", "MainPID")["MainPID"] != main
        snap = ready()
        assert (device_id(), snap["directory"]["ae_titles"], snap["network"]["address"]) \
            == (identity, titles, address)
        assert len(entries(device, name)) == 1

        # Remove: stopped, the units gone, the configuration and the state kept.
        apt("remove", "dicom-agent")
        assert box.show("dicom-agent", "LoadState")["LoadState"] == "not-found"
        assert not (box.root / "lib/systemd/system/dicom-agent.service").exists()
        assert (box.root / "etc/dicom-agent/agent.toml.d/50-site.toml").exists()
        assert device_id() == identity
        # /etc/localtime and /etc/timezone given back: the zone in force, as tzdata has them.
        assert os.readlink(box.root / "etc/localtime") == "/usr/share/zoneinfo/Etc/GMT-1"
        assert (box.root / "etc/timezone").read_text() == "Etc/GMT-1\n"
        assert not (box.root / "etc/tmpfiles.d/dicom-agent-localtime.conf").exists()

        # Reinstalled: the same device.
        apt("install", f"/root/{upgrade.name}")
        snap = ready()
        assert (device_id(), snap["directory"]["ae_titles"]) == (identity, titles)
        assert len(entries(device, name)) == 1

        # Purged: configuration and state gone.
        apt("purge", "dicom-agent")
        for gone in ("etc/dicom-agent", "var/lib/dicom-agent",
                     "etc/systemd/system/dicom-agent.service.d/50-time.conf",
                     "usr/lib/dicom-agent"):
            assert not (box.root / gone).exists(), gone

        # A reinstall after the purge is a new device: the old entry is another's.
        preseed(lab, box, name)
        apt("install", f"/root/{upgrade.name}")
        until(lambda: box.show("dicom-agent", "StatusText")["StatusText"]
              .startswith(("ready", "registered", "located")) and
              json.loads(box.run(["dicom-agent", "status", "--json"]).stdout)
              ["directory"]["state"] == "conflict", 90, box=box)
        snap = json.loads(box.run(["dicom-agent", "status", "--json"]).stdout)
        assert device_id() != identity
        assert "directory-conflict" in snap["degraded"]
        assert "dicom-agent directory unregister" in snap["directory"]["last_error"]
        assert len(entries(device, name)) == 1  # the old one, untouched
    finally:
        box.stop()
        admin = ["-x", "-H", "ldap://192.0.2.1", "-D", ADMIN_DN, "-w", ADMIN_PASSWORD]
        device.run(["ldapdelete", *admin, "-r", f"dicomDeviceName={name},{DEVICES}"])
        device.run(["ldapdelete", *admin, f"dicomAETitle={name}_SCP,{REGISTRY}"])
