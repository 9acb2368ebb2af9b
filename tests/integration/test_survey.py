"""`dicom-agent site survey` against the lab's real peers: slapd (and the replicated pair),
the lab's DNS, avahi publishing on the link, pynetdicom SCPs, dnsmasq's lease file. A
clean lab exits 0; a lab with one fault of each kind — an orphan title, an advertiser the
directory does not know, an installed SCP that is stopped, a host name that resolves
nowhere, a host name in the DHCP pool that no lease holds, a title held twice across the
cut replicated pair — exits 1 and names each; the HTML page says the same (parsed)."""

from __future__ import annotations

import json
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

from agent_helpers import AGENT, write_config
from lab import ADMIN_DN, ADMIN_PASSWORD, CONFIG_ROOT_DN
from test_directory import remove_device

REPO = Path(__file__).resolve().parents[2]
DEVICES = f"cn=Devices,{CONFIG_ROOT_DN}"
REGISTRY = f"cn=Unique AE Titles Registry,{CONFIG_ROOT_DN}"


def device_ldif(name: str, title: str, host: str, port: int, acceptor: bool = True) -> str:
    dn = f"dicomDeviceName={name},{DEVICES}"
    return f"""dn: {dn}
objectClass: dicomDevice
dicomDeviceName: {name}
dicomInstalled: TRUE
dicomPrimaryDeviceType: CT

dn: cn=dicom,{dn}
objectClass: dicomNetworkConnection
cn: dicom
dicomHostname: {host}
dicomPort: {port}

dn: dicomAETitle={title},{dn}
objectClass: dicomNetworkAE
dicomAETitle: {title}
dicomNetworkConnectionReference: cn=dicom,{dn}
dicomAssociationInitiator: TRUE
dicomAssociationAcceptor: {"TRUE" if acceptor else "FALSE"}

""" + title_ldif(title)


def title_ldif(title: str) -> str:
    return f"dn: dicomAETitle={title},{REGISTRY}\nobjectClass: dicomUniqueAETitle\n" \
           f"dicomAETitle: {title}\n\n"


def ldapadd(host, ldif: str, url: str = "ldap://192.0.2.1") -> None:
    done = host.run(["ldapadd", "-x", "-H", url, "-D", ADMIN_DN, "-w", ADMIN_PASSWORD],
                    input=ldif)
    assert done.returncode == 0, done.stderr


def survey(host, config: str, *extra: str) -> tuple[int, dict]:
    done = host.run([AGENT, "site", "survey", "--config", config, "--json", *extra],
                    timeout=120)
    assert done.returncode in (0, 1), done.stderr
    return done.returncode, json.loads(done.stdout)


def start_archive(lab) -> subprocess.Popen:
    """The lab directory's PACS1 ARCHIVE (pacs1.hospital.test: the server's routed
    198.51.100.10) answering C-ECHO, as an installed acceptor should."""
    scp = subprocess.Popen(["ip", "netns", "exec", lab.server, sys.executable,
                            str(REPO / "netns-fixtures" / "clients" / "echo_scp.py"),
                            "ARCHIVE", "11112"], stdin=subprocess.PIPE,
                           stdout=subprocess.PIPE, text=True, start_new_session=True)
    assert json.loads(scp.stdout.readline()) == {"listening": True}
    return scp


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()  # by its PID: a process this test started
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


class Page(HTMLParser):
    """The rows of the survey's page: problems (data-kind) and devices (data-device)."""

    def __init__(self):
        super().__init__()
        self.kinds: list[str] = []
        self.devices: set[str] = set()
        self.troubled: set[str] = set()
        self.external: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "tr" and "data-kind" in a:
            self.kinds.append(a["data-kind"])
        if tag == "tr" and "data-device" in a:
            self.devices.add(a["data-device"])
            if a.get("class") == "problem":
                self.troubled.add(a["data-device"])
        if tag in ("link", "script", "img") or (tag == "a" and "href" in a):
            self.external.append(tag)


def test_a_clean_lab_and_one_fault_of_each_kind(lab, host):
    i = host.index
    config = write_config(host, network=f'hostname = "sv{i}"',
                          directory='domain = "hospital.test"', device_section=" ")
    lab.set_srv_layout("live-only")
    archive = start_archive(lab)
    names = [f"SV{i}", f"BH{i}", f"PL{i}"]
    titles = [f"SV{i}_SCP", f"BH{i}_SCU", f"PL{i}_SCU", f"ORPHAN{i}"]
    rogue = None
    try:
        rc, clean = survey(host, config, "--echo")
        assert (rc, clean["problems"]) == (0, []), clean["problems"]
        assert clean["directory"] == "ldap://ldap.hospital.test:389"
        pacs = next(d for d in clean["devices"] if d["name"] == "PACS1")
        assert pacs["aes"][0]["connections"][0]["echo"] == "ok"
        assert pacs["aes"][0]["connections"][0]["addresses"] == ["198.51.100.10"]

        # One fault of each kind.
        leases = host.run_dir / "dnsmasq.leases"  # what an administrator copied
        leases.write_text("0 02:dc:00:00:00:99 192.0.2.150 someone *\n")
        pool = lab.run / "survey-kea.json"
        pool.write_text(json.dumps({"Dhcp4": {
            "subnet4": [{"subnet": "192.0.2.0/24", "pools": [
                {"pool": "192.0.2.100 - 192.0.2.199"}, {"pool": "192.0.2.240/29"}]}],
            "lease-database": {"type": "memfile", "name": str(host.run_dir / "kea.csv")}}}))
        (host.run_dir / "kea.csv").write_text(
            "address,hwaddr,client_id,valid_lifetime,expire,subnet_id,fqdn_fwd,fqdn_rev,"
            "hostname,state,user_context,pool_id\n"
            "192.0.2.150,02:dc:00:00:00:99,,3600,4000000000,1,0,0,someone,0,,0\n")
        ldapadd(host, device_ldif(f"SV{i}", f"SV{i}_SCP", host.static_address, 11999)
                + device_ldif(f"BH{i}", f"BH{i}_SCU", f"nowhere{i}.hospital.test", 104, False)
                # a name of the lab's DNS (192.0.2.241) in a pool, leased to nobody
                + device_ldif(f"PL{i}", f"PL{i}_SCU", "ldap-silent1.hospital.test", 104, False)
                + title_ldif(f"ORPHAN{i}"))
        rogue = lab.avahi_publish(f"ROGUE{i}", "_dicom._tcp", 104, {"AET": f"ROGUE{i}"})
        rc, faulty = survey(host, config, "--echo", "--leases", str(pool))
        assert rc == 1
        found = {(p["kind"], p["subject"]) for p in faulty["problems"]}
        assert found == {("orphan-title", f"ORPHAN{i}"),
                         ("installed-silent", f"SV{i}_SCP"),
                         ("unresolvable-host", f"nowhere{i}.hospital.test"),
                         ("advertised-unregistered", f"ROGUE{i}"),
                         ("unleased-pool-address", "ldap-silent1.hospital.test")}, \
            faulty["problems"]
        assert faulty["leases"]["pools"] == [["192.0.2.100", "192.0.2.199"],
                                             ["192.0.2.240", "192.0.2.247"]]
        kinds = [p["kind"] for p in faulty["problems"]]
        assert kinds.index("installed-silent") < kinds.index("orphan-title")  # gravest first
        # dnsmasq's lease file (pools not known: no pool check), no --echo, as text.
        done = host.run([AGENT, "site", "survey", "--config", config, "--leases",
                         str(leases)], timeout=120)
        assert done.returncode == 1 and done.stdout.startswith("PROBLEMS (3)"), done.stdout
        assert f"advertised-unregistered  ROGUE{i}" in done.stdout
        # The page: parsed, every device present, the troubled ones marked, no assets.
        html = host.run_dir / "site.html"
        done = host.run([AGENT, "site", "survey", "--config", config, "--echo", "--html",
                         str(html)], timeout=120)
        assert done.returncode == 1, done.stderr
        page = Page()
        page.feed(html.read_text())
        assert sorted(page.kinds) == sorted(p["kind"] for p in faulty["problems"]
                                            if p["kind"] != "unleased-pool-address")
        assert page.devices >= {"PACS1", *names}
        assert page.troubled == {f"SV{i}", f"BH{i}"} and page.external == []
    finally:
        for proc in rogue or []:
            stop(proc)
        stop(archive)
        for name, title in zip(names, titles, strict=False):
            remove_device(host, name, [title])
        remove_device(host, "none", [f"ORPHAN{i}"])
        lab.set_srv_layout("live-first")


def test_a_title_held_twice_across_the_cut_replicated_pair(lab, host):
    i = host.index
    urls = lab.start_replicated(2)
    lab.set_srv_layout("replicated")
    config = write_config(host, network=f'hostname = "sr{i}"',
                          directory='domain = "hospital.test"', device_section=" ")
    title = f"DUP{i}_SCU"
    lab.cut_replication(1)
    lab.cut_replication(2)  # a partition: neither hears the other
    try:
        ldapadd(host, device_ldif(f"DA{i}", title, "ldap1.hospital.test", 104, False), urls[0])
        ldapadd(host, device_ldif(f"DB{i}", title, "ldap2.hospital.test", 104, False), urls[1])
        rc, report = survey(host, config)
        assert rc == 1
        [dup] = [p for p in report["problems"] if p["kind"] == "duplicate-title"]
        assert dup["subject"] == title
        assert dup["detail"] == (f"held by 2 devices: DA{i} on ldap://ldap1.hospital.test:389; "
                                 f"DB{i} on ldap://ldap2.hospital.test:389")
        assert report["providers"] == ["ldap://ldap1.hospital.test:389",
                                       "ldap://ldap2.hospital.test:389"]
    finally:
        lab.restore_replication(1)
        lab.restore_replication(2)
        for url in urls:
            for name in (f"DA{i}", f"DB{i}"):
                host.run(["ldapdelete", "-x", "-H", url, "-D", ADMIN_DN, "-w",
                          ADMIN_PASSWORD, "-r", f"dicomDeviceName={name},{DEVICES}"])
            host.run(["ldapdelete", "-x", "-H", url, "-D", ADMIN_DN, "-w", ADMIN_PASSWORD,
                      f"dicomAETitle={title},{REGISTRY}"])
        lab.set_srv_layout("live-first")
