"""kill -9 at random instants (issue 10): during start-up, DISCOVER, the apply step and
the lease save. After each kill the state directory holds an intact lease file or none
(never a torn or damaged one), and the next start comes up from it. CI runs about 20
trials; `make soak` runs 100 (DICOM_AGENT_SOAK_TRIALS)."""

from __future__ import annotations

import json
import os
import random
import signal
import time

from agent_helpers import write_config
from test_agent import start, stop, wait_for

from profiles import statefile_io
from profiles.network_address.lease import Lease

TRIALS = int(os.environ.get("DICOM_AGENT_SOAK_TRIALS", "20"))
FAST = 'arp_probe = false\ninitial_delay = [0.0, 0.0]'


def test_kill_9_at_random_instants_leaves_an_intact_lease_or_none(lab, device):
    rng = random.Random(int(os.environ.get("DICOM_AGENT_SOAK_SEED", "9")))
    config = write_config(device, network=FAST, directory="enabled = false")
    state = device.run_dir / "agent-state"
    lease_file = state / "lease-eth0.json"
    outcomes = {"lease": 0, "none": 0}
    for trial in range(TRIALS):
        if trial % 2 == 0:  # from nothing: the kill lands in DISCOVER, apply or the save
            lease_file.unlink(missing_ok=True)
            device.ip("addr", "flush", "dev", "eth0")
        proc = start(device, config)
        time.sleep(rng.uniform(0.05, 1.5))  # the instant: imports, DISCOVER, apply, save
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        if lease_file.exists():
            record = json.loads(lease_file.read_text())  # whole JSON: never torn
            Lease.from_record(record["lease"])  # of the right shape
            outcomes["lease"] += 1
        else:
            outcomes["none"] += 1
        damaged = [p.name for p in state.glob("*.damaged")] if state.exists() else []
        assert damaged == [], f"trial {trial}: {damaged}"
    print(f"kill -9: {TRIALS} trials, {outcomes}")
    assert outcomes["lease"] > 0 and outcomes["none"] > 0  # kills before and after a save
    proc = start(device, config)
    try:
        snap = wait_for(device, lambda s: s["state"] == "ready", 60)
        assert snap["network"]["state"] == "bound"
        saved = statefile_io.read_json(lease_file)
        assert saved["lease"]["address"] == snap["network"]["address"]
    finally:
        err = stop(proc)
    assert proc.returncode == 0, err
