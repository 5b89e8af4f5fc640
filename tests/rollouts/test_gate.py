"""The health gate's judgements, over a real shared-memory segment and real events."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from runtime.agents.context import HealthReporter
from runtime.rollouts.gate import (
    Gate,
    Gated,
    SegmentProbe,
    baseline,
    judge_event,
    judge_probe,
)
from shm import Counter, Gauge, Heartbeat, Segment

NAMES = frozenset({"a@1", "a@2"})


@pytest.fixture
def segment(tmp_path: Path) -> Iterator[Segment]:
    seg = Segment.create(tmp_path / "outpost.shm", 64)
    yield seg
    seg.close()


@pytest.mark.parametrize(("event", "reason"), [
    ({"type": "exit", "agent": "a@2", "failed": True, "summary": "raised KeyError: 'x'"},
     "a@2 raised KeyError: 'x'"),
    ({"type": "health", "agent": "a@1", "breach": "memory_max", "value": 9, "limit": 8},
     "a@1 breached memory_max: 9 (limit 8)"),
    ({"type": "degrade", "agent": "a@1", "reason": "rule flaky"}, "a@1 was degraded: rule flaky"),
    ({"type": "release-refused", "agent": "a@1", "reason": "tampered"},
     "a@1 not started: tampered"),
    ({"type": "exit", "agent": "a@1", "failed": False, "summary": "returned"}, None),
    ({"type": "exit", "agent": "a@1", "failed": True, "stopped": True}, None),
    ({"type": "exit", "agent": "b", "failed": True, "summary": "boom"}, None),  # not gated
    ({"type": "start", "agent": "a@1"}, None),
])
def test_which_events_fail_a_gate(event: dict, reason: str | None) -> None:
    assert judge_event(event, NAMES) == reason


def test_shared_memory_fails_a_gate_on_reports_bounds_and_late_heartbeats(
        segment: Segment) -> None:
    probe = SegmentProbe(segment)
    errors = Counter(segment, "a@1:errors")
    errors.add(5)  # the old version's errors: before the baseline, not counted
    report = HealthReporter(segment, "a@1")
    report(False, "the old version was unwell")
    gated = [Gated("a@1"), Gated("a@2", heartbeat_timeout_s=1.0)]
    Heartbeat(segment, "a@2:heartbeat").beat()
    base = baseline(probe, gated, ("errors", "below", 2.0), 100.0)
    assert judge_probe(probe, gated, ("errors", "below", 2.0), base, 100.5) is None
    errors.inc()
    assert judge_probe(probe, gated, ("errors", "below", 2.0), base, 100.5) is None
    errors.inc()
    assert judge_probe(probe, gated, ("errors", "below", 2.0), base, 100.5) == \
        "a@1 errors rose by 2 (must stay below 2)"
    report(True)
    assert judge_probe(probe, gated, None, base, 100.5) is None  # healthy news only
    report(False, "sensor reads garbage")
    assert judge_probe(probe, gated, None, base, 100.5) == \
        "a@1 reported unhealthy: sensor reads garbage"
    # A gauge is held by its value; "above" is judged only at the end.
    Gauge(segment, "a@2:rate").set(3.0)
    fresh = baseline(probe, gated, None, 200.0)
    fresh.reports["a@1"] = 10**6
    assert judge_probe(probe, gated, ("rate", "below", 2.5), fresh, 200.1) == \
        "a@2 rate is 3 (must stay below 2.5)"
    assert judge_probe(probe, gated, ("rate", "above", 5.0), fresh, 200.1) is None
    assert judge_probe(probe, gated, ("rate", "above", 5.0), fresh, 200.1, final=True) == \
        "a@2 rate is 3 (must be above 5)"
    # An agent with a heartbeat timeout that never beats: late once the timeout passed.
    silent = [Gated("a@3", heartbeat_timeout_s=1.0)]
    base = baseline(probe, silent, None, 300.0)
    assert judge_probe(probe, silent, None, base, 300.9) is None
    assert judge_probe(probe, silent, None, base, 301.5) == \
        "a@3 heartbeat late: 1.50s (timeout 1s)"


async def test_a_gate_passes_when_nothing_happens_and_fails_on_the_first_crash(
        segment: Segment) -> None:
    _, receive = trio.open_memory_channel(10)

    async def running() -> dict:
        return {"a@1": ("running", 0)}
    gate = Gate(receive, SegmentProbe(segment), running, None)
    gate.before_switch(["a@1"])
    assert (await gate.run([Gated("a@1")], 0.2)).ok
    send2, receive2 = trio.open_memory_channel(10)
    gate = Gate(receive2, SegmentProbe(segment), running, None)
    async with trio.open_nursery() as nursery:
        async def crash() -> None:
            await trio.sleep(0.05)
            await send2.send({"type": "exit", "agent": "a@1", "failed": True,
                              "summary": "raised RuntimeError: 5 s in"})
        nursery.start_soon(crash)
        with trio.fail_after(5):
            verdict = await gate.run([Gated("a@1")], 3600)
    assert not verdict.ok and verdict.reason == "a@1 raised RuntimeError: 5 s in"


async def test_the_end_of_a_gate_checks_the_supervisors_view(segment: Segment) -> None:
    _, receive = trio.open_memory_channel(10)
    views = iter([{"a@1": ("running", 0)}, {"a@1": ("running", 1)}])

    async def running() -> dict:
        return next(views)
    verdict = await Gate(receive, SegmentProbe(segment), running, None).run([Gated("a@1")], 0.05)
    assert verdict.reason == "a@1 restarted during the gate"
