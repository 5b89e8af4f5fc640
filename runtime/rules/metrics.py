"""Metric thresholds: shared-memory slots watched for `on = "metric"` rules.

No agent code is involved: the watch reads the segment (read-only use) the way
`outpost top` does. When a rule's threshold has held for its whole `for` window, a
`metric` event is emitted (agent = the metric's owner, rule = the rule's name), and
the window starts again: a breach that persists fires once per `for` window, and
the rule's cooldown and firing limit apply on top like for any other event.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from runtime.config.autonomy import METRIC_EVENT, RuleSpec
from shm import Segment, SegmentError
from shm.metrics import slot_value
from shm.segment import COUNTER, GAUGE, HEARTBEAT

_NUMERIC = (COUNTER, GAUGE, HEARTBEAT)


class SegmentMetrics:
    """MetricsPort over a Segment: a slot's value as a number (a heartbeat: its age)."""

    def __init__(self, segment: Segment) -> None:
        self.segment = segment

    def read(self, slot: str) -> float | None:
        try:
            found = self.segment.find(slot)
            if found is None or found[1] not in _NUMERIC:
                return None
            value = slot_value(self.segment, found[0], found[1])
        except SegmentError:
            return None
        return None if value is None else float(value)


def breached(rule: RuleSpec, value: float | None) -> bool:
    """Whether `value` is past the rule's threshold (above it, or below it)."""
    if value is None or math.isnan(value):
        return False
    return (rule.above is not None and value > rule.above) or \
        (rule.below is not None and value < rule.below)


def sample_interval(rules: list[RuleSpec]) -> float:
    """How often to read the slots: a tenth of the shortest `for`, within 0.1..1 s."""
    return min((min(1.0, max(0.1, r.for_ / 10)) for r in rules), default=1.0)


@dataclass
class Watch:
    """One metric rule's threshold: since when it has held (None: it does not)."""

    rule: RuleSpec
    since: float | None = None
    last_value: float | None = None

    def sample(self, value: float | None, now: float,
               emit: Callable[..., None]) -> bool:
        """Take one reading at `now`; emit a metric event once the breach has lasted
        `for`. True if it emitted."""
        self.last_value = value
        if not breached(self.rule, value):
            self.since = None
            return False
        if self.since is None:
            self.since = now
        if now - self.since < self.rule.for_:
            return False
        rule = self.rule
        fields: dict[str, Any] = {"rule": rule.name, "metric": rule.metric, "value": value,
                                  "for_s": rule.for_}
        if rule.above is not None:
            fields["above"] = rule.above
        if rule.below is not None:
            fields["below"] = rule.below
        assert rule.metric is not None
        emit(METRIC_EVENT, rule.metric.split(":", 1)[0], **fields)
        self.since = now  # the next one needs another whole window
        return True
