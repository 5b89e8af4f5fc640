"""The rules room's control methods: `rules`, `rules.test`, `rules.resume`.

app.py adds this table to the runtime's Methods. Params are checked strictly: an
unknown or mistyped one is `bad_params` naming the field.
"""

from __future__ import annotations

from typing import Any

from runtime.control import MethodError
from runtime.rules.dryrun import EventFormatError, check_event, simulate
from runtime.rules.engine import RuleEngine
from runtime.rules.ports import Handler

TEST_MAX_EVENTS = 10_000


def check_params(params: dict[str, Any], method: str, allowed: set[str]) -> None:
    """bad_params for a key `method` does not take."""
    for key in params:
        if key not in allowed:
            raise MethodError("bad_params", f"params.{key}: not a parameter of {method} "
                              f"(expected: {', '.join(sorted(allowed)) or 'none'})")


def name_param(params: dict[str, Any], key: str) -> str:
    value = params.get(key)
    if not isinstance(value, str) or not value:
        raise MethodError("bad_params", f"params.{key} must be a non-empty string")
    return value


def rules_methods(engine: RuleEngine) -> dict[str, Handler]:
    """The handlers app.py adds to the runtime's Methods."""

    async def rules(params: dict[str, Any]) -> dict:
        """Every rule: firings, last outcome, suspended or not."""
        check_params(params, "rules", set())
        return {"rules": engine.status(), "events_handled": engine.handled,
                "gaps": engine.gaps}

    async def rules_test(params: dict[str, Any]) -> dict:
        """Which rules these events would fire (params.events: a list of events), on fresh
        state and acting on nothing."""
        check_params(params, "rules.test", {"events"})
        events = params.get("events")
        if not isinstance(events, list) or len(events) > TEST_MAX_EVENTS:
            raise MethodError("bad_params", f"params.events must be a list of at most "
                              f"{TEST_MAX_EVENTS} events")
        try:
            checked = [check_event(e, f"params.events[{i}]") for i, e in enumerate(events)]
        except EventFormatError as exc:
            raise MethodError("bad_params", str(exc)) from None
        return simulate(engine.rules, engine.agents, checked)

    async def rules_resume(params: dict[str, Any]) -> dict:
        """Lift a rule's suspension (params.rule)."""
        check_params(params, "rules.resume", {"rule"})
        name = name_param(params, "rule")
        state = engine.state(name)
        if state is None:
            raise MethodError("not_found", f"no rule named {name!r}")
        return {"rule": name, "was_suspended": state.resume()}

    return {"rules": rules, "rules.test": rules_test, "rules.resume": rules_resume}
