"""Configuration: defaults as CONTRACTS.md gives them, and every rule's exact message."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest

from agent.config import load_config, parse_config
from profiles.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "agent" / "examples"

BASE = {
    "network": {"interface": "eth0"},
    "device": {
        "name": "CT01",
        "connection": [{"name": "dicom"}],
        "ae": [{
            "title": "CT01_SCU",
            "connections": ["dicom"],
            "transfer_capability": [{
                "sop_class": "1.2.840.10008.5.1.4.1.1.2",
                "role": "SCU",
                "transfer_syntaxes": ["1.2.840.10008.1.2"],
            }],
        }],
    },
}


def errors_of(data: dict) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    return info.value.lines()


def with_(path: str, value: object, base: dict | None = None) -> dict:
    """BASE with one key set (value None deletes it); path like device.ae[0].title."""
    data = copy.deepcopy(base or BASE)
    *parents, last = path.split(".")
    node = data
    for part in parents:
        name, _, index = part.partition("[")
        node = node.setdefault(name, {} if not index else [])
        if index:
            node = node[int(index[:-1])]
    if value is None:
        del node[last]
    else:
        node[last] = value
    return data


def test_minimal_config_gets_the_contract_defaults():
    config = parse_config(copy.deepcopy(BASE))
    assert config.agent.state_dir == Path("/var/lib/dicom-agent")
    assert config.agent.runtime_dir == Path("/run/dicom-agent")
    assert config.agent.status_socket == Path("/run/dicom-agent/status.sock")
    assert config.agent.status_group is None
    assert config.agent.hooks_dir == Path("/etc/dicom-agent/hooks.d")
    assert config.agent.hook_timeout == 10.0
    n = config.network
    assert (n.interface, n.hostname, n.client_id, n.auto_ip) == ("eth0", None, None, False)
    assert (n.initial_delay, n.arp_probe, n.discover_timeout) == ((0.0, 2.0), True, 5.0)
    assert (n.server_allowlist, n.offer_window, n.release_on_stop) == ((), 0.0, False)
    t = config.time
    assert (t.mode, t.servers, t.utc_offset, t.broadcast_discovery) == ("sntp", (), 0, False)
    assert (t.broadcast_window, t.step_threshold_ms) == (5.0, 128.0)
    assert t.chrony_sourcedir == Path("/run/chrony-dhcp")
    assert t.chronyc_socket == Path("/run/chrony/chronyd.sock")
    d = config.directory
    assert (d.enabled, d.domain, d.servers, d.security) == (True, None, (), "anonymous")
    assert (d.allow_cleartext_password, d.title_attempts, d.refresh_interval) == (
        False, 100, 3600.0)
    dev = config.device
    assert dev.installed is True and dev.software_versions == ()
    assert dev.connections[0].port is None and dev.connections[0].installed is None
    ae = dev.aes[0]
    # No port on any of its connections: not an acceptor; initiator by default.
    assert (ae.association_acceptor, ae.association_initiator, ae.installed) == (
        False, True, None)


def test_status_socket_follows_runtime_dir():
    config = parse_config(with_("agent", {"runtime_dir": "/tmp/rt"}))
    assert config.agent.status_socket == Path("/tmp/rt/status.sock")


def test_acceptor_defaults_to_true_when_a_connection_has_a_port():
    config = parse_config(with_("device.connection", [{"name": "dicom", "port": 104}]))
    assert config.device.aes[0].association_acceptor is True


def test_title_spaces_are_not_significant_and_are_stripped():
    assert parse_config(with_("device.ae[0].title", " CT01 ")).device.aes[0].title == "CT01"


def test_vendor_data_and_client_id_are_decoded():
    data = with_("device.vendor_data", ["AAECAw=="])
    data["network"]["client_id"] = "ff:00:01"
    config = parse_config(data)
    assert config.device.vendor_data == (b"\x00\x01\x02\x03",)
    assert config.network.client_id == b"\xff\x00\x01"


@pytest.mark.parametrize("path,value,expected", [
    # the two examples of the issue, verbatim
    ("device.ae[0].transfer_capability[0].role", "scu",
     'device.ae[0].transfer_capability[0].role: must be "SCU" or "SCP", got "scu"'),
    ("device.ae[0].title", "A_VERY_LONG_AETITLE_1",
     "device.ae[0].title: at most 16 characters, got 21"),
    # AE title rules (PS3.5 AE)
    ("device.ae[0].title", "CT\\01",
     "device.ae[0].title: must not contain a backslash (PS3.5 forbids it in an AE title)"),
    ("device.ae[0].title", "CT\t01", "device.ae[0].title: must not contain control characters"),
    ("device.ae[0].title", "   ", "device.ae[0].title: must not be empty or only spaces"),
    ("device.ae[0].title", "CTÄ01",
     'device.ae[0].title: must use the DICOM default character repertoire (ASCII), got "CTÄ01"'),
    ("device.ae[0].preferred_called_ae_title", ["OK", "X" * 17],
     "device.ae[0].preferred_called_ae_title[1]: at most 16 characters, got 17"),
    # UIDs (PS3.5 9.1)
    ("device.ae[0].transfer_capability[0].sop_class", "1.2.840.010008",
     "device.ae[0].transfer_capability[0].sop_class: not a valid UID (digits and dots, "
     'no leading zero in a component), got "1.2.840.010008"'),
    ("device.ae[0].transfer_capability[0].transfer_syntaxes", ["1.2.840.10008.1.2", "1.2."],
     "device.ae[0].transfer_capability[0].transfer_syntaxes[1]: not a valid UID (digits and "
     'dots, no leading zero in a component), got "1.2."'),
    ("device.ae[0].transfer_capability[0].sop_class", "1." + "2" * 64,
     "device.ae[0].transfer_capability[0].sop_class: at most 64 characters, got 66"),
    ("device.ae[0].transfer_capability[0].transfer_syntaxes", [],
     "device.ae[0].transfer_capability[0].transfer_syntaxes: at least 1 needed, got 0"),
    ("device.ae[0].transfer_capability[0].sop_class", None,
     "device.ae[0].transfer_capability[0].sop_class: required"),
    # types
    ("device.installed", "yes", 'device.installed: must be true or false, got "yes"'),
    ("device.connection[0].port", "104",
     'device.connection[0].port: must be an integer, got "104"'),
    ("device.connection[0].port", 70000,
     "device.connection[0].port: must be a TCP port 1-65535, got 70000"),
    ("device.software_versions", "1.0",
     'device.software_versions: must be a list of strings, got "1.0"'),
    ("device.institution_name", ["ok", 3], "device.institution_name[1]: must be a string, got 3"),
    # references and names
    ("device.ae[0].connections", ["dicom", "tls"],
     'device.ae[0].connections[1]: no connection named "tls" (known: "dicom")'),
    ("device.ae[0].connections", ["dicom", "dicom"],
     'device.ae[0].connections[1]: "dicom" is listed twice'),
    ("device.ae[0].connections", [], "device.ae[0].connections: at least 1 needed, got 0"),
    ("device.related_device_reference", ["cn=ok,dc=x", "not a dn"],
     'device.related_device_reference[1]: not a valid DN (RFC 4514: \'not a dn\' is not '
     'type=value), got "not a dn"'),
    ("device.vendor_data", ["!!"], 'device.vendor_data[0]: not valid base64, got "!!"'),
    ("device.connection[0].tls_cipher_suites", ["aes"],
     'device.connection[0].tls_cipher_suites[0]: must be an RFC 2246 name such as '
     '"TLS_RSA_WITH_AES_128_CBC_SHA", got "aes"'),
    ("device.connection[0].hostname", "ct_01.hospital.test",
     "device.connection[0].hostname: not a valid host name (RFC 1123: labels of letters, "
     'digits and \'-\'), got "ct_01.hospital.test"'),
    ("device.primary_device_type", ["CTÄ"],
     'device.primary_device_type[0]: must be ASCII (IA5 String), got "CTÄ"'),
    ("device.name", None, "device.name: required"),
    ("device.description", "two\nlines", "device.description: must not contain control characters"),
    # title templates (H.1.4.3.5)
    ("device.ae[0].title_template", "WS{n}",
     "device.ae[0].title: exactly one of title and title_template is needed, got both"),
    ("device.ae[0].title", None,
     "device.ae[0].title: exactly one of title and title_template is needed, got neither"),
    # unknown keys, with a hint
    ("device.ae[0].titel", "X", 'device.ae[0].titel: unknown key (did you mean "title"?)'),
    ("device.colour", "blue", "device.colour: unknown key"),
    ("devices", {}, 'devices: unknown key (did you mean "device"?)'),
    ("network.interface", "eth0/../x",
     'network.interface: not a valid interface name, got "eth0/../x"'),
    ("network.hostname", "-ct", 'network.hostname: not a valid host name (RFC 1123: labels of '
                                'letters, digits and \'-\'), got "-ct"'),
    ("network.client_id", "zz", 'network.client_id: must be hex octets separated by ":" '
                                '(e.g. "ff:00:00:00:01"), got "zz"'),
    ("network.initial_delay", [3, 1],
     "network.initial_delay: must be [min, max] seconds with min <= max, got [3, 1]"),
    ("network.initial_delay", [1],
     "network.initial_delay: must be [min, max] seconds with min <= max, got [1]"),
    ("network.discover_timeout", 0, "network.discover_timeout: must be greater than 0, got 0.0"),
    ("network.offer_window", -1, "network.offer_window: must be 0 or more, got -1.0"),
    ("network.server_allowlist", ["192.0.2.1", "dhcp"],
     'network.server_allowlist[1]: not an IPv4 address, got "dhcp"'),
    ("time.mode", "ntp", 'time.mode: must be "observe", "sntp" or "chrony", got "ntp"'),
    ("time.utc_offset", 90000, "time.utc_offset: must be -43200 to 50400, got 90000"),
    ("time.servers", ["ntp1.hospital.test", "bad name"],
     "time.servers[1]: not a valid host name (RFC 1123: labels of letters, digits and '-'), "
     'got "bad name"'),
    ("time.step_threshold_ms", -5, "time.step_threshold_ms: must be greater than 0, got -5.0"),
    ("agent.hook_timeout", 0, "agent.hook_timeout: must be greater than 0, got 0.0"),
    ("agent.status_group", "Dicom Users", 'agent.status_group: not a valid group name, '
                                          'got "Dicom Users"'),
    ("directory.security", "sasl",
     'directory.security: must be "anonymous", "basic" or "tls", got "sasl"'),
    ("directory.servers", ["ldap://ldap.hospital.test", "http://x"],
     'directory.servers[1]: must be an ldap:// or ldaps:// URL with a host, got "http://x"'),
    ("directory.servers", ["ldap://ldap.hospital.test/dc=x"],
     'directory.servers[0]: must not have a path (the base DN is found, H.1.4.1), '
     'got "ldap://ldap.hospital.test/dc=x"'),
    ("directory.title_attempts", 0, "directory.title_attempts: must be 1 to 10000, got 0"),
    ("directory.bind_dn", "cn=registrar,dc=hospital,dc=test",
     'directory.bind_dn: not used with security "anonymous"; set security = "basic" or "tls"'),
    ("directory.ca_file", "/nonexistent/ca.pem",
     'directory.ca_file: cannot read "/nonexistent/ca.pem": No such file or directory'),
])
def test_each_rule_has_its_exact_message(path, value, expected):
    assert errors_of(with_(path, value)) == [expected]


def test_template_problems_name_the_title_they_would_give():
    def template(text: str, attempts: int | None = None) -> dict:
        data = with_("device.ae[0].title", None)
        data["device"]["ae"][0]["title_template"] = text
        if attempts is not None:
            data["directory"] = {"title_attempts": attempts}
        return data

    assert parse_config(template("WORKSTATION{n:03d}")).device.aes[0].title is None
    assert errors_of(template("READINGROOM_{n}", 10000)) == [
        'device.ae[0].title_template: gives "READINGROOM_10000" for n=10000: '
        "at most 16 characters, got 17"]
    assert errors_of(template("READINGROOM_{n}", 100000)) == [
        "directory.title_attempts: must be 1 to 10000, got 100000"]
    for text, reason in [
        ("WS", "must contain the field {n} (n counts from 1)"),
        ("WS{n}{x}", "only the field {n} may be used, got {x}"),
        ("WS{n", "not a valid format string: expected '}' before end of string"),
        ("WS{n:q}", "cannot be formatted with n=1: Unknown format code 'q' for object of "
                    "type 'int'"),
        ("WS\\{n}", "gives \"WS\\\\1\" for n=1: must not contain a backslash (PS3.5 forbids "
                     "it in an AE title)"),
    ]:
        assert errors_of(template(text)) == [f"device.ae[0].title_template: {reason}"], text


def test_two_aes_with_one_title():
    data = copy.deepcopy(BASE)
    data["device"]["ae"].append(copy.deepcopy(data["device"]["ae"][0]))
    assert errors_of(data) == [
        'device.ae[1].title: "CT01_SCU" is also the title of device.ae[0]']


def test_two_connections_with_one_name():
    data = with_("device.connection", [{"name": "dicom"}, {"name": "dicom", "port": 104}])
    assert errors_of(data) == [
        'device.connection[1].name: "dicom" is also the name of device.connection[0]']


def test_two_transfer_capabilities_with_one_name():
    tc = dict(BASE["device"]["ae"][0]["transfer_capability"][0], name="store")
    data = with_("device.ae[0].transfer_capability", [tc, dict(tc)])
    assert errors_of(data) == [
        'device.ae[0].transfer_capability[1].name: "store" is also the name of '
        "transfer_capability[0]"]


def test_device_needs_a_connection_an_ae_and_each_ae_a_transfer_capability():
    data = copy.deepcopy(BASE)
    del data["device"]["ae"][0]["transfer_capability"]
    assert errors_of(data) == [
        "device.ae[0].transfer_capability: at least one [[device.ae.transfer_capability]] "
        "is needed (Table H.1-5)"]
    data = copy.deepcopy(BASE)
    data["device"] = {"name": "X"}
    assert errors_of(data) == [
        "device.connection: at least one [[device.connection]] is needed (Table H.1-3)",
        "device.ae: at least one [[device.ae]] is needed (Table H.1-3)"]


def test_acceptor_needs_a_listening_connection():
    assert errors_of(with_("device.ae[0].association_acceptor", True)) == [
        "device.ae[0].association_acceptor: true, but none of this AE's connections has a port"]


def test_every_error_is_reported_not_just_the_first():
    data = with_("device.ae[0].title", "X" * 20)
    data["network"]["auto_ip"] = "no"
    data["time"] = {"mode": "fast"}
    assert errors_of(data) == [
        'network.auto_ip: must be true or false, got "no"',
        'time.mode: must be "observe", "sntp" or "chrony", got "fast"',
        "device.ae[0].title: at most 16 characters, got 20",
    ]


def test_sections_must_be_tables():
    data = copy.deepcopy(BASE)
    data["time"] = "sntp"
    assert errors_of(data) == ['time: must be a table, got "sntp"']


class TestSecurityPatterns:
    def secret(self, tmp_path: Path, mode: int) -> str:
        path = tmp_path / "password"
        path.write_text("registrarpw\n")
        path.chmod(mode)
        return str(path)

    def named(self, tmp_path: Path, **keys) -> dict:
        """A tls [directory] with credentials' companions: a CA and a configured domain."""
        ca = tmp_path / "ca.pem"
        ca.write_text("x")
        return {"security": "tls", "ca_file": str(ca), "domain": "hospital.test", **keys}

    def test_password_file_readable_by_others_is_refused(self, tmp_path):
        pw = self.secret(tmp_path, 0o644)
        data = with_("directory", self.named(tmp_path, bind_dn="cn=r,dc=hospital,dc=test",
                                             password_file=pw))
        assert errors_of(data) == [
            f"directory.password_file: must not be readable by group or others (mode 0644); "
            f"chmod 600 {pw}"]

    def test_private_password_file_is_accepted(self, tmp_path):
        pw = self.secret(tmp_path, 0o600)
        config = parse_config(with_("directory", self.named(
            tmp_path, bind_dn="cn=r,dc=hospital,dc=test", password_file=pw)))
        assert config.directory.password_file == Path(pw)

    def test_a_credential_systemd_handed_over_is_read_instead_of_the_file(
            self, tmp_path, monkeypatch):
        """Under the shipped unit (User=dicom-agent) the configured file is root's and
        unreadable; systemd's LoadCredential= copy, found by the file's name, is used."""
        creds = tmp_path / "creds"
        creds.mkdir()
        copy = creds / "dicom-agent_ldap.password"
        copy.write_text("registrarpw\n")
        copy.chmod(0o400)
        unseen = tmp_path / "etc" / "ldap.password"  # the agent cannot even stat it
        monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
        config = parse_config(with_("directory", self.named(
            tmp_path, bind_dn="cn=r,dc=hospital,dc=test", password_file=str(unseen))))
        assert config.directory.password_file == copy
        monkeypatch.delenv("CREDENTIALS_DIRECTORY")  # run by hand: the file itself
        assert errors_of(with_("directory", self.named(
            tmp_path, bind_dn="cn=r,dc=hospital,dc=test", password_file=str(unseen)))) == [
            f"directory.password_file: cannot read \"{unseen}\": No such file or directory"]

    def test_tls_credentials_need_a_ca_and_named_servers(self, tmp_path):
        pw = self.secret(tmp_path, 0o600)
        assert errors_of(with_("directory", {
            "security": "tls", "bind_dn": "cn=r,dc=hospital,dc=test", "password_file": pw})) == [
            "directory.ca_file: required when credentials are configured (bind_dn or "
            "client_cert): the directory's certificate is checked against it, not the "
            "system trust store",
            "directory.security: credentials need [directory] servers or domain: they are "
            "sent only to servers named there or to SRV targets inside that domain, never "
            "to a DHCP-supplied one"]
        # Anonymous over TLS may follow DHCP and SRV: nothing to protect.
        assert parse_config(with_("directory", {"security": "tls"})).directory.ca_file is None

    def test_basic_needs_the_cleartext_permission_and_its_credentials(self):
        assert errors_of(with_("directory", {"security": "basic"})) == [
            'directory.bind_dn: required with security "basic"',
            'directory.password_file: required with security "basic"',
            'directory.security: "basic" sends the password unencrypted; use "tls", or set '
            "allow_cleartext_password = true to accept that"]

    def test_basic_with_permission_is_accepted(self, tmp_path):
        pw = self.secret(tmp_path, 0o600)
        config = parse_config(with_("directory", {
            "security": "basic", "bind_dn": "cn=r,dc=hospital,dc=test", "password_file": pw,
            "allow_cleartext_password": True}))
        assert config.directory.security == "basic"

    def test_tls_bind_dn_needs_a_password_and_cert_needs_key(self, tmp_path):
        cert = tmp_path / "c.pem"
        cert.write_text("x")
        assert errors_of(with_("directory", self.named(
            tmp_path, bind_dn="cn=r,dc=x", client_cert=str(cert)))) == [
            "directory.password_file: required with bind_dn",
            "directory.client_key: required with client_cert"]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "agent", *args], capture_output=True,
                          text=True, cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)))


@pytest.mark.parametrize("example", sorted(p.name for p in EXAMPLES.glob("*.toml")))
def test_shipped_examples_are_valid_and_observe_the_clock(example):
    config = load_config(EXAMPLES / example)
    assert config.time.mode == "observe"
    proc = run_cli("check-config", str(EXAMPLES / example))
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""


def test_examples_cover_an_scu_ct_a_tls_archive_and_a_template_workstation():
    ct = load_config(EXAMPLES / "ct.toml").device
    assert [(a.title, a.association_acceptor) for a in ct.aes] == [("CT01_SCU", False)]
    archive = load_config(EXAMPLES / "archive.toml").device
    assert {c.name: bool(c.tls_cipher_suites) for c in archive.connections} == {
        "dicom": False, "dicom-tls": True}
    assert all(a.association_acceptor for a in archive.aes)
    ws = load_config(EXAMPLES / "workstation.toml").device
    assert ws.aes[0].title is None and ws.aes[0].title_template == "WS{n:02d}"


def test_check_config_exit_2_with_every_error_on_stderr(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text((EXAMPLES / "ct.toml").read_text()
                   .replace('role = "SCU"', 'role = "scu"')
                   .replace('title = "CT01_SCU"', 'title = "CT01_SCU_WITH_LONG_NAME"'))
    proc = run_cli("check-config", str(bad))
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = bad.read_text().splitlines()
    title = lines.index('title = "CT01_SCU_WITH_LONG_NAME"') + 1
    role = lines.index('role = "scu"') + 1
    assert proc.stderr.splitlines() == [  # FILE:LINE: key.path: reason
        f"{bad}:{title}: device.ae[0].title: at most 16 characters, got 23",
        f'{bad}:{role}: device.ae[0].transfer_capability[0].role: must be "SCU" or "SCP", '
        'got "scu"',
    ]


def test_check_config_reports_toml_syntax_and_missing_file(tmp_path):
    broken = tmp_path / "broken.toml"
    broken.write_text("[network\ninterface = 'eth0'\n")
    proc = run_cli("check-config", str(broken))
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"{broken}:1: TOML syntax: ")
    assert "line 1" in proc.stderr
    missing = run_cli("check-config", str(tmp_path / "nope.toml"))
    assert missing.returncode == 2
    assert missing.stderr.strip() == (
        f"{tmp_path / 'nope.toml'}: cannot read: No such file or directory")


def test_nts_is_chronys_and_its_ca_file_needs_it(tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    data = copy.deepcopy(BASE)
    data["time"] = {"mode": "sntp", "nts": True}
    assert errors_of(data) == ['time.nts: needs mode = "chrony": the built-in SNTP client '
                               "has no NTS (chronyd does it)"]
    data["time"] = {"mode": "chrony", "nts_ca_file": str(ca)}
    assert errors_of(data) == ["time.nts_ca_file: used only with nts = true"]
    data["time"] = {"mode": "chrony", "nts": True, "nts_ca_file": str(ca)}
    config = parse_config(data)
    assert config.time.nts and config.time.nts_ca_file == ca


def test_a_health_check_needs_a_listening_connection_and_pynetdicom(monkeypatch):
    data = copy.deepcopy(BASE)
    data["agent"] = {"health_interval": 5, "health_calling_aet": "HEALTH"}
    data["device"]["ae"][0]["health_check"] = True
    assert errors_of(data) == ["device.ae[0].health_check: needs a connection with a port: "
                               "the check is a C-ECHO to this AE"]
    data["device"]["connection"][0]["port"] = 104
    config = parse_config(data)
    assert config.device.aes[0].health_check and config.agent.health_interval == 5
    assert config.agent.health_calling_aet == "HEALTH"
    monkeypatch.setattr("agent.config.pynetdicom_available", lambda: False)
    assert errors_of(data) == ["device.ae[0].health_check: needs pynetdicom "
                               "(pip install 'dicom-agent[dicom]')"]


def test_the_examples_carry_cipher_suites_a_site_accepts_today():
    """No example advertises what RFC 8996/9325 retired: 3DES, RC4, NULL, export, CBC
    with RSA key transport; TLS connections name forward-secret AEAD suites."""
    for path in sorted(EXAMPLES.glob("*.toml")):
        for conn in load_config(path).device.connections:
            for suite in conn.tls_cipher_suites:
                assert "_GCM_" in suite or "CHACHA20" in suite, (path.name, suite)
                assert suite.startswith(("TLS_ECDHE_", "TLS_DHE_")), (path.name, suite)


def test_a_device_name_template_is_filled_from_the_units_own_facts(tmp_path, monkeypatch):
    """One image, many units: {serial}, {machine}, {hostname}; a fact the unit lacks, or
    an unknown field, is an error naming the key."""
    import agent.config as c

    facts = {"serial": "SN12345", "machine": "0a1b2c3d", "hostname": None}
    monkeypatch.setattr(c, "unit_facts", lambda: facts)
    data = copy.deepcopy(BASE)
    data["device"]["name"] = "CT-{serial}"
    assert parse_config(data).device.name == "CT-SN12345"
    data["device"]["name"] = "CT-{machine}"
    assert parse_config(data).device.name == "CT-0a1b2c3d"
    data["device"]["name"] = "CT-{hostname}"
    assert errors_of(data) == ["device.name: {hostname}: this unit has none (no host name)"]
    data["device"]["name"] = "CT-{mac}"
    assert errors_of(data) == ["device.name: unknown field {mac}: a template may use "
                               "{serial}, {machine}, {hostname}"]


def test_the_units_facts_skip_placeholder_serials(tmp_path):
    from agent.config import unit_facts

    dmi, machine = tmp_path / "product_serial", tmp_path / "machine-id"
    machine.write_text("00112233445566778899aabbccddeeff\n")
    for placeholder in ("To be filled by O.E.M.", "0000000000", "Default string", ""):
        dmi.write_text(placeholder + "\n")
        assert unit_facts(dmi, machine)["serial"] is None, placeholder
    dmi.write_text("PF2XK9LM\n")
    facts = unit_facts(dmi, machine)
    assert facts["serial"] == "PF2XK9LM" and len(facts["machine"]) == 8
    assert facts["machine"] == unit_facts(dmi, machine)["machine"]  # stable
    assert unit_facts(tmp_path / "none", tmp_path / "none")["machine"] is None
