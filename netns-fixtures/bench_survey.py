"""The site survey's half of `make bench`: `dicom-agent site survey` on a directory of
1,000 devices, and with --echo on 200 acceptors (distinct host:port pairs).

A fresh slapd (the lab's schema) in the server namespace on port 2389 gets 1,000 generated
devices by slapadd: the first 200 installed acceptors whose connections are ports
20000-20199 of a second lab device, where one pynetdicom process answers C-ECHO on all
of them; the other 800 initiators only. From a device, the survey (directory found by its
configured server, the mDNS browse of the link included) is timed without and with --echo.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench_directory import start_slapd, stop_slapd
from lab import CONFIG_ROOT_DN, Device, Lab

HERE = Path(__file__).resolve().parent
SCHEMA = HERE.parent / "profiles" / "app_config" / "schema" / "dicom.schema"
AGENT = str(HERE.parent / ".venv" / "bin" / "dicom-agent")
DEVICES = 1_000
ACCEPTORS = 200
FIRST_PORT = 20000

SCP = r'''
import sys
from pynetdicom import AE
from pynetdicom.sop_class import Verification
ae = AE(ae_title="BENCHSCP")
ae.add_supported_context(Verification)
ae.require_called_aet = False
ae.maximum_associations = 64  # pynetdicom: 10 by default, the survey asks 32 at once
servers = [ae.start_server((sys.argv[1], port), block=False)
           for port in range(int(sys.argv[2]), int(sys.argv[2]) + int(sys.argv[3]))]
print("listening", flush=True)
sys.stdin.read()
for s in servers:
    s.shutdown()
'''


def generate(path: Path, scp_address: str) -> None:
    with path.open("w") as out:
        for n in range(DEVICES):
            device = f"dicomDeviceName=S{n:04d},cn=Devices,{CONFIG_ROOT_DN}"
            title = f"S{n:04d}"
            acceptor = n < ACCEPTORS
            host = scp_address if acceptor else f"198.51.100.{n % 250 + 1}"
            out.write(f"dn: dicomAETitle={title},cn=Unique AE Titles Registry,{CONFIG_ROOT_DN}\n"
                      f"objectClass: dicomUniqueAETitle\ndicomAETitle: {title}\n\n"
                      f"dn: {device}\nobjectClass: dicomDevice\ndicomDeviceName: S{n:04d}\n"
                      f"dicomInstalled: TRUE\ndicomPrimaryDeviceType: {'CT' if n % 3 else 'MR'}"
                      f"\n\ndn: cn=dicom,{device}\nobjectClass: dicomNetworkConnection\n"
                      f"cn: dicom\ndicomHostname: {host}\n"
                      f"dicomPort: {FIRST_PORT + n if acceptor else 104}\n\n"
                      f"dn: dicomAETitle={title},{device}\nobjectClass: dicomNetworkAE\n"
                      f"dicomAETitle: {title}\ndicomNetworkConnectionReference: cn=dicom,{device}\n"
                      f"dicomAssociationInitiator: TRUE\n"
                      f"dicomAssociationAcceptor: {'TRUE' if acceptor else 'FALSE'}\n\n")


def survey_bench(lab: Lab, dev: Device, scp_dev: Device, reps: int) -> dict:
    d = lab.run / "survey-slapd"
    d.mkdir(parents=True, exist_ok=True)
    scp_address = scp_dev.configure_static()
    dev.configure_static()
    generate(d / "devices.ldif", scp_address)
    start_slapd(lab, d, 2389, [d / "devices.ldif"], extra="sizelimit unlimited\n")
    config = dev.run_dir / "survey.toml"
    config.write_text(f'[agent]\nstate_dir = "{dev.run_dir / "survey-state"}"\n'
                      f'runtime_dir = "{dev.run_dir / "survey-run"}"\n'
                      '[network]\ninterface = "eth0"\n[time]\nmode = "observe"\n'
                      '[directory]\nservers = ["ldap://192.0.2.1:2389"]\n')
    scp = scp_dev.popen([sys.executable, "-c", SCP, scp_address, str(FIRST_PORT),
                         str(ACCEPTORS)], stdin=subprocess.PIPE)
    try:
        if scp.stdout.readline().strip() != "listening":
            raise RuntimeError(f"the echo SCP did not start: {scp.stderr.read()[-2000:]}")
        out: dict[str, list[float]] = {"plain": [], "echo": []}
        report = {}
        for _ in range(reps):
            for kind, extra in (("plain", []), ("echo", ["--echo"])):
                t0 = time.perf_counter()
                done = dev.run([AGENT, "site", "survey", "--config", str(config), "--json",
                                *extra], timeout=300)
                out[kind].append(time.perf_counter() - t0)
                if done.returncode not in (0, 1):
                    raise RuntimeError(done.stderr[-2000:])
                report[kind] = json.loads(done.stdout)
    finally:
        scp.stdin.close()
        scp.terminate()
        scp.wait(10)
        stop_slapd(lab, d)
    echoed = [c["echo"] for dv in report["echo"]["devices"] for ae in dv["aes"]
              for c in ae["connections"] if c["echo"] is not None]
    return {"devices": report["plain"]["summary"]["devices"],
            "plain_s": statistics.median(out["plain"]),
            "echo_s": statistics.median(out["echo"]),
            "echoed": len(echoed), "answered": echoed.count("ok")}
