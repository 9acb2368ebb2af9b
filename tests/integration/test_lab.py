"""The lab itself: every server answers a stock client from a device namespace."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest
from lab import (
    BASE_DN,
    CONFIG_ROOT_DN,
    NTP_ADDRESSES,
    REGISTRAR_DN,
    REGISTRAR_PASSWORD,
    Lab,
    down_prefix,
    list_namespaces,
)

CLIENTS = Path(__file__).resolve().parents[2] / "netns-fixtures" / "clients"
REPO = Path(__file__).resolve().parents[2]
UDHCPC_OPTS = ["-O", "ntpsrv", "-O", "timezone", "-O", "staticroutes", "-O", "mtu",
               "-O", "search", "-O", "broadcast"]


def udhcpc(device, hostname: str) -> dict[str, str]:
    proc = device.run(["busybox", "udhcpc", "-i", "eth0", "-f", "-q", "-n", "-t", "5", "-T", "2",
                       "-s", str(CLIENTS / "udhcpc.script"), "-x", f"hostname:{hostname}",
                       *UDHCPC_OPTS], timeout=30)
    assert proc.returncode == 0, proc.stderr
    return dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)


def dig(device, *args: str) -> list[str]:
    proc = device.run(["dig", "+short", "+time=2", "+tries=2", "@192.0.2.1", *args])
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split("\n")[:-1]


@pytest.mark.parametrize("flavour", ["dnsmasq", "kea"])
def test_udhcpc_gets_lease_with_table_f12_options(flavour, request):
    dev = request.getfixturevalue("device" if flavour == "dnsmasq" else "kea_device")
    opts = udhcpc(dev, f"dev{dev.index}")
    assert re.fullmatch(r"192\.0\.2\.1\d\d", opts["ip"])
    assert opts["subnet"] == "255.255.255.0"                           # 1
    assert opts["timezone"] == "3600"                                  # 2
    assert opts["router"] == "192.0.2.1"                               # 3
    assert opts["dns"] == "192.0.2.1"                                  # 6
    assert opts["domain"] == "hospital.test"                           # 15
    assert opts["mtu"] == "1500"                                       # 26
    assert opts["broadcast"] == "192.0.2.255"                          # 28
    assert opts["ntpsrv"].split() == list(NTP_ADDRESSES)               # 42
    assert opts["search"] == "hospital.test"                           # 119
    assert opts["staticroutes"] == "198.51.100.0/24 192.0.2.1 0.0.0.0/0 192.0.2.1"  # 121
    assert opts["lease"] == ("120" if flavour == "dnsmasq" else "20")
    assert dev.addresses() == [f"{opts['ip']}/24"]


def test_dnsmasq_assigns_dev2_its_name(lab):
    opts = udhcpc(lab.devices[2], "whatever")
    assert opts["hostname"] == "dev2-assigned"


@pytest.mark.parametrize("flavour", ["dnsmasq", "kea"])
def test_srv_layouts_order_live_or_dead_target_first(flavour, request):
    lab = request.getfixturevalue("lab" if flavour == "dnsmasq" else "kea_lab")
    dev = lab.add_device()
    dev.configure_static()

    def srv() -> list[tuple[int, str]]:
        return sorted((int(r.split()[0]), r.split()[3])
                      for r in dig(dev, "SRV", "_ldap._tcp.hospital.test"))

    assert srv() == [(0, "ldap.hospital.test."), (10, "ldap-backup.hospital.test.")]
    try:
        lab.set_srv_layout("dead-first")
        assert srv() == [(0, "ldap-backup.hospital.test."), (10, "ldap.hospital.test.")]
    finally:
        lab.set_srv_layout("live-first")
    assert srv()[0] == (0, "ldap.hospital.test.")
    assert dig(dev, "A", "ldap.hospital.test") == ["192.0.2.1"]
    assert dig(dev, "A", "ldap-backup.hospital.test") == ["192.0.2.2"]
    assert dig(dev, "-x", "192.0.2.11") == ["ntp1.hospital.test."]
    lab.remove_device(dev)


@pytest.mark.parametrize("address", NTP_ADDRESSES)
def test_each_ntp_address_answers_sntp(host, address):
    proc = host.run(["ntpdig", "-j", "-t", "2", address], timeout=20)
    assert proc.returncode == 0, proc.stderr
    answer = json.loads(proc.stdout)
    assert answer["ip"] == address
    assert answer["stratum"] == 8
    assert abs(answer["offset"]) < 0.5
    assert answer["adjusted"] is False


def ldapsearch(dev, url: str, *extra: str, env: dict | None = None):
    return dev.run(["ldapsearch", "-x", "-LLL", "-o", "nettimeout=5", "-H", url, *extra,
                    "-b", BASE_DN, "(objectClass=dicomConfigurationRoot)", "dn"],
                   env=dict(os.environ, **(env or {})), timeout=20)


@pytest.mark.parametrize("url,extra", [
    ("ldap://192.0.2.1", []),
    ("ldap://192.0.2.1", ["-ZZ"]),
    ("ldaps://192.0.2.1", []),
    ("ldaps://ldap.hospital.test", []),
])
def test_anonymous_search_finds_configuration_root(lab, host, url, extra):
    proc = ldapsearch(host, url, *extra, env={"LDAPTLS_CACERT": str(lab.run / "tls/ca.pem")})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"dn: {CONFIG_ROOT_DN}"


def test_tls_without_the_lab_ca_is_refused(host):
    proc = ldapsearch(host, "ldaps://192.0.2.1",
                      env={"LDAPTLS_CACERT": "/etc/ssl/certs/ca-certificates.crt"})
    assert proc.returncode != 0
    assert "Can't contact LDAP server" in proc.stderr


def test_root_dse_lists_two_naming_contexts_dicom_tree_second(host):
    proc = host.run(["ldapsearch", "-x", "-LLL", "-H", "ldap://192.0.2.1", "-b", "",
                               "-s", "base", "namingContexts"])
    assert proc.returncode == 0, proc.stderr
    assert re.findall(r"namingContexts: (.*)", proc.stdout) == ["dc=staff,dc=test", BASE_DN]


def test_registrar_may_write_the_dicom_subtree_only_anonymous_not_at_all(host):
    dev = host
    title_dn = f"dicomAETitle=LABTEST1,cn=Unique AE Titles Registry,{CONFIG_ROOT_DN}"
    entry = f"dn: {title_dn}\nobjectClass: dicomUniqueAETitle\ndicomAETitle: LABTEST1\n"
    outside = "dn: cn=intruder,dc=hospital,dc=test\nobjectClass: organizationalRole\ncn: intruder\n"
    url = ["-H", "ldap://192.0.2.1"]
    as_registrar = [*url, "-D", REGISTRAR_DN, "-w", REGISTRAR_PASSWORD]

    anon = dev.run(["ldapadd", "-x", *url], input=entry)
    assert anon.returncode == 8, anon.stderr  # strongerAuthRequired, before any ACL
    wrong = dev.run(["ldapadd", "-x", *url, "-D", REGISTRAR_DN, "-w", "nope"], input=entry)
    assert wrong.returncode == 49, wrong.stderr
    elsewhere = dev.run(["ldapadd", "-x", *as_registrar], input=outside)
    assert elsewhere.returncode == 50, elsewhere.stderr  # insufficientAccess
    try:
        ok = dev.run(["ldapadd", "-x", *as_registrar], input=entry)
        assert ok.returncode == 0, ok.stderr
        again = dev.run(["ldapadd", "-x", *as_registrar], input=entry)
        assert again.returncode == 68, again.stderr  # entryAlreadyExists
    finally:
        dev.run(["ldapdelete", "-x", *as_registrar, title_dn])
    gone = dev.run(["ldapsearch", "-x", "-LLL", *url, "-b", title_dn, "-s", "base", "dn"])
    assert gone.returncode == 32  # noSuchObject: cleaned up


def test_sasl_external_with_client_certificate_is_the_registrar(lab, host):
    tls = lab.run / "tls"
    proc = host.run(
        ["ldapwhoami", "-Y", "EXTERNAL", "-H", "ldaps://192.0.2.1"],
        env=dict(os.environ, LDAPTLS_CACERT=str(tls / "ca.pem"),
                 LDAPTLS_CERT=str(tls / "registrar.pem"), LDAPTLS_KEY=str(tls / "registrar.key")))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"dn:{REGISTRAR_DN}"


def test_kea_publishes_client_name_by_ddns_and_deletes_leases(kea_lab, kea_device):
    name = f"ddns{kea_device.index}"
    opts = udhcpc(kea_device, name)
    assert opts["hostname"] == f"{name}.hospital.test"  # Kea returns the qualified name
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if dig(kea_device, "A", f"{name}.hospital.test") == [opts["ip"]]:
            break
        time.sleep(0.2)
    assert dig(kea_device, "A", f"{name}.hospital.test") == [opts["ip"]]
    assert dig(kea_device, "-x", opts["ip"]) == [f"{name}.hospital.test."]
    got = kea_lab.kea_command("lease4-get", {"ip-address": opts["ip"]})
    assert got["result"] == 0 and got["arguments"]["hostname"] == f"{name}.hospital.test"
    deleted = kea_lab.kea_command("lease4-del", {"ip-address": opts["ip"]})
    assert deleted["result"] == 0, deleted
    assert kea_lab.kea_command("lease4-get", {"ip-address": opts["ip"]})["result"] == 3  # empty


def test_mdns_browser_sees_a_device_advertisement(lab, host):
    device = host
    reg = device.popen([str(REPO / ".venv/bin/python"), str(CLIENTS / "mdns_register.py"),
                        device.static_address, "LAB_SCU", "104", "30"])
    try:
        assert reg.stdout.readline().strip() == "registered", reg.stderr.read()
        seen = lab.avahi_browse("_dicom._tcp")
        assert [s for s in seen if s["name"] == "LAB_SCU"] == [{
            "name": "LAB_SCU", "type": "_dicom._tcp", "host": f"dev{device.index}.local",
            "address": device.static_address, "port": "104",
            "txt": {"AET": "LAB_SCU", "PrimaryDeviceType": "CT"}}]
        # The unicast form (lab-notes): ask the responder itself on port 5353.
        other = lab.add_device()
        try:
            other.configure_static()
            txt = other.run(["dig", "+short", "-p", "5353", f"@{device.static_address}",
                             "LAB_SCU._dicom._tcp.local", "TXT"]).stdout.splitlines()
        finally:
            lab.remove_device(other)
        assert any('"AET=LAB_SCU"' in line for line in txt), txt
    finally:
        reg.terminate()
        reg.wait(10)


def test_down_leaves_no_namespace_or_process_even_after_a_crash():
    lab = Lab(prefix="dcmtz", devices=1).up()
    names = [ns for ns in list_namespaces() if ns.startswith("dcmtz-")]
    assert sorted(names) == ["dcmtz-dev1", "dcmtz-srv", "dcmtz-sw"]
    pids = [int(p.read_text()) for p in (lab.run / "pids").glob("*.pid")]
    assert len(pids) >= 5  # dnsmasq, slapd, three chronyd
    # A crashed run leaves its lab behind; a fresh process cleans it by prefix alone.
    removed = down_prefix("dcmtz")
    assert sorted(removed) == sorted(names)
    assert not [ns for ns in list_namespaces() if ns.startswith("dcmtz-")]
    lab.down()  # reaps the children; safe after the lab is gone
    for pid in pids:
        assert not alive(pid), pid


def alive(pid: int) -> bool:
    """True for a running process; a zombie (ended, not yet reaped by init) is not alive."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def test_shell_entry_up_status_exec_down():
    env = dict(os.environ)
    script = str(REPO / "netns-fixtures" / "lab.py")
    up = subprocess.run(["python3", script, "--prefix", "dcmts", "up", "--devices", "1"],
                        capture_output=True, text=True, timeout=60, env=env)
    try:
        assert up.returncode == 0, up.stderr
        assert "dcmts-dev1: eth0 02:dc:00:00:00:01" in up.stdout
        status = subprocess.run(["python3", script, "--prefix", "dcmts", "status"],
                                capture_output=True, text=True, timeout=30)
        assert "slapd" in status.stdout and "dnsmasq" in status.stdout, status.stdout
        exe = subprocess.run(["python3", script, "--prefix", "dcmts", "exec", "1", "--",
                              "hostname"], capture_output=True, text=True, timeout=30)
        assert exe.stdout.strip() == "dev1"  # private UTS namespace
    finally:
        down = subprocess.run(["python3", script, "--prefix", "dcmts", "down"],
                              capture_output=True, text=True, timeout=60)
    assert down.returncode == 0 and "removed 3 namespaces" in down.stdout
    assert os.uname().nodename != "dev1"
