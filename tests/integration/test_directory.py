"""`dicom-agent directory` and `ldif` against the lab's real slapd (PS3.15 H.1)."""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import pytest
from agent_helpers import AGENT, PYTHON, agent, default_device, write_config
from lab import ADMIN_DN, ADMIN_PASSWORD, BASE_DN, CONFIG_ROOT_DN, REGISTRAR_DN

DEVICES = f"cn=Devices,{CONFIG_ROOT_DN}"
REGISTRY = f"cn=Unique AE Titles Registry,{CONFIG_ROOT_DN}"
OPERATIONAL = {"entryuuid", "creatorsname", "createtimestamp", "entrycsn", "modifiersname",
               "modifytimestamp", "structuralobjectclass", "subschemasubentry",
               "hassubordinates", "entrydn"}


def registrar(lab, device, how: str = "password", ca: Path | None = None) -> str:
    """A [directory] section for the registrar: TLS with its password or its certificate."""
    tls = lab.run / "tls"
    lines = ['domain = "hospital.test"', 'security = "tls"',
             f'ca_file = "{ca or tls / "ca.pem"}"']
    if how == "password":
        secret = device.run_dir / "registrar.pw"
        secret.write_text("registrarpw\n")
        secret.chmod(0o600)
        lines += [f'bind_dn = "{REGISTRAR_DN}"', f'password_file = "{secret}"']
    else:
        lines += [f'client_cert = "{tls / "registrar.pem"}"',
                  f'client_key = "{tls / "registrar.key"}"']
    return "\n".join(lines)


def run_json(device, *args: str) -> tuple[int, dict]:
    proc = agent(device, *args, "--json")
    assert proc.stdout.strip() or proc.returncode != 0, proc.stderr
    return proc.returncode, (json.loads(proc.stdout) if proc.stdout.strip() else
                             {"stderr": proc.stderr})


def ldap(device, *args: str, admin: bool = False) -> subprocess.CompletedProcess:
    auth = ["-D", ADMIN_DN, "-w", ADMIN_PASSWORD] if admin else []
    return device.run(["ldapsearch", "-x", "-LLL", "-o", "ldif-wrap=no", "-H",
                       "ldap://192.0.2.1", *auth, *args])


def entries_of(ldif: str) -> dict[str, dict[str, list[str]]]:
    """A small LDIF reader for comparisons: unfolds, keeps base64 values as they are."""
    out: dict[str, dict[str, list[str]]] = {}
    for block in re.sub(r"\n ", "", ldif).strip().split("\n\n"):
        attrs: dict[str, list[str]] = {}
        dn = None
        for line in block.splitlines():
            if not line or line.startswith(("#", "version:")):
                continue
            name, _, value = line.partition(":")
            if name == "dn":
                dn = value.lstrip(": ")
                continue
            if name.lower() not in OPERATIONAL:
                attrs.setdefault(name.lower(), []).append(value.lstrip(": "))
        if dn:
            out[dn.lower()] = {k: sorted(v) for k, v in attrs.items()}
    return out


def remove_device(host, name: str, titles: list[str]) -> None:
    admin = ["-x", "-H", "ldap://192.0.2.1", "-D", ADMIN_DN, "-w", ADMIN_PASSWORD]
    host.run(["ldapdelete", *admin, "-r", f"dicomDeviceName={name},{DEVICES}"])
    for title in titles:
        host.run(["ldapdelete", *admin, f"dicomAETitle={title},{REGISTRY}"])


def test_find_follows_srv_order_and_fails_over_past_a_dead_target(lab, host):
    config = write_config(host, network=f'hostname = "h{host.index}"',
                          directory='domain = "hospital.test"')
    rc, found = run_json(host, "directory", "find", "--config", config)
    assert rc == 0 and found["server"] == "ldap://ldap.hospital.test:389"
    assert found["base_dn"] == CONFIG_ROOT_DN  # in the second naming context
    assert [r["target"] for r in found["srv"]] == ["ldap.hospital.test",
                                                   "ldap-backup.hospital.test"]
    try:
        lab.set_srv_layout("dead-first")
        rc, found = run_json(host, "directory", "find", "--config", config)
    finally:
        lab.set_srv_layout("live-first")
    assert rc == 0 and found["server"] == "ldap://ldap.hospital.test:389"
    assert [t["url"] for t in found["tried"]] == ["ldap://ldap-backup.hospital.test:389",
                                                  "ldap://ldap.hospital.test:389"]
    assert "Connection refused" in found["tried"][0]["result"]


def test_targets_that_never_answer_cost_a_quarter_second_each_not_a_timeout(lab, host):
    """Three priority-0 SRV targets nobody answers (no ARP reply) before the live one:
    attempts are staggered, so the live one is tried a quarter of a second after each
    (before: a connect timeout each, 10.4 s in all); the silent ones are named as not
    waited for."""
    config = write_config(host, network=f'hostname = "h{host.index}"',
                          directory='domain = "hospital.test"')
    try:
        lab.set_srv_layout("silent-first")
        rc, found = run_json(host, "directory", "find", "--config", config)
    finally:
        lab.set_srv_layout("live-first")
    assert rc == 0 and found["server"] == "ldap://ldap.hospital.test:389", found
    silent = [t for t in found["tried"] if "silent" in t["url"]]
    if found["srv"][-1]["target"] == "ldap.hospital.test":  # drawn last (300 in 301)
        assert len(silent) == 3
    # Each silent one started is left behind, never waited for to its connect timeout
    # (make bench measures the time to the directory).
    assert all("not waited for" in t["result"] for t in silent), silent


def test_manual_servers_when_dns_has_no_srv(host):
    config = write_config(host, directory='domain = "nosrv.test"\n'
                                          'servers = ["ldap://192.0.2.2", "ldap://192.0.2.1"]')
    rc, found = run_json(host, "directory", "find", "--config", config)
    assert rc == 0 and found["srv"] == [] and found["server"] == "ldap://192.0.2.1"
    assert found["tried"][0]["url"] == "ldap://192.0.2.2"


def test_tls_with_a_wrong_ca_or_a_wrong_name_fails_closed(lab, host, tmp_path):
    other_ca = host.run_dir / "other-ca.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-keyout",
                    str(host.run_dir / "other.key"), "-out", str(other_ca), "-days", "1",
                    "-subj", "/CN=someone else"], check=True, capture_output=True)
    config = write_config(host, network=f'hostname = "h{host.index}"',
                          directory=registrar(lab, host, ca=other_ca))
    rc, found = run_json(host, "directory", "find", "--config", config)
    assert rc == 1 and found.get("server", "missing") is None, found
    assert "certificate verify failed" in found["tried"][0]["result"]
    # The right CA, but a name the certificate does not carry.
    config = write_config(host, network=f'hostname = "h{host.index}"', directory=registrar(
        lab, host).replace('domain = "hospital.test"', 'domain = "nosrv.test"\n'
                           'servers = ["ldap://ldap-alias.hospital.test"]'))
    rc, found = run_json(host, "directory", "find", "--config", config)
    assert rc == 1 and "doesn't match" in found["tried"][0]["result"]
    config = write_config(host, network=f'hostname = "h{host.index}"',
                          directory=registrar(lab, host))
    rc, found = run_json(host, "directory", "find", "--config", config)
    assert rc == 0 and found["server"] == "ldap://ldap.hospital.test:389"


@pytest.mark.parametrize("how", ["password", "certificate"])
def test_register_creates_the_device_and_reuses_it_after_a_reboot(lab, host, how):
    name = f"REG{host.index}{how[0].upper()}"
    config = write_config(host, network=f'hostname = "{name.lower()}"',
                          directory=registrar(lab, host, how),
                          device_section=default_device(host.index, name,
                                                        extra_connection="port = 11112"))
    try:
        rc, reg = run_json(host, "directory", "register", "--config", config)
        assert rc == 0, reg
        assert reg["state"] == "registered" and not reg["adopted"]
        assert reg["titles"] == [f"{name}_SCU"]
        assert reg["device_dn"] == f"dicomDeviceName={name},{DEVICES}"
        saved = json.loads((host.run_dir / "agent-state" / "directory.json").read_text())
        assert saved["titles"] == reg["titles"]
        got = ldap(host, "-b", reg["device_dn"], "(objectClass=dicomNetworkConnection)",
                   "dicomHostname", "dicomPort").stdout
        assert f"dicomHostname: {name.lower()}.hospital.test" in got
        assert "dicomPort: 11112" in got
        again_rc, again = run_json(host, "directory", "register", "--config", config)
        assert again_rc == 0 and again["titles"] == reg["titles"] and not again["adopted"]
        assert again["changed"] == []
        # The device's name changes (a new lease, say): its connection follows.
        moved = config.replace(".toml", "-moved.toml")
        Path(moved).write_text(Path(config).read_text().replace(
            f'hostname = "{name.lower()}"', f'hostname = "{name.lower()}-new"'))
        rc, after = run_json(host, "directory", "register", "--config", moved)
        assert rc == 0 and after["changed"] == [f"cn=dicom,{reg['device_dn']}"]
        assert f"dicomHostname: {name.lower()}-new.hospital.test" in ldap(
            host, "-b", reg["device_dn"], "(cn=dicom)", "dicomHostname").stdout
        Path(moved).rename(config)
        rc, answer = run_json(host, "directory", "lookup", f"{name}_SCU", "--config", config)
        assert rc == 0 and answer["device"] == name and answer["installed"] is True
        assert answer["connections"] == [{"hostname": f"{name.lower()}-new.hospital.test",
                                          "port": 11112, "tls_cipher_suites": [],
                                          "installed": True, "addresses": []}]  # no A record
    finally:
        remove_device(host, name, [f"{name}_SCU"])


def test_refused_update_writes_ldif_and_waits_for_the_administrator(lab, host):
    name = f"MAN{host.index}"
    config = write_config(host, network=f'hostname = "{name.lower()}"',
                          directory='domain = "hospital.test"',
                          device_section=default_device(host.index, name))
    try:
        rc, out = run_json(host, "directory", "register", "--config", config)
        assert rc == 3 and out["state"] == "awaiting-manual-registration"
        assert out["reason"].startswith("strongerAuthRequired (8)")
        ldif = Path(out["ldif"].replace("/var/lib/dicom-agent",
                                        str(host.run_dir / "agent-state")))
        unfolded = re.sub(r"\n ", "", ldif.read_text())
        assert f"dn: dicomDeviceName={name},{DEVICES}\n" in unfolded
        assert ldap(host, "-b", DEVICES, f"(dicomDeviceName={name})", "dn").stdout == ""
        # An administrator loads it...
        load = host.run(["ldapadd", "-x", "-H", "ldap://192.0.2.1", "-D", REGISTRAR_DN,
                         "-w", "registrarpw", "-f", str(ldif)])
        assert load.returncode == 0, load.stderr
        # ... and the next check finds the device registered.
        rc, out = run_json(host, "directory", "register", "--config", config)
        assert rc == 0 and out["state"] == "registered" and out["titles"] == [f"{name}_SCU"]
        assert not ldif.exists()
    finally:
        remove_device(host, name, [f"{name}_SCU"])


def test_a_preconfigured_device_is_adopted_without_clobbering(lab, host):
    name = f"PRE{host.index}"
    device_dn = f"dicomDeviceName={name},{DEVICES}"
    admin_ldif = f"""dn: dicomAETitle={name}_ADM,{REGISTRY}
objectClass: dicomUniqueAETitle
dicomAETitle: {name}_ADM

dn: {device_dn}
objectClass: dicomDevice
objectClass: extensibleObject
dicomDeviceName: {name}
dicomInstalled: FALSE
dicomDescription: configured by hand
l: Room 3

dn: cn=dicom,{device_dn}
objectClass: dicomNetworkConnection
cn: dicom
dicomHostname: old-name.hospital.test
dicomPort: 104

dn: dicomAETitle={name}_ADM,{device_dn}
objectClass: dicomNetworkAE
dicomAETitle: {name}_ADM
dicomNetworkConnectionReference: cn=dicom,{device_dn}
dicomAssociationInitiator: TRUE
dicomAssociationAcceptor: TRUE
"""
    load = host.run(["ldapadd", "-x", "-H", "ldap://192.0.2.1", "-D", ADMIN_DN, "-w",
                     ADMIN_PASSWORD], input=admin_ldif)
    assert load.returncode == 0, load.stderr
    config = write_config(host, network=f'hostname = "{name.lower()}"',
                          directory=registrar(lab, host),
                          device_section=default_device(host.index, name,
                                                        extra_connection="port = 11112"))
    try:
        rc, reg = run_json(host, "directory", "register", "--config", config)
        assert rc == 0 and reg["adopted"] and reg["titles"] == [f"{name}_ADM"]
        got = entries_of(ldap(host, "-b", device_dn, "-s", "sub", "(objectClass=*)",
                              admin=True).stdout)
        dev = got[device_dn.lower()]
        assert dev["objectclass"] == ["dicomDevice", "extensibleObject"]
        assert dev["l"] == ["Room 3"] and dev["dicomdescription"] == ["configured by hand"]
        assert dev["dicominstalled"] == ["FALSE"]  # directory-side: the administrator's
        conn = got[f"cn=dicom,{device_dn}".lower()]
        assert conn["dicomhostname"] == [f"{name.lower()}.hospital.test"]
        assert conn["dicomport"] == ["11112"]
        assert f"dicomaetitle={name}_adm,{device_dn}".lower() in got  # kept
        assert not [dn for dn in got if f"{name}_scu" in dn]  # nothing of ours added
    finally:
        remove_device(host, name, [f"{name}_ADM"])


def test_a_fixed_title_taken_by_another_device_is_a_clear_error(lab, host):
    name = f"DUP{host.index}"
    config = write_config(host, network=f'hostname = "{name.lower()}"',
                          directory=registrar(lab, host),
                          device_section=default_device(host.index, name, title="ARCHIVE"))
    rc, out = run_json(host, "directory", "register", "--config", config)
    assert rc == 1
    assert out["stderr"].strip() == ('directory register: AE title "ARCHIVE" is taken by '
                                      "device PACS1")
    assert ldap(host, "-b", DEVICES, f"(dicomDeviceName={name})", "dn").stdout == ""


def test_twenty_agents_with_one_template_get_twenty_titles_and_leave_no_orphan(lab, host):
    configs = []
    for i in range(20):
        state = host.run_dir / f"state-{i}"
        configs.append(write_config(
            host, network=f'hostname = "race{i}"', directory=registrar(lab, host),
            device_section=default_device(host.index, f"RACE{i:02d}", title="RACE{n:02d}"),
            name=f"race-{i}.toml", state_dir=str(state)))
    procs = [host.popen([AGENT, "directory", "register", "--config", c, "--json"])
             for c in configs]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        results.append(json.loads(out))
    titles = [r["titles"][0] for r in results]
    try:
        assert len(set(titles)) == 20
        assert all(re.fullmatch(r"RACE\d\d", t) for t in titles)
        # dicomAETitle has no substring rule (H.1.3): list all, pick ours here.
        registry = set(re.findall(r"dicomAETitle: (RACE\d\d)\n", ldap(
            host, "-b", REGISTRY, "-s", "one", "(objectClass=dicomUniqueAETitle)",
            "dicomAETitle").stdout))
        in_use = set(re.findall(r"dicomAETitle: (RACE\d\d)\n", ldap(
            host, "-b", DEVICES, "(objectClass=dicomNetworkAE)", "dicomAETitle").stdout))
        assert registry == in_use == set(titles)  # no orphan reservation
    finally:
        for r, t in zip(results, titles, strict=True):
            remove_device(host, r["device_dn"].split(",")[0].split("=")[1], [t])


def test_special_characters_in_titles(lab, host):
    name = f"SPC{host.index}"
    title = "CT,+*()=#;1"
    config = write_config(host, network=f'hostname = "{name.lower()}"',
                          directory=registrar(lab, host),
                          device_section=default_device(host.index, name, title=title))
    try:
        rc, reg = run_json(host, "directory", "register", "--config", config)
        assert rc == 0 and reg["titles"] == [title], reg
        rc, answer = run_json(host, "directory", "lookup", title, "--config", config)
        assert rc == 0 and answer["aet"] == title and answer["device"] == name
        rc, missing = run_json(host, "directory", "lookup", "CT*", "--config", config)
        assert rc == 1 and missing["found"] is False  # '*' is a value, not a wildcard
    finally:
        admin = ["-x", "-H", "ldap://192.0.2.1", "-D", ADMIN_DN, "-w", ADMIN_PASSWORD]
        host.run(["ldapdelete", *admin, "-r", f"dicomDeviceName={name},{DEVICES}"])
        host.run(["ldapdelete", *admin, f"dicomAETitle=CT\\,\\+*()\\=#\\;1,{REGISTRY}"])


def test_lookup_while_slapd_is_stopped_answers_from_the_cache(lab, host):
    config = write_config(host, directory='domain = "hospital.test"')
    rc, fresh = run_json(host, "directory", "lookup", "ARCHIVE", "--config", config)
    assert rc == 0 and fresh["source"] == "directory" and not fresh["stale"]
    lab.stop_ldap()
    try:
        rc, cached = run_json(host, "directory", "lookup", "ARCHIVE", "--config", config)
    finally:
        lab.start_ldap()
    assert rc == 0 and cached["source"] == "cache" and cached["stale"] is True
    assert cached["connections"] == fresh["connections"]
    assert cached["fetched_at"] <= time.time()


def test_ldif_loaded_into_a_fresh_slapd_equals_what_the_agent_creates(lab, host, tmp_path):
    name = f"LDIF{host.index}"
    config = write_config(host, network=f'hostname = "{name.lower()}"',
                          directory=registrar(lab, host),
                          device_section=default_device(host.index, name,
                                                        extra_connection="port = 104"))
    ldif = agent(host, "ldif", "--config", config)
    assert ldif.returncode == 0, ldif.stderr
    try:
        rc, reg = run_json(host, "directory", "register", "--config", config)
        assert rc == 0, reg
        live = entries_of(ldap(host, "-b", reg["device_dn"], "(objectClass=*)", "*").stdout)
        live.update(entries_of(ldap(host, "-b", f"dicomAETitle={name}_SCU,{REGISTRY}",
                                    "-s", "base", "(objectClass=*)", "*").stdout))
    finally:
        remove_device(host, name, [f"{name}_SCU"])
    # A fresh slapd (its own database and port) with the lab's base entries; an
    # administrator loads the agent's LDIF into it with ldapadd.
    fresh_dir = lab.run / f"fresh-slapd-{host.index}"
    (fresh_dir / "db").mkdir(parents=True)
    conf = fresh_dir / "slapd.conf"
    schema = Path(__file__).resolve().parents[2] / "profiles/app_config/schema/dicom.schema"
    conf.write_text("include /etc/ldap/schema/core.schema\n"
                    f"include {schema}\npidfile {fresh_dir / 'slapd.pid'}\n"
                    "modulepath /usr/lib/ldap\nmoduleload back_mdb\n"
                    f"database mdb\nsuffix {BASE_DN}\ndirectory {fresh_dir / 'db'}\n"
                    f"rootdn cn=admin,{BASE_DN}\nrootpw fresh\n")
    base = Path(__file__).resolve().parents[2] / "netns-fixtures/conf/base-hospital.ldif"
    add = subprocess.run(["slapadd", "-q", "-f", str(conf), "-l", str(base)],
                         capture_output=True, text=True)
    assert add.returncode == 0, add.stderr
    started = lab.srv_exec(["slapd", "-f", str(conf), "-h", "ldap://192.0.2.1:1389/"])
    assert started.returncode == 0, started.stderr
    try:
        load = host.run(["ldapadd", "-x", "-H", "ldap://192.0.2.1:1389", "-D",
                         f"cn=admin,{BASE_DN}", "-w", "fresh"], input=ldif.stdout)
        assert load.returncode == 0, load.stderr
        dump = host.run(["ldapsearch", "-x", "-LLL", "-o", "ldif-wrap=no", "-H",
                         "ldap://192.0.2.1:1389", "-b", BASE_DN, "(objectClass=*)", "*"])
    finally:
        pid = int((fresh_dir / "slapd.pid").read_text())
        lab.srv_exec(["kill", str(pid)])
    fresh = {dn: attrs for dn, attrs in entries_of(dump.stdout).items()
             if name.lower() in dn}
    # The same entries, but for the registration's identity marker (the LDIF carries
    # none: a device adopts such an entry by serial number, manufacturer and model).
    for attrs in live.values():  # (entries_of gives attribute names in lower case)
        versions = attrs.get("dicomsoftwareversion", [])
        versions[:] = [v for v in versions if not v.startswith("dicom-agent-id ")]
        if "dicomsoftwareversion" in attrs and not versions:
            del attrs["dicomsoftwareversion"]
    assert fresh == live
    assert len(fresh) == 5  # title, device, connection, AE, transfer capability


QUERY = r"""
import json
from agent.config import load_config
from profiles.app_config.ldap_io import Directory, Security, find_directory
config = load_config(__import__("sys").argv[1])
conn, url, base, tried = find_directory([("ldap://192.0.2.1", None)], Security())
d = Directory(conn, base)
print(json.dumps({"cluster": [a["aet"] for a in d.query("neuroradiology", None)],
                  "type": [a["aet"] for a in d.query(None, "ARCHIVE")],
                  "none": d.query("cardiology", None),
                  "preferred": [(a["aet"], a["found"]) for a in d.preferred_called(
                      config.device)]}))
d.close()
"""


def test_query_by_cluster_and_device_type_and_preferred_called_aes(host):
    config = write_config(host, directory='domain = "hospital.test"',
                          device_section=default_device(host.index).replace(
                              'connections = ["dicom"]',
                              'connections = ["dicom"]\n'
                              'preferred_called_ae_title = ["ARCHIVE", "NOSUCH"]'))
    proc = host.run([PYTHON, "-c", QUERY, config])
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["cluster"] == ["ARCHIVE"] and out["type"] == ["ARCHIVE"] and out["none"] == []
    assert out["preferred"] == [["ARCHIVE", True], ["NOSUCH", False]]


SERVICE = r"""
import asyncio, json, sys
from agent.config import load_config
from profiles.app_config.ldap_io import Security
from profiles.app_config.directory_io import DirectoryService

config = load_config(sys.argv[1])
mode = sys.argv[2]

async def candidates():
    return [], [("ldap://ldap.hospital.test:389", "192.0.2.1")]

async def main():
    d = config.directory
    password = d.password_file.read_text().strip() if d.password_file else None
    security = Security(d.security, d.bind_dn, password,
                        str(d.ca_file) if d.ca_file else None)
    service = DirectoryService(config.device, security, candidates, config.agent.state_dir,
                               d.title_attempts, d.refresh_interval)
    loop = asyncio.get_running_loop()
    if mode == "reconnect":
        first = await service.lookup("ARCHIVE")
        print("ready", flush=True)
        await loop.run_in_executor(None, sys.stdin.readline)  # slapd restarts meanwhile
        second = await service.lookup("ARCHIVE")
        print(json.dumps([first["source"], second["source"], service.reconnects]))
    else:
        states = []
        async def on_state(state, old):
            states.append(state)
            if state != "registering":  # located: reported, not what is checked here
                print(state, flush=True)
        service.on_state = on_state
        task = asyncio.create_task(service.maintain(lambda: {"dicom": "svc.hospital.test"}))
        while "registered" not in states:
            await asyncio.sleep(0.1)
        task.cancel()
    service.close()

asyncio.run(main())
"""


def test_the_service_reconnects_after_slapd_restarts(lab, host):
    config = write_config(host, directory='domain = "hospital.test"')
    proc = host.popen([PYTHON, "-c", SERVICE, config, "reconnect"], stdin=subprocess.PIPE)
    try:
        assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
        lab.stop_ldap()
        lab.start_ldap()
        proc.stdin.write("go\n")
        proc.stdin.flush()
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert json.loads(out) == ["directory", "directory", 1]  # one reconnect, no stale answer


def test_awaiting_manual_registration_is_checked_every_refresh_interval(lab, host):
    name = f"SVC{host.index}"
    config = write_config(host, directory='domain = "hospital.test"\nrefresh_interval = 1.0',
                          device_section=default_device(host.index, name))
    proc = host.popen([PYTHON, "-c", SERVICE, config, "maintain"])
    try:
        assert proc.stdout.readline().strip() == "awaiting-manual-registration", \
            proc.stderr.read()
        ldif = host.run_dir / "agent-state" / "manual" / f"{name}.ldif"
        load = host.run(["ldapadd", "-x", "-H", "ldap://192.0.2.1", "-D", REGISTRAR_DN,
                         "-w", "registrarpw", "-f", str(ldif)])
        assert load.returncode == 0, load.stderr
        # Noticed with nothing to trigger it but the periodic check.
        assert proc.stdout.readline().strip() == "registered"
        proc.wait(10)
        assert not ldif.exists()
    finally:
        if proc.poll() is None:
            proc.kill()
        remove_device(host, name, [f"{name}_SCU"])


def test_credentials_never_go_to_a_server_found_only_through_dhcp(lab, host):
    # The registrar's credentials are configured with a named server (dead here) and no
    # domain: the SRV target found under the DHCP-supplied domain gets an anonymous
    # connection — it still answers reads, and an update is refused for want of a bind.
    secret = host.run_dir / "registrar.pw"
    secret.write_text("registrarpw\n")
    secret.chmod(0o600)
    directory = "\n".join([
        'security = "tls"', f'ca_file = "{lab.run / "tls" / "ca.pem"}"',
        f'bind_dn = "{REGISTRAR_DN}"', f'password_file = "{secret}"',
        'servers = ["ldap://192.0.2.2:389"]'])
    name = f"NOCRED{host.index}"
    lease = json.dumps({"boot_id": "x", "lease": {
        "address": "192.0.2.20", "prefix": 24, "broadcast": "192.0.2.255",
        "server_id": "192.0.2.1", "lease_time": 3600, "t1": 1800.0, "t2": 3150.0,
        "bound_at": 1.0, "bound_wall": time.time(), "dns": ["192.0.2.1"],
        "domain": "hospital.test"}})
    config = write_config(host, network=f'hostname = "{name.lower()}"', directory=directory,
                          device_section=default_device(host.index, name))
    (host.run_dir / "agent-state").mkdir(exist_ok=True)
    (host.run_dir / "agent-state" / "lease-eth0.json").write_text(lease)
    rc, found = run_json(host, "directory", "find", "--config", config)
    assert rc == 0 and found["server"].startswith("ldap://ldap.hospital.test")
    assert found["tried"][-1]["result"] == \
        "ok (anonymous: credentials only go to configured servers)"
    rc, reg = run_json(host, "directory", "register", "--config", config)
    assert rc == 3 and reg["state"] == "awaiting-manual-registration"
    assert "strongerAuthRequired" in reg["reason"]
    assert not ldap(host, "-b", f"dicomDeviceName={name},{DEVICES}").stdout.strip()
