"""Hooks (dicom-agent(8), HOOKS): executables in `hooks_dir`, run in name order, one at a time,
`argv[1]` = the event, never through a shell, each bounded by `hook_timeout` (then its
whole process group is killed). A failing or hanging hook is logged, never fatal.

Only `lease-lost` and `stopping` hold their transition (`Hooks.run_now`), so lease-lost
hooks can AP-Abort associations before the address goes; the others are queued
(`Hooks.post`) and run in order by the hooks task, so a slow hook never stalls DHCP
renewals or the boot.

Hooks run as the agent (root), so only trusted files run (as NetworkManager-dispatcher
does): a hook must be a regular file owned by root or the agent's user, not writable by
group or others, without setuid/setgid, in a directory with the same owner and write
rule; anything else is skipped, logged once and counted. A hook's output goes to a file,
never a pipe a child could hold open; at the deadline its whole process group is killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import stat
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)
# Every event a hook may be run for (docs/dicom-agent.8.rst, HOOKS).
HOOK_EVENTS = ("lease-bound", "lease-renewed", "lease-expiring", "lease-lost",
               "address-changed", "address-conflict", "time-synced", "time-offset-changed",
               "registered", "title-changed", "config-changed", "ae-down", "ae-up", "ready",
               "stopping")


@dataclass(frozen=True)
class HookResult:
    """How one hook ended."""

    hook: str
    returncode: int | None  # None: killed after the timeout
    seconds: float


def untrusted(st: os.stat_result) -> str | None:
    """Why a file or directory with this stat may not run as the agent, or None."""
    if st.st_uid not in (0, os.geteuid()):
        return f"owned by uid {st.st_uid}"
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return "writable by group or others"
    if stat.S_ISREG(st.st_mode) and st.st_mode & (stat.S_ISUID | stat.S_ISGID):
        return "setuid or setgid"
    return None


_reported: set[tuple[str, str]] = set()


def _skip(path: Path, why: str, counters: Counter[str] | None) -> None:
    if counters is not None:
        counters["skipped"] += 1
    if (str(path), why) not in _reported:  # once per file and reason
        _reported.add((str(path), why))
        log.warning("hook %s skipped: %s", path, why)


def hooks_in(directory: Path, counters: Counter[str] | None = None) -> list[Path]:
    """The trusted executable regular files, in name order; a missing directory means
    no hooks, an untrusted one none either."""
    try:
        dir_stat = directory.stat()
        entries = sorted(directory.iterdir())
    except OSError:
        return []
    why = untrusted(dir_stat)
    if why is not None:
        _skip(directory, f"directory {why}", counters)
        return []
    out = []
    for path in entries:
        if path.name.startswith("."):
            continue
        try:
            st = path.lstat()
        except OSError:
            continue
        if not stat.S_ISREG(st.st_mode) or not st.st_mode & stat.S_IXUSR:
            continue
        why = untrusted(st)
        if why is not None:
            _skip(path, why, counters)
            continue
        out.append(path)
    return out


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
                    timeout: float, counters: Counter[str] | None = None) -> list[HookResult]:
    results = []
    loop = asyncio.get_running_loop()
    for hook in hooks_in(directory, counters):
        t0 = loop.time()
        # Output to an unlinked file: a child the hook leaves behind can hold it open
        # without holding us (a pipe would keep communicate() waiting for it).
        with tempfile.TemporaryFile() as output:
            try:
                proc = await asyncio.create_subprocess_exec(
                    str(hook), event, env=environment(event, values),
                    stdin=asyncio.subprocess.DEVNULL, stdout=output, stderr=output,
                    start_new_session=True)
            except OSError as exc:
                log.warning("hook %s (%s) could not start: %s", hook.name, event, exc)
                results.append(HookResult(hook.name, -1, 0.0))
                continue
            code = await _wait(proc, hook, event, timeout)
            if code not in (0, None):
                output.seek(0)
                log.warning("hook %s (%s) exited %d: %s", hook.name, event, code,
                            output.read(4096).decode(errors="replace").strip()[-200:])
        results.append(HookResult(hook.name, code, loop.time() - t0))
    return results


async def _wait(proc: asyncio.subprocess.Process, hook: Path, event: str,
                timeout: float) -> int | None:
    """The hook's exit code, or None when it was killed at the deadline."""
    try:
        return await asyncio.wait_for(proc.wait(), timeout)
    except TimeoutError:
        # The hook's whole process group: its children would otherwise outlive it.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
        log.warning("hook %s (%s) took over %.1f s: killed", hook.name, event, timeout)
        return None


class Hooks:
    """The hooks of one daemon: queued events run in order by `serve()`; `run_now()`
    (lease-lost, stopping) waits for the hook running at the moment, then runs at once."""

    def __init__(self, directory: Path, timeout: float):
        self.directory = directory
        self.timeout = timeout
        self.counters: Counter[str] = Counter()
        self._queue: asyncio.Queue[tuple[str, dict]] = asyncio.Queue(maxsize=64)
        self._lock = asyncio.Lock()

    def post(self, event: str, values: dict[str, object]) -> None:
        if event not in HOOK_EVENTS:
            raise ValueError(f"not a hook event: {event}")  # a programming error
        try:
            self._queue.put_nowait((event, values))
        except asyncio.QueueFull:
            self.counters["dropped"] += 1
            log.warning("hooks: queue full, %s dropped", event)

    async def run_now(self, event: str, values: dict[str, object]) -> None:
        if event not in HOOK_EVENTS:
            raise ValueError(f"not a hook event: {event}")
        async with self._lock:
            await self._run(event, values)

    async def serve(self) -> None:
        while True:
            event, values = await self._queue.get()
            async with self._lock:
                await self._run(event, values)

    async def _run(self, event: str, values: dict[str, object]) -> None:
        for result in await run_hooks(self.directory, event, values, self.timeout,
                                      self.counters):
            self.counters["run"] += 1
            if result.returncode is None:
                self.counters["killed"] += 1
            elif result.returncode != 0:
                self.counters["failed"] += 1
