"""slapd accepts the DICOM schema in both forms and enforces it on real entries."""

from __future__ import annotations

import subprocess
from pathlib import Path

from lab import CONFIG_ROOT_DN, REGISTRAR_DN, REGISTRAR_PASSWORD

from profiles.app_config.schema_text import INCLUDE_FILE, LDIF_FILE

DATA = Path(__file__).resolve().parents[1] / "data"


def test_slaptest_accepts_the_include_file(tmp_path):
    (tmp_path / "db").mkdir()
    conf = tmp_path / "slapd.conf"
    conf.write_text(
        "include /etc/ldap/schema/core.schema\n"
        f"include {INCLUDE_FILE}\n"
        "modulepath /usr/lib/ldap\nmoduleload back_mdb\n"
        "database mdb\nsuffix dc=hospital,dc=test\n"
        f"directory {tmp_path / 'db'}\n"
        "index dicomAETitle eq\nindex dicomDeviceName eq\n")
    proc = subprocess.run(["slaptest", "-u", "-f", conf], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "config file testing succeeded" in proc.stderr


def test_slaptest_accepts_the_cn_config_ldif(tmp_path):
    (tmp_path / "slapd.d").mkdir()
    (tmp_path / "config.ldif").write_text(
        "dn: cn=config\nobjectClass: olcGlobal\ncn: config\n\n"
        "dn: cn=schema,cn=config\nobjectClass: olcSchemaConfig\ncn: schema\n\n"
        "include: file:///etc/ldap/schema/core.ldif\n\n"
        f"include: file://{LDIF_FILE}\n\n")
    add = subprocess.run(["slapadd", "-n0", "-F", tmp_path / "slapd.d",
                          "-l", tmp_path / "config.ldif"], capture_output=True, text=True)
    assert add.returncode == 0, add.stderr
    proc = subprocess.run(["slaptest", "-u", "-F", tmp_path / "slapd.d"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    schema = next((tmp_path / "slapd.d/cn=config/cn=schema").glob("cn={1}dicom.ldif"))
    text = schema.read_text()
    assert text.count("olcAttributeTypes:") == 31 and text.count("olcObjectClasses:") == 8


def test_device_with_ae_connection_and_tc_is_added_and_a_duplicate_title_refused(host):
    auth = ["-x", "-H", "ldap://192.0.2.1", "-D", REGISTRAR_DN, "-w", REGISTRAR_PASSWORD]
    device_dn = f"dicomDeviceName=CT01,cn=Devices,{CONFIG_ROOT_DN}"
    title_dn = f"dicomAETitle=CT01_SCU,cn=Unique AE Titles Registry,{CONFIG_ROOT_DN}"
    try:
        add = host.run(["ldapadd", *auth, "-f", str(DATA / "device-ct01.ldif")])
        assert add.returncode == 0, add.stderr
        found = host.run(["ldapsearch", "-x", "-LLL", "-H", "ldap://192.0.2.1", "-b", device_dn,
                          "(objectClass=dicomTransferCapability)", "dicomTransferSyntax"])
        assert found.stdout.count("dicomTransferSyntax:") == 2, found.stdout
        dup = host.run(["ldapadd", *auth], input=(
            f"dn: {title_dn}\nobjectClass: dicomUniqueAETitle\ndicomAETitle: CT01_SCU\n"))
        assert dup.returncode == 68, dup.stderr
        assert "Already exists" in dup.stderr
        # The schema is enforced: an AE without its MUST attributes is refused (65).
        bad = host.run(["ldapadd", *auth], input=(
            f"dn: dicomAETitle=CT01_BAD,{device_dn}\nobjectClass: dicomNetworkAE\n"
            "dicomAETitle: CT01_BAD\n"))
        assert bad.returncode == 65, bad.stderr
    finally:
        host.run(["ldapdelete", *auth, "-r", device_dn])
        host.run(["ldapdelete", *auth, title_dn])
