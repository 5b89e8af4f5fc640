"""What the rule engine needs from the rest of the runtime, and nothing more.

The engine never imports the supervisor or the Runtime: app.py hands it objects
with these shapes. In tests they are real event logs and segments and a plain
table of async handlers.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

import trio


class MethodsPort(Protocol):
    """The control methods, called in process (runtime.control.dispatch.Methods).

    The engine calls: agent.restart, agent.stop, agent.start, agent.degrade
    ({"agent", "reason"}), checkpoint, maintain ({"task"}), send ({"agent",
    "message"}) and runtime.escalate ({"severity", "reason", "rule", "trigger_seq",
    "exit_code"}). A refusal raises (MethodError); the engine counts it as a failed
    attempt.
    """

    async def call(self, method: str, params: Mapping[str, Any] | None = None,
                   *, caller: Any = ...) -> Any: ...


class EventsPort(Protocol):
    """The event log (runtime.events.EventLog)."""

    def emit(self, type: str, agent: str | None = None, **fields: Any) -> None: ...

    def follow(self) -> trio.MemoryReceiveChannel: ...


class JobsPort(Protocol):
    """The scheduler (runtime.jobs.Scheduler), for `run JOB`."""

    async def trigger(self, job: str, *, by: str) -> dict[str, Any]:
        """Start a run of `job` now, honouring its concurrency (raise if refused); `by`
        is recorded with the run, e.g. "rule:nightly-upload"."""
        ...


class MetricsPort(Protocol):
    """Read-only values of shared-memory slots (runtime.rules.metrics.SegmentMetrics)."""

    def read(self, slot: str) -> float | None:
        """The slot's value as a number, or None if it does not exist (yet) or has none."""
        ...


CallerFactory = Callable[[str, str | None], Any]
"""Makes the `caller` of a method call: (kind, name) -> runtime.control.dispatch.Caller,
e.g. ("rule", "flaky-restarts")."""

Handler = Callable[[dict[str, Any]], Awaitable[Any]]
"""A control method handler: params in, plain data out."""
