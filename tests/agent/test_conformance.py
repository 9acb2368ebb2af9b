"""The conformance statement follows the configuration."""

import subprocess
import sys
from pathlib import Path

from agent.commands.conformance import statement
from agent.config import load_config

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "agent" / "examples"


def test_archive_statement_names_its_services_attributes_and_security():
    text = statement(load_config(EXAMPLES / "archive.toml"))
    assert text.startswith("# PS3.15 system management conformance: device ARCHIVE2\n")
    for section in ("## Profiles and actors claimed", "## DHCP client (PS3.15 F.1)",
                    "## Time synchronization (PS3.15 G.1, G.1.5)",
                    "## LDAP client (PS3.15 F.1.8, H.1.4)", "## DNS-SD (PS3.15 H.2)"):
        assert section in text
    assert "| ARCHIVE2_STORE | _dicom-tls._tcp.local. | 2762 | AET=ARCHIVE2_STORE " \
           "PrimaryDeviceType=ARCHIVE |" in text
    assert "  dicomTLSCipherSuite: TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, " \
           "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256" in text
    assert "121 (Classless Static Route)" in text
    # (1) the anonymous pattern does send updates
    assert "In force with this configuration: Anonymous (or Anonymous-Manual where the " \
        "server refuses updates). Update LDAP Server (H.1.4.3): yes — adds, modifies and " \
        "deletes are sent anonymously." in text
    assert "Secure transactions (G.1.3): not supported (SNTP has none)." in text


def test_an_initiator_only_ct_advertises_nothing_and_the_cli_prints_it():
    proc = subprocess.run([sys.executable, "-m", "agent", "conformance", "--config",
                           str(EXAMPLES / "ct.toml")], capture_output=True, text=True,
                          cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert "Nothing is advertised: no AE of this device accepts associations." in proc.stdout
    assert "sent as options 12 and 81 with the S flag" in proc.stdout


def test_the_statement_says_nts_or_nothing_and_reports_a_fallback(tmp_path):
    """G.1.3 as configured: with nts, a server failing the NTS check is not used — or,
    only with nts_fallback, used without authentication, which the statement says."""
    import tomllib

    from agent.commands.conformance import statement
    from agent.config import parse_config as parse

    def parse_config(text: str):
        return parse(tomllib.loads(text))

    base = (EXAMPLES / "ct.toml").read_text().replace('mode = "observe"', 'mode = "chrony"')
    strict = statement(parse_config(base.replace('mode = "chrony"',
                                                 'mode = "chrony"\nnts = true')))
    assert "not used; with none left, time is reported unauthenticated" in strict
    assert "fallback to plain NTP" in strict and "unauthenticated time is accepted" not in strict
    loose = statement(parse_config(base.replace(
        'mode = "chrony"', 'mode = "chrony"\nnts = true\nnts_fallback = true')))
    assert "used without NTS (nts_fallback = true: unauthenticated time is accepted)" in loose
    plain = statement(parse_config(base))
    assert "Secure transactions (G.1.3): none (NTP without authentication" in plain


def test_every_security_pattern_of_table_h1_15_is_named():
    """(2) H.1.7: the patterns supported, by Table H.1-15's names, not only the one in
    force; the one in force follows [directory] security."""
    text = statement(load_config(EXAMPLES / "ct.toml"))
    for name in ("TLS", "TLS-Manual", "Basic", "Basic-Manual", "Anonymous",
                 "Anonymous-Manual"):
        assert f"\n- {name}: security = " in text, name
    tls = (EXAMPLES / "ct.toml").read_text().replace('security = "anonymous"',
                                                     'security = "tls"')
    import tomllib

    from agent.config import parse_config
    assert "In force with this configuration: TLS (or TLS-Manual" in statement(
        parse_config(tomllib.loads(tls)))


def test_every_operation_and_the_marker_and_the_registry_entries_are_listed():
    """(3) what is sent: the identity marker, the registry entries, every modify and
    delete (attribute replacement, AE and connection removal, dicomInstalled FALSE)."""
    text = statement(load_config(EXAMPLES / "archive.toml"))
    (versions,) = [x for x in text.splitlines() if x.startswith("  dicomSoftwareVersion:")]
    assert versions.endswith(", dicom-agent-id <32 hex digits>")  # beside its own 3.4.1
    assert "dicomAETitle=ARCHIVE2_STORE,cn=Unique AE Titles Registry,<DICOM Configuration " \
        "root>\n  objectClass: dicomUniqueAETitle\n  dicomAETitle: ARCHIVE2_STORE" in text
    assert "- modify (replace): the attributes of those entries that differ" in text
    assert "dicomInstalled FALSE" in text
    assert "- delete: an AE or connection no longer configured" in text


def test_a_template_is_not_shown_as_a_fixed_title_and_title_creation_is_described():
    """(4) H.1.4.3.5 for a title template; no template's first title passed off as the
    AE's title."""
    text = statement(load_config(EXAMPLES / "workstation.toml"))
    assert "dicomAETitle: WS01" not in text
    assert "dicomAETitle: <WS{n:02d}: a title chosen at registration>" in text
    assert "AE title creation (H.1.4.3.5): for an AE with a title template (`WS{n:02d}`)" in text
    assert "AE title creation" not in statement(load_config(EXAMPLES / "ct.toml"))


def test_the_manual_patterns_transfer_mechanism_is_named():
    """(5) H.1.4.4: the mechanisms available for transferring the LDIF."""
    text = statement(load_config(EXAMPLES / "ct.toml"))
    assert "Maintain LDAP Server (H.1.4.4)" in text
    assert "Transfer mechanism: SSH (scp or sftp from the device)" in text


def test_observe_mode_claims_no_sntp_client_and_the_others_do():
    """(6) Maintain Time is mandatory for the SNTP Client (Table G.1-1): observing only,
    the actor is not claimed."""
    observe = statement(load_config(EXAMPLES / "ct.toml"))
    assert "| Basic Time Synchronization (Annex G) | SNTP Client | no: observe mode" in observe
    import tomllib

    from agent.config import parse_config
    for mode, actor in (("sntp", "SNTP Client"), ("chrony", "NTP Client")):
        text = (EXAMPLES / "ct.toml").read_text().replace('mode = "observe"',
                                                          f'mode = "{mode}"')
        assert f"| Basic Time Synchronization (Annex G) | {actor} | yes |" in statement(
            parse_config(tomllib.loads(text)))
