"""One rule's bookkeeping between events: its count window, cooldown, firing limit,
failures in a row and suspension. Pure code over an explicit `now` (seconds on any
clock that does not go back): the engine passes trio's clock, a dry run the events'
own timestamps.
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

from runtime.config.autonomy import RuleSpec

FIRE = "fire"
COUNTING = "counting"  # a match, but fewer than `count` within the window so far
LIMIT_REACHED = "limit_reached"  # suppressed by the firing limit, the first time in a row
SUPPRESSED = ("suspended", "busy", "cooldown", "limited")


@dataclass
class RuleState:
    """What one rule remembers. `offer(now)` decides what a matching event does."""

    rule: RuleSpec
    hits: deque = field(default_factory=deque)
    firings: deque = field(default_factory=deque)  # times of firings in the limit window
    last_fired: float | None = None
    fired: int = 0
    matched: int = 0
    suppressed: Counter = field(default_factory=Counter)
    failures_in_a_row: int = 0
    suspended: str | None = None
    running: bool = False
    last_outcome: dict[str, Any] | None = None
    last_fired_at: float | None = None  # wall-clock time of the last firing (for status)
    limited: bool = False  # the firing limit suppressed the last firing attempt

    def __post_init__(self) -> None:
        # Only whether `count` hits fall inside the window matters: keep `count`.
        self.hits = deque(self.hits, maxlen=self.rule.count)

    def offer(self, now: float) -> str:
        """Count one matching event at `now`: FIRE (the caller runs the action), COUNTING,
        or the reason it is suppressed (suspended, busy, cooldown, limited; LIMIT_REACHED
        the first time the firing limit holds it back)."""
        rule = self.rule
        self.matched += 1
        if self.suspended is not None:
            return self._suppress("suspended")
        if rule.count > 1:
            self.hits.append(now)
            if len(self.hits) < rule.count or self.hits[0] <= now - rule.within:
                return COUNTING
        if self.running:
            return self._suppress("busy")
        if self.last_fired is not None and now - self.last_fired < rule.cooldown:
            return self._suppress("cooldown")
        while self.firings and self.firings[0] <= now - rule.max_firings_window:
            self.firings.popleft()
        if len(self.firings) >= rule.max_firings:
            self._suppress("limited")
            first, self.limited = not self.limited, True
            return LIMIT_REACHED if first else "limited"
        self.limited = False
        self.hits.clear()
        self.last_fired = now
        self.firings.append(now)
        self.fired += 1
        return FIRE

    def _suppress(self, why: str) -> str:
        self.suppressed[why] += 1
        return why

    def succeeded(self, outcome: dict[str, Any]) -> None:
        self.failures_in_a_row = 0
        self.last_outcome = outcome

    def failed(self, outcome: dict[str, Any]) -> bool:
        """Record a firing whose action failed (after its retries); True if that
        suspends the rule."""
        self.last_outcome = outcome
        self.failures_in_a_row += 1
        if self.failures_in_a_row >= self.rule.suspend_after and self.suspended is None:
            self.suspended = (f"its action failed {self.failures_in_a_row} firing(s) in a "
                              f"row; last: {outcome.get('error')}")
            return True
        return False

    def resume(self) -> bool:
        """Lift a suspension (outpost rules resume NAME); True if it was suspended."""
        was = self.suspended is not None
        self.suspended = None
        self.failures_in_a_row = 0
        return was

    def row(self) -> dict[str, Any]:
        """Plain data for `outpost rules`."""
        return {"name": self.rule.name, "on": list(self.rule.on), "agent": self.rule.agent,
                "metric": self.rule.metric, "do": self.rule.do.text(), "firings": self.fired,
                "matched": self.matched, "last_fired": self.last_fired_at,
                "last_outcome": self.last_outcome, "suspended": self.suspended,
                "running": self.running, "suppressed": dict(self.suppressed)}
