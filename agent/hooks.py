"""Hooks (CONTRACTS.md): executables in `hooks_dir`, run in name order, one at a time,
`argv[1]` = the event, never through a shell, each bounded by `hook_timeout` (then its
whole process group is killed). A failing or hanging hook is logged, never fatal.

Only `lease-lost` and `stopping` hold their transition (`Hooks.run_now`), so lease-lost
hooks can AP-Abort associations before the address goes; the others are queued
(`Hooks.post`) and run in order by the hooks task, so a slow hook never stalls DHCP
renewals or the boot.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HookResult:
    hook: str
    returncode: int | None  # None: killed after the timeout
    seconds: float


def hooks_in(directory: Path) -> list[Path]:
    """Executable regular files, in name order; a missing directory means no hooks."""
    try:
        entries = sorted(directory.iterdir())
    except OSError:
        return []
    return [p for p in entries if p.is_file() and os.access(p, os.X_OK)
            and not p.name.startswith(".")]


def environment(event: str, values: dict[str, object]) -> dict[str, str]:
    """DICOM_AGENT_* variables; lists space-separated, None as empty."""
    env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
           "DICOM_AGENT_EVENT": event}
    for key, value in values.items():
        if isinstance(value, list | tuple):
            value = " ".join(str(v) for v in value)
        env[f"DICOM_AGENT_{key.upper()}"] = "" if value is None else str(value)
    return env


async def run_hooks(directory: Path, event: str, values: dict[str, object],
                    timeout: float) -> list[HookResult]:
    results = []
    loop = asyncio.get_running_loop()
    for hook in hooks_in(directory):
        t0 = loop.time()
        try:
            proc = await asyncio.create_subprocess_exec(
                str(hook), event, env=environment(event, values),
                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE, start_new_session=True)
        except OSError as exc:
            log.warning("hook %s (%s) could not start: %s", hook.name, event, exc)
            results.append(HookResult(hook.name, -1, 0.0))
            continue
        try:
            _, err = await asyncio.wait_for(proc.communicate(), timeout)
            code = proc.returncode
            if code != 0:
                log.warning("hook %s (%s) exited %d: %s", hook.name, event, code,
                            err.decode(errors="replace").strip()[-200:])
        except TimeoutError:
            # The hook's whole process group: its children would otherwise keep the
            # stderr pipe open and outlive it.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
            code = None
            log.warning("hook %s (%s) took over %.1f s: killed", hook.name, event, timeout)
        results.append(HookResult(hook.name, code, loop.time() - t0))
    return results


class Hooks:
    """The hooks of one daemon: queued events run in order by `serve()`; `run_now()`
    (lease-lost, stopping) waits for the hook running at the moment, then runs at once."""

    HOLDING = ("lease-lost", "stopping")

    def __init__(self, directory: Path, timeout: float):
        self.directory = directory
        self.timeout = timeout
        self.counters: Counter[str] = Counter()
        self._queue: asyncio.Queue[tuple[str, dict]] = asyncio.Queue(maxsize=64)
        self._lock = asyncio.Lock()

    def post(self, event: str, values: dict[str, object]) -> None:
        try:
            self._queue.put_nowait((event, values))
        except asyncio.QueueFull:
            self.counters["dropped"] += 1
            log.warning("hooks: queue full, %s dropped", event)

    async def run_now(self, event: str, values: dict[str, object]) -> None:
        async with self._lock:
            await self._run(event, values)

    async def serve(self) -> None:
        while True:
            event, values = await self._queue.get()
            async with self._lock:
                await self._run(event, values)

    async def _run(self, event: str, values: dict[str, object]) -> None:
        for result in await run_hooks(self.directory, event, values, self.timeout):
            self.counters["run"] += 1
            if result.returncode is None:
                self.counters["killed"] += 1
            elif result.returncode != 0:
                self.counters["failed"] += 1
