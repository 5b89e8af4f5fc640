"""The restart policy as a state machine: records in, a decision and records out.

No trio, no tree: a fake clock and the records the supervisor would carry.
"""

from __future__ import annotations

import ast
import random
from collections import deque
from pathlib import Path

import pytest

from runtime.config import AgentSpec
from runtime.config.schema import GroupSpec
from runtime.supervisor import policy
from runtime.supervisor.policy import (
    Escalate,
    Exit,
    Fail,
    Restart,
    RestartRecord,
    Siblings,
    Stop,
    Window,
    affected,
    decide,
)

CRASH = Exit(True, "raised RuntimeError: boom")
RETURNED = Exit(False, "returned")
STOPPED = Exit(False, "stopped", stopped=True)


def agent(**kw) -> AgentSpec:
    return AgentSpec(name=kw.pop("name", "a"), entry="m:f", **kw)


def group(**kw) -> GroupSpec:
    return GroupSpec(kw.pop("name", "g"), **kw)


class Sim:
    """One group and its agents, their records carried across decisions, on a fake clock."""

    def __init__(self, rules: GroupSpec, *specs: AgentSpec, rng: random.Random | None = None):
        self.rules = rules
        self.specs = {s.name: s for s in specs}
        self.records = {s.name: RestartRecord() for s in specs}
        self.group = RestartRecord()
        self.now = 1000.0  # any origin: only differences count
        self.rng = rng

    def start(self, name: str) -> None:
        self.records[name] = self.records[name].started(self.now)

    def advance(self, seconds: float) -> None:
        self.now += seconds

    def exit(self, name: str, exit: Exit = CRASH, *, up: float = 0.0,
             stopping: bool = False) -> policy.Decision:
        """`name` starts, stays up `up` seconds, then exits with `exit`."""
        self.start(name)
        self.advance(up)
        decision, self.records[name], self.group = decide(
            self.records[name], self.specs[name], self.group, self.rules, len(self.specs), exit,
            self.now, stopping=stopping, rng=self.rng)
        return decision


@pytest.mark.parametrize("restart, exit, restarted", [
    ("permanent", CRASH, True), ("permanent", RETURNED, True),
    ("transient", CRASH, True), ("transient", RETURNED, False),
    ("temporary", CRASH, False), ("temporary", RETURNED, False),
])
def test_restart_types(restart: str, exit: Exit, restarted: bool) -> None:
    sim = Sim(group(), agent(restart=restart))
    decision = sim.exit("a", exit)
    if restarted:
        assert decision == Restart(0.0, Siblings.NONE)
        assert sim.records["a"].restarts == 1 and len(sim.group.window) == 1
    else:
        assert decision == Stop(f"{restart} agent exited, not restarted")
        assert sim.records["a"] == RestartRecord() and sim.group == RestartRecord()


@pytest.mark.parametrize("exit, stopping", [(STOPPED, False), (CRASH, True), (RETURNED, True)])
def test_a_stop_on_purpose_is_never_undone_and_counts_nothing(exit: Exit, stopping: bool) -> None:
    sim = Sim(group(max_restarts=0), agent(max_restarts=0))
    assert sim.exit("a", exit, up=3, stopping=stopping) == Stop(None)
    assert sim.records["a"] == RestartRecord()  # started_at cleared, nothing counted
    assert sim.group == RestartRecord()


def test_error_budget_fails_the_agent_and_its_window_slides() -> None:
    sim = Sim(group(), agent(max_restarts=2, restart_window_s=10))
    assert isinstance(sim.exit("a", up=1), Restart)
    assert isinstance(sim.exit("a", up=1), Restart)
    sim.advance(8.5)  # the first restart (t=1) is now more than 10 s old
    assert isinstance(sim.exit("a", up=1), Restart)
    assert list(sim.records["a"].window) == [1002.0, 1011.5]
    assert sim.exit("a", up=0.5) == Fail(3, 10)
    # The budget is the agent's: its group counted only the restarts it made.
    assert sim.records["a"].restarts == 3 and len(sim.group.window) == 3


def test_fresh_record_clears_budget_and_backoff_but_keeps_the_count() -> None:
    sim = Sim(group(), agent(max_restarts=0, backoff_initial_s=1))
    assert isinstance(sim.exit("a"), Fail)
    sim.records["a"] = sim.records["a"].fresh()
    assert sim.records["a"] == RestartRecord(restarts=0)
    sim.specs["a"] = agent(max_restarts=1, backoff_initial_s=1)
    assert sim.exit("a") == Restart(1.0, Siblings.NONE)


def test_group_intensity_window_slides_on_the_fake_clock() -> None:
    sim = Sim(group(max_restarts=2, restart_window_s=5), agent(name="a"), agent(name="b"))
    assert isinstance(sim.exit("a", up=1), Restart)
    assert isinstance(sim.exit("b", up=1), Restart)
    sim.advance(4)  # a's restart at t=1 leaves the 5 s window before the next one
    assert isinstance(sim.exit("a", up=0.5), Restart)
    assert [t - 1000 for t in sim.group.window] == [2.0, 6.5]
    decision = sim.exit("b", up=0.5)  # 2, 6.5, 7: exactly 5 s old still counts
    assert decision == Escalate(3, 2, 5)
    assert decision.reason("b", CRASH.summary) == \
        "more than 2 restarts within 5s (last: b: raised RuntimeError: boom)"
    # The trigger's failure was counted, its restart was not made.
    assert sim.records["b"].restarts == 1 and sim.records["b"].consecutive == 2


def test_restarts_spaced_wider_than_the_window_never_escalate() -> None:
    sim = Sim(group(max_restarts=1, restart_window_s=30), agent(max_restarts=1,
                                                                restart_window_s=30))
    for _ in range(50):
        assert isinstance(sim.exit("a", up=31), Restart)
    assert len(sim.group.window) == 1 and len(sim.records["a"].window) == 1


def test_backoff_grows_is_capped_and_resets_after_a_stable_run() -> None:
    spec = agent(backoff_initial_s=0.1, backoff_multiplier=2, backoff_max_s=0.5,
                 backoff_reset_s=10, max_restarts=100)
    sim = Sim(group(), spec)
    delays = [sim.exit("a", up=1).delay for _ in range(6)]
    assert delays == pytest.approx([0.1, 0.2, 0.4, 0.5, 0.5, 0.5])
    assert sim.records["a"].consecutive == 6
    assert sim.exit("a", up=10).delay == pytest.approx(0.1)  # up backoff_reset_s: stable
    assert sim.exit("a", up=9.9).delay == pytest.approx(0.2)


def test_jitter_stays_within_its_fraction_and_under_the_cap() -> None:
    spec = agent(backoff_initial_s=0.1, backoff_multiplier=2, backoff_max_s=0.5,
                 backoff_jitter=0.25, max_restarts=10**6)
    sim = Sim(group(max_restarts=10**6), spec, rng=random.Random(7))
    for n in range(1, 200):
        nominal = min(0.5, 0.1 * 2 ** (n - 1))
        delay = sim.exit("a").delay
        assert nominal * 0.75 - 1e-12 <= delay <= min(0.5, nominal * 1.25) + 1e-12


def test_a_seeded_rng_makes_decisions_repeatable() -> None:
    spec = agent(backoff_initial_s=1, backoff_jitter=0.5)
    record = RestartRecord(3, 2, Window([1.0]), 5.0)
    one = decide(record, spec, RestartRecord(), group(), 1, CRASH, 6.0, rng=random.Random(1))
    two = decide(record, spec, RestartRecord(), group(), 1, CRASH, 6.0, rng=random.Random(1))
    assert one == two and one[0].delay != 1.0


@pytest.mark.parametrize("strategy, size, siblings", [
    ("one_for_one", 3, Siblings.NONE), ("one_for_all", 3, Siblings.ALL),
    ("rest_for_one", 3, Siblings.LATER), ("one_for_all", 1, Siblings.NONE),
    ("rest_for_one", 1, Siblings.NONE),
])
def test_strategies_choose_the_siblings(strategy: str, size: int, siblings: Siblings) -> None:
    decision, _, _ = decide(RestartRecord(), agent(), RestartRecord(), group(strategy=strategy),
                            size, CRASH, 0.0)
    assert decision == Restart(0.0, siblings)


def test_affected_positions() -> None:
    assert list(affected(Siblings.NONE, 1, 4)) == [1]
    assert list(affected(Siblings.ALL, 1, 4)) == [0, 1, 2, 3]
    assert list(affected(Siblings.LATER, 1, 4)) == [1, 2, 3]
    assert list(affected(Siblings.LATER, 3, 4)) == [3]


def test_a_group_node_restarts_at_once_without_a_budget_of_its_own() -> None:
    own = RestartRecord(window=Window([1.0, 2.0]))  # its children's restarts: untouched
    decision, record, parent = decide(own.started(3.0), None, RestartRecord(),
                                      group(max_restarts=5), 2, Exit(True, "gave up"), 4.0)
    assert decision == Restart(0.0, Siblings.NONE)
    assert record == RestartRecord(1, 1, Window([1.0, 2.0]))
    assert list(parent.window) == [4.0]


def test_escalation_by_a_group_node_goes_up_a_level() -> None:
    parent = RestartRecord(window=Window([9.0]))
    decision, _, parent = decide(RestartRecord(), None, parent, group(max_restarts=1,
                                 restart_window_s=5), 2, Exit(True, "gave up"), 10.0)
    assert decision == Escalate(2, 1, 5) and len(parent.window) == 2


def test_decide_changes_none_of_its_inputs() -> None:
    record = RestartRecord(2, 1, Window([1.0, 2.0]), 3.0)
    group_record = RestartRecord(0, 0, Window([2.0]), 0.0)
    before = (record, group_record, list(record.window), list(group_record.window))
    first = decide(record, agent(), group_record, group(), 2, CRASH, 4.0)
    second = decide(record, agent(), group_record, group(), 2, CRASH, 5.0)  # a branch
    assert (record, group_record, list(record.window), list(group_record.window)) == before
    assert list(first[1].window) == [1.0, 2.0, 4.0]
    assert list(second[1].window) == [1.0, 2.0, 5.0]
    assert list(first[2].window) == [2.0, 4.0]


def test_window_matches_a_deque_over_many_restarts_and_branches() -> None:
    rng = random.Random(3)
    window, reference, now = Window(), deque(), 0.0
    kept = []
    for i in range(5000):
        now += rng.random()
        window = window.add(now, 20.0)
        reference.append(now)
        while now - reference[0] > 20.0:
            reference.popleft()
        assert len(window) == len(reference)
        if i % 500 == 0:
            kept.append((window, list(reference)))
            window.add(now + 1, 20.0)  # a branch nobody keeps must not disturb the line
    assert list(window) == list(reference)
    for old, expected in kept:  # every old value is as it was
        assert list(old) == expected


def test_the_policy_imports_no_trio_and_no_io() -> None:
    tree = ast.parse(Path(policy.__file__).read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert imported <= {"__future__", "enum", "random", "collections.abc", "dataclasses",
                        "typing", "runtime.config.schema"}, imported
