"""Odd directories (issue 10): entries edited by hand — a connection without cn, a port
out of range, a title that is no AE title — a referral to another host, a result over the
server's size limit. The agent reports them, counts them and keeps working."""

from __future__ import annotations

import base64
import json

from agent_helpers import default_device, write_config
from lab import ADMIN_DN, ADMIN_PASSWORD, CONFIG_ROOT_DN
from test_agent import ask, start, stop, wait_for
from test_directory import run_json

DEVICES = f"cn=Devices,{CONFIG_ROOT_DN}"
ADMIN = ["-x", "-H", "ldap://192.0.2.1", "-D", ADMIN_DN, "-w", ADMIN_PASSWORD]


def odd_tree(name: str) -> str:
    dev = f"dicomDeviceName={name},{DEVICES}"
    bad_title = base64.b64encode(f"{name}_C\x01TRL".encode()).decode()
    return f"""dn: {dev}
objectClass: dicomDevice
dicomDeviceName: {name}
dicomInstalled: TRUE

dn: dicomHostname=odd.hospital.test,{dev}
objectClass: dicomNetworkConnection
dicomHostname: odd.hospital.test
dicomPort: 104

dn: cn=wide,{dev}
objectClass: dicomNetworkConnection
cn: wide
dicomHostname: wide.hospital.test
dicomPort: 99999

dn: dicomAETitle={name}_GOOD,{dev}
objectClass: dicomNetworkAE
dicomAETitle: {name}_GOOD
dicomNetworkConnectionReference: dicomHostname=odd.hospital.test,{dev}
dicomAssociationInitiator: TRUE
dicomAssociationAcceptor: TRUE
dicomApplicationCluster: odd-{name}

dn: dicomAETitle={name}_PORT,{dev}
objectClass: dicomNetworkAE
dicomAETitle: {name}_PORT
dicomNetworkConnectionReference: cn=wide,{dev}
dicomAssociationInitiator: TRUE
dicomAssociationAcceptor: TRUE
dicomApplicationCluster: odd-{name}

dn: dicomAETitle={name}_LONG_TITLE_BEYOND,{dev}
objectClass: dicomNetworkAE
dicomAETitle: {name}_LONG_TITLE_BEYOND
dicomNetworkConnectionReference: cn=wide,{dev}
dicomAssociationInitiator: TRUE
dicomAssociationAcceptor: TRUE
dicomApplicationCluster: odd-{name}

dn: cn=ctrl,{dev}
objectClass: dicomNetworkAE
objectClass: extensibleObject
cn: ctrl
dicomAETitle:: {bad_title}
dicomNetworkConnectionReference: cn=wide,{dev}
dicomAssociationInitiator: TRUE
dicomAssociationAcceptor: TRUE
dicomApplicationCluster: odd-{name}

dn: cn=elsewhere-{name},{DEVICES}
objectClass: referral
objectClass: extensibleObject
cn: elsewhere-{name}
ref: ldap://198.51.100.77/cn=Devices,dc=elsewhere,dc=test
"""


def test_odd_entries_are_reported_and_the_good_ones_still_answer(lab, host):
    name = f"ODD{host.index}"
    load = lab.srv_exec(["ldapadd", *ADMIN], input=odd_tree(name))
    assert load.returncode == 0, load.stderr
    config = write_config(host, directory='domain = "hospital.test"\nrefresh_interval = 60',
                          device_section=default_device(host.index))
    try:
        rc, good = run_json(host, "directory", "lookup", f"{name}_GOOD", "--config", config)
        assert rc == 0 and good["connections"] == [
            {"hostname": "odd.hospital.test", "port": 104, "tls_cipher_suites": [],
             "installed": True, "addresses": []}]  # the lab's DNS has no such name
        # A port of 99999: that entry cannot be used; like an unreachable directory for
        # it: not found, from the (empty) cache, and the reason on stderr in the log.
        rc, port = run_json(host, "directory", "lookup", f"{name}_PORT", "--config", config)
        assert rc == 1 and port["found"] is False and port["stale"] is True
        # The referral (a host outside the lab) is never followed: lookups still work.
        rc, again = run_json(host, "directory", "lookup", "ARCHIVE", "--config", config)
        assert rc == 0 and again["found"]
        # The daemon: a query over the cluster answers with the one good AE and counts
        # the odd ones; it keeps answering.
        proc = start(host, config)
        try:
            wait_for(host, lambda s: s["directory"]["state"] in (
                "registered", "awaiting-manual-registration", "unavailable"))
            reply = ask(host, {"v": 1, "op": "query", "cluster": f"odd-{name}",
                               "device_type": None})
            assert [r["aet"] for r in reply["results"]] == [f"{name}_GOOD"]
            snap = ask(host, {"v": 1, "op": "status"})
            assert snap["counters"]["directory"]["odd-entries"] >= 3
        finally:
            err = stop(proc)
        assert proc.returncode == 0 and "Traceback" not in err, err
        assert "dicomPort '99999' is not a port" in err
    finally:
        lab.srv_exec(["ldapdelete", *ADMIN, "-r", f"dicomDeviceName={name},{DEVICES}"])
        lab.srv_exec(["ldapdelete", *ADMIN, "-M", f"cn=elsewhere-{name},{DEVICES}"])


def test_a_result_over_the_size_limit_is_used_as_far_as_it_goes(lab, host):
    ldapi = ["-Y", "EXTERNAL", "-H", lab.ldapi_url, "-Q"]

    def size_limit(value: int) -> None:
        change = ("dn: olcDatabase={-1}frontend,cn=config\nchangetype: modify\n"
                  f"replace: olcSizeLimit\nolcSizeLimit: {value}\n")
        done = lab.srv_exec(["ldapmodify", *ldapi], input=change)
        assert done.returncode == 0, done.stderr

    name = f"BIG{host.index}"
    dev = f"dicomDeviceName={name},{DEVICES}"
    ldif = (f"dn: {dev}\nobjectClass: dicomDevice\ndicomDeviceName: {name}\n"
            f"dicomInstalled: TRUE\n\ndn: cn=dicom,{dev}\nobjectClass: dicomNetworkConnection\n"
            "cn: dicom\ndicomHostname: big.hospital.test\ndicomPort: 104\n")
    for i in range(3):
        ldif += (f"\ndn: dicomAETitle={name}_{i},{dev}\nobjectClass: dicomNetworkAE\n"
                 f"dicomAETitle: {name}_{i}\ndicomNetworkConnectionReference: cn=dicom,{dev}\n"
                 "dicomAssociationInitiator: TRUE\ndicomAssociationAcceptor: TRUE\n"
                 f"dicomApplicationCluster: big-{name}\n")
    load = lab.srv_exec(["ldapadd", *ADMIN], input=ldif)
    assert load.returncode == 0, load.stderr
    config = write_config(host, directory='domain = "hospital.test"',
                          device_section=default_device(host.index))
    query = {"v": 1, "op": "query", "cluster": f"big-{name}", "device_type": None}
    proc = start(host, config)
    try:
        wait_for(host, lambda s: s["directory"]["state"] != "locating")
        assert len(ask(host, query)["results"]) == 3
        size_limit(1)
        try:
            capped = ask(host, query)
        finally:
            size_limit(500)
        assert len(capped["results"]) == 1
        assert ask(host, {"v": 1, "op": "status"})["v"] == 1
    finally:
        lab.srv_exec(["ldapdelete", *ADMIN, "-r", dev])
        err = stop(proc)
    assert proc.returncode == 0, err
    assert "over the server's size limit" in err
    json.dumps(capped)  # what the socket sent was JSON all along
