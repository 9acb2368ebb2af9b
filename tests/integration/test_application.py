"""The device's DICOM application (issue 16): the example storage SCU finds the archive
through the agent (agent.client over the status socket) and stores an image on a real
DCMTK storescp; a pynetdicom SCP as the device's own acceptor AE."""

from __future__ import annotations

import json

from agent_helpers import PYTHON, REPO, default_device, write_config
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
        run = device.run([PYTHON, str(REPO / "examples" / "store_scu.py"), "--socket",
                          str(sock(device)), "--calling-aet", f"DEV{device.index}_SCU",
                          "--wait", "60", "ARCHIVE"], timeout=120)
        assert run.returncode == 0, run.stdout + run.stderr
        result = json.loads(run.stdout)
        assert result["peer"] == "198.51.100.10:11112" and result["source"] == "directory"
        assert result["echo"] == 0 and result["store"] == 0
        stored = list(received.iterdir())
        assert len(stored) == 1 and stored[0].name.startswith("CT.")
        assert result["sop_instance_uid"] in stored[0].name
    finally:
        stop(proc)
        lab._stop([scp])
