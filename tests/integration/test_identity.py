"""Device identity that cannot be hijacked (issue 13, part 1), on the lab's real slapd:
devices sharing a serial number keep their own entries and titles; a pre-configuration
is adopted by name or by serial number with manufacturer and model; an entry of our name
claimed by another device is a conflict, never adopted; a renamed entry is still ours."""

from __future__ import annotations

import json
import re
import subprocess

from agent_helpers import AGENT, write_config
from device_toml import device_toml
from lab import ADMIN_DN, ADMIN_PASSWORD, CONFIG_ROOT_DN
from test_directory import ldap, registrar, run_json

DEVICES = f"cn=Devices,{CONFIG_ROOT_DN}"
REGISTRY = f"cn=Unique AE Titles Registry,{CONFIG_ROOT_DN}"
ADMIN = ["-x", "-H", "ldap://192.0.2.1", "-D", ADMIN_DN, "-w", ADMIN_PASSWORD]


def device(name: str, serial: str, title: str, extra: str = "") -> str:
    return device_toml(name, title, device_extra=f'serial_number = "{serial}"\n'
                       'manufacturer = "Example Medical"\nmodel_name = "Scanner 9000"\n'
                       + extra)


def one_of_two(lab, host, name: str, tag: str, serial: str, suffix: str = "") -> str:
    """A configuration of device `name` with its own file and state directory (`tag`):
    two of them are two devices that were given the same name."""
    return write_config(host, network=f'hostname = "{name.lower()}{suffix}"',
                        directory=registrar(lab, host), name=f"{tag}.toml",
                        device_section=device(name, serial, f"{name}_{{n}}"),
                        state_dir=str(host.run_dir / f"state-{tag}"))


def cleanup(lab, names: list[str], titles: list[str]) -> None:
    for name in names:
        lab.srv_exec(["ldapdelete", *ADMIN, "-r", f"dicomDeviceName={name},{DEVICES}"])
    for title in titles:
        lab.srv_exec(["ldapdelete", *ADMIN, f"dicomAETitle={title},{REGISTRY}"])


def test_devices_sharing_a_serial_number_keep_their_own_entries(lab, host):
    serial = f"SHARED-{host.index}"
    names = [f"SER{host.index}X{i}" for i in range(6)]
    configs = [write_config(host, network=f'hostname = "{n.lower()}"',
                            directory=registrar(lab, host),
                            device_section=device(n, serial, f"SR{host.index}X{{n}}"),
                            name=f"{n}.toml", state_dir=str(host.run_dir / f"state-{n}"))
               for n in names]
    procs = [host.popen([AGENT, "directory", "register", "--config", c, "--json"])
             for c in configs]  # a boot storm: all at once
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        results.append(json.loads(out))
    titles = [r["titles"][0] for r in results]
    try:
        assert [r["device_dn"] for r in results] == [
            f"dicomDeviceName={n},{DEVICES}" for n in names]  # each its own entry
        assert len(set(titles)) == 6 and not any(r["adopted"] for r in results)
        markers = re.findall(r"dicomSoftwareVersion: (dicom-agent-id \w+)", ldap(
            host, "-b", DEVICES, f"(dicomDeviceSerialNumber={serial})",
            "dicomSoftwareVersion").stdout)
        assert len(set(markers)) == 6  # six devices, six identities
    finally:
        cleanup(lab, names, titles)


def test_a_preconfiguration_is_adopted_by_serial_manufacturer_and_model(lab, host):
    name, pre = f"NEW{host.index}", f"PRE{host.index}"
    serial = f"SN-{host.index}"
    dn = f"dicomDeviceName={pre},{DEVICES}"
    ldif = f"""dn: dicomAETitle={pre}_A,{REGISTRY}
objectClass: dicomUniqueAETitle
dicomAETitle: {pre}_A

dn: {dn}
objectClass: dicomDevice
dicomDeviceName: {pre}
dicomDeviceSerialNumber: {serial}
dicomManufacturer: Example Medical
dicomManufacturerModelName: Scanner 9000
dicomInstalled: TRUE

dn: cn=dicom,{dn}
objectClass: dicomNetworkConnection
cn: dicom
dicomHostname: old.hospital.test
dicomPort: 104

dn: dicomAETitle={pre}_A,{dn}
objectClass: dicomNetworkAE
dicomAETitle: {pre}_A
dicomNetworkConnectionReference: cn=dicom,{dn}
dicomAssociationInitiator: TRUE
dicomAssociationAcceptor: TRUE
"""
    assert lab.srv_exec(["ldapadd", *ADMIN], input=ldif).returncode == 0
    config = write_config(host, network=f'hostname = "{name.lower()}"',
                          directory=registrar(lab, host),
                          device_section=device(name, serial, f"{name}_{{n}}"))
    try:
        rc, reg = run_json(host, "directory", "register", "--config", config)
        assert rc == 0 and reg["adopted"] and reg["device_dn"] == dn
        assert reg["titles"] == [f"{pre}_A"]
        claimed = ldap(host, "-b", dn, "-s", "base", "dicomSoftwareVersion").stdout
        assert "dicomSoftwareVersion: dicom-agent-id " in claimed
        # The administrator renames the entry (H.1.4.4): the device still finds its own.
        moved = lab.srv_exec(["ldapmodrdn", *ADMIN, "-r", dn, f"dicomDeviceName={pre}-R"])
        assert moved.returncode == 0, moved.stderr
        rc, again = run_json(host, "directory", "register", "--config", config)
        assert rc == 0 and again["device_dn"] == f"dicomDeviceName={pre}-R,{DEVICES}"
        assert again["titles"] == [f"{pre}_A"]
    finally:
        cleanup(lab, [pre, f"{pre}-R"], [f"{pre}_A"])


def test_an_entry_of_our_name_claimed_by_another_device_is_a_conflict(lab, host):
    name = f"TWIN{host.index}"
    first = one_of_two(lab, host, name, "first", "S1")
    second = one_of_two(lab, host, name, "second", "S2", suffix="b")
    rc, one = run_json(host, "directory", "register", "--config", first)
    try:
        assert rc == 0
        # A second device configured with the same name (a copied configuration).
        rc, two = run_json(host, "directory", "register", "--config", second)
        assert rc == 1 and two["state"] == "conflict"
        assert "belongs to another device" in two["reason"]
        ldif = (host.run_dir / "state-second" / "manual" / f"{name}.ldif").read_text()
        assert "dicomSoftwareVersion: dicom-agent-id " in ldif
        # The first device's entry is untouched and still the first's.
        rc, again = run_json(host, "directory", "register", "--config", first)
        assert rc == 0 and again["titles"] == one["titles"] and not again["changed"]
    finally:
        cleanup(lab, [name], one["titles"])


def test_the_daemon_reports_a_conflict_and_advertises_no_title_of_another(lab, host):
    from test_agent import start, stop, wait_for

    name = f"DUP{host.index}"
    first = one_of_two(lab, host, name, "first", "S1")
    rc, one = run_json(host, "directory", "register", "--config", first)
    assert rc == 0
    second = write_config(host, network=f'hostname = "{name.lower()}b"\narp_probe = false\n'
                                        "initial_delay = [0.0, 0.0]",
                          directory=registrar(lab, host),
                          device_section=device(name, "S2", f"{name}_{{n}}"))
    proc = start(host, second)
    try:
        snap = wait_for(host, lambda s: s["state"] == "ready", 60)
        assert snap["directory"]["state"] == "conflict"
        assert {"directory-conflict", "no-title"} <= set(snap["degraded"])
        assert snap["directory"]["ae_titles"] == []
        assert snap["dnssd"]["services"] == []  # nothing advertised as ours
        assert "belongs to another device" in snap["directory"]["last_error"]
    finally:
        stop(proc)
        cleanup(lab, [name], one["titles"])


def test_unregister_takes_only_its_own_device_out(lab, host):
    name = f"OUT{host.index}"
    mine = one_of_two(lab, host, name, "mine", "S1")
    other = one_of_two(lab, host, name, "other", "S2", suffix="x")
    rc, reg = run_json(host, "directory", "register", "--config", mine)
    assert rc == 0
    (title,) = reg["titles"]
    dn = reg["device_dn"]
    try:
        # Another device of the same name may not take it out.
        rc, refused = run_json(host, "directory", "unregister", "--config", other)
        assert rc == 1 and "belongs to another device" in refused["stderr"]
        assert ldap(host, "-b", dn, "-s", "base", "dn").stdout.strip()
        # Out of service: entries and title kept, the device not installed.
        rc, kept = run_json(host, "directory", "unregister", "--config", mine,
                            "--keep-titles")
        assert rc == 0 and kept["kept"] and kept["titles_released"] == []
        assert "dicomInstalled: FALSE" in ldap(host, "-b", dn, "-s", "base",
                                               "dicomInstalled").stdout
        # Gone: no entry of the device, no title in the registry.
        rc, gone = run_json(host, "directory", "unregister", "--config", mine)
        assert rc == 0 and gone["titles_released"] == [title]
        assert ldap(host, "-b", dn, "-s", "base", "dn").returncode == 32  # noSuchObject
        assert ldap(host, "-b", REGISTRY, f"(dicomAETitle={title})", "dn").stdout.strip() \
            == ""
        assert not (host.run_dir / "state-mine" / "directory.json").exists()
    finally:
        cleanup(lab, [name], [title])


def test_ldif_for_a_templated_ae_reserves_nothing_and_says_what_is_free(lab, host):
    name = f"LDIF{host.index}"
    config = write_config(host, network=f'hostname = "{name.lower()}"',
                          directory='domain = "hospital.test"',
                          device_section=device(name, "S9", "ARCHIVE{n}"))
    registry_before = ldap(host, "-b", REGISTRY, "-s", "one", "dn").stdout
    proc = host.run([AGENT, "ldif", "--config", config])
    assert proc.returncode == 0, proc.stderr
    assert "# AE 1 (template 'ARCHIVE{n}'): ARCHIVE1 is only a suggestion" in proc.stdout
    assert "Free in the registry when this was written: ARCHIVE1, ARCHIVE2" in proc.stdout
    # No identity marker: the device adopts the entry by serial number, manufacturer and
    # model (an LDIF written on a workstation never gives a device the workstation's).
    assert "dicom-agent-id" not in proc.stdout and "dicomDeviceSerialNumber: S9" in proc.stdout
    assert ldap(host, "-b", REGISTRY, "-s", "one", "dn").stdout == registry_before
    chosen = host.run([AGENT, "ldif", "--config", config, "--title", "ARCHIVE7"])
    assert "dicomAETitle: ARCHIVE7" in chosen.stdout and "suggestion" not in chosen.stdout
    bad = host.run([AGENT, "ldif", "--config", config, "--title", "BAD\\TITLE"])
    assert bad.returncode == 2 and "--title" in bad.stderr


def test_an_administrators_edit_flows_back_to_the_device(lab, host):
    from test_agent import stop, wait_for

    name = f"EDIT{host.index}"
    hooks = host.run_dir / "hooks"
    hooks.mkdir()
    seen = host.run_dir / "hook-events"
    (hooks / "10-log").write_text(f'#!/bin/sh\necho "$1 $DICOM_AGENT_CHANGED" >> {seen}\n')
    (hooks / "10-log").chmod(0o755)
    config = write_config(host, network=f'hostname = "{name.lower()}"\narp_probe = false\n'
                                        "initial_delay = [0.0, 0.0]",
                          agent_section=f'hooks_dir = "{hooks}"',
                          directory=registrar(lab, host) + "\nrefresh_interval = 2.0",
                          device_section=device(name, "S7", f"{name}_{{n}}"))
    proc = host.popen([AGENT, "run", "--config", config], stdout=subprocess.DEVNULL)
    title = None
    try:
        snap = wait_for(host, lambda s: s["state"] == "ready" and s["dnssd"]["services"], 60)
        (title,) = snap["directory"]["ae_titles"]
        assert snap["directory"]["effective"] == [{
            "aet": title, "installed": True, "application_cluster": [],
            "preferred_called_ae_title": [], "health": "unchecked",
            "health_checked_at": None, "health_reason": None}]
        ae_dn = f"dicomAETitle={title},dicomDeviceName={name},{DEVICES}"
        change = (f"dn: {ae_dn}\nchangetype: modify\nadd: dicomInstalled\n"
                  "dicomInstalled: FALSE\n-\nadd: dicomApplicationCluster\n"
                  "dicomApplicationCluster: night-shift\n")
        assert lab.srv_exec(["ldapmodify", *ADMIN], input=change).returncode == 0
        # Within the refresh interval: withdrawn from DNS-SD, said so, the hook told.
        after = wait_for(host, lambda s: "not-installed" in s["degraded"], 30)
        assert after["dnssd"]["services"] == []
        assert after["directory"]["effective"][0]["installed"] is False
        assert after["directory"]["effective"][0]["application_cluster"] == ["night-shift"]
        assert wait_for(host, lambda s: seen.exists() and "config-changed" in seen.read_text())
        line = next(x for x in seen.read_text().splitlines() if x.startswith("config-changed"))
        assert set(line.split()[1:]) == {"dicomApplicationCluster", "dicomInstalled"}
    finally:
        stop(proc)
        cleanup(lab, [name], [title] if title else [])
