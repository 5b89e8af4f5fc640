"""The health gate: a new version must stay healthy for the gate's duration.

What fails it, for any gated instance:

- a supervisor event (the event log's follow stream): a failed exit (a
  crash), a health breach (heartbeat, memory, CPU, max runtime), a `degrade`
  (e.g. by a rule), an error budget given up, a release refused at start;
- a heartbeat late (shared memory), if the agent has a heartbeat timeout;
- the agent's own report (`ctx.report_health(False, detail)`, shared memory);
- the agent's `gate_metric` bound (shared memory): "errors below 1" fails as
  soon as the counter `errors` rose by 1 during the gate (a gauge: as soon as
  its value is not below); "... above N" is judged at the gate's end;
- at the end, the supervisor's own view: every gated instance running, not
  restarted since the gate began (a backstop for an event the follower lost).

`judge_event` and `judge_probe` are pure; `Gate.run` is the thin trio loop.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import trio

from runtime.agents.context import HEALTH_METRIC, decode_health
from shm import Segment
from shm.metrics import heartbeat_age, slot_value
from shm.segment import COUNTER, GAUGE, HEARTBEAT, RECORD

log = logging.getLogger("outpost.rollouts")

POLL_S = 0.1  # shared-memory checks per second: ten (reads only, no syscalls)
FAILING = frozenset({"health", "degrade", "give-up", "release-refused"})


@dataclass(frozen=True)
class Gated:
    """One instance under the gate and what it is held to."""

    name: str
    heartbeat_timeout_s: float = 0.0


@dataclass(frozen=True)
class Verdict:
    ok: bool
    reason: str | None = None


class Probe(Protocol):
    """What the gate reads from shared memory (SegmentProbe reads a live segment)."""

    def heartbeat_age(self, agent: str) -> float | None: ...
    def number(self, slot: str) -> tuple[str, float] | None: ...  # ("counter"|"gauge", value)
    def health(self, agent: str) -> tuple[int, bool, str] | None: ...


class SegmentProbe:
    """Probe over the runtime's segment (read-only use)."""

    def __init__(self, segment: Segment) -> None:
        self.segment = segment

    def _find(self, name: str) -> tuple[int, int] | None:
        return self.segment.find(name)

    def heartbeat_age(self, agent: str) -> float | None:
        found = self._find(f"{agent}:heartbeat")
        if found is None or found[1] != HEARTBEAT:
            return None
        return heartbeat_age(self.segment.slot_words(found[0]))

    def number(self, slot: str) -> tuple[str, float] | None:
        found = self._find(slot)
        if found is None or found[1] not in (COUNTER, GAUGE):
            return None
        return ("counter" if found[1] == COUNTER else "gauge",
                float(slot_value(self.segment, *found)))

    def health(self, agent: str) -> tuple[int, bool, str] | None:
        found = self._find(f"{agent}:{HEALTH_METRIC}")
        if found is None or found[1] != RECORD:
            return None
        try:
            return decode_health(slot_value(self.segment, *found))
        except Exception as exc:  # a writer that died mid-write: not a verdict on health
            log.warning("health record of %s unreadable: %s", agent, exc)
            return None


def judge_event(event: dict[str, Any], names: frozenset[str]) -> str | None:
    """Why `event` fails the gate of instances `names`, or None."""
    agent = event.get("agent")
    if agent not in names:
        return None
    kind = event.get("type")
    if kind == "exit" and event.get("failed") and not event.get("stopped"):
        return f"{agent} {event.get('summary') or 'failed'}"
    if kind == "health":
        return f"{agent} breached {event.get('breach')}: {event.get('value')} " \
               f"(limit {event.get('limit')})"
    if kind == "degrade":
        return f"{agent} was degraded: {event.get('reason')}"
    if kind == "give-up":
        return f"{agent} gave up after {event.get('restarts')} restarts"
    if kind == "release-refused":
        return f"{agent} not started: {event.get('reason')}"
    return None


@dataclass
class Baseline:
    """What the gate compares with: health reports and counters when it began."""

    reports: dict[str, int]
    counters: dict[str, float]
    started: float


def judge_probe(probe: Probe, gated: Sequence[Gated], metric: tuple[str, str, float] | None,
                base: Baseline, now: float, final: bool = False) -> str | None:
    """Why shared memory fails the gate now, or None. `final`: the gate's last look
    (bounds that must be reached, "above", are judged only then)."""
    for g in gated:
        if g.heartbeat_timeout_s:
            age = probe.heartbeat_age(g.name)
            since = now - base.started
            late = since if age is None else min(age, since)
            if late > g.heartbeat_timeout_s:
                return (f"{g.name} heartbeat late: {late:.2f}s (timeout "
                        f"{g.heartbeat_timeout_s:g}s)")
        report = probe.health(g.name)
        if report is not None and report[0] > base.reports.get(g.name, 0) and not report[1]:
            return f"{g.name} reported unhealthy: {report[2] or 'no detail'}"
        if metric is not None:
            name, bound, limit = metric
            found = probe.number(f"{g.name}:{name}")
            if found is None:
                continue
            kind, value = found
            if kind == "counter":
                value -= base.counters.get(g.name, 0.0)
            if bound == "below" and not value < limit:
                rose = "rose by " if kind == "counter" else "is "
                return f"{g.name} {name} {rose}{value:g} (must stay below {limit:g})"
            if bound == "above" and final and not value > limit:
                grew = "grew by " if kind == "counter" else "is "
                return f"{g.name} {name} {grew}{value:g} (must be above {limit:g})"
    return None


def baseline(probe: Probe, gated: Sequence[Gated], metric: tuple[str, str, float] | None,
             now: float) -> Baseline:
    """The gate's starting point for `gated`."""
    reports = {}
    counters = {}
    for g in gated:
        report = probe.health(g.name)
        reports[g.name] = 0 if report is None else report[0]
        if metric is not None:
            found = probe.number(f"{g.name}:{metric[0]}")
            if found is not None and found[0] == "counter":
                counters[g.name] = found[1]
    return Baseline(reports, counters, now)


class Gate:
    """One step's gate: follow events from `events` (opened before the step switched),
    poll `probe`, and ask `running()` at the end ({name: (state, restarts)})."""

    def __init__(self, events: trio.MemoryReceiveChannel, probe: Probe,
                 running: Callable[[], Awaitable[dict[str, tuple[str, int]]]],
                 metric: tuple[str, str, float] | None) -> None:
        self.events = events
        self.probe = probe
        self.running = running
        self.metric = metric
        self._before: Baseline | None = None

    def before_switch(self, names: Sequence[str]) -> None:
        """Take the baseline before the new version starts: health reports and counter
        values from before do not count, what the new version adds does."""
        self._before = baseline(self.probe, [Gated(n) for n in names], self.metric, 0.0)

    async def run(self, gated: Sequence[Gated], duration: float) -> Verdict:
        """Hold `gated` to the gate for `duration` seconds (trio's clock)."""
        names = frozenset(g.name for g in gated)
        start = trio.current_time()
        base = baseline(self.probe, gated, self.metric, start)
        if self._before is not None:  # the instances switched this step: from before it
            base.reports.update(self._before.reports)
            base.counters.update(self._before.counters)
        before = await self.running()
        failed: list[str] = []
        async with trio.open_nursery() as nursery:
            def fail(reason: str) -> None:
                if not failed:
                    failed.append(reason)
                nursery.cancel_scope.cancel()

            async def follow() -> None:
                async for event in self.events:
                    reason = judge_event(event, names)
                    if reason is not None:
                        fail(reason)
                        return
                log.warning("the gate's event follower was dropped; the end-of-gate check "
                            "of the supervisor's view stays")

            async def poll() -> None:
                while True:
                    reason = judge_probe(self.probe, gated, self.metric, base,
                                         trio.current_time())
                    if reason is not None:
                        fail(reason)
                        return
                    await trio.sleep(POLL_S)

            nursery.start_soon(follow)
            nursery.start_soon(poll)
            with trio.move_on_at(start + duration if math.isfinite(duration) else math.inf):
                await trio.sleep_forever()
            nursery.cancel_scope.cancel()
        if failed:
            return Verdict(False, failed[0])
        reason = judge_probe(self.probe, gated, self.metric, base, trio.current_time(),
                             final=True)
        if reason is not None:
            return Verdict(False, reason)
        after = await self.running()
        for g in gated:
            state, restarts = after.get(g.name, ("gone", 0))
            if state != "running":
                return Verdict(False, f"{g.name} is {state} at the end of the gate")
            if restarts != before.get(g.name, (state, restarts))[1]:
                return Verdict(False, f"{g.name} restarted during the gate")
        return Verdict(True)
