"""The supervisor: a task's faults are recorded and it is restarted with a backoff that
doubles to a ceiling, is capped per task, and starts again from the first delay after a
healthy run. The clock and sleep are injected: no test waits."""

from __future__ import annotations

import asyncio

import pytest

from agent.daemon.supervise import FIRST_DELAY, HEALTHY, MAX_DELAY, Backoff, Supervisor


def test_backoff_doubles_to_five_minutes_and_resets_after_a_healthy_run():
    b = Backoff()
    delays = [b.failed(ran_for=0.1) for _ in range(12)]
    assert delays[:5] == [1.0, 2.0, 4.0, 8.0, 16.0]
    assert max(delays) == MAX_DELAY == 300.0 and delays[-1] == MAX_DELAY
    assert b.failed(ran_for=HEALTHY) == FIRST_DELAY  # a healthy period: from the start
    assert b.failed(ran_for=0.1) == 2.0


def test_a_cap_keeps_the_delay_below_it_without_losing_the_progression():
    b = Backoff()
    assert [b.failed(0.0, cap=3.0) for _ in range(4)] == [1.0, 2.0, 3.0, 3.0]
    assert b.failed(0.0) == 16.0  # uncapped again: the doubling went on underneath


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, delay: float) -> None:
        self.slept.append(delay)
        self.now += delay
        await asyncio.sleep(0)


def run(coro):
    return asyncio.run(coro)


def test_a_failing_task_is_restarted_recorded_and_reported():
    t = FakeTime()
    changes: list[bool] = []
    runs = 0

    async def job() -> None:
        nonlocal runs
        runs += 1
        t.now += 0.5
        if runs < 4:
            raise ValueError(f"bad offset {runs}")

    async def main() -> Supervisor:
        sv = Supervisor(lambda: _note(sv, changes), clock=t.clock, sleep=t.sleep)
        await sv.run("time", job)
        return sv

    sv = run(main())
    assert runs == 4 and t.slept == [1.0, 2.0, 4.0]
    assert sv.snapshot() == {"time": {"restarts": 3, "last_error": "ValueError: bad offset 3"}}
    assert not sv.failing
    # failing after each fault, healthy again at each restart
    assert changes == [True, False] * 3


async def _note(sv: Supervisor, changes: list[bool]) -> None:
    changes.append(sv.failing)


def test_cancellation_ends_the_supervisor_and_is_not_a_fault():
    t = FakeTime()

    async def job() -> None:
        await asyncio.Event().wait()

    async def main() -> Supervisor:
        sv = Supervisor(_nothing, clock=t.clock, sleep=t.sleep)
        task = asyncio.create_task(sv.run("announce", job))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return sv

    sv = run(main())
    assert sv.snapshot() == {"announce": {"restarts": 0, "last_error": None}}


async def _nothing() -> None:
    return None


def test_while_down_runs_during_the_backoff_and_is_cancelled_at_the_restart():
    t = FakeTime()
    events: list[str] = []
    runs = 0

    async def job() -> None:
        nonlocal runs
        runs += 1
        events.append(f"run {runs}")
        if runs == 1:
            raise OSError("EMFILE")

    async def while_down() -> None:
        events.append("down")
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            events.append("down cancelled")
            raise

    async def main() -> None:
        sv = Supervisor(_nothing, clock=t.clock, sleep=t.sleep)
        await sv.run("address", job, cap=lambda: 0.25, while_down=while_down)

    run(main())
    assert events == ["run 1", "down", "down cancelled", "run 2"]
    assert t.slept == [0.25]  # the address task's cap (T1/4 of the lease it holds)
