"""What an agent gets: `ctx`, the same API for every agent kind."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import trio

from runtime.store import KeyValueState
from shm import Counter, Gauge, Heartbeat, Histogram, Record, Segment, SegmentError


def state_stream(agent: str) -> str:
    """The store stream holding an agent's durable state (the store knows no agents)."""
    return f"agent/{agent}/state"


class AgentMetrics:
    """An agent's metrics in shared memory, named '<agent>:<metric>' in the segment.

    Asking twice for one name returns the same object (no second directory
    scan), so `ctx.metrics.counter("x").inc()` in a loop stays cheap; hoisting
    the object out of the loop is cheaper still.
    """

    def __init__(self, segment: Segment, agent: str) -> None:
        self._segment = segment
        self._agent = agent
        self._made: dict[tuple[str, str], Any] = {}

    def _get(self, kind: str, name: str, make: Callable[[str], Any]) -> Any:
        key = (kind, name)
        found = self._made.get(key)
        if found is None:
            found = self._made[key] = make(f"{self._agent}:{name}")
        return found

    def counter(self, name: str) -> Counter:
        """A counter: inc() adds one, add(n) adds n."""
        return self._get("counter", name, lambda full: Counter(self._segment, full))

    def gauge(self, name: str) -> Gauge:
        """A gauge: set(v), add(v)."""
        return self._get("gauge", name, lambda full: Gauge(self._segment, full))

    def histogram(self, name: str, bounds: Sequence[float]) -> Histogram:
        """A histogram with fixed bucket bounds (the same bounds every time for one name)."""
        bounds = [float(b) for b in bounds]
        made = self._get("histogram", name,
                         lambda full: Histogram(self._segment, full, bounds))
        if made.bounds != bounds:
            raise SegmentError(f"histogram {name!r} exists with bounds {made.bounds}, "
                               f"not {bounds}")
        return made

    def record(self, name: str, size: int) -> Record:
        """A seqlocked record of `size` bytes (e.g. a status struct read by the CLI)."""
        made = self._get("record", name, lambda full: Record(self._segment, full, size))
        if made.size != size:
            raise SegmentError(f"record {name!r} holds {made.size} bytes, not {size}")
        return made


class AgentContext:
    """Everything an agent touches: durable state, heartbeat, metrics, log, readiness.

    `await ctx.state.set/delete/incr/merge(...)` returns only after the write is
    durable; `ctx.state.get(...)` reads the local materialised copy.
    """

    def __init__(self, name: str, state: KeyValueState, segment: Segment) -> None:
        self.name = name
        self.state = state
        self.metrics = AgentMetrics(segment, name)
        self.log = logging.getLogger(f"outpost.agent.{name}")
        self._heartbeat = Heartbeat(segment, f"{name}:heartbeat")
        self.is_ready = trio.Event()

    def heartbeat(self) -> None:
        """Tell the supervisor this agent is alive (one atomic store in shared memory)."""
        self._heartbeat.beat()

    def ready(self) -> None:
        """Signal readiness: agents that depend on this one may start."""
        self.is_ready.set()
