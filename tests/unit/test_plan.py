"""The LDAP plan: DNs, entries, escaping and LDIF, from the example configurations."""

from __future__ import annotations

import base64
import random
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.config import load_config
from profiles.app_config import plan

EXAMPLES = Path(__file__).resolve().parents[2] / "agent" / "examples"
BASE = "cn=DICOM Configuration,dc=hospital,dc=test"


def test_archive_entries_in_parent_first_order_with_every_configured_attribute():
    device = load_config(EXAMPLES / "archive.toml").device
    entries = plan.device_entries(BASE, device, ["ARCHIVE2_STORE", "ARCHIVE2_QR"],
                                  {"dicom": "archive2.hospital.test",
                                   "dicom-tls": "archive2.hospital.test"})
    dev = "dicomDeviceName=ARCHIVE2,cn=Devices," + BASE
    assert [e.dn for e in entries] == [
        dev, f"cn=dicom,{dev}", f"cn=dicom-tls,{dev}",
        f"dicomAETitle=ARCHIVE2_STORE,{dev}",
        f"cn=ct-image-storage-scp,dicomAETitle=ARCHIVE2_STORE,{dev}",
        f"cn=mr-image-storage-scp,dicomAETitle=ARCHIVE2_STORE,{dev}",
        f"dicomAETitle=ARCHIVE2_QR,{dev}",
        f"cn=study-root-find-scp,dicomAETitle=ARCHIVE2_QR,{dev}"]
    assert entries[0].attributes == {
        "objectClass": ["dicomDevice"], "dicomDeviceName": ["ARCHIVE2"],
        "dicomInstalled": ["TRUE"], "dicomDescription": ["Short-term image archive"],
        "dicomManufacturer": ["Example Archive Systems"],
        "dicomManufacturerModelName": ["EA-1"], "dicomSoftwareVersion": ["3.4.1"],
        "dicomPrimaryDeviceType": ["ARCHIVE"],
        "dicomInstitutionName": ["Sometown Hospital"]}
    assert entries[2].attributes == {
        "objectClass": ["dicomNetworkConnection"], "cn": ["dicom-tls"],
        "dicomHostname": ["archive2.hospital.test"], "dicomPort": ["2762"],
        "dicomTLSCipherSuite": ["TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
                                "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"]}
    assert entries[3].attributes["dicomNetworkConnectionReference"] == [
        f"cn=dicom,{dev}", f"cn=dicom-tls,{dev}"]
    assert entries[3].attributes["dicomAssociationAcceptor"] == ["TRUE"]
    assert entries[3].attributes["dicomAssociationInitiator"] == ["FALSE"]
    assert "dicomInstalled" not in entries[3].attributes  # inherited from the device
    assert entries[4].attributes["dicomTransferSyntax"] == [
        "1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.4.70"]


def test_special_characters_are_escaped_in_dns_and_filters():
    title = "CT,+*()=#;1"
    assert plan.title_dn(BASE, title) == (
        "dicomAETitle=CT\\,\\+*()\\=#\\;1,cn=Unique AE Titles Registry," + BASE)
    assert plan.title_dn(BASE, "#1").startswith("dicomAETitle=\\#1,")
    assert plan.eq("dicomAETitle", title) == "(dicomAETitle=CT,+\\2a\\28\\29=#;1)"


def test_escaping_is_ldap3s_to_the_character():
    """The DNs and filters earlier versions built with ldap3's helpers read the same now
    (an entry's DN is how the agent finds it again); plan does not load ldap3
    (tests/agent/test_imports.py)."""
    from ldap3.utils.conv import escape_filter_chars
    from ldap3.utils.dn import escape_rdn

    rng = random.Random(4514)
    alphabet = '\\,+"<>;=#*() \x00aZ9_-.\u00e9\u4e2d'
    values = [" ", "#", "  ", " # ", "a ", " a", "\\", "CT,+*()=#;1"] + [
        "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 12)))
        for _ in range(5000)]
    for value in values:
        assert plan.escape_rdn(value) == escape_rdn(value), repr(value)
        assert plan.escape_filter_value(value) == escape_filter_chars(value), repr(value)


def test_template_candidates_skip_taken_titles():
    assert list(plan.candidate_titles("WS{n:02d}", 5, {"WS01", "WS03"})) == [
        "WS02", "WS04", "WS05"]


def test_hostname_is_qualified_enough():
    from profiles.app_config.model import NetworkConnection
    plain = NetworkConnection("dicom")
    assert plan.connection_hostname(plain, "ct01", "hospital.test", "192.0.2.5") == \
        "ct01.hospital.test"
    assert plan.connection_hostname(plain, "ct01.lab.test", "hospital.test", None) == \
        "ct01.lab.test"
    assert plan.connection_hostname(plain, None, "hospital.test", "192.0.2.5") == "192.0.2.5"
    fixed = NetworkConnection("dicom", hostname="pacs.example.org")
    assert plan.connection_hostname(fixed, "ct01", "hospital.test", None) == "pacs.example.org"


def test_ldif_folds_long_lines_and_base64_encodes_what_is_not_safe():
    entry = plan.Entry("dicomDeviceName=Gerät,cn=x", {
        "objectClass": ["dicomNetworkAE"], "dicomDescription": ["Ärzte", "x" * 100],
        "dicomVendorData": [b"\x00\x01"]})
    text = plan.to_ldif([entry], comment="hello")
    lines = text.splitlines()
    assert lines[:2] == ["# hello", "version: 1"]
    assert f"dn:: {base64.b64encode('dicomDeviceName=Gerät,cn=x'.encode()).decode()}" in lines
    assert f"dicomDescription:: {base64.b64encode('Ärzte'.encode()).decode()}" in lines
    assert "dicomVendorData:: AAE=" in lines
    long = next(i for i, line in enumerate(lines) if line.startswith("dicomDescription: x"))
    assert len(lines[long]) == 76 and lines[long + 1].startswith(" x")
    unfolded = lines[long] + lines[long + 1][1:]
    assert unfolded == "dicomDescription: " + "x" * 100


def test_dn_splitting_and_unescaping_follow_rfc_4514():
    dn = plan.ae_dn("dicomDeviceName=A\\,B,cn=Devices,dc=x", "CT,+*()=#;1")
    _rdn, parent = plan.split_rdn(dn)
    assert parent == "dicomDeviceName=A\\,B,cn=Devices,dc=x"
    assert plan.rdn_value(dn) == "CT,+*()=#;1"
    assert plan.rdn_value(parent) == "A,B"
    assert plan.rdn_value("cn=\\41\\42C,dc=x") == "ABC"
    assert plan.split_rdn("dc=test") == ("dc=test", "")


def ldap3_accepts(dn: str) -> bool:
    from ldap3.core.exceptions import LDAPInvalidDnError
    from ldap3.utils.dn import parse_dn

    try:
        parse_dn(dn)
    except LDAPInvalidDnError:
        return False
    return True


def test_a_dn_is_checked_without_ldap3_and_never_more_leniently():
    """plan.dn_problem against its oracle, ldap3's parse_dn (which the directory code
    is handed these DNs): what it accepts ldap3 accepts; DNs made the way the agent
    writes them (escape_rdn values) pass both; the usual mistakes are named."""
    for good in ("cn=Registrar,dc=hospital,dc=test", "dicomAETitle=A\\,B\\+C,cn=x",
                 "cn=a\\ ,o=b\\#c", "cn=x+sn=y,dc=t", "cn=\\23lead,dc=t", "uid=Ä,dc=t"):
        assert plan.dn_problem(good) is None, good
        assert ldap3_accepts(good), good
    for bad, why in (("", "empty"), ("cn=a, o=b", "attribute type ' o' is not a name"),
                     ("cn=a,", "'' is not type=value"), ("cn=", "cn= has no value"),
                     ("cn= a", "cn=: a leading or trailing space must be escaped"),
                     ("cn=a=b", "cn=: '=' must be escaped"), ("1cn=a", "attribute type "
                                                                    "'1cn' is not a name"),
                     ("cn=a\\q", "'q' may not follow a backslash"),
                     ("cn=a\\", "a backslash at the end"), ("cn=#41", "cn=: '#' must be escaped")):
        assert plan.dn_problem(bad) == why, bad
    # Stricter than ldap3 where ldap3 bends RFC 4514: a bare trailing space after an
    # escaped backslash.
    assert plan.dn_problem("cn=\\\\ ") == "cn=: a leading or trailing space must be escaped"
    assert ldap3_accepts("cn=\\\\ ")


@settings(max_examples=3000, deadline=None)
@given(st.text(alphabet='cnod=,+\\ "#;<>a1-Ä\x0045', max_size=24))
def test_what_the_dn_check_accepts_ldap3_accepts(dn):
    if plan.dn_problem(dn) is None:
        assert ldap3_accepts(dn), dn


@settings(max_examples=500, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["cn", "dc", "dicomAETitle", "o-x"]),
                          st.text(min_size=1, max_size=12)), min_size=1, max_size=4))
def test_dns_written_with_escape_rdn_are_judged_as_ldap3_does(rdns):
    """The two agree on DNs the agent writes — both refuse a `#` inside a value, which
    RFC 4514 leaves bare (escape_rdn escapes only a leading one), so a configured DN
    must escape it — but for one place where ldap3 is the lenient one: a value ending in
    an escaped backslash and a bare space (escape_rdn's " " is `\\\\ `), which RFC 4514
    refuses and ldap3 takes."""
    dn = ",".join(f"{kind}={plan.escape_rdn(value)}" for kind, value in rdns)
    ours, theirs = plan.dn_problem(dn), ldap3_accepts(dn)
    if (ours is None) != theirs:
        assert theirs and ours.endswith("a leading or trailing space must be escaped"), dn
        assert dn.endswith("\\\\ ") or "\\\\ ," in dn, dn
