"""PS3.15 Table H.1-15 against the lab's real slapd, the patterns the other tests do not
run: Basic (a simple bind on an unencrypted connection), Basic-Manual (a bound account the
server will not let write: the LDIF, loaded by the administrator, then registered), TLS
on LDAPS (implicit TLS on 636), and Anonymous with full update (slapd configured through
cn=config to allow anonymous writes on the DICOM subtree, then put back). Each registers
or writes its LDIF as the conformance statement says. (StartTLS with a password or a
client certificate, anonymous reads and Anonymous-Manual: test_directory.py.)"""

from __future__ import annotations

import re
from pathlib import Path

from agent_helpers import agent, default_device, write_config
from lab import ADMIN_DN, ADMIN_PASSWORD, BASE_DN, REGISTRAR_DN
from test_directory import DEVICES, ldap, remove_device, run_json

DICOM_ACL = ('to dn.subtree="cn=DICOM Configuration,dc=hospital,dc=test" '
             f'by dn.exact="{REGISTRAR_DN}" write by * read')
READER_DN = f"cn=dicom-reader,{BASE_DN}"


def conformance(host, config: str) -> str:
    done = agent(host, "conformance", "--config", config)
    assert done.returncode == 0, done.stderr
    return done.stdout


def secret(host, name: str, value: str) -> Path:
    path = host.run_dir / name
    path.write_text(value + "\n")
    path.chmod(0o600)
    return path


def registered(host, name: str) -> bool:
    return bool(ldap(host, "-b", DEVICES, f"(dicomDeviceName={name})", "dn").stdout.strip())


def slapd_config(lab, ldif: str) -> None:
    done = lab.srv_exec(["ldapmodify", "-Q", "-Y", "EXTERNAL", "-H", lab.ldapi_url],
                        input=ldif)
    assert done.returncode == 0, done.stderr


def test_basic_a_simple_bind_without_tls_registers(lab, host):
    name = f"BAS{host.index}"
    password = secret(host, "registrar.pw", "registrarpw")
    config = write_config(host, network=f'hostname = "{name.lower()}"',
                          directory='domain = "hospital.test"\nsecurity = "basic"\n'
                                    f'bind_dn = "{REGISTRAR_DN}"\n'
                                    f'password_file = "{password}"\n'
                                    "allow_cleartext_password = true",
                          device_section=default_device(host.index, name))
    try:
        assert "In force with this configuration: Basic (or Basic-Manual" in \
            conformance(host, config)
        rc, out = run_json(host, "directory", "register", "--config", config)
        assert rc == 0 and out["state"] == "registered", out
        assert out["server"] == "ldap://ldap.hospital.test:389"
        assert registered(host, name)
    finally:
        remove_device(host, name, [f"{name}_SCU"])


def test_basic_manual_a_bound_account_that_may_not_write_gets_the_ldif(lab, host):
    name = f"BMAN{host.index}"
    add = host.run(["ldapadd", "-x", "-H", "ldap://192.0.2.1", "-D", ADMIN_DN, "-w",
                    ADMIN_PASSWORD], input=f"dn: {READER_DN}\nobjectClass: organizationalRole\n"
                                           "objectClass: simpleSecurityObject\ncn: dicom-reader\n"
                                           "userPassword: readerpw\n")
    assert add.returncode == 0, add.stderr
    password = secret(host, "reader.pw", "readerpw")
    config = write_config(host, network=f'hostname = "{name.lower()}"',
                          directory='domain = "hospital.test"\nsecurity = "basic"\n'
                                    f'bind_dn = "{READER_DN}"\npassword_file = "{password}"\n'
                                    "allow_cleartext_password = true",
                          device_section=default_device(host.index, name))
    try:
        rc, out = run_json(host, "directory", "register", "--config", config)
        assert rc == 3 and out["state"] == "awaiting-manual-registration", out
        assert out["reason"].startswith("insufficientAccess (50)"), out["reason"]
        ldif = Path(out["ldif"].replace("/var/lib/dicom-agent",
                                        str(host.run_dir / "agent-state")))
        assert f"dn: dicomDeviceName={name},{DEVICES}\n" in re.sub(r"\n ", "", ldif.read_text())
        assert not registered(host, name)
        load = host.run(["ldapadd", "-x", "-H", "ldap://192.0.2.1", "-D", ADMIN_DN, "-w",
                         ADMIN_PASSWORD, "-f", str(ldif)])  # the administrator loads it
        assert load.returncode == 0, load.stderr
        rc, out = run_json(host, "directory", "register", "--config", config)
        assert rc == 0 and out["state"] == "registered" and out["titles"] == [f"{name}_SCU"]
    finally:
        remove_device(host, name, [f"{name}_SCU"])
        host.run(["ldapdelete", "-x", "-H", "ldap://192.0.2.1", "-D", ADMIN_DN, "-w",
                  ADMIN_PASSWORD, READER_DN])


def test_tls_on_ldaps_636_registers_with_the_certificate_checked(lab, host):
    name = f"LDS{host.index}"
    password = secret(host, "registrar.pw", "registrarpw")
    tls = lab.run / "tls"
    directory = ('servers = ["ldaps://ldap.hospital.test:636"]\nsecurity = "tls"\n'
                 f'ca_file = "{tls / "ca.pem"}"\nbind_dn = "{REGISTRAR_DN}"\n'
                 f'password_file = "{password}"')
    config = write_config(host, network=f'hostname = "{name.lower()}"', directory=directory,
                          device_section=default_device(host.index, name))
    # The same server under a name its certificate does not carry: refused.
    wrong = write_config(host, network=f'hostname = "{name.lower()}"',
                         directory=directory.replace("ldap.hospital", "ldap-alias.hospital"),
                         device_section=default_device(host.index, name), name="wrong.toml")
    try:
        assert "In force with this configuration: TLS" in conformance(host, config)
        rc, out = run_json(host, "directory", "register", "--config", wrong)
        assert rc != 0 and not registered(host, name), out
        rc, out = run_json(host, "directory", "register", "--config", config)
        assert rc == 0 and out["state"] == "registered", out
        assert out["server"] == "ldaps://ldap.hospital.test:636"
        assert registered(host, name)
    finally:
        remove_device(host, name, [f"{name}_SCU"])


def test_anonymous_with_full_update_registers_where_the_server_allows_it(lab, host):
    name = f"ANW{host.index}"
    config = write_config(host, network=f'hostname = "{name.lower()}"',
                          directory='domain = "hospital.test"',
                          device_section=default_device(host.index, name))
    db = "olcDatabase={2}mdb,cn=config"
    slapd_config(lab, "dn: cn=config\nchangetype: modify\nadd: olcAllows\n"
                      "olcAllows: update_anon\n-\n\n"
                      f"dn: {db}\nchangetype: modify\ndelete: olcAccess\nolcAccess: {{1}}\n-\n"
                      f"add: olcAccess\nolcAccess: {{1}}{DICOM_ACL.replace(' by * read', '')}"
                      " by anonymous write by * read\n-\n")
    try:
        assert "In force with this configuration: Anonymous (or Anonymous-Manual" in \
            conformance(host, config)
        rc, out = run_json(host, "directory", "register", "--config", config)
        assert rc == 0 and out["state"] == "registered", out
        assert registered(host, name)
        creator = ldap(host, "-b", f"dicomDeviceName={name},{DEVICES}", "-s", "base",
                       "creatorsName", admin=True).stdout
        assert "\ncreatorsName:\n" in creator  # the empty DN: written without a bind
    finally:
        slapd_config(lab, "dn: cn=config\nchangetype: modify\ndelete: olcAllows\n"
                          "olcAllows: update_anon\n-\n\n"
                          f"dn: {db}\nchangetype: modify\ndelete: olcAccess\n"
                          f"olcAccess: {{1}}\n-\nadd: olcAccess\nolcAccess: {{1}}{DICOM_ACL}\n-\n")
        remove_device(host, name, [f"{name}_SCU"])
