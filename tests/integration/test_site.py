"""The site side (issue 17, part 1): `dicom-agent site` outputs accepted by the real Kea,
dnsmasq, BIND and slapd; a device gets its reserved address and name from the generated
dnsmasq lines and adopts its generated pre-configuration."""

from __future__ import annotations

import json
import subprocess

from agent_helpers import AGENT, REPO, agent, write_config
from lab import ADMIN_DN, ADMIN_PASSWORD
from test_agent import registrar_section
from test_identity import ADMIN, DEVICES, REGISTRY

EXAMPLES = REPO / "agent" / "examples"


def fixed_address(index: int) -> str:
    """Outside the lab's pool (100-199) and its other fixed addresses."""
    return f"192.0.2.{230 + index % 20}"


def fleet(tmp, index: int, mac: str) -> tuple:
    """A fleet of one CT (the example, renamed for this test) and its site file."""
    devices = tmp / "fleet"
    devices.mkdir()
    name = f"SITE{index}"
    (devices / "ct.toml").write_text((EXAMPLES / "ct.toml").read_text()
                                     .replace('name = "CT01"', f'name = "{name}"')
                                     .replace("CT01_SCU", f"{name}_SCU")
                                     .replace('hostname = "ct01"', f'hostname = "site{index}"'))
    site = tmp / "site.toml"
    site.write_text(f"""[site]
domain = "hospital.test"
subnet = "192.0.2.0/24"
pool = ["192.0.2.100", "192.0.2.199"]
ldap_base = "cn=DICOM Configuration,dc=hospital,dc=test"

[[site.ldap]]
host = "ldap.hospital.test"
address = "192.0.2.1"

[[device]]
config = "ct.toml"
mac = "{mac}"
address = "{fixed_address(index)}"
tz_posix = "CET-1CEST,M3.5.0,M10.5.0/3"
""")
    return site, devices, name


def site(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([AGENT, "site", *args], capture_output=True, text=True, timeout=60)


def test_the_outputs_load_into_kea_dnsmasq_bind_and_slapd(lab, host, tmp_path):
    where, devices, name = fleet(tmp_path, host.index, host.mac)
    assert site("check", "--site", str(where), str(devices)).returncode == 0
    # Kea: a whole configuration, checked by kea-dhcp4 -t exactly as printed.
    conf = tmp_path / "kea.json"
    conf.write_text(site("kea", "--site", str(where), str(devices)).stdout)
    checked = subprocess.run(["kea-dhcp4", "-t", str(conf)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    kea = json.loads(conf.read_text())["Dhcp4"]
    assert kea["interfaces-config"]["interfaces"] == ["*"]
    assert kea["subnet4"][0]["pools"] == [{"pool": "192.0.2.100 - 192.0.2.199"}]
    # dnsmasq --test, on its lines after a dhcp-range.
    lines = site("dnsmasq", "--site", str(where), str(devices)).stdout
    conf = tmp_path / "dnsmasq.conf"
    conf.write_text("dhcp-range=192.0.2.100,192.0.2.199,255.255.255.0\n" + lines)
    checked = subprocess.run(["dnsmasq", "--test", f"--conf-file={conf}"],
                             capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr
    # BIND: named-checkzone on a zone with the fragment.
    zone = tmp_path / "hospital.test.zone"
    zone.write_text("$TTL 3600\n@ IN SOA ns.hospital.test. admin.hospital.test. 1 3600 600 "
                    "86400 60\n@ IN NS ns.hospital.test.\nns IN A 192.0.2.1\n"
                    + site("dns", "--site", str(where), str(devices)).stdout)
    checked = subprocess.run(["named-checkzone", "hospital.test", str(zone)],
                             capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout
    # dnsmasq for real: the device gets its reserved address and its name.
    lab.load_dnsmasq(lines)
    lease = json.loads(agent(host, "dhcp", "--interface", "eth0", "--no-probe",
                             "--initial-delay", "0", "--once", "--json").stdout)
    assert lease["address"] == fixed_address(host.index)
    assert lease["hostname"] == f"site{host.index}"  # the name the reservation gives
    assert lease["tz_posix"] == "CET-1CEST,M3.5.0,M10.5.0/3"
    # slapd: the pre-configuration loads, and the device adopts it by name.
    ldif = site("ldif", "--site", str(where), str(devices)).stdout
    loaded = lab.srv_exec(["ldapadd", "-x", "-H", "ldap://192.0.2.1", "-D", ADMIN_DN, "-w",
                           ADMIN_PASSWORD], input=ldif)
    assert loaded.returncode == 0, loaded.stderr
    section = "[device]" + (devices / "ct.toml").read_text().split("[device]", 1)[1]
    config = write_config(host, network=f'hostname = "site{host.index}"',
                          directory=registrar_section(lab, host), device_section=section)
    try:
        reg = agent(host, "directory", "register", "--config", config, "--json")
        out = json.loads(reg.stdout)
        assert reg.returncode == 0 and out["adopted"] and out["titles"] == [f"{name}_SCU"]
    finally:
        lab.srv_exec(["ldapdelete", *ADMIN, "-r", f"dicomDeviceName={name},{DEVICES}"])
        lab.srv_exec(["ldapdelete", *ADMIN, f"dicomAETitle={name}_SCU,{REGISTRY}"])


def test_kea_takes_the_reservations_and_the_device_gets_its_address_and_name(
        kea_lab, kea_device, tmp_path):
    lab, device = kea_lab, kea_device
    where, devices, _ = fleet(tmp_path, device.index, device.mac)
    kea = json.loads(site("kea", "--site", str(where), str(devices)).stdout)
    ours = kea["Dhcp4"]["subnet4"][0]
    before = lab.kea_command("config-get")["arguments"]
    config = json.loads(json.dumps(before))
    config.pop("hash", None)
    subnet = config["Dhcp4"]["subnet4"][0]
    assert subnet["subnet"] == ours["subnet"]
    # Merged as the output's comment says: its reservations into the running subnet.
    assert "copy subnet4[0].reservations" in kea["Dhcp4"]["comment"]
    subnet["reservations"] = subnet.get("reservations", []) + ours["reservations"]
    try:
        answer = lab.kea_command("config-set", config)
        assert answer["result"] == 0, answer
        lease = json.loads(agent(device, "dhcp", "--interface", "eth0", "--no-probe",
                                 "--initial-delay", "0", "--hostname",
                                 f"site{device.index}", "--once", "--json").stdout)
        assert lease["address"] == fixed_address(device.index)
        assert lease["tz_posix"] == "CET-1CEST,M3.5.0,M10.5.0/3"
    finally:
        before.pop("hash", None)
        lab.kea_command("config-set", before)
