"""The device's DICOM application (issue 16): the example storage SCU finds the archive
through the agent (agent.client over the status socket) and stores an image on a real
DCMTK storescp; a pynetdicom SCP as the device's own acceptor AE."""

from __future__ import annotations

import json
import subprocess
import time

from agent_helpers import PYTHON, REPO, default_device, wait_until, write_config
from device_toml import device_toml
from test_agent import sock, start, stop, wait_for

FAST = 'arp_probe = false\ninitial_delay = [0.0, 0.0]\nresolver = "auto"'


def test_the_example_application_stores_an_image_on_the_archive_it_looked_up(lab, device):
    received = lab.run / f"storescp-{device.index}"
    received.mkdir()
    scp = lab.srv_popen(["storescp", "-aet", "ARCHIVE", "--output-directory", str(received),
                         "11112"])
    config = write_config(device, network=FAST, directory='domain = "hospital.test"',
                          device_section=default_device(device.index))
    proc = start(device, config)
    try:
        wait_for(device, lambda s: s["directory"]["state"] not in ("locating", "registering"))
        # The calling title is the device's own, from the agent's status.
        run = device.run([PYTHON, str(REPO / "examples" / "store_scu.py"), "--socket",
                          str(sock(device)), "--wait", "60", "ARCHIVE"], timeout=120)
        assert run.returncode == 0, run.stdout + run.stderr
        result = json.loads(run.stdout)
        assert result["peer"] == "198.51.100.10:11112" and result["source"] == "directory"
        assert result["calling"] == f"DEV{device.index}_SCU"
        assert result["tls"] is False and result["stale"] is False
        assert result["echo"] == 0 and result["store"] == 0
        stored = list(received.iterdir())
        assert len(stored) == 1 and stored[0].name.startswith("CT.")
        assert result["sop_instance_uid"] in stored[0].name
    finally:
        stop(proc)
        lab._stop([scp])


def test_an_acceptor_that_stops_answering_is_withdrawn_and_comes_back(lab, device):
    """AE health: a pynetdicom SCP is the device's acceptor AE; answering its C-ECHO it is
    advertised (an independent mDNS browser sees it); stopped, it is withdrawn within the
    interval, degraded ae-unreachable, ae-down hook, and (health_updates_directory) its
    entry in slapd says dicomInstalled FALSE — which the read-back does not take for an
    administrator's edit; started again, ae-up, announced, the flag restored."""
    from agent_helpers import read_line
    from test_agent import registrar_section
    from test_identity import ADMIN, DEVICES, REGISTRY

    title = f"HC{device.index}_SCP"
    hooks = device.run_dir / "hooks"
    hooks.mkdir()
    seen = device.run_dir / "hook-events"
    (hooks / "10-log").write_text(f'#!/bin/sh\necho "$1 $DICOM_AGENT_HEALTH_AET" >> {seen}\n')
    (hooks / "10-log").chmod(0o755)
    section = device_toml(f"HC{device.index}", title, port=11113,
                          ae_extra="health_check = true")
    config = write_config(device, network=FAST,
                          agent_section=f'hooks_dir = "{hooks}"\nhealth_interval = 2.0\n'
                                        "health_updates_directory = true",
                          directory=registrar_section(lab, device) + "\nrefresh_interval = 2.0",
                          device_section=section)
    ae_dn = f"dicomAETitle={title},dicomDeviceName=HC{device.index},{DEVICES}"

    def installed() -> list[str]:
        out = lab.srv_exec(["ldapsearch", *ADMIN, "-LLL", "-b", ae_dn, "-s", "base",
                            "dicomInstalled"]).stdout
        return [x.split(": ")[1] for x in out.splitlines() if x.startswith("dicomInstalled")]

    def start_scp():
        scp = device.popen([PYTHON, str(REPO / "netns-fixtures" / "clients" / "echo_scp.py"),
                            title, "11113"], stdin=subprocess.PIPE)
        assert read_line(scp, 30) == {"listening": True}
        return scp

    def advertised(snap) -> list[str]:
        return [s["txt"]["AET"] for s in snap["dnssd"]["services"]]

    scp = start_scp()
    proc = start(device, config)
    try:
        up = wait_for(device, lambda s: s["directory"]["effective"][0]["health"] == "up"
                      and advertised(s) == [title], 40)
        assert up["directory"]["effective"][0]["health_checked_at"].endswith("Z")
        assert any(s["name"] == title for s in lab.avahi_browse(
            "_dicom._tcp", until=lambda f: any(x["name"] == title for x in f)))
        scp.terminate()
        scp.wait(10)
        down = wait_for(device, lambda s: s["directory"]["effective"][0]["health"] == "down",
                        20)
        assert "ae-unreachable" in down["degraded"] and advertised(down) == []
        assert down["state"] == "ready"  # health never holds up the boot
        assert wait_until(lambda: installed() == ["FALSE"], 10)
        time.sleep(3)  # a read-back (refresh_interval 2 s) has seen the FALSE
        later = wait_for(device, lambda s: True)
        assert "not-installed" not in later["degraded"]  # our own write, not an admin's
        assert later["directory"]["effective"][0]["installed"] is True
        gone = lab.avahi_browse("_dicom._tcp", until=lambda f: not any(
            x["name"] == title for x in f))
        assert not any(x["name"] == title for x in gone)
        scp = start_scp()
        back = wait_for(device, lambda s: s["directory"]["effective"][0]["health"] == "up"
                        and advertised(s) == [title], 20)
        assert "ae-unreachable" not in back["degraded"]
        assert wait_until(lambda: installed() == [], 10)  # restored: it had none
        assert wait_until(lambda: seen.exists() and f"ae-up {title}" in seen.read_text())
        events = [line.split()[0] for line in seen.read_text().splitlines()]
        assert events[-2:] == ["ae-down", "ae-up"] and "config-changed" not in events
    finally:
        stop(proc)
        scp.terminate()
        lab.srv_exec(["ldapdelete", *ADMIN, "-r", f"dicomDeviceName=HC{device.index},{DEVICES}"])
        lab.srv_exec(["ldapdelete", *ADMIN, f"dicomAETitle={title},{REGISTRY}"])
