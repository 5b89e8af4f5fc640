"""Dispatch by index against the linear scan, the dry run, and the rules' control methods."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from runtime.config.autonomy import Action, Condition, RuleSpec
from runtime.control.dispatch import Methods
from runtime.control.errors import MethodError
from runtime.rules.dryrun import simulate
from runtime.rules.engine import RuleEngine
from runtime.rules.index import LinearRules, RuleIndex
from runtime.rules.methods import rules_methods
from tests.rules.helpers import HandlerTable, config_from, event_log

AGENTS = [f"worker-{i}" for i in range(8)] + ["db", "web", "cam"]
TYPES = ["exit", "restart", "health", "start", "metric", "output"]


def _random_rule(rng: random.Random, n: int) -> RuleSpec:
    agent = rng.choice([None, "db", "worker-*", "w*-[12]", "web", "*"])
    where: tuple[Condition, ...] = ()
    if rng.random() < 0.5:
        where = (rng.choice([Condition("failed", "eq", True), Condition("code", "ne", 0),
                             Condition("code", "in", (1, 2)),
                             Condition("breach", "glob", "mem*")]),)
    on = tuple(rng.sample(TYPES, rng.randint(1, 2)))
    return RuleSpec(name=f"r{n}", on=on, do=Action("checkpoint"), agent=agent, where=where)


def _random_event(rng: random.Random, seq: int) -> dict:
    event = {"seq": seq, "ts": float(seq), "type": rng.choice([*TYPES, "other"]),
             "agent": rng.choice([*AGENTS, None, "stranger"])}
    if rng.random() < 0.5:
        event["failed"] = rng.choice([True, False, 1])
    if rng.random() < 0.5:
        event["code"] = rng.choice([0, 1, 2, 3, "x"])
    if rng.random() < 0.3:
        event["breach"] = rng.choice(["memory", "cpu"])
    return event


def test_the_index_matches_exactly_what_a_scan_of_every_rule_matches() -> None:
    rng = random.Random(16)
    rules = [_random_rule(rng, n) for n in range(300)]
    index, scan = RuleIndex(rules, AGENTS), LinearRules(rules, AGENTS)
    matched = 0
    for seq in range(5000):
        event = _random_event(rng, seq)
        got = [r.name for r in index.matching(event)]
        assert got == [r.name for r in scan.matching(event)], event
        matched += len(got)
    assert matched > 1000  # the comparison covered real matches


def test_globs_are_resolved_against_the_configured_agents_only() -> None:
    rules = [RuleSpec(name="w", on=("exit",), do=Action("restart"), agent="worker-*")]
    index = RuleIndex(rules, ["worker-1", "db"])
    assert [r.name for r in index.matching({"type": "exit", "agent": "worker-1"})] == ["w"]
    assert index.matching({"type": "exit", "agent": "worker-2"}) == []  # not configured
    assert index.matching({"type": "exit", "agent": "db"}) == []
    assert index.matching({"type": "start", "agent": "worker-1"}) == []


def test_conditions_do_not_confuse_booleans_with_numbers() -> None:
    rule = RuleSpec(name="f", on=("exit",), do=Action("checkpoint"),
                    where=(Condition("failed", "eq", True),))
    index = RuleIndex([rule], [])
    assert index.matching({"type": "exit", "failed": True})
    assert not index.matching({"type": "exit", "failed": 1})
    assert not index.matching({"type": "exit"})  # a missing field never matches eq


DRY = """
[[rules]]
name = "loop"
on = "exit"
agent = "a"
count = 2
within = "10s"
cooldown = "1m"
do = "degrade"

[[rules]]
name = "any"
on = "exit"
do = "checkpoint"
max_firings = 1
"""


def test_the_dry_run_says_what_each_event_would_do(tmp_path: Path) -> None:
    config = config_from(tmp_path, DRY)
    events = [{"type": "exit", "agent": "a", "ts": t} for t in (0, 5, 6, 30, 100, 105)]
    result = simulate(config.autonomy.rules, ["a", "b"], events)
    loop = [[d["decision"] for d in e["rules"] if d["rule"] == "loop"]
            for e in result["events"]]
    assert loop == [["counting"], ["fire"], ["counting"], ["counting"], ["counting"],
                    ["fire"]]
    assert [d["decision"] for e in result["events"] for d in e["rules"]
            if d["rule"] == "any"] == ["fire"] + ["limited"] * 5
    assert result["fired"] == {"loop": 2, "any": 1}
    fire = result["events"][1]["rules"][0]
    assert fire == {"rule": "loop", "decision": "fire", "action": "degrade"}


async def test_rules_methods_list_test_and_resume(tmp_path: Path) -> None:
    config = config_from(tmp_path, DRY)
    async with event_log(tmp_path / "data") as (_, events):
        engine = RuleEngine(config.autonomy, ["a", "b"], events=events,
                            methods=HandlerTable())
        methods = Methods()
        methods.add(rules_methods(engine))
        listed = await methods.call("rules")
        assert [r["name"] for r in listed["rules"]] == ["loop", "any"]
        assert listed["rules"][0] | {"last_outcome": None} == {
            "name": "loop", "on": ["exit"], "agent": "a", "metric": None, "do": "degrade",
            "firings": 0, "matched": 0, "last_fired": None, "last_outcome": None,
            "suspended": None, "running": False, "suppressed": {}}
        tested = await methods.call("rules.test", {"events": [{"type": "exit", "agent": "b"}]})
        assert tested["events"][0]["rules"] == [{"rule": "any", "decision": "fire",
                                                 "action": "checkpoint"}]
        assert engine.state("any").fired == 0  # a dry run touches no live state
        for params, field in [({"events": "x"}, "params.events"),
                              ({"events": [{"agent": "a"}]}, "params.events[0].type"),
                              ({"events": [{"type": "exit", "ts": "soon"}]},
                               "params.events[0].ts"),
                              ({"events": [], "bogus": 1}, "params.bogus")]:
            with pytest.raises(MethodError) as caught:
                await methods.call("rules.test", params)
            assert caught.value.code == "bad_params" and field in str(caught.value)
        engine.state("loop").suspended = "testing"
        assert await methods.call("rules.resume", {"rule": "loop"}) == {
            "rule": "loop", "was_suspended": True}
        with pytest.raises(MethodError) as caught:
            await methods.call("rules.resume", {"rule": "nope"})
        assert caught.value.code == "not_found"
        with pytest.raises(MethodError) as caught:
            await methods.call("rules.resume", {})
        assert caught.value.code == "bad_params" and "params.rule" in str(caught.value)
