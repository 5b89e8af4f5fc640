"""What an agent gets: `ctx`, the same API for every agent kind."""

from __future__ import annotations

import logging

import trio

from runtime.store import KeyValueState
from shm import Counter, Gauge, Heartbeat, Histogram, Segment


def state_stream(agent: str) -> str:
    """The store stream holding an agent's durable state (the store knows no agents)."""
    return f"agent/{agent}/state"


class AgentMetrics:
    """An agent's metrics in shared memory, named '<agent>:<metric>' in the segment."""

    def __init__(self, segment: Segment, agent: str) -> None:
        self._segment = segment
        self._agent = agent

    def counter(self, name: str) -> Counter:
        return Counter(self._segment, f"{self._agent}:{name}")

    def gauge(self, name: str) -> Gauge:
        return Gauge(self._segment, f"{self._agent}:{name}")

    def histogram(self, name: str, bounds: list[float]) -> Histogram:
        return Histogram(self._segment, f"{self._agent}:{name}", bounds)


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
