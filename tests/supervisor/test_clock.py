"""The real supervisor under trio's MockClock: time in the restart policy is trio's clock.

With `autojump_clock`, trio skips ahead whenever every task is asleep, so a
backoff of 40 s costs no wall time. If the policy read another clock, the
restarts below would all fall within one window and spend the budget.
"""

from __future__ import annotations

import time
from pathlib import Path

import trio

from runtime.config import AgentSpec
from runtime.config.schema import SupervisorSection
from tests.supervisor.harness import fixture, running

CRASHER = fixture("crash_now.py")
# Mock seconds: once nothing else is due, the clock jumps here, so a test that
# would wait forever fails at once instead. Set only after start-up: a deadline
# pending while a worker thread runs (the store's first load) could be jumped to.
MOCK_DEADLINE_S = 3600


def crasher(backoff_s: float) -> AgentSpec:
    # A budget of one restart per 30 s, restarts `backoff_s` apart.
    return AgentSpec(name="c", entry=CRASHER, backoff_initial_s=backoff_s,
                     backoff_multiplier=1, backoff_max_s=backoff_s, max_restarts=1,
                     restart_window_s=30)


async def test_restarts_wider_apart_than_the_window_never_spend_the_budget(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    root = SupervisorSection(max_restarts=1, restart_window_s=30)
    wall = time.monotonic()
    async with running(tmp_path, [crasher(40)], root=root) as h:
        began = trio.current_time()
        with trio.fail_after(MOCK_DEADLINE_S):
            await h.wait_for(lambda: len(h.of("restart", "c")) >= 5)
        assert trio.current_time() - began >= 4 * 40
        assert h.of("give-up") == [] and h.of("escalation") == []
        assert [e["delay_s"] for e in h.of("restart", "c")] == [40] * 5
    # Generous: it only shows that the 160 s above were not waited for.
    assert time.monotonic() - wall < 100


async def test_restarts_closer_than_the_window_spend_it(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    async with running(tmp_path, [crasher(10)]) as h:
        began = trio.current_time()
        with trio.fail_after(MOCK_DEADLINE_S):
            await h.wait_for(lambda: h.of("give-up", "c"))
        assert h.state("c") == "failed"
        assert len(h.of("restart", "c")) == 1  # the second restart within 30 s: failed
        assert 10 <= trio.current_time() - began < 30
