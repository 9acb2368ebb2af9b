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
    assert "  dicomTLSCipherSuite: TLS_RSA_WITH_AES_128_CBC_SHA, " \
           "TLS_RSA_WITH_3DES_EDE_CBC_SHA" in text
    assert "121 (Classless Static Route)" in text
    assert "Security: anonymous access, no TLS. Update LDAP Server option: no" in text
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
