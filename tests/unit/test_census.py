"""The site survey's core (profiles/app_config/census.py): entries joined into devices,
dicomInstalled inherited, and each kind of problem found from the sources side by side —
and the lease sources it reads (profiles/network_address/leases.py)."""

from __future__ import annotations

import pytest

from profiles.app_config import census
from profiles.app_config.registration import run
from profiles.network_address import leases as lease_files
from profiles.network_address.leases import Lease, Leases

BASE = "cn=DICOM Configuration,dc=hospital,dc=test"
DEVICES = f"cn=Devices,{BASE}"
REGISTRY = f"cn=Unique AE Titles Registry,{BASE}"


def device(name: str, types=("CT",), installed="TRUE") -> dict:
    return {"dn": f"dicomDeviceName={name},{DEVICES}", "dicomdevicename": [name],
            "dicomprimarydevicetype": list(types), "dicominstalled": [installed]}


def connection(dev: str, cn: str, host: str, port: int | None = 104, tls=False,
               installed=None) -> dict:
    e = {"dn": f"cn={cn},dicomDeviceName={dev},{DEVICES}", "cn": [cn],
         "dicomhostname": [host]}
    if port is not None:
        e["dicomport"] = [str(port)]
    if tls:
        e["dicomtlsciphersuite"] = ["TLS_AES_128_GCM_SHA256"]
    if installed is not None:
        e["dicominstalled"] = [installed]
    return e


def ae(dev: str, title: str, conns=("dicom",), acceptor=True, installed=None) -> dict:
    e = {"dn": f"dicomAETitle={title},dicomDeviceName={dev},{DEVICES}",
         "dicomaetitle": [title], "dicomassociationacceptor": ["TRUE" if acceptor else "FALSE"],
         "dicomassociationinitiator": ["TRUE"],
         # as a server may spell it: other case, spaces after commas
         "dicomnetworkconnectionreference": [f"CN={c}, dicomDeviceName={dev}, {DEVICES}"
                                             for c in conns]}
    if installed is not None:
        e["dicominstalled"] = [installed]
    return e


def title(t: str) -> dict:
    return {"dn": f"dicomAETitle={t},{REGISTRY}", "dicomaetitle": [t]}


def site_tree(**changes) -> census.Tree:
    devices = [device("CT1"), device("PACS", ("SRV",)), device("OLD", installed="FALSE")]
    conns = [connection("CT1", "dicom", "ct1.hospital.test"),
             connection("PACS", "dicom", "pacs.hospital.test"),
             connection("PACS", "tls", "pacs.hospital.test", 2762, tls=True),
             connection("OLD", "dicom", "old.hospital.test")]
    aes = [ae("CT1", "CT1_SCU", acceptor=False), ae("PACS", "PACS_STORE", ("dicom", "tls")),
           ae("PACS", "PACS_QR", installed="FALSE"), ae("OLD", "OLD_SCP")]
    registry = [title(t) for t in ("CT1_SCU", "PACS_STORE", "PACS_QR", "OLD_SCP")]
    return census.tree(changes.get("devices", devices), changes.get("aes", aes),
                       changes.get("conns", conns), changes.get("registry", registry))


RESOLVED = {"ct1.hospital.test": ["192.0.2.51"], "pacs.hospital.test": ["192.0.2.10"],
            "old.hospital.test": ["192.0.2.60"]}


def test_entries_are_joined_by_dn_and_installed_is_inherited():
    t = site_tree()
    assert [d.name for d in t.devices] == ["CT1", "OLD", "PACS"] and t.odd == []
    pacs = t.devices[2]
    store, qr = pacs.aes
    assert [c.port for c in store.connections] == [104, 2762]  # references matched
    assert store.connections[1].tls and store.installed and not qr.installed
    old = t.devices[1]
    assert not old.installed and not old.aes[0].installed  # the device's FALSE inherited
    assert not old.aes[0].connections[0].installed


def test_read_tree_is_four_paged_searches_under_the_root():
    asked = []

    def execute(op):
        asked.append((op.base, op.scope, op.object_class, op.paged))
        return {"dicomDevice": [device("CT1")],
                "dicomNetworkConnection": [connection("CT1", "dicom", "ct1")],
                "dicomNetworkAE": [ae("CT1", "CT1_SCP")],
                "dicomUniqueAETitle": [title("CT1_SCP")]}[op.object_class]

    t = run(census.read_tree(BASE), execute)
    assert [a[2] for a in asked] == ["dicomDevice", "dicomNetworkAE",
                                    "dicomNetworkConnection", "dicomUniqueAETitle"]
    assert all(a[3] for a in asked) and asked[-1][:2] == (REGISTRY, "one")
    assert t.devices[0].aes[0].title == "CT1_SCP" and t.registry == ["CT1_SCP"]


def test_a_clean_site_has_no_problem():
    report = census.survey("ldap://a", {"ldap://a": site_tree()}, [], RESOLVED)
    assert report["problems"] == []
    assert report["summary"]["devices"] == 3 and report["summary"]["aes"] == 4


def test_registry_titles_and_ae_titles_disagree_both_ways():
    registry = [title(t) for t in ("CT1_SCU", "PACS_STORE", "PACS_QR", "GONE_SCP")]
    report = census.survey("ldap://a", {"ldap://a": site_tree(registry=registry)}, [],
                           RESOLVED)
    kinds = [(p["kind"], p["subject"], p["device"]) for p in report["problems"]]
    assert kinds == [("unregistered-title", "OLD_SCP", "OLD"),
                     ("orphan-title", "GONE_SCP", None)]  # the graver first
    old = next(d for d in report["devices"] if d["name"] == "OLD")
    assert old["aes"][0]["registered"] is False


def test_a_title_held_by_two_devices_across_providers_is_named_with_both():
    other = site_tree(devices=[device("CT2")], conns=[connection("CT2", "dicom", "ct2")],
                      aes=[ae("CT2", "CT1_SCU")], registry=[title("CT1_SCU")])
    report = census.survey("ldap://a", {"ldap://a": site_tree(), "ldap://b": other}, [],
                           RESOLVED)
    [dup] = [p for p in report["problems"] if p["kind"] == "duplicate-title"]
    assert dup["subject"] == "CT1_SCU"
    assert "CT1 on ldap://a" in dup["detail"] and "CT2 on ldap://b" in dup["detail"]
    assert report["providers"] == ["ldap://a", "ldap://b"]


def test_an_advertiser_no_directory_knows_and_one_it_does():
    ads = [census.Advert("ROGUE_SCP", "_dicom._tcp", "ROGUE_SCP", "rogue.local", 104,
                         ["192.0.2.99"], "mdns"),
           census.Advert("PACS_STORE", "_dicom._tcp", "PACS_STORE", "pacs.local", 104,
                         ["192.0.2.10"], "dns:hospital.test")]
    report = census.survey("ldap://a", {"ldap://a": site_tree()}, ads, RESOLVED)
    [p] = report["problems"]
    assert (p["kind"], p["subject"]) == ("advertised-unregistered", "ROGUE_SCP")
    assert "192.0.2.99" not in p["detail"] and "rogue.local:104" in p["detail"]
    pacs = next(d for d in report["devices"] if d["name"] == "PACS")
    assert pacs["aes"][0]["advertised"] == ["dns:hospital.test"]
    assert [a["registered"] for a in report["advertised"]] == [True, False]


def test_installed_acceptors_that_do_not_answer_and_hosts_that_do_not_resolve():
    t = site_tree()
    resolved = {**RESOLVED, "ct1.hospital.test": []}
    targets = census.echo_targets(t, resolved)
    # The installed acceptor's two connections; not the uninstalled QR, the SCU, OLD.
    assert targets == [("PACS_STORE", "192.0.2.10", 104, False),
                       ("PACS_STORE", "192.0.2.10", 2762, True)]
    echoes = {targets[0][:3]: None, targets[1][:3]: "association rejected"}
    report = census.survey("ldap://a", {"ldap://a": t}, [], resolved, echoes=echoes)
    kinds = {(p["kind"], p["subject"]) for p in report["problems"]}
    assert kinds == {("installed-silent", "PACS_STORE"),
                     ("unresolvable-host", "ct1.hospital.test")}
    pacs = next(d for d in report["devices"] if d["name"] == "PACS")
    assert [c["echo"] for c in pacs["aes"][0]["connections"]] == ["ok",
                                                                  "association rejected"]
    assert [c["echo"] for c in pacs["aes"][1]["connections"]] == [None]  # not installed


def test_a_host_in_a_pool_needs_a_lease_and_a_static_host_does_not():
    held = Leases([Lease("192.0.2.51", "ct1")], [("192.0.2.50", "192.0.2.59")], "kea")
    resolved = {**RESOLVED, "old.hospital.test": ["192.0.2.55"]}
    report = census.survey("ldap://a", {"ldap://a": site_tree()}, [], resolved, held)
    [p] = report["problems"]
    assert (p["kind"], p["subject"], p["device"]) == ("unleased-pool-address",
                                                      "old.hospital.test", "OLD")
    assert report["leases"] == {"source": "kea", "count": 1,
                                "pools": [("192.0.2.50", "192.0.2.59")]}
    # Pools not known (a dnsmasq lease file): nothing is taken for a pool address.
    unknown = Leases([], None, "dnsmasq")
    assert census.survey("ldap://a", {"ldap://a": site_tree()}, [], resolved,
                         unknown)["problems"] == []


def test_an_unreadable_source_and_an_odd_entry_are_problems():
    odd = site_tree(aes=[*site_tree_aes(), {"dn": f"dicomAETitle=x,dicomDeviceName=CT1,"
                                                  f"{DEVICES}", "dicomaetitle": ["bad\\title"]}])
    report = census.survey("ldap://a", {"ldap://a": odd}, [], RESOLVED,
                           unreadable=[("mdns", "no interface")])
    kinds = [p["kind"] for p in report["problems"]]
    assert kinds == ["source-unreadable", "source-unreadable"]
    assert report["unreadable"] == [{"source": "mdns", "reason": "no interface"}]


def site_tree_aes() -> list[dict]:
    return [ae("CT1", "CT1_SCU", acceptor=False), ae("PACS", "PACS_STORE", ("dicom", "tls")),
            ae("PACS", "PACS_QR", installed="FALSE"), ae("OLD", "OLD_SCP")]


def test_no_directory_means_no_devices_but_the_other_sources_still_count():
    ads = [census.Advert("X", "_dicom._tcp", "X", "x.local", 104, [], "mdns")]
    report = census.survey(None, {}, ads, {}, unreadable=[("directory", "no SRV record")])
    assert [p["kind"] for p in report["problems"]] == ["source-unreadable",
                                                       "advertised-unregistered"]
    assert report["devices"] == []


KEA_CSV = """address,hwaddr,client_id,valid_lifetime,expire,subnet_id,fqdn_fwd,fqdn_rev,\
hostname,state,user_context,pool_id
192.0.2.100,02:00:00:00:00:01,,3600,2000,1,0,0,ct1,0,,0
192.0.2.101,02:00:00:00:00:02,,3600,2000,1,0,0,mr1,0,,0
192.0.2.101,02:00:00:00:00:02,,0,2000,1,0,0,mr1,0,,0
192.0.2.102,02:00:00:00:00:03,,3600,500,1,0,0,old,0,,0
192.0.2.103,02:00:00:00:00:04,,3600,2000,1,0,0,,1,,0
not-an-address,02:00:00:00:00:05,,3600,2000,1,0,0,x,0,,0
"""


def test_keas_memfile_keeps_the_last_row_of_each_address_alive_and_in_default_state():
    held = lease_files.kea_memfile(KEA_CSV, now=1000)
    assert held == [Lease("192.0.2.100", "ct1", "02:00:00:00:00:01")]  # deleted, expired,
    # declined and damaged rows left out
    with pytest.raises(lease_files.LeaseError):
        lease_files.kea_memfile("a,b\n1,2\n", now=0)


def test_keas_configuration_gives_pools_and_its_memfile_comments_and_all():
    text = """// kea
{ "Dhcp4": { # the lab
  "lease-database": {"type": "memfile", "name": "/var/lib/kea/x.csv"},
  /* two kinds of pool */
  "subnet4": [{"subnet": "192.0.2.0/24", "pools": [{"pool": "192.0.2.100 - 192.0.2.199"},
                                                    {"pool": "192.0.2.224/28"}]}],
  "shared-networks": [{"subnet4": [{"pools": [{"pool": "198.51.100.10-198.51.100.20"}]}]}],
  "option-data": [{"name": "domain-name", "data": "a#b//c"}] } }"""
    pools, memfile = lease_files.kea_config(text)
    assert pools == [("192.0.2.100", "192.0.2.199"), ("192.0.2.224", "192.0.2.239"),
                     ("198.51.100.10", "198.51.100.20")]
    assert memfile == "/var/lib/kea/x.csv"
    got = lease_files.from_file(text, 1000, "kea.conf", read=lambda path: KEA_CSV)
    assert got.pools == pools and [x.address for x in got.leases] == ["192.0.2.100"]
    assert got.source == "kea.conf (/var/lib/kea/x.csv)"


def test_dnsmasqs_lease_file_and_keas_control_agent_answers():
    text = "0 02:00:00:00:00:01 192.0.2.5 ct1 01:02\n500 02:00:00:00:00:02 192.0.2.6 * *\n" \
           "2000 02:00:00:00:00:03 192.0.2.7 mr1 *\nduid 00:01\n"
    got = lease_files.from_file(text, 1000, "dnsmasq.leases")
    assert [(x.address, x.hostname) for x in got.leases] == [("192.0.2.5", "ct1"),
                                                             ("192.0.2.7", "mr1")]
    assert got.pools is None
    answer = lease_files.kea_answer('[{"result": 0, "arguments": {"leases": ['
                                    '{"ip-address": "192.0.2.100", "cltt": 900, '
                                    '"valid-lft": 3600, "state": 0, "hostname": "ct1"},'
                                    '{"ip-address": "192.0.2.101", "cltt": 0, '
                                    '"valid-lft": 10, "state": 0}]}}]', "lease4-get-all")
    assert [x.address for x in lease_files.kea_api_leases(answer, 1000)] == ["192.0.2.100"]
    with pytest.raises(lease_files.LeaseError, match="lease4-get-all: unknown command"):
        lease_files.kea_answer('[{"result": 2, "text": "unknown command"}]', "lease4-get-all")
