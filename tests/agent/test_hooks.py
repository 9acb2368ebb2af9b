"""Hooks: a timed-out hook's whole process group goes; queued events run in order in the
background; the holding events (lease-lost, stopping) wait only for the hook running."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from agent.daemon.hooks import Hooks, run_hooks


def hook(directory: Path, name: str, body: str) -> Path:
    path = directory / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return path


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in state  # a zombie no one reaped yet is gone too


def test_a_timed_out_hook_takes_its_children_with_it(tmp_path):
    hooks = tmp_path / "hooks.d"
    hooks.mkdir()
    child = tmp_path / "child.pid"
    # The child keeps the inherited stderr open: without the group kill, the wait for
    # the hook's output would last as long as the child.
    hook(hooks, "10-spawns", f"sleep 30 &\necho $! > {child}\nsleep 30\n")
    t0 = time.monotonic()
    (result,) = asyncio.run(run_hooks(hooks, "ready", {}, 0.5))
    assert result.returncode is None  # killed
    assert time.monotonic() - t0 < 30  # not the child's 30 s
    pid = int(child.read_text())
    deadline = time.monotonic() + 5
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(pid)


def test_queued_events_run_in_order_and_lease_lost_holds(tmp_path):
    hooks_dir = tmp_path / "hooks.d"
    hooks_dir.mkdir()
    log = tmp_path / "log"
    hook(hooks_dir, "10-log", f'echo "$1 $DICOM_AGENT_ADDRESS" >> {log}\n'
                              '[ "$1" = lease-bound ] && sleep 0.3\nexit 0\n')

    async def main() -> Hooks:
        h = Hooks(hooks_dir, 5.0)
        server = asyncio.create_task(h.serve())
        h.post("lease-bound", {"address": "192.0.2.100"})
        h.post("time-synced", {"address": "192.0.2.100"})
        while not (log.exists() and log.read_text()):  # lease-bound's hook is running
            await asyncio.sleep(0.01)
        await h.run_now("lease-lost", {"address": "192.0.2.100"})
        # run_now returned: lease-lost's hooks have run, after the one running then
        assert log.read_text().splitlines()[:2] == ["lease-bound 192.0.2.100",
                                                    "lease-lost 192.0.2.100"]
        while h.counters["run"] < 3:
            await asyncio.sleep(0.02)
        server.cancel()
        return h

    h = asyncio.run(main())
    assert log.read_text().splitlines() == ["lease-bound 192.0.2.100",
                                            "lease-lost 192.0.2.100",
                                            "time-synced 192.0.2.100"]
    assert h.counters == {"run": 3}


def test_a_failing_hook_is_counted(tmp_path):
    hooks_dir = tmp_path / "hooks.d"
    hooks_dir.mkdir()
    hook(hooks_dir, "10-fails", "exit 3\n")

    async def main() -> Hooks:
        h = Hooks(hooks_dir, 5.0)
        await h.run_now("stopping", {})
        return h

    assert asyncio.run(main()).counters == {"run": 1, "failed": 1}
    assert os.access(hooks_dir / "10-fails", os.X_OK)


@pytest.mark.integration  # privileged: files of other owners: CAP_CHOWN
def test_only_trusted_hooks_run(tmp_path):
    hooks_dir = tmp_path / "hooks.d"
    hooks_dir.mkdir()
    ran = tmp_path / "ran"
    for name in ("10-good", "20-world-writable", "30-not-ours", "40-setuid"):
        hook(hooks_dir, name, f"echo {name} >> {ran}\n")
    (hooks_dir / "20-world-writable").chmod(0o777)
    os.chown(hooks_dir / "30-not-ours", 65534, 65534)
    (hooks_dir / "40-setuid").chmod(0o4755)

    async def main() -> Hooks:
        h = Hooks(hooks_dir, 5.0)
        await h.run_now("ready", {})
        return h

    h = asyncio.run(main())
    assert ran.read_text().split() == ["10-good"]
    assert h.counters == {"run": 1, "skipped": 3}
    # A directory anyone may write to: nothing in it runs, however good the files.
    hooks_dir.chmod(0o777)
    ran.unlink()
    h = asyncio.run(main())
    assert not ran.exists() and h.counters == {"skipped": 1}
