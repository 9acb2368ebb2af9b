"""`make demo`: the agent bringing two DICOM devices onto the lab's hospital network.

The lab comes up (namespaces, dnsmasq, three chronyd, slapd with the DICOM schema). A CT
(agent/examples/ct.toml) boots on dev1 and an image archive (archive.toml) on dev2, each
`dicom-agent run` in its own device namespace, observing the clock only. We follow the
CT through `dicom-agent watch` from `starting` to `ready`, show its entries in the
directory, an independent mDNS browser (avahi, in the server namespace) seeing the
archive's `_dicom._tcp` services, and a lookup of the pre-registered ARCHIVE through the
CT's agent. Then both agents stop (goodbye packets: the browser sees them go) and the lab
is torn down.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from lab import CONFIG_ROOT_DN, REGISTRAR_DN, Device, Lab

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
AGENT = str(REPO / ".venv" / "bin" / "dicom-agent")


def step(title: str) -> None:
    print(f"\n== {title}", flush=True)


def config_for(lab: Lab, dev: Device, example: str) -> Path:
    """The example, with this device's directories and the registrar's TLS account."""
    secret = dev.run_dir / "registrar.pw"
    secret.write_text("registrarpw\n")
    secret.chmod(0o600)
    text = (REPO / "agent" / "examples" / example).read_text()
    # Credentials go only to a configured domain's servers (the Security model).
    text = text.replace('[directory]\nsecurity = "anonymous"', "[directory]\n"
                        'security = "tls"\ndomain = "hospital.test"\n'
                        f'ca_file = "{lab.run / "tls" / "ca.pem"}"\n'
                        f'bind_dn = "{REGISTRAR_DN}"\n'
                        f'password_file = "{secret}"')
    text = (f'[agent]\nstate_dir = "{dev.run_dir / "agent-state"}"\n'
            f'runtime_dir = "{dev.run_dir / "agent-run"}"\n\n' + text)
    path = dev.run_dir / example
    path.write_text(text)
    return path


def describe(snap: dict) -> str:
    n = snap["network"]
    parts = [f"{snap['state']:<19}", f"address {n.get('address', '-')}",
             f"time {snap['time'].get('source') or '-'}"
             + (" synced" if snap["time"].get("synced") else ""),
             f"directory {snap['directory']['state']}",
             f"advertised {len(snap['dnssd']['services'])}"]
    if snap["degraded"]:
        parts.append(f"degraded {', '.join(snap['degraded'])}")
    return " | ".join(parts)


def main() -> int:
    if os.geteuid() != 0:
        print("make demo needs root: it builds network namespaces", file=sys.stderr)
        return 2
    failures = 0
    lab = Lab(prefix="dcmd", devices=2)
    step("bringing the lab up")
    with lab:
        print(lab.describe())
        ct, archive = lab.devices[1], lab.devices[2]
        ct_conf, archive_conf = config_for(lab, ct, "ct.toml"), config_for(lab, archive,
                                                                         "archive.toml")
        t0 = time.monotonic()
        agents = [dev.popen([AGENT, "run", "--config", str(conf)], stdout=subprocess.DEVNULL,
                            stderr=open(dev.run_dir / "agent.log", "w"))  # noqa: SIM115
                  for dev, conf in ((ct, ct_conf), (archive, archive_conf))]

        step(f"{ct.ns}: dicom-agent watch (the CT booting)")
        sock = ct.run_dir / "agent-run" / "status.sock"
        while not sock.exists() and time.monotonic() - t0 < 10:
            if agents[0].poll() is not None:  # it ended: say why, do not wait for it
                print(f"   the agent exited {agents[0].returncode}:\n"
                      + (ct.run_dir / "agent.log").read_text()[-2000:], file=sys.stderr)
                return 1
            time.sleep(0.05)
        watch = subprocess.Popen([AGENT, "watch", "--socket", str(sock)],
                                 stdout=subprocess.PIPE, text=True)
        last = ""
        for line in watch.stdout:
            snap = json.loads(line)
            text = describe(snap)
            if text != last:
                print(f"   +{time.monotonic() - t0:5.1f} s  {text}", flush=True)
                last = text
            if snap["state"] == "ready" or time.monotonic() - t0 > 60:
                break
        watch.terminate()
        watch.wait(5)
        failures += snap["state"] != "ready"

        step("dicom-agent status (the CT)")
        print(subprocess.run([AGENT, "status", "--socket", str(sock)], capture_output=True,
                             text=True).stdout.rstrip())

        step("the CT's entries in the directory (ldapsearch)")
        found = ct.run(["ldapsearch", "-x", "-LLL", "-o", "ldif-wrap=no", "-H",
                        "ldap://192.0.2.1", "-b", f"cn=Devices,{CONFIG_ROOT_DN}",
                        "(dicomDeviceName=CT01)", "dicomDeviceName", "dicomManufacturer",
                        "dicomPrimaryDeviceType"]).stdout
        sub = ct.run(["ldapsearch", "-x", "-LLL", "-o", "ldif-wrap=no", "-H",
                      "ldap://192.0.2.1", "-b", f"dicomDeviceName=CT01,cn=Devices,"
                      f"{CONFIG_ROOT_DN}", "(!(objectClass=dicomDevice))", "dn"]).stdout
        print("   " + "\n   ".join((found + sub).strip().splitlines()))
        failures += "dicomDeviceName: CT01" not in found

        step("an independent mDNS browser (avahi-browse in the server namespace)")
        archive_sock = archive.run_dir / "agent-run" / "status.sock"
        while time.monotonic() - t0 < 60:
            try:
                if json.loads(subprocess.run(
                        [AGENT, "status", "--json", "--socket", str(archive_sock)],
                        capture_output=True, text=True).stdout)["state"] == "ready":
                    break
            except ValueError:
                pass
            time.sleep(0.3)
        seen = []
        for kind in ("_dicom._tcp", "_dicom-tls._tcp"):
            seen += lab.avahi_browse(kind, until=lambda f: any(
                s["name"].startswith("ARCHIVE2") for s in f))
        for s in seen:
            print(f"   {s['name']:16} {s['type']:16} {s['address']}:{s['port']}  "
                  + " ".join(f"{k}={v}" for k, v in s["txt"].items()))
        failures += not any(s["name"] == "ARCHIVE2_STORE" for s in seen)

        step("dicom-agent lookup ARCHIVE (through the CT's agent)")
        lookup = subprocess.run([AGENT, "lookup", "ARCHIVE", "--socket", str(sock)],
                                capture_output=True, text=True)
        print("   " + "\n   ".join(lookup.stdout.strip().splitlines()))
        failures += lookup.returncode != 0

        step("the CT's DICOM application stores an image on the archive it looked up")
        received = lab.run / "archive-received"
        received.mkdir(exist_ok=True)
        scp = lab.srv_popen(["storescp", "-aet", "ARCHIVE", "--output-directory",
                             str(received), "11112"])
        time.sleep(0.5)  # storescp listening
        store = ct.run([str(REPO / ".venv" / "bin" / "python"),
                        str(REPO / "examples" / "store_scu.py"), "--socket", str(sock),
                        "--calling-aet", "CT01_SCU", "ARCHIVE"], timeout=60)
        print(f"   examples/store_scu.py: {store.stdout.strip() or store.stderr.strip()}")
        files = sorted(p.name for p in received.iterdir())
        print(f"   storescp (DCMTK) received: {', '.join(files) or 'nothing'}")
        failures += store.returncode != 0 or not files
        scp.terminate()

        step("stopping the agents (goodbye packets)")
        for proc in agents:
            proc.terminate()
        for proc in agents:
            proc.wait(30)
        gone = lab.avahi_browse("_dicom._tcp", until=lambda f: not any(
            s["name"].startswith("ARCHIVE2") for s in f))
        print(f"   the browser now sees {len(gone)} DICOM service(s)")
        failures += bool(gone)
        step("tearing the lab down (a new lab starts with a fresh directory)")
    print("\ndemo " + ("finished: both devices joined the network, were found and left"
                       if not failures else f"FAILED: {failures} step(s) went wrong"))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
