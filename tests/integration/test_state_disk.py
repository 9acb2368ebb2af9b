"""A state directory the filesystem refuses — a full 64 KiB tmpfs, or one remounted
read-only, in the device's private mount namespace — never keeps the device off the
network: the lease is bound and applied, identifiers that cannot be saved come from the
device's machine ID (so restarts agree), the status says `state-not-saved`, and when
space returns every refused file is written."""

from __future__ import annotations

import hashlib
import hmac
import subprocess

import pytest
from agent_helpers import AGENT, write_config
from test_agent import stop, wait_for

pytestmark = pytest.mark.integration

FAST = "arp_probe = false\ninitial_delay = [0.0, 0.0]"


def on_tmpfs(device, state: str, argv: list[str], fill: bool = False,
             read_only: bool = False) -> list[str]:
    """argv run with `state` a 64 KiB tmpfs of its own (full, or read-only, first)."""
    script = f'mount -t tmpfs -o size=64k,mode=0755 tmpfs "{state}"; '
    if fill:
        script += f'dd if=/dev/zero of="{state}/filler" bs=4k 2>/dev/null || true; '
    if read_only:
        script += f'mount -o remount,ro "{state}"; '
    return ["sh", "-c", script + 'exec "$@"', "on-tmpfs", *argv]


def in_mounts_of(pid: int, *argv: str) -> subprocess.CompletedProcess:
    """A command in the agent's own mount namespace (its tmpfs), from outside."""
    return subprocess.run(["nsenter", "-t", str(pid), "-m", *argv], capture_output=True,
                          text=True, timeout=20)


def agent_pid(proc: subprocess.Popen) -> int:
    """The agent under the device's wrappers (sh execs it: the newest descendant)."""
    out = subprocess.run(["pgrep", "-n", "-s", str(proc.pid), "-f", "dicom-agent run"],
                         capture_output=True, text=True).stdout.split()
    assert out, "the agent is not running"
    return int(out[0])


def machine_specific(device, purpose: str) -> bytes:
    key = bytes.fromhex((device.run_dir / "machine-id").read_text().strip())
    return hmac.new(key, purpose.encode(), hashlib.sha256).digest()[:16]


def test_a_full_state_directory_binds_anyway_and_saves_when_space_returns(device):
    state = device.run_dir / "statefs"
    state.mkdir()
    config = write_config(device, network=FAST, state_dir=str(state))
    # The client id a full disk gives, twice: derived from the machine ID, the same.
    ids = []
    for _ in range(2):
        proc = device.run(on_tmpfs(device, str(state), [AGENT, "dhcp", "--config", config,
                                                        "--print-client-id"], fill=True))
        assert proc.returncode == 0, proc.stderr
        ids.append(proc.stdout.strip())
    assert ids[0] == ids[1]
    uuid = machine_specific(device, "dicom-agent dhcp client-id")
    assert ids[0].replace(":", "").endswith("0004" + uuid.hex())
    proc = device.popen(on_tmpfs(device, str(state), [AGENT, "run", "--config", config],
                                 fill=True), stdout=subprocess.DEVNULL)
    try:
        snap = wait_for(device, lambda s: s["network"]["state"] == "bound"
                        and "state-not-saved" in s["degraded"])
        assert f"{snap['network']['address']}/24" in device.addresses()
        assert snap["counters"]["state"]["save-failures"] >= 2  # client id, lease
        assert snap["supervision"]["address"]["restarts"] == 0
        pid = agent_pid(proc)
        assert in_mounts_of(pid, "ls", "-A", str(state)).stdout.split() == ["filler"]
        # Space returns: the refused files are written, the condition clears.
        assert in_mounts_of(pid, "rm", f"{state}/filler").returncode == 0
        snap = wait_for(device, lambda s: "state-not-saved" not in s["degraded"], timeout=30)
        files = in_mounts_of(pid, "ls", "-A", str(state)).stdout.split()
        assert {"client-id", "lease-eth0.json"} <= set(files) and not any(
            f.startswith(".") for f in files)  # no temporary file left behind
        saved_id = in_mounts_of(pid, "cat", f"{state}/client-id").stdout.strip()
        assert saved_id == ids[0]  # the derived id is the one kept
        assert snap["counters"]["state"]["saved-later"] >= 2
    finally:
        stop(proc)


def test_a_read_only_state_directory_keeps_the_lease_and_nothing_saved_is_lost(device):
    state = device.run_dir / "statefs"
    state.mkdir()
    config = write_config(device, network=FAST, state_dir=str(state))
    proc = device.popen(on_tmpfs(device, str(state), [AGENT, "run", "--config", config]),
                        stdout=subprocess.DEVNULL)
    try:
        first = wait_for(device, lambda s: s["network"]["state"] == "bound")
        assert "state-not-saved" not in first["degraded"]
        pid = agent_pid(proc)
        before = in_mounts_of(pid, "cat", f"{state}/lease-eth0.json").stdout
        assert first["network"]["address"] in before
        assert in_mounts_of(pid, "mount", "-o", "remount,ro", str(state)).returncode == 0
        # A renewal now cannot be saved: still bound, said so, the old file whole.
        from test_agent import ask
        assert ask(device, {"v": 1, "op": "renew"})["ok"] is True
        snap = wait_for(device, lambda s: "state-not-saved" in s["degraded"], timeout=30)
        assert snap["network"]["state"] == "bound"
        assert in_mounts_of(pid, "cat", f"{state}/lease-eth0.json").stdout == before
        assert in_mounts_of(pid, "mount", "-o", "remount,rw", str(state)).returncode == 0
        wait_for(device, lambda s: "state-not-saved" not in s["degraded"], timeout=30)
        after = in_mounts_of(pid, "cat", f"{state}/lease-eth0.json").stdout
        assert after != before and first["network"]["address"] in after
    finally:
        stop(proc)
