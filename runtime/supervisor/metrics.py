"""The supervisor's shared-memory metrics: counters and gauges by name, made on first use."""

from __future__ import annotations

import contextlib
from typing import Any


class Metrics:
    """Counters and gauges in the segment, cached by name; None without a segment.

    A metric that cannot be made (the segment is full, say) is None too: metrics
    never stop an agent.
    """

    def __init__(self, segment: Any) -> None:
        self.segment = segment
        self._made: dict[tuple[str, str], Any] = {}

    def counter(self, name: str) -> Any:
        """The shm Counter called `name`, or None."""
        return self._metric("Counter", name)

    def gauge(self, name: str) -> Any:
        """The shm Gauge called `name`, or None."""
        return self._metric("Gauge", name)

    def _metric(self, kind: str, name: str) -> Any:
        if self.segment is None:
            return None
        found = self._made.get((kind, name))
        if found is None:
            import shm
            with contextlib.suppress(Exception):
                found = self._made[kind, name] = getattr(shm, kind)(self.segment, name)
        return found
