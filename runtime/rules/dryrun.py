"""`outpost rules test FILE`: which rules a sequence of events would fire, acting on none.

Each event goes through the same index and the same per-rule decisions (count
windows, cooldown, firing limit) as in the engine, on fresh state, with the
events' own timestamps as the clock. Pure code: the CLI runs it offline too.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from runtime.config.autonomy import RuleSpec
from runtime.rules.index import RuleIndex
from runtime.rules.state import FIRE, LIMIT_REACHED, RuleState


class EventFormatError(ValueError):
    """An event given to the dry run is not a map with a string `type`."""


def check_event(event: Any, where: str) -> dict[str, Any]:
    """`event` as a dict an index can match, or EventFormatError naming `where`."""
    if not isinstance(event, dict):
        raise EventFormatError(f"{where}: expected a map (an event), got "
                               f"{type(event).__name__}")
    if not isinstance(event.get("type"), str):
        raise EventFormatError(f"{where}.type: expected a string (the event type)")
    agent = event.get("agent")
    if agent is not None and not isinstance(agent, str):
        raise EventFormatError(f"{where}.agent: expected a string or null")
    ts = event.get("ts")
    if ts is not None and (isinstance(ts, bool) or not isinstance(ts, int | float)):
        raise EventFormatError(f"{where}.ts: expected a number (seconds since the epoch)")
    return event


def simulate(rules: Iterable[RuleSpec], agents: Iterable[str],
             events: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """For each event (checked with check_event first): the rules it matches and what
    each would do ("fire", "counting", "cooldown", "limited", ...); plus firings per rule.
    Events without `ts` are taken one second apart."""
    rules = list(rules)
    index = RuleIndex(rules, agents)
    states = {r.name: RuleState(r) for r in rules}
    out = []
    clock = 0.0
    for n, event in enumerate(events, 1):
        clock = float(event["ts"]) if event.get("ts") is not None else clock + 1.0
        decided = []
        for rule in index.matching(event):
            decision = states[rule.name].offer(clock)
            decided.append({"rule": rule.name, "decision":
                            "limited" if decision == LIMIT_REACHED else decision,
                            **({"action": rule.spec.do.text()} if decision == FIRE else {})})
        out.append({"seq": event.get("seq", n), "type": event["type"],
                    "agent": event.get("agent"), "rules": decided})
    return {"events": out, "fired": {name: s.fired for name, s in states.items() if s.fired}}
