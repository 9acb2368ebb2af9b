"""Unicast DNS-SD in the site DNS (issue 17, part 2), against the Kea flavour's BIND: the
device's services registered with TSIG-signed RFC 2136 updates after `ready`, removed at
stop; a lookup finds an AE that only the site DNS knows; a wrong key is refused, degraded,
and the agent carries on."""

from __future__ import annotations

import subprocess

from agent_helpers import AGENT, write_config
from device_toml import device_toml
from test_agent import ask, stop, wait_for

FAST = 'arp_probe = false\ninitial_delay = [0.0, 0.0]\nresolver = "file"'


def section(name: str) -> str:
    return device_toml(name, device_extra='primary_device_type = ["CT"]')


def dig(device, name: str, rtype: str) -> list[str]:
    out = device.run(["dig", "+short", "@192.0.2.1", name, rtype]).stdout
    return [line for line in out.splitlines() if line]


def key_file(device, secret: str) -> str:
    path = device.run_dir / "dnssd.key"
    path.write_text(f'key "ddns-key" {{\n\talgorithm hmac-sha256;\n\tsecret "{secret}";\n}};\n')
    path.chmod(0o600)
    return str(path)


def test_the_services_are_in_the_site_dns_while_the_agent_runs(kea_lab, kea_device):
    lab, device = kea_lab, kea_device
    name = f"UNI{device.index}"
    config = write_config(device, network=f'hostname = "{name.lower()}"\n{FAST}',
                          directory="enabled = false", device_section=section(name) + f"""
[dnssd]
unicast = true
tsig_key_file = "{key_file(device, lab.tsig_secret)}"
""")
    # An AE only the site DNS knows (another subnet's archive, registered by its admin).
    lab.srv_exec(["nsupdate", "-y", f"hmac-sha256:ddns-key:{lab.tsig_secret}"], input=(
        "server 192.0.2.1\nzone hospital.test\n"
        "update add _dicom._tcp.hospital.test 300 PTR REMOTE_AE._dicom._tcp.hospital.test\n"
        "update add REMOTE_AE._dicom._tcp.hospital.test 300 SRV 0 0 104 pacs9.hospital.test\n"
        'update add REMOTE_AE._dicom._tcp.hospital.test 300 TXT "AET=REMOTE_AE"\nsend\n'))
    proc = device.popen([AGENT, "run", "--config", config], stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL)
    instance = f"{name}_SCP._dicom._tcp.hospital.test"
    try:
        snap = wait_for(device, lambda s: s["state"] == "ready", 60)
        assert "dnssd-unicast-refused" not in snap["degraded"]
        fqdn = snap["network"]["fqdn"]
        assert f"{instance}." in dig(device, "_dicom._tcp.hospital.test", "PTR")
        assert dig(device, instance, "SRV") == [f"0 0 11112 {fqdn}."]
        assert dig(device, instance, "TXT") == [f'"AET={name}_SCP" "PrimaryDeviceType=CT"']
        found = ask(device, {"v": 1, "op": "lookup", "aet": "REMOTE_AE", "refresh": False})
        assert found["found"] and found["source"] == "dnssd"
        assert [(c["hostname"], c["port"]) for c in found["connections"]] == [
            ("pacs9.hospital.test", 104)]
    finally:
        stop(proc)
        lab.srv_exec(["nsupdate", "-y", f"hmac-sha256:ddns-key:{lab.tsig_secret}"], input=(
            "server 192.0.2.1\nzone hospital.test\n"
            "update delete REMOTE_AE._dicom._tcp.hospital.test\n"
            "update delete _dicom._tcp.hospital.test PTR REMOTE_AE._dicom._tcp.hospital.test\n"
            "send\n"))
    # Stopped: its records are gone, another's stay untouched.
    assert dig(device, instance, "SRV") == []
    assert f"{instance}." not in dig(device, "_dicom._tcp.hospital.test", "PTR")


def test_a_wrong_key_is_refused_degraded_and_the_agent_carries_on(kea_lab, kea_device):
    device = kea_device
    name = f"UNW{device.index}"
    wrong = "d3Jvbmcgd3Jvbmcgd3Jvbmcgd3Jvbmcgd3Jvbmcgd3Jvbmc="
    config = write_config(device, network=f'hostname = "{name.lower()}"\n{FAST}',
                          directory="enabled = false", device_section=section(name) + f"""
[dnssd]
unicast = true
tsig_key_file = "{key_file(device, wrong)}"
""")
    proc = device.popen([AGENT, "run", "--config", config], stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL)
    try:
        snap = wait_for(device, lambda s: "dnssd-unicast-refused" in s["degraded"], 60)
        assert snap["state"] == "ready" and snap["dnssd"]["services"]  # mDNS as ever
        assert snap["supervision"]["announce"]["restarts"] == 0
        assert dig(device, f"{name}_SCP._dicom._tcp.hospital.test", "SRV") == []
    finally:
        stop(proc)


def test_records_a_killed_agent_left_are_replaced_at_the_next_start(kea_lab, kea_device):
    lab, device = kea_lab, kea_device
    name = f"UNK{device.index}"
    dnssd = f'\n[dnssd]\nunicast = true\ntsig_key_file = "{key_file(device, lab.tsig_secret)}"\n'
    config = write_config(device, network=f'hostname = "{name.lower()}"\n{FAST}',
                          directory="enabled = false", device_section=section(name) + dnssd)
    instance = f"{name}_SCP._dicom._tcp.hospital.test"
    first = device.popen([AGENT, "run", "--config", config], stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    wait_for(device, lambda s: s["state"] == "ready", 60)
    assert [r.split()[2] for r in dig(device, instance, "SRV")] == ["11112"]
    first.kill()  # a power loss: no goodbye, the records stay
    first.wait(10)
    assert [r.split()[2] for r in dig(device, instance, "SRV")] == ["11112"]
    # Started again with another port: the old record is not left beside the new one.
    config = write_config(device, network=f'hostname = "{name.lower()}"\n{FAST}',
                          directory="enabled = false",
                          device_section=section(name).replace("11112", "11113") + dnssd)
    proc = device.popen([AGENT, "run", "--config", config], stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL)
    try:
        wait_for(device, lambda s: s["state"] == "ready", 60)
        assert [r.split()[2] for r in dig(device, instance, "SRV")] == ["11113"]
    finally:
        stop(proc)
    assert dig(device, instance, "SRV") == []
