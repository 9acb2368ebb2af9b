"""`dicom-agent site check` and the outputs' content, on crafted fleets."""

from pathlib import Path

import pytest

from agent.commands import site
from profiles.errors import ConfigError

EXAMPLES = Path(__file__).resolve().parents[2] / "agent" / "examples"


def device_file(folder: Path, name: str, title: str | None = None,
                template: str | None = None, hostname: str | None = None) -> str:
    ae = f'title = "{title}"' if title else f'title_template = "{template}"'
    text = f"""[network]
interface = "eth0"
{f'hostname = "{hostname}"' if hostname else ''}

[device]
name = "{name}"

[[device.connection]]
name = "dicom"

[[device.ae]]
{ae}
connections = ["dicom"]

[[device.ae.transfer_capability]]
sop_class = "1.2.840.10008.1.1"
role = "SCU"
transfer_syntaxes = ["1.2.840.10008.1.2"]
"""
    (folder / f"{name}.toml").write_text(text)
    return f"{name}.toml"


def site_file(folder: Path, devices: list[str]) -> Path:
    path = folder / "site.toml"
    path.write_text('[site]\ndomain = "hospital.test"\nsubnet = "192.0.2.0/24"\n'
                    'pool = ["192.0.2.100", "192.0.2.199"]\n' + "\n".join(devices))
    return path


def test_the_example_fleet_has_no_conflict():
    fleet = site.load_site(EXAMPLES / "sites" / "lab.toml", EXAMPLES)
    assert site.conflicts(fleet) == []
    assert "dhcp-host=02:dc:00:00:00:51,set:dicom-ct01,192.0.2.51,ct01" in site.dnsmasq(fleet)
    assert "WS-READING-1: AE(s) from template WS{n:02d} are not pre-registered" in \
        site.ldif(fleet)


def test_each_conflict_class_is_found(tmp_path):
    a = device_file(tmp_path, "A", title="SAME", hostname="h1")
    b = device_file(tmp_path, "B", title="SAME", hostname="h1")
    c = device_file(tmp_path, "C", template="WS{n}")
    d = device_file(tmp_path, "D", template="WS{n:d}")  # the same titles, another template
    e = device_file(tmp_path, "E", title="WS7")
    entries = [
        f'[[device]]\nconfig = "{a}"\nmac = "02:00:00:00:00:01"\naddress = "192.0.2.150"',
        f'[[device]]\nconfig = "{b}"\nmac = "02:00:00:00:00:01"\naddress = "198.51.100.1"',
        f'[[device]]\nconfig = "{c}"\nmac = "02:00:00:00:00:03"\naddress = "192.0.2.10"',
        f'[[device]]\nconfig = "{d}"\nmac = "02:00:00:00:00:04"\naddress = "192.0.2.10"',
        f'[[device]]\nconfig = "{e}"\nclient_id = "ff:00:01"',
    ]
    found = site.conflicts(site.load_site(site_file(tmp_path, entries), tmp_path))
    assert found == [
        "MAC 02:00:00:00:00:01: A.toml and B.toml",
        "host name h1: A.toml and B.toml",
        "fixed address 192.0.2.10: C.toml and D.toml",
        "fixed address 192.0.2.150 of A.toml: inside the dynamic pool "
        "192.0.2.100-192.0.2.199",
        "fixed address 198.51.100.1 of B.toml: outside the subnet 192.0.2.0/24",
        "AE title SAME: A.toml and B.toml",
        "AE title WS7 of E.toml is one that template 'WS{n}' of C.toml can choose",
        "AE title WS7 of E.toml is one that template 'WS{n:d}' of D.toml can choose",
        "templates 'WS{n}' of C.toml and 'WS{n:d}' of D.toml can both choose WS1",
    ]


def test_a_bad_site_file_names_every_problem(tmp_path):
    a = device_file(tmp_path, "A", title="A1")
    path = site_file(tmp_path, [f'[[device]]\nconfig = "{a}"\nmac = "nope"\ncolour = 1',
                                '[[device]]\nconfig = "missing.toml"\nmac = "02:00:00:00:00:09"'])
    with pytest.raises(ConfigError) as info:
        site.load_site(path, tmp_path)
    lines = info.value.lines()  # one line each, naming the file
    assert f"{path}: device[0].mac: six hex octets, got 'nope'" in lines
    assert f"{path}: device[0].colour: unknown key" in lines
    assert f"{tmp_path / 'missing.toml'}: cannot read: No such file or directory" in lines
    with pytest.raises(ConfigError) as info:
        site.load_site(tmp_path / "no-site.toml", tmp_path)
    assert info.value.lines() == [f"{tmp_path / 'no-site.toml'}: cannot read: No such file "
                                  "or directory"]


def test_site_kea_is_a_configuration_kea_accepts_as_printed(tmp_path):
    """`site kea` prints a whole Dhcp4 configuration: kea-dhcp4 -t accepts it unchanged,
    on every interface by default or on those the site file names."""
    import json
    import subprocess

    a = device_file(tmp_path, "A", title="A1")
    for interfaces, expected in (("", ["*"]), ('interfaces = ["lo"]\n',
                                              ["lo"])):
        path = site_file(tmp_path, [f'[[device]]\nconfig = "{a}"\nmac = "02:00:00:00:00:0a"'
                                    '\ntz_posix = "CET-1CEST,M3.5.0,M10.5.0/3"'])
        path.write_text(path.read_text().replace("[site]\n", "[site]\n" + interfaces))
        conf = tmp_path / "kea.json"
        conf.write_text(site.kea(site.load_site(path, tmp_path)))
        checked = subprocess.run(["kea-dhcp4", "-t", str(conf)], capture_output=True,
                                 text=True)
        assert checked.returncode == 0, checked.stdout + checked.stderr
        dhcp4 = json.loads(conf.read_text())["Dhcp4"]
        assert dhcp4["interfaces-config"]["interfaces"] == expected
        (reservation,) = dhcp4["subnet4"][0]["reservations"]
        assert reservation["hw-address"] == "02:00:00:00:00:0a"
