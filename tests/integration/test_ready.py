"""Startup as network daemons do it (issue 12, part 1): READY=1 once the daemon is up,
whatever the network; `dicom-agent wait` for the boot state `ready`, exit 1 on timeout
with the state it is in."""

from __future__ import annotations

import os
import socket
import subprocess

from agent_helpers import AGENT, agent, write_config
from test_agent import sock, stop

FAST = 'arp_probe = false\ninitial_delay = [0.0, 0.0]'


def test_ready_comes_when_up_and_wait_follows_the_boot(lab, device):
    notify = device.run_dir / "notify.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(notify))
    listener.settimeout(20)
    config = write_config(device, network=FAST, directory="enabled = false")
    lab.stop_dhcp_server()  # no DHCP server: the old unit timed out and restarted for ever
    proc = None
    try:
        env = {**os.environ, "NOTIFY_SOCKET": str(notify)}
        proc = device.popen([AGENT, "run", "--config", config], env=env,
                            stdout=subprocess.DEVNULL)
        messages = []
        while not any("READY=1" in m for m in messages):
            messages.append(listener.recv(4096).decode())
        ready_line = next(m for m in messages if "READY=1" in m)
        # Up, with no address yet: READY=1 does not wait for the boot state `ready`.
        assert ready_line.split("STATUS=")[1] in ("starting", "waiting-for-link",
                                                  "acquiring-address"), ready_line
        waited = agent(device, "wait", "--timeout", "3", "--socket", str(sock(device)))
        assert waited.returncode == 1
        assert "acquiring-address" in waited.stderr and "wanted ready" in waited.stderr
        at_least = agent(device, "wait", "--state", "acquiring-address", "--timeout", "5",
                         "--socket", str(sock(device)))
        assert at_least.returncode == 0  # at or past the state asked for
        lab.start_dhcp_server()
        done = agent(device, "wait", "--timeout", "60", "--socket", str(sock(device)))
        assert done.returncode == 0 and done.stdout.startswith("ready"), done.stderr
    finally:
        lab.start_dhcp_server()
        listener.close()
        if proc is not None:
            stop(proc)
