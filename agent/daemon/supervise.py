"""Supervision: each profile task runs under a supervisor that outlives its faults.

A task that raises is logged once with its traceback, recorded (`restarts`,
`last_error`), reported to the daemon (which marks the boot machine `profile-failing`)
and started again after a backoff: about 1 s, doubling to 5 min, back to 1 s once a run
has stayed healthy for HEALTHY seconds. A per-task cap keeps the address task's backoff
well below T1 of the lease it holds. While a task is down an optional `while_down`
coroutine runs (the address task's: remove the address when the lease expires). A task
that returns is finished (e.g. time with nothing to keep). Cancellation is not a fault:
it ends the supervisor.

The backoff is pure (Backoff) and the clock and sleep are injected, so unit tests run
whole failure sequences without waiting.
"""

from __future__ import annotations

import asyncio
import logging
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

log = logging.getLogger(__name__)
FIRST_DELAY = 1.0  # s
MAX_DELAY = 300.0  # s
HEALTHY = 120.0  # s a run must last for the backoff to start again from FIRST_DELAY


@dataclass
class Backoff:
    """Restart delays of one task: doubling from `first` to `maximum`, reset when healthy."""

    first: float = FIRST_DELAY
    maximum: float = MAX_DELAY
    healthy: float = HEALTHY
    _next: float = field(default=0.0, init=False)

    def failed(self, ran_for: float, cap: float | None = None) -> float:
        """The wait before the next start, after a run that lasted `ran_for` seconds."""
        if ran_for >= self.healthy or self._next == 0.0:
            self._next = self.first
        delay = self._next
        self._next = min(self._next * 2, self.maximum)
        return min(delay, cap) if cap is not None else delay


@dataclass
class TaskRecord:
    """What the status shows of one supervised task."""

    restarts: int = 0
    last_error: str | None = None
    failing: bool = False  # between a fault and the next start

    def to_json(self) -> dict:
        return {"restarts": self.restarts, "last_error": self.last_error}


class Supervisor:
    def __init__(self, on_change: Callable[[], Awaitable[None]],
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep):
        self.on_change = on_change
        self.clock = clock
        self.sleep = sleep
        self.tasks: dict[str, TaskRecord] = {}

    @property
    def failing(self) -> bool:
        return any(r.failing for r in self.tasks.values())

    def snapshot(self) -> dict:
        return {name: record.to_json() for name, record in self.tasks.items()}

    def record(self, name: str) -> TaskRecord:
        return self.tasks.setdefault(name, TaskRecord())

    async def run(self, name: str, job: Callable[[], Awaitable[None]],
                  cap: Callable[[], float | None] = lambda: None,
                  while_down: Callable[[], Awaitable[None]] | None = None,
                  backoff: Backoff | None = None) -> None:
        record, backoff = self.record(name), backoff or Backoff()
        while True:
            started = self.clock()
            try:
                await job()
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # every fault of one profile: recorded, never fatal
                delay = backoff.failed(self.clock() - started, cap())
                record.restarts += 1
                record.last_error = f"{type(exc).__name__}: {exc}"[:500]
                record.failing = True
                log.error("%s failed (restart %d in %.1f s):\n%s", name, record.restarts,
                          delay, "".join(traceback.format_exception(exc)).rstrip())
            await self.on_change()
            await self._wait(name, delay, while_down)
            record.failing = False
            await self.on_change()

    async def _wait(self, name: str, delay: float, while_down: Callable[[], Awaitable[None]] | None
                    ) -> None:
        if while_down is None:
            await self.sleep(delay)
            return
        side = asyncio.create_task(while_down(), name=f"{name}-while-down")
        try:
            await self.sleep(delay)
        finally:
            side.cancel()
            try:
                await side
            except asyncio.CancelledError:
                pass
            except Exception as exc:
                log.error("%s while down: %s: %s", name, type(exc).__name__, exc)
