"""Which rules an event matches: an index by event type and agent, built once per load.

Globs in a rule's `agent` are expanded against the config's agents when the index
is built (at load and at reload), so dispatching an event is one dict lookup plus
the field conditions of the few rules found, however many rules there are.
`LinearRules` is the same decision by scanning every rule: the reference the index
is tested and benchmarked against. Pure code (no trio): the CLI uses it offline
for `outpost rules test`.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from runtime.config.autonomy import METRIC_EVENT, Condition, RuleSpec, matching_names

Check = Callable[[dict[str, Any]], bool]
_MISSING = object()


@dataclass(frozen=True)
class CompiledRule:
    """A rule with every condition it puts on an event, as one predicate (`check`; None:
    no conditions)."""

    spec: RuleSpec
    conditions: tuple[Condition, ...]
    check: Check | None

    @property
    def name(self) -> str:
        return self.spec.name

    def holds(self, event: dict[str, Any]) -> bool:
        return self.check is None or self.check(event)


def _predicate(condition: Condition) -> Check:
    # Equality is most conditions: a closure instead of the general Condition.holds.
    name, want = condition.field, condition.value
    if condition.op == "eq" and isinstance(want, bool):
        return lambda event: event.get(name, _MISSING) is want
    if condition.op == "eq":
        def equal(event: dict[str, Any]) -> bool:
            got = event.get(name, _MISSING)
            return got == want and type(got) is not bool
        return equal
    return condition.holds


def compile_rule(rule: RuleSpec) -> CompiledRule:
    """A metric rule only matches the `metric` events its own watch emits."""
    implicit = (Condition("rule", "eq", rule.name),) if rule.is_metric else ()
    conditions = implicit + rule.where
    checks = [_predicate(c) for c in conditions]
    if not checks:
        return CompiledRule(rule, conditions, None)
    if len(checks) == 1:
        return CompiledRule(rule, conditions, checks[0])

    def every(event: dict[str, Any]) -> bool:
        return all(check(event) for check in checks)
    return CompiledRule(rule, conditions, every)


def rule_agents(rule: RuleSpec) -> str | None:
    """The agent filter of a rule: its `agent`, or a metric's owner."""
    if rule.is_metric and rule.metric is not None:
        return rule.metric.split(":", 1)[0]
    return rule.agent


class RuleIndex:
    """Rules by (event type, agent): `matching(event)` costs a lookup, not a scan."""

    def __init__(self, rules: Iterable[RuleSpec], agents: Iterable[str]) -> None:
        names = list(agents)
        self.rules = tuple(compile_rule(r) for r in rules)
        any_agent: dict[str, list[tuple[int, CompiledRule]]] = {}
        per_agent: dict[tuple[str, str], list[tuple[int, CompiledRule]]] = {}
        for order, rule in enumerate(self.rules):
            pattern = rule_agents(rule.spec)
            for type_ in rule.spec.on:
                if pattern is None:
                    any_agent.setdefault(type_, []).append((order, rule))
                else:
                    for agent in matching_names(pattern, names):
                        per_agent.setdefault((type_, agent), []).append((order, rule))
        # Each (type, agent) list also holds the type's any-agent rules, in config order.
        self._any = {t: tuple(r for _, r in found) for t, found in any_agent.items()}
        self._exact = {
            (t, a): tuple(r for _, r in sorted(found + any_agent.get(t, []),
                                               key=lambda item: item[0]))
            for (t, a), found in per_agent.items()}

    def candidates(self, type_: str, agent: str | None) -> tuple[CompiledRule, ...]:
        """Rules whose `on` and `agent` fit, before their field conditions."""
        found = self._exact.get((type_, agent))
        return self._any.get(type_, ()) if found is None else found

    def matching(self, event: dict[str, Any]) -> list[CompiledRule]:
        """The rules `event` matches, in config order."""
        found = self._exact.get((event.get("type"), event.get("agent")))
        if found is None:
            found = self._any.get(event.get("type"))  # type: ignore[arg-type]
            if not found:
                return []
        return [r for r in found if r.check is None or r.check(event)]

    def metric_rules(self) -> list[RuleSpec]:
        return [r.spec for r in self.rules if r.spec.is_metric]


class LinearRules:
    """The same answers as RuleIndex by checking every rule in turn (no index)."""

    def __init__(self, rules: Sequence[RuleSpec], agents: Iterable[str]) -> None:
        self.rules = tuple(compile_rule(r) for r in rules)
        self._agents = frozenset(agents)  # globs stand for configured agents only

    def matching(self, event: dict[str, Any]) -> list[CompiledRule]:
        out = []
        for rule in self.rules:
            if event.get("type") not in rule.spec.on:
                continue
            pattern = rule_agents(rule.spec)
            if pattern is not None:
                agent = event.get("agent")
                if agent not in self._agents or not fnmatch.fnmatchcase(agent, pattern):
                    continue
            if rule.holds(event):
                out.append(rule)
        return out


__all__ = ["METRIC_EVENT", "CompiledRule", "LinearRules", "RuleIndex", "compile_rule"]
