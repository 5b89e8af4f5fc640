"""The rules room's control methods: `rules`, `rules.test`, `rules.resume`.

app.py adds this table to the runtime's Methods. Each handler declares its params
(runtime.control.params), so a bad one is answered bad_params naming the field
before the handler runs.
"""

from __future__ import annotations

from typing import Any

from runtime.control.dispatch import Handler
from runtime.control.errors import MethodError
from runtime.control.params import Str, Value, accepts
from runtime.rules.dryrun import EventFormatError, check_event, simulate
from runtime.rules.engine import RuleEngine

TEST_MAX_EVENTS = 10_000


def rules_methods(engine: RuleEngine) -> dict[str, Handler]:
    """The handlers app.py adds to the runtime's Methods."""

    @accepts()
    async def rules(params: dict[str, Any]) -> dict:
        """Every rule: firings, last outcome, suspended or not."""
        return {"rules": engine.status(), "events_handled": engine.handled,
                "gaps": engine.gaps}

    @accepts(Value("events", required=True,
                   doc=f"a list of at most {TEST_MAX_EVENTS} events, each a map with a type"))
    async def rules_test(params: dict[str, Any]) -> dict:
        """Which rules these events would fire (params.events), on fresh state, acting on
        nothing."""
        events = params["events"]
        if not isinstance(events, list) or len(events) > TEST_MAX_EVENTS:
            raise MethodError("bad_params", f"params.events must be a list of at most "
                              f"{TEST_MAX_EVENTS} events")
        try:
            checked = [check_event(e, f"params.events[{i}]") for i, e in enumerate(events)]
        except EventFormatError as exc:
            raise MethodError("bad_params", str(exc)) from None
        return simulate(engine.rules, engine.agents, checked)

    @accepts(Str("rule", required=True, doc="a rule's name"))
    async def rules_resume(params: dict[str, Any]) -> dict:
        """Lift a rule's suspension (params.rule)."""
        name = params["rule"]
        state = engine.state(name)
        if state is None:
            raise MethodError("not_found", f"no rule named {name!r}")
        return {"rule": name, "was_suspended": state.resume()}

    return {"rules": rules, "rules.test": rules_test, "rules.resume": rules_resume}
