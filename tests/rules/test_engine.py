"""The rule engine in process: a real event log on a real store, the control methods as a
table of async handlers, trio's autojump clock where windows and backoff matter."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import trio

from runtime.rules.engine import RuleEngine
from tests.rules.helpers import (
    HandlerTable,
    MethodError,
    caller,
    config_from,
    event_log,
    settle,
    wait_for_event,
)


@contextlib.asynccontextmanager
async def engine_on(tmp_path: Path, toml: str, handlers: dict | None = None,
                    agents: tuple[str, ...] = ("a", "b"), **ports: Any) \
        -> AsyncIterator[tuple[RuleEngine, Any, HandlerTable, trio.MemoryReceiveChannel]]:
    config = config_from(tmp_path, toml, agents)
    async with event_log(tmp_path / "data") as (store, events):
        table = HandlerTable(handlers)
        engine = RuleEngine(config.autonomy, agents, events=events, methods=table,
                            caller=caller, **ports)
        follower = events.follow()
        async with trio.open_nursery() as nursery:
            await nursery.start(engine.run)
            yield engine, events, table, follower
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
    async with engine_on(tmp_path, CRASH_LOOP, {"agent.degrade": ok}) as \
            (engine, events, table, follower):
        events.emit("exit", "a", failed=True)
        events.emit("exit", "a", failed=False)  # a clean exit does not count
        events.emit("exit", "b", failed=True)  # another agent does not count
        events.emit("exit", "a", failed=True)
        await settle(events, follower)
        assert table.of("agent.degrade") == []
        events.emit("exit", "a", failed=True)
        fired = (await wait_for_event(follower, "rule_fired", timeout=None))[0]
        done = (await wait_for_event(follower, "action_ok", timeout=None))[0]
        third = events.query(type="exit", agent="a")[-1]
        assert [e["type"] for e in events.query(type="rule_fired")] == ["rule_fired"]
    assert fired["trigger_seq"] == third["seq"] == done["trigger_seq"]
    assert fired["rule"] == "crash-loop" and fired["action"] == "degrade"
    assert fired["agent"] == "a"
    assert table.of("agent.degrade") == [{"agent": "a", "reason":
                                          f"rule crash-loop (event {third['seq']})"}]
    assert table.calls[0][2] == ("rule", "crash-loop")
    row = engine.status()[0]
    assert row["firings"] == 1 and row["last_outcome"]["result"] == "ok"


async def test_the_count_window_slides(tmp_path: Path,
                                       autojump_clock: trio.testing.MockClock) -> None:
    async with engine_on(tmp_path, CRASH_LOOP, {"agent.degrade": ok}) as \
            (engine, events, table, follower):
        for _ in range(2):
            events.emit("exit", "a", failed=True)
        await settle(events, follower)
        await trio.sleep(61)  # the first two fall out of the minute
        events.emit("exit", "a", failed=True)
        await settle(events, follower)
        assert engine.state("crash-loop").fired == 0
        for _ in range(2):
            events.emit("exit", "a", failed=True)
        await wait_for_event(follower, "action_ok", timeout=None)
        assert engine.state("crash-loop").fired == 1


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
    async with engine_on(tmp_path, COOLDOWN, {"agent.restart": ok}) as \
            (engine, events, table, follower):
        events.emit("health", "a")
        await wait_for_event(follower, "action_ok", timeout=None)
        await trio.sleep(5)
        events.emit("exit", "b")  # within the cooldown
        await settle(events, follower)
        await trio.sleep(6)
        events.emit("exit", "b")
        await wait_for_event(follower, "action_ok", timeout=None)
        for _ in range(3):
            await trio.sleep(11)
            events.emit("health", "a")  # past the cooldown, but the limit is 2 an hour
        await settle(events, follower)
        limited = events.query(type="rule_limited")  # once, not per suppressed event
    state = engine.state("kick")
    assert [p["agent"] for p in table.of("agent.restart")] == ["a", "b"]  # the event's agent
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

    async with engine_on(tmp_path, FLAKY_ACTION, {"agent.restart": refuse}) as \
            (engine, events, table, follower):
        events.emit("health", "a")
        failed = await wait_for_event(follower, "action_failed", 3, timeout=None)
        assert [f["attempt"] for f in failed] == [1, 2, 3]
        assert [f["final"] for f in failed] == [False, False, True]
        assert failed[0]["error"] == "failed: agent is busy"
        gaps = [round(b - a, 3) for a, b in zip(attempts, attempts[1:], strict=False)]
        assert gaps[0] >= 1.0 and gaps[1] >= 1.5  # 1 s, then 2 s capped at 1.5 s
        assert gaps[1] < 2.0
        assert engine.state("poke").suspended is None  # one failed firing so far
        events.emit("health", "a")
        suspended = await wait_for_event(follower, "rule_suspended", timeout=None)
        assert "failed 2 firing(s) in a row" in suspended[0]["reason"]
        events.emit("health", "a")  # suspended: no action, no attempt
        await settle(events, follower)
        assert len(attempts) == 6
        state = engine.state("poke")
        assert state.suppressed["suspended"] == 1
        assert state.resume() is True
        events.emit("health", "a")
        await wait_for_event(follower, "action_failed", 3, timeout=None)
        assert len(attempts) == 9


async def test_an_action_that_hangs_times_out(tmp_path: Path,
                                              autojump_clock: trio.testing.MockClock) -> None:
    async def hang(params: dict) -> None:
        await trio.sleep_forever()

    toml = FLAKY_ACTION.replace("retries = 2", "retries = 0")
    async with engine_on(tmp_path, toml, {"agent.restart": hang}) as \
            (engine, events, table, follower):
        started = trio.current_time()
        events.emit("health", "a")
        failed = await wait_for_event(follower, "action_failed", timeout=None)
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

    async def trigger(self, job: str, *, caller: Any) -> dict:
        self.triggered.append((job, caller))
        return {"job": job, "run": 1}


async def test_send_run_maintain_and_escalate_go_through_their_ports(tmp_path: Path) -> None:
    async def maintain(params: dict) -> dict:
        return {"task": params["task"], "result": {"ok": False, "problems": ["disk full"]}}

    jobs = Jobs()
    handlers = {"send": ok, "maintain": maintain, "runtime.escalate": ok}
    toml = SEND_AND_RUN.replace("retries", "x")
    async with engine_on(tmp_path, toml, handlers, jobs=jobs) as \
            (engine, events, table, follower):
        events.emit("exit", "b")
        await wait_for_event(follower, "action_ok", 2)
        events.emit("disk-over-budget", None)
        failed = await wait_for_event(follower, "action_failed", rule="tidy")
        events.emit("gave_up", "a")
        await wait_for_event(follower, "action_ok", rule="shout")
    assert table.of("send") == [{"agent": "a", "message": {"cmd": "flush", "n": 1}}]
    assert jobs.triggered == [("nightly", ("rule", "upload"))]
    assert failed[0]["error"] == "maintain prune: disk full"
    escalated = table.of("runtime.escalate")[0]
    assert escalated["exit_code"] == 71 and escalated["severity"] == "critical"
    assert escalated["rule"] == "shout"


async def test_an_agent_action_needs_an_agent_on_the_event(tmp_path: Path) -> None:
    toml = '[[rules]]\nname = "r"\non = "tick"\nagent = "a*"\ndo = "stop"\nretries = 0\n'
    async with engine_on(tmp_path, toml, {"agent.stop": ok}, agents=("a1", "a2", "b")) as \
            (engine, events, table, follower):
        events.emit("tick", "b")  # not matched: b is not a*
        events.emit("tick", "a2")
        await wait_for_event(follower, "action_ok")
    assert table.of("agent.stop") == [{"agent": "a2"}]


async def test_after_falling_behind_it_resubscribes_and_reports_the_gap(
        tmp_path: Path) -> None:
    toml = '[[rules]]\nname = "r"\non = "late"\ndo = "checkpoint"\n'
    async with engine_on(tmp_path, toml, {"checkpoint": ok}) as \
            (engine, events, table, follower):
        for i in range(2500):  # one batch: more than a follower's buffer at once
            events.emit("tick", None, i=i)
        await trio.testing.wait_all_tasks_blocked()  # the batch is with the writer
        await events.store.flush()
        await trio.testing.wait_all_tasks_blocked()  # published: both followers dropped
        watch = events.follow()
        events.emit("late", None)
        gap = (await wait_for_event(watch, "rules_gap"))[0]
        await wait_for_event(watch, "action_ok")
    # A waiting receiver takes one event beyond the buffer of 1000 straight away.
    assert gap["from_seq"] in (1001, 1002) and gap["to_seq"] == 2500
    assert engine.gaps == 1
    assert table.of("checkpoint") == [{}]  # still acting after the gap


async def test_reload_keeps_the_state_of_unchanged_rules(tmp_path: Path) -> None:
    two = CRASH_LOOP + COOLDOWN
    async with engine_on(tmp_path, two, {"agent.degrade": ok, "agent.restart": ok}) as \
            (engine, events, table, follower):
        events.emit("exit", "a", failed=True)
        await wait_for_event(follower, "action_ok")  # kick fired once
        kept = engine.state("crash-loop")
        assert len(kept.hits) == 1
        changed = config_from(tmp_path, CRASH_LOOP + COOLDOWN.replace('"10s"', '"20s"')
                              + '[[rules]]\nname = "new"\non = "x"\ndo = "checkpoint"\n')
        changes = engine.reload(changed.autonomy, ["a", "b"])
        assert changes == {"added": ["new"], "changed": ["kick"], "removed": []}
        assert engine.state("crash-loop") is kept
        assert engine.state("kick").fired == 0
        changes = engine.reload(config_from(tmp_path, COOLDOWN).autonomy, ["a", "b"])
        assert changes["removed"] == ["crash-loop", "new"]
