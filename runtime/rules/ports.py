"""What the rule engine needs from the rest of the runtime, and nothing more.

The engine never imports the supervisor or the Runtime: app.py hands it objects
with these shapes. In tests they are real event logs and segments and a plain
table of async handlers.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import trio

from runtime.control.dispatch import INTERNAL, Caller


class MethodsPort(Protocol):
    """The control methods, called in process (runtime.control.dispatch.Methods), as
    Caller("rule", <rule>) or Caller("job", <job>).

    The engine calls: agent.restart, agent.stop, agent.start, agent.degrade
    ({"agent", "reason"}), checkpoint, maintain ({"task"}), send ({"agent",
    "message"}) and runtime.escalate ({"severity", "reason", "rule", "trigger_seq",
    "exit_code"}). A refusal raises (MethodError); the engine counts it as a failed
    attempt.
    """

    async def call(self, method: str, params: Mapping[str, Any] | None = None,
                   *, caller: Caller = INTERNAL) -> Any: ...


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
