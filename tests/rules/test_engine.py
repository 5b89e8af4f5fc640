"""The rule engine in process: a real event log on a real store, the control methods as a
table of async handlers, trio's autojump clock where windows and backoff matter."""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from runtime.control.dispatch import Caller
from runtime.control.errors import MethodError
from runtime.events import EventLog
from runtime.rules.engine import RuleEngine
from tests.rules.helpers import (
    HandlerTable,
    config_from,
    event_log,
    settle,
    wait_for_event,
)


@dataclass
class Rig:
    engine: RuleEngine
    events: EventLog
    table: HandlerTable
    follower: trio.MemoryReceiveChannel  # subscribed before the engine started


@contextlib.asynccontextmanager
async def engine_on(tmp_path: Path, toml: str, handlers: dict | None = None,
                    agents: tuple[str, ...] = ("a", "b"), **ports: Any) -> AsyncIterator[Rig]:
    config = config_from(tmp_path, toml, agents)
    async with event_log(tmp_path / "data") as (_, events):
        table = HandlerTable(handlers)
        engine = RuleEngine(config.autonomy, agents, events=events, methods=table, **ports)
        follower = events.follow()
        async with trio.open_nursery() as nursery:
            await nursery.start(engine.run)
            yield Rig(engine, events, table, follower)
            nursery.cancel_scope.cancel()


async def ok(params: dict) -> dict:
    return {"ok": True}


CRASH_LOOP = """
[[rules]]
name = "crash-loop"
on = "exit"
agent = "a"
where = { failed = true }
count = 3
within = "1m"
do = "degrade"
"""


async def test_a_crash_loop_degrades_after_exactly_three_failed_exits(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    async with engine_on(tmp_path, CRASH_LOOP, {"agent.degrade": ok}) as rig:
        rig.events.emit("exit", "a", failed=True)
        rig.events.emit("exit", "a", failed=False)  # a clean exit does not count
        rig.events.emit("exit", "b", failed=True)  # another agent does not count
        rig.events.emit("exit", "a", failed=True)
        await settle(rig.events, rig.follower)
        assert rig.table.of("agent.degrade") == []
        rig.events.emit("exit", "a", failed=True)
        fired = (await wait_for_event(rig.follower, "rule_fired", timeout=None))[0]
        done = (await wait_for_event(rig.follower, "action_ok", timeout=None))[0]
        third = rig.events.query(type="exit", agent="a")[-1]
        assert [e["type"] for e in rig.events.query(type="rule_fired")] == ["rule_fired"]
    assert fired["trigger_seq"] == third["seq"] == done["trigger_seq"]
    assert fired["rule"] == "crash-loop" and fired["action"] == "degrade"
    assert fired["agent"] == "a"
    assert rig.table.of("agent.degrade") == [{"agent": "a", "reason":
                                          f"rule crash-loop (event {third['seq']})"}]
    assert rig.table.calls[0][2] == Caller("rule", "crash-loop")
    row = rig.engine.status()[0]
    assert row["firings"] == 1 and row["last_outcome"]["result"] == "ok"


async def test_the_count_window_slides(tmp_path: Path,
                                       autojump_clock: trio.testing.MockClock) -> None:
    async with engine_on(tmp_path, CRASH_LOOP, {"agent.degrade": ok}) as rig:
        for _ in range(2):
            rig.events.emit("exit", "a", failed=True)
        await settle(rig.events, rig.follower)
        await trio.sleep(61)  # the first two fall out of the minute
        rig.events.emit("exit", "a", failed=True)
        await settle(rig.events, rig.follower)
        assert rig.engine.state("crash-loop").fired == 0
        for _ in range(2):
            rig.events.emit("exit", "a", failed=True)
        await wait_for_event(rig.follower, "action_ok", timeout=None)
        assert rig.engine.state("crash-loop").fired == 1


COOLDOWN = """
[[rules]]
name = "kick"
on = ["health", "exit"]
agent = "*"
cooldown = "10s"
max_firings = 2
max_firings_window = "1h"
do = "restart"
"""


async def test_cooldown_and_firing_limit(tmp_path: Path,
                                         autojump_clock: trio.testing.MockClock) -> None:
    async with engine_on(tmp_path, COOLDOWN, {"agent.restart": ok}) as rig:
        rig.events.emit("health", "a")
        await wait_for_event(rig.follower, "action_ok", timeout=None)
        await trio.sleep(5)
        rig.events.emit("exit", "b")  # within the cooldown
        await settle(rig.events, rig.follower)
        await trio.sleep(6)
        rig.events.emit("exit", "b")
        await wait_for_event(rig.follower, "action_ok", timeout=None)
        for _ in range(3):
            await trio.sleep(11)
            rig.events.emit("health", "a")  # past the cooldown, but the limit is 2 an hour
        await settle(rig.events, rig.follower)
        limited = rig.events.query(type="rule_limited")  # once, not per suppressed event
    state = rig.engine.state("kick")
    assert [p["agent"] for p in rig.table.of("agent.restart")] == ["a", "b"]  # the event's agent
    assert state.fired == 2
    assert state.suppressed == {"cooldown": 1, "limited": 3}
    assert len(limited) == 1 and limited[0]["max_firings"] == 2


FLAKY_ACTION = """
[[rules]]
name = "poke"
on = "health"
agent = "a"
do = "restart"
retries = 2
backoff = "1s"
backoff_max = "1.5s"
timeout = "5s"
suspend_after = 2
"""


async def test_failed_actions_retry_with_capped_backoff_then_suspend(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    attempts: list[float] = []

    async def refuse(params: dict) -> None:
        attempts.append(trio.current_time())
        raise MethodError("failed", "agent is busy")

    async with engine_on(tmp_path, FLAKY_ACTION, {"agent.restart": refuse}) as rig:
        rig.events.emit("health", "a")
        failed = await wait_for_event(rig.follower, "action_failed", 3, timeout=None)
        assert [f["attempt"] for f in failed] == [1, 2, 3]
        assert [f["final"] for f in failed] == [False, False, True]
        assert failed[0]["error"] == "failed: agent is busy"
        gaps = [round(b - a, 3) for a, b in itertools.pairwise(attempts)]
        assert gaps[0] >= 1.0 and gaps[1] >= 1.5  # 1 s, then 2 s capped at 1.5 s
        assert gaps[1] < 2.0
        assert rig.engine.state("poke").suspended is None  # one failed firing so far
        rig.events.emit("health", "a")
        suspended = await wait_for_event(rig.follower, "rule_suspended", timeout=None)
        assert "failed 2 firing(s) in a row" in suspended[0]["reason"]
        rig.events.emit("health", "a")  # suspended: no action, no attempt
        await settle(rig.events, rig.follower)
        assert len(attempts) == 6
        state = rig.engine.state("poke")
        assert state.suppressed["suspended"] == 1
        assert state.resume() is True
        rig.events.emit("health", "a")
        await wait_for_event(rig.follower, "action_failed", 3, timeout=None)
        assert len(attempts) == 9


async def test_an_action_that_hangs_times_out(tmp_path: Path,
                                              autojump_clock: trio.testing.MockClock) -> None:
    async def hang(params: dict) -> None:
        await trio.sleep_forever()

    toml = FLAKY_ACTION.replace("retries = 2", "retries = 0")
    async with engine_on(tmp_path, toml, {"agent.restart": hang}) as rig:
        started = trio.current_time()
        rig.events.emit("health", "a")
        failed = await wait_for_event(rig.follower, "action_failed", timeout=None)
    assert failed[0]["error"] == "timed out after 5s"
    assert trio.current_time() - started >= 5


SEND_AND_RUN = """
[[rules]]
name = "tell"
on = "exit"
agent = "b"
do = "send a"
message = { cmd = "flush", n = 1 }

[[rules]]
name = "upload"
on = "exit"
agent = "b"
do = "run nightly"

[[rules]]
name = "tidy"
on = "disk-over-budget"
do = "maintain prune"

[[rules]]
name = "shout"
on = "gave_up"
do = "escalate"
severity = "critical"
escalate = "exit"

[actions]
exit_code = 71

[[jobs]]
name = "nightly"
every = "1d"
command = "true"
"""


class Jobs:
    def __init__(self) -> None:
        self.triggered: list[tuple[str, Any]] = []

    async def trigger(self, job: str, *, by: str) -> dict:
        self.triggered.append((job, by))
        return {"job": job, "run": 1}


async def test_send_run_maintain_and_escalate_go_through_their_ports(tmp_path: Path) -> None:
    async def maintain(params: dict) -> dict:
        return {"task": params["task"], "result": {"ok": False, "problems": ["disk full"]}}

    jobs = Jobs()
    handlers = {"send": ok, "maintain": maintain, "runtime.escalate": ok}
    toml = SEND_AND_RUN.replace("retries", "x")
    async with engine_on(tmp_path, toml, handlers, jobs=jobs) as rig:
        rig.events.emit("exit", "b")
        await wait_for_event(rig.follower, "action_ok", 2)
        rig.events.emit("disk-over-budget", None)
        failed = await wait_for_event(rig.follower, "action_failed", rule="tidy")
        rig.events.emit("gave_up", "a")
        await wait_for_event(rig.follower, "action_ok", rule="shout")
    assert rig.table.of("send") == [{"agent": "a", "message": {"cmd": "flush", "n": 1}}]
    assert jobs.triggered == [("nightly", "rule:upload")]
    assert failed[0]["error"] == "maintain prune: disk full"
    escalated = rig.table.of("runtime.escalate")[0]
    assert escalated["exit_code"] == 71 and escalated["severity"] == "critical"
    assert escalated["rule"] == "shout"


async def test_an_agent_action_needs_an_agent_on_the_event(tmp_path: Path) -> None:
    toml = '[[rules]]\nname = "r"\non = "tick"\nagent = "a*"\ndo = "stop"\nretries = 0\n'
    async with engine_on(tmp_path, toml, {"agent.stop": ok}, agents=("a1", "a2", "b")) as rig:
        rig.events.emit("tick", "b")  # not matched: b is not a*
        rig.events.emit("tick", "a2")
        await wait_for_event(rig.follower, "action_ok")
    assert rig.table.of("agent.stop") == [{"agent": "a2"}]


async def test_after_falling_behind_it_resubscribes_and_reports_the_gap(
        tmp_path: Path) -> None:
    toml = '[[rules]]\nname = "r"\non = "late"\ndo = "checkpoint"\n'
    async with engine_on(tmp_path, toml, {"checkpoint": ok}) as rig:
        for i in range(2500):  # one batch: more than a follower's buffer at once
            rig.events.emit("tick", None, i=i)
        await trio.testing.wait_all_tasks_blocked()  # the batch is with the writer
        await rig.events.store.flush()
        await trio.testing.wait_all_tasks_blocked()  # published: both followers dropped
        watch = rig.events.follow()
        rig.events.emit("late", None)
        gap = (await wait_for_event(watch, "rules_gap"))[0]
        await wait_for_event(watch, "action_ok")
    # A waiting receiver takes one event beyond the buffer of 1000 straight away.
    assert gap["from_seq"] in (1001, 1002) and gap["to_seq"] == 2500
    assert rig.engine.gaps == 1
    assert rig.table.of("checkpoint") == [{}]  # still acting after the gap


async def test_reload_keeps_the_state_of_unchanged_rules(tmp_path: Path) -> None:
    two = CRASH_LOOP + COOLDOWN
    async with engine_on(tmp_path, two, {"agent.degrade": ok, "agent.restart": ok}) as rig:
        rig.events.emit("exit", "a", failed=True)
        await wait_for_event(rig.follower, "action_ok")  # kick fired once
        kept = rig.engine.state("crash-loop")
        assert len(kept.hits) == 1
        changed = config_from(tmp_path, CRASH_LOOP + COOLDOWN.replace('"10s"', '"20s"')
                              + '[[rules]]\nname = "new"\non = "x"\ndo = "checkpoint"\n')
        changes = rig.engine.reload(changed.autonomy, ["a", "b"])
        assert changes == {"added": ["new"], "changed": ["kick"], "removed": []}
        assert rig.engine.state("crash-loop") is kept
        assert rig.engine.state("kick").fired == 0
        changes = rig.engine.reload(config_from(tmp_path, COOLDOWN).autonomy, ["a", "b"])
        assert changes["removed"] == ["crash-loop", "new"]
