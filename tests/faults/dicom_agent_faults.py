"""Test-only fault injection for `dicom-agent run` (never installed: it lives under
tests/ and the daemon imports it only when a test puts this folder on PYTHONPATH).

DICOM_AGENT_FAULTS="address:2,announce:1" makes the named supervised task raise
RuntimeError("injected fault") at its first N starts — for the faults that have no real
trigger left once every input is validated (issue 9: "a test-only fault hook ... off in
production builds and says so").

"ldap-kill-after-add:N" ends the process with SIGKILL right after its Nth successful
LDAP add (a kill -9 between a title's reservation and the device's entries, issue 13).
"ldap-pause-after-add:N" holds the registration right after its Nth successful add until
the test removes $DICOM_AGENT_FAULT_DIR/paused-after-add (made then): the test ends the
provider in between (a server lost mid-registration, issue 14). Both work for `run` and
for `directory register`.

SIGUSR2 stalls the event loop (a blocking sleep inside it, as a hung call would): the
watchdog test (issue 12) sees systemd end and restart the stalled daemon.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

_left: dict[str, int] = {}
for item in filter(None, os.environ.get("DICOM_AGENT_FAULTS", "").split(",")):
    name, _, count = item.partition(":")
    _left[name] = int(count or 1)


def wrap(name, job):
    async def faulty() -> None:
        if _left.get(name, 0) > 0:
            _left[name] -= 1
            raise RuntimeError(f"injected fault ({name})")
        await job()
    return faulty


def stall_the_loop_forever() -> None:
    while True:
        time.sleep(3600)  # blocks the loop: no WATCHDOG=1 any more


def after_ldap_add(n: int, then) -> None:
    from profiles.app_config import ldap_io, registration

    original = ldap_io.Directory.execute
    done = 0

    def execute(self, op):
        nonlocal done
        result = original(self, op)
        if isinstance(op, registration.Add) and result == 0:
            done += 1
            if done == n:
                then()
        return result

    ldap_io.Directory.execute = execute


def kill() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def pause() -> None:
    """In the worker thread running the registration: wait for the test (60 s at most)."""
    marker = Path(os.environ["DICOM_AGENT_FAULT_DIR"]) / "paused-after-add"
    marker.touch()
    deadline = time.monotonic() + 60
    while marker.exists() and time.monotonic() < deadline:
        time.sleep(0.05)


def arm(loop=None) -> None:
    if loop is not None:
        loop.add_signal_handler(signal.SIGUSR2, stall_the_loop_forever)
    if _left.get("ldap-kill-after-add"):
        after_ldap_add(_left.pop("ldap-kill-after-add"), kill)
    if _left.get("ldap-pause-after-add"):
        after_ldap_add(_left.pop("ldap-pause-after-add"), pause)
