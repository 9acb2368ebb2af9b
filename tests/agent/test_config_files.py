"""Configuration drop-ins (agent/config_files.py): which files, in what order, merged how,
each error naming its file and line; damaged files refused by name, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from device_toml import device_toml

from agent import config_files
from agent.config import load_config
from profiles.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
SITE = """[network]
interface = "eth0"
hostname = "ct01"

[time]
mode = "observe"
"""
VENDOR_AES = device_toml("CT01", "CT01_STORE", port=104, ae_extra='key = "store"',
                         device_extra='manufacturer = "Example Medical"')


def line_of(text: str, wanted: str) -> int:
    return text.splitlines().index(wanted) + 1


def system(root: Path, main: str | None = SITE, vendor: dict[str, str] | None = None,
           site: dict[str, str] | None = None) -> Path:
    """An image's /usr/lib and /etc under `root`."""
    for directory, files in ((config_files.VENDOR_DIR, vendor or {}),
                             (config_files.SITE_DIR, site or {})):
        d = root / directory.relative_to("/")
        d.mkdir(parents=True, exist_ok=True)
        for name, text in files.items():
            (d / name).write_text(text)
    if main is not None:
        path = root / config_files.MAIN.relative_to("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(main)
    return root


def test_vendor_main_site_in_that_order_and_a_site_file_masks_the_vendors(tmp_path):
    root = system(tmp_path, vendor={"20-b.toml": "", "10-a.toml": "", "30-c.toml": ""},
                  site={"20-b.toml": "", "05-z.toml": ""})
    etc, usr = "etc/dicom-agent", "usr/lib/dicom-agent"
    assert [str(p.relative_to(root)) for p in config_files.files(None, root)] == [
        f"{usr}/agent.toml.d/10-a.toml", f"{usr}/agent.toml.d/30-c.toml", f"{etc}/agent.toml",
        f"{etc}/agent.toml.d/05-z.toml", f"{etc}/agent.toml.d/20-b.toml"]


def test_a_vendor_ships_the_device_and_the_site_adds_to_it(tmp_path):
    """The vendor's drop-in has the device and its AE; the site's file the network; a
    site drop-in merges into the AE by its key, into the connection by its name, adds an
    AE, and replaces a scalar and an array."""
    root = system(tmp_path, vendor={"50-ct.toml": VENDOR_AES}, site={"90-site.toml": """
[device]
institution_name = ["General Hospital"]

[[device.connection]]
name = "dicom"
port = 11112

[[device.ae]]
key = "store"
title = "SITE_STORE"

[[device.ae]]
title = "CT01_QR"
connections = ["dicom"]

[[device.ae.transfer_capability]]
sop_class = "1.2.840.10008.1.1"
role = "SCU"
transfer_syntaxes = ["1.2.840.10008.1.2"]
"""})
    config = load_config(None, root)
    assert config.network.interface == "eth0" and config.network.hostname == "ct01"
    device = config.device
    assert device.name == "CT01" and device.manufacturer == "Example Medical"
    assert device.institution_name == ("General Hospital",)
    assert [(c.name, c.port) for c in device.connections] == [("dicom", 11112)]
    assert [(a.key, a.title) for a in device.aes] == [("store", "SITE_STORE"),
                                                      (None, "CT01_QR")]
    assert device.aes[0].transfer_capabilities[0].role == "SCP"  # the vendor's, kept
    assert config.from_system and len(config.files) == 3


def test_each_error_names_the_file_and_line_its_value_came_from(tmp_path):
    broken = VENDOR_AES.replace('port = 104', 'port = 70000')
    root = system(tmp_path, vendor={"50-ct.toml": broken},
                  site={"90-site.toml": '[time]\nmode = "sometimes"\n'})
    with pytest.raises(ConfigError) as caught:
        load_config(None, root)
    vendor = root / "usr/lib/dicom-agent/agent.toml.d/50-ct.toml"
    site = root / "etc/dicom-agent/agent.toml.d/90-site.toml"
    port = broken.splitlines().index("port = 70000") + 1
    assert sorted(caught.value.lines()) == sorted([
        f"{vendor}:{port}: device.connection[0].port: must be a TCP port 1-65535, got 70000",
        f'{site}:2: time.mode: must be "observe", "sntp" or "chrony", got "sometimes"'])
    # A key missing from a table: the file of the table that lacks it.
    root = system(tmp_path / "2", vendor={"50-ct.toml": VENDOR_AES.replace(
        'name = "CT01"\n', "")})
    with pytest.raises(ConfigError) as caught:
        load_config(None, root)
    vendor = root / "usr/lib/dicom-agent/agent.toml.d/50-ct.toml"
    assert caught.value.lines() == [f"{vendor}:{line_of(VENDOR_AES, '[device]')}: "
                                    "device.name: required"]


def test_config_file_reads_its_own_d_directory_and_never_the_systems(tmp_path):
    root = system(tmp_path / "root", main='[network]\ninterface = "nope!"\n',
                  site={"00-broken.toml": "[[["})
    main = tmp_path / "agent.toml"
    main.write_text(SITE)
    (tmp_path / "agent.toml.d").mkdir()
    (tmp_path / "agent.toml.d" / "50-ct.toml").write_text(VENDOR_AES)
    (tmp_path / "agent.toml.d" / "README").write_text("not a .toml: not read")
    config = load_config(main, root)
    assert config.device.name == "CT01" and config.network.interface == "eth0"
    assert config.files == (main, tmp_path / "agent.toml.d" / "50-ct.toml")
    assert config.source == main and not config.from_system


@pytest.mark.parametrize("content, expected", [
    (b"\xef\xbb\xbf" + SITE.encode(), ":1: starts with a UTF-8 byte-order mark"),
    (b"[network]\ninterface = \"\xe9th0\"\n", ":2: not UTF-8 (byte 23)"),
    (b"a = " + b"[" * 1000 + b"]" * 1000 + b"\n", ": nested too deeply"),
    (b"a = " + b"9" * 5000 + b"\n", ": not a configuration: "),
    (b"[network\n", ":1: TOML syntax: "),
])
def test_a_damaged_file_is_named_and_refused(tmp_path, content, expected):
    path = tmp_path / "agent.toml"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    (line,) = caught.value.lines()
    assert line.startswith(str(path) + expected), line


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "agent", *args], capture_output=True,
                          text=True, cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)))


def test_a_broken_drop_in_stops_run_with_exit_2_naming_it(tmp_path):
    main = tmp_path / "agent.toml"
    main.write_text(SITE + VENDOR_AES)
    (tmp_path / "agent.toml.d").mkdir()
    broken = tmp_path / "agent.toml.d" / "60-broken.toml"
    broken.write_bytes(b"\xef\xbb\xbf[time]\n")
    proc = run_cli("run", "--config", str(main))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith(f"{broken}:1: starts with a UTF-8 byte-order mark")
    check = run_cli("check-config", "--config", str(main))
    assert (check.returncode, check.stderr) == (2, proc.stderr)


def test_check_config_show_prints_each_value_with_its_file(tmp_path):
    main = tmp_path / "agent.toml"
    main.write_text(SITE)
    (tmp_path / "agent.toml.d").mkdir()
    vendor = tmp_path / "agent.toml.d" / "50-ct.toml"
    vendor.write_text(VENDOR_AES)
    proc = run_cli("check-config", "--config", str(main), "--show")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert f'interface = "eth0"  # {main}:2' in lines
    assert f"port = 104  # {vendor}:{line_of(VENDOR_AES, 'port = 104')}" in lines
    assert f"[[device.ae]]  # {vendor}:{line_of(VENDOR_AES, '[[device.ae]]')}" in lines
    # The positional file is the same as --config.
    assert run_cli("check-config", str(main)).returncode == 0


@pytest.mark.parametrize("example, extra", [("ct.toml", []), ("archive.toml", []),
                                            ("workstation.toml", ["--title", "WS07"])])
def test_ldif_works_offline_on_the_examples_and_writes_no_state(tmp_path, example, extra):
    """The administrator's path: `ldif` on a shipped example with only --domain (or
    --base-dn): no directory.json, no lease, nothing written, no identity marker."""
    state = tmp_path / "state"
    config = tmp_path / example
    config.write_text(f'[agent]\nstate_dir = "{state}"\nruntime_dir = "{tmp_path / "run"}"\n'
                      + (REPO / "agent" / "examples" / example).read_text())
    proc = run_cli("ldif", "--config", str(config), "--domain", "hospital.example", *extra)
    assert proc.returncode == 0, proc.stderr
    ldif = proc.stdout.replace("\n ", "")  # RFC 2849 folds lines at 76 characters
    assert "dn: cn=DICOM Configuration,dc=hospital,dc=example" not in ldif  # exists
    assert ",cn=Devices,cn=DICOM Configuration,dc=hospital,dc=example" in ldif
    assert "dicom-agent-id" not in ldif
    assert not state.exists()
    other = run_cli("ldif", "--config", str(config), "--base-dn",
                    "cn=DICOM Configuration,o=Example Hospital", *extra)
    assert ",cn=Devices,cn=DICOM Configuration,o=Example Hospital" in other.stdout.replace(
        "\n ", "")
    missing = run_cli("ldif", "--config", str(config), *extra)
    assert missing.returncode == 2
    assert missing.stderr.strip() == ("ldif: no base DN known: give --base-dn DN or --domain "
                                      "DOMAIN, or set [directory] domain in the configuration")


def test_every_command_and_option_has_a_help_line_and_every_command_an_example():
    import argparse

    from agent.commands.cli import build_parser

    def commands(parser, path="dicom-agent"):
        yield path, parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, child in action.choices.items():
                    yield from commands(child, f"{path} {name}")

    seen = 0
    for path, parser in commands(build_parser()):
        seen += 1
        assert parser.description, path
        assert (parser.epilog or "").startswith("example: dicom-agent"), path
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction) or "-h" in action.option_strings:
                continue
            assert action.help, f"{path} {action.dest}"
    assert seen >= 22  # every command, the mutating ones and the directory actions


def nic(sysfs: Path, name: str, kind: str = "1", physical: bool = True) -> None:
    (sysfs / name).mkdir(parents=True)
    (sysfs / name / "type").write_text(kind + "\n")
    if physical:
        (sysfs / name / "device").mkdir()


def test_without_an_interface_the_machines_only_ethernet_interface_is_taken(tmp_path):
    """[network] interface may be left out where the machine has exactly one Ethernet
    interface (loopback and virtual ones aside); with several, or none, exit 2 naming
    them."""
    main = tmp_path / "agent.toml"
    main.write_text('[time]\nmode = "observe"\n' + VENDOR_AES)
    sysfs = tmp_path / "sys" / "class" / "net"
    nic(sysfs, "lo", "772", physical=False)
    nic(sysfs, "veth0", physical=False)
    nic(sysfs, "enp3s0")
    assert load_config(main, tmp_path).network.interface == "enp3s0"
    nic(sysfs, "enp4s0")
    with pytest.raises(ConfigError) as caught:
        load_config(main, tmp_path)
    assert caught.value.lines() == [f"{main}: network.interface: required: this machine has "
                                    "several Ethernet interfaces (enp3s0, enp4s0): name one"]
    main.write_text(main.read_text() + '\n[network]\ninterface = "enp4s0"\n')
    assert load_config(main, tmp_path).network.interface == "enp4s0"


def test_a_configuration_without_a_device_is_lookups_only(tmp_path):
    main = tmp_path / "agent.toml"
    main.write_text(SITE)
    config = load_config(main)
    assert config.device.name == "" and config.device.aes == ()
    proc = run_cli("check-config", str(main))
    assert proc.returncode == 0
    assert proc.stdout.endswith("valid (no [device]: lookups only, nothing registered or "
                                "advertised)\n")
    ldif = run_cli("ldif", "--config", str(main), "--domain", "hospital.example")
    assert ldif.returncode == 2 and "describes no device" in ldif.stderr
