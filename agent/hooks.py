"""Hooks (CONTRACTS.md): executables in `hooks_dir`, run in name order, one at a time,
`argv[1]` = the event, never through a shell, each bounded by `hook_timeout`. A failing
or hanging hook is logged (and killed), never fatal; the transition that fired them
waits for them, so `lease-lost` hooks can AP-Abort associations before the address goes.
"""

from __future__ import annotations

import asyncio
import logging
import os
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
            proc.kill()
            await proc.wait()
            code = None
            log.warning("hook %s (%s) took over %.1f s: killed", hook.name, event, timeout)
        results.append(HookResult(hook.name, code, loop.time() - t0))
    return results
