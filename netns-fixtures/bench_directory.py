"""The directory half of `make bench`: a slapd holding 10,000 devices.

A fresh slapd (the lab's schema and indexes) in the server namespace on port 1389 gets
10,000 generated devices by slapadd — device, connection, AE, transfer capability and
title reservation each. Then, from a device: registering one device (time and LDAP
operations), title reservation attempts for a template whose first 5,000 titles are
taken, and lookup latency by AE title.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import time
from pathlib import Path

from lab import BASE_DN, CONFIG_ROOT_DN, Device, Lab

HERE = Path(__file__).resolve().parent
PYTHON = str(HERE.parent / ".venv" / "bin" / "python")
SCHEMA = HERE.parent / "profiles" / "app_config" / "schema" / "dicom.schema"
DEVICES = 10_000

MEASURE = r'''
import json, random, statistics, sys, time
from agent.config import parse_config
from profiles.app_config.ldap_io import Directory, Security, connect, find_configuration_root

def config(name, title):
    return parse_config({"network": {"interface": "eth0"}, "device": {
        "name": name, "connection": [{"name": "dicom", "port": 104}],
        "ae": [{**title, "connections": ["dicom"], "transfer_capability": [{
            "sop_class": "1.2.840.10008.5.1.4.1.1.2", "role": "SCP",
            "transfer_syntaxes": ["1.2.840.10008.1.2"]}]}]}}).device

security = Security("basic", "cn=admin,dc=hospital,dc=test", "bench", allow_cleartext_password=True)
out = {"register_ms": [], "register_ops": [], "template_adds": [], "lookup_ms": []}
for i in range(int(sys.argv[1])):
    conn = connect("ldap://192.0.2.1:1389", security, collect_usage=True)
    base = find_configuration_root(conn)
    before = conn.usage.operations
    d = Directory(conn, base)
    t0 = time.perf_counter()
    d.register(config(f"BENCHNEW{i}", {"title": f"BN{i}"}), {"dicom": "bn.hospital.test"}, [], 100)
    out["register_ms"].append((time.perf_counter() - t0) * 1000)
    out["register_ops"].append(conn.usage.operations - before)
    adds = conn.usage.add_operations
    d.register(config(f"BENCHWS{i}", {"title_template": "WS{n:05d}"}),
               {"dicom": "ws.hospital.test"}, [], 10000)
    out["template_adds"].append(conn.usage.add_operations - adds - 4)  # minus device, conn, AE, TC
    d.close()
conn = connect("ldap://192.0.2.1:1389", Security())
d = Directory(conn, find_configuration_root(conn))
rng = random.Random(1)
for _ in range(200):
    title = f"T{rng.randrange(int(sys.argv[2])):05d}"
    t0 = time.perf_counter()
    answer = d.lookup(title)
    out["lookup_ms"].append((time.perf_counter() - t0) * 1000)
    assert answer["found"], title
d.close()
print(json.dumps(out))
'''


def generate(path: Path) -> None:
    with path.open("w") as out:
        for n in range(DEVICES):
            device = f"dicomDeviceName=D{n:05d},cn=Devices,{CONFIG_ROOT_DN}"
            title = f"T{n:05d}"
            out.write(f"dn: dicomAETitle={title},cn=Unique AE Titles Registry,{CONFIG_ROOT_DN}\n"
                      f"objectClass: dicomUniqueAETitle\ndicomAETitle: {title}\n\n")
            if n < 5000:  # half the template's titles are taken already
                out.write(f"dn: dicomAETitle=WS{n + 1:05d},cn=Unique AE Titles Registry,"
                          f"{CONFIG_ROOT_DN}\nobjectClass: dicomUniqueAETitle\n"
                          f"dicomAETitle: WS{n + 1:05d}\n\n")
            out.write(f"dn: {device}\nobjectClass: dicomDevice\ndicomDeviceName: D{n:05d}\n"
                      f"dicomInstalled: TRUE\n\n"
                      f"dn: cn=dicom,{device}\nobjectClass: dicomNetworkConnection\ncn: dicom\n"
                      f"dicomHostname: d{n:05d}.hospital.test\ndicomPort: 104\n\n"
                      f"dn: dicomAETitle={title},{device}\nobjectClass: dicomNetworkAE\n"
                      f"dicomAETitle: {title}\ndicomNetworkConnectionReference: cn=dicom,{device}\n"
                      f"dicomAssociationInitiator: TRUE\ndicomAssociationAcceptor: TRUE\n\n"
                      f"dn: cn=store,dicomAETitle={title},{device}\n"
                      f"objectClass: dicomTransferCapability\ncn: store\n"
                      f"dicomSOPClass: 1.2.840.10008.5.1.4.1.1.2\ndicomTransferRole: SCP\n"
                      f"dicomTransferSyntax: 1.2.840.10008.1.2\n\n")


def start_slapd(lab: Lab, d: Path, port: int, ldifs: list[Path], extra: str = "") -> float:
    """A fresh slapd in `d` (the lab's schema and indexes, `extra` configuration) in the
    server namespace on `port`, loaded by slapadd with the lab's hospital tree and `ldifs`;
    returns the load time. stop_slapd() ends it by its PID."""
    (d / "db").mkdir(parents=True, exist_ok=True)
    conf = d / "slapd.conf"
    conf.write_text(f"include /etc/ldap/schema/core.schema\ninclude {SCHEMA}\n"
                    f"pidfile {d / 'slapd.pid'}\nmodulepath /usr/lib/ldap\nmoduleload back_mdb\n"
                    f"database mdb\nsuffix {BASE_DN}\ndirectory {d / 'db'}\nmaxsize 1073741824\n"
                    f"rootdn cn=admin,{BASE_DN}\nrootpw bench\n{extra}"
                    "index objectClass eq\nindex dicomAETitle eq\nindex dicomDeviceName eq\n")
    t0 = time.perf_counter()
    for source in (HERE / "conf" / "base-hospital.ldif", *ldifs):
        subprocess.run(["slapadd", "-q", "-f", str(conf), "-l", str(source)], check=True,
                       capture_output=True)
    load_s = time.perf_counter() - t0
    lab.srv_exec(["slapd", "-f", str(conf), "-h", f"ldap://192.0.2.1:{port}/"], check=True)
    return load_s


def stop_slapd(lab: Lab, d: Path) -> None:
    lab.srv_exec(["kill", (d / "slapd.pid").read_text().strip()])


def directory_bench(lab: Lab, dev: Device, reps: int) -> dict:
    d = lab.run / "bench-slapd"
    d.mkdir(parents=True, exist_ok=True)
    generate(d / "devices.ldif")
    load_s = start_slapd(lab, d, 1389, [d / "devices.ldif"])
    try:
        dev.configure_static()
        proc = dev.run([PYTHON, "-c", MEASURE, str(reps), str(DEVICES)], timeout=600)
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr[-2000:])
        out = json.loads(proc.stdout)
    finally:
        stop_slapd(lab, d)
    return {"entries_loaded_s": load_s,
            "register_ms": statistics.median(out["register_ms"]),
            "register_ops": statistics.median(out["register_ops"]),
            "template_adds": statistics.median(out["template_adds"]),
            "lookup_ms": statistics.median(out["lookup_ms"]),
            "lookup_p95_ms": sorted(out["lookup_ms"])[int(len(out["lookup_ms"]) * 0.95)]}
