"""Every core control method against a real runtime, in process: the real store,
supervisor, segment and event log built by runtime.app, called through its one
`Methods` table the way a rule or a job will call it (the socket adds only the
transport, tested in tests/control and tests/cli)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio

from runtime.agents import state_stream
from runtime.agents.mailbox import inbox_stream
from runtime.app import Runtime, run_runtime
from runtime.config import load_config
from runtime.control.dispatch import Caller
from runtime.control.errors import MethodError
from runtime.control.protocol import Table
from runtime.control.server import Peer
from runtime.store.codec import MAX_RECORD_BYTES
from tests import runtime_proc
from tests.runtime_proc import ROOT, agent_block

COUNTER = str(ROOT / "examples" / "agents" / "counter.py") + ":run"
AGENTS = (agent_block("counter", COUNTER) + agent_block("spare", COUNTER, group="pair")
          + '[[groups]]\nname = "pair"\n')
CORE = ["agent.restart", "agent.start", "agent.stop", "checkpoint", "events.follow",
        "events.query", "info", "maintain", "metrics", "ping", "reload", "send",
        "shutdown", "state.delete", "state.get", "state.set", "status"]
ROOMS = ["agent.degrade", "agent.release",  # runtime/supervisor/methods.py
         "deploy", "releases", "rollback", "rollout.status"]  # runtime/rollouts/methods.py


def write_config(directory: Path, agents: str = AGENTS, extra: str = "") -> Path:
    return runtime_proc.write_config(directory, agents, extra)


@pytest.fixture
async def rt(tmp_path: Path) -> AsyncIterator[Runtime]:
    async with trio.open_nursery() as nursery:
        runtime = await nursery.start(run_runtime, load_config(write_config(tmp_path)))
        yield runtime
        runtime.request_shutdown()


async def call(rt: Runtime, method: str, **params: Any) -> Any:
    return await rt.methods.call(method, params, caller=Caller("rule", "test"))


async def refused(rt: Runtime, method: str, code: str, **params: Any) -> str:
    with pytest.raises(MethodError) as caught:
        await call(rt, method, **params)
    assert caught.value.code == code, str(caught.value)
    return str(caught.value)


async def until(condition: Any, what: str) -> Any:
    with trio.move_on_after(20):
        while not (value := await condition()):
            await trio.sleep(0.01)
        return value
    raise AssertionError(f"timed out waiting for {what}")


async def count(rt: Runtime, agent: str = "counter") -> int:
    return (await call(rt, "state.get", agent=agent))["state"].get("count", 0)


async def test_the_table_holds_exactly_the_core_methods(rt: Runtime) -> None:
    # A new core method gets its test here first; the rooms' methods are tested with them.
    assert rt.methods.names() == sorted(CORE + ROOMS)


async def test_status_info_ping_metrics(rt: Runtime) -> None:
    status = await call(rt, "status")
    assert isinstance(status["agents"], Table)
    assert status["agents"].columns[0] == "name"
    assert [row[0] for row in status["agents"].rows] == ["counter", "spare"]
    assert len(status["groups"]) == 2  # the root and "pair"
    assert status["groups"][1]["group"].endswith("pair")
    one = await call(rt, "status", agent="spare")
    assert [row[0] for row in one["agents"].rows] == ["spare"] and "groups" not in one
    assert await refused(rt, "status", "not_found", agent="nobody") == \
        "no agent named 'nobody' (agents: counter, spare)"
    assert "params.agent must be a non-empty string" in await refused(
        rt, "status", "bad_params", agent={})
    assert "params.verbose is not a parameter" in await refused(
        rt, "status", "bad_params", verbose=True)

    info = await call(rt, "info")
    assert (info["pid"], info["agents"]) == (os.getpid(), 2)
    assert info["control"]["socket"] == str(rt.config.socket_path)
    assert await call(rt, "ping") == {"pong": True}
    assert "params.x" in await refused(rt, "ping", "bad_params", x=1)

    await until(lambda: count(rt), "a first tick")
    snap = (await call(rt, "metrics"))["metrics"]
    assert snap["counter:ticks"]["kind"] == "counter"
    assert "ticks" in (await call(rt, "metrics", format="prometheus"))["text"]
    assert "params.format must be one of 'snapshot', 'prometheus'" in await refused(
        rt, "metrics", "bad_params", format="xml")


async def test_state_get_set_delete_go_through_the_durable_path(rt: Runtime) -> None:
    stream = state_stream("counter")
    before = await until(lambda: count(rt), "a first tick")
    assert (await call(rt, "state.get", agent="counter", key="count"))["value"] >= before
    done = await call(rt, "state.set", agent="counter", key="note", value={"a": [1, None]})
    state = await rt.book.open(stream)  # the agent's own KeyValueState
    assert state.get("note") == {"a": [1, None]} and done["value"] == {"a": [1, None]}
    stored = dict(rt.store.read(stream))
    assert stored[done["seq"]] == ["set", "note", {"a": [1, None]}]  # answered once stored
    assert (await call(rt, "state.set", agent="counter", key="nil", value=None))["value"] is None
    assert (await call(rt, "state.get", agent="counter", key="note"))["value"] == {"a": [1, None]}

    gone = await call(rt, "state.delete", agent="counter", key="note")
    assert gone["deleted"] is True and "note" not in state
    assert (await call(rt, "state.delete", agent="counter", key="note"))["deleted"] is False
    assert await refused(rt, "state.get", "not_found", agent="counter", key="note") == \
        "agent 'counter' has no state key 'note'"

    assert "no agent named 'nobody'" in await refused(rt, "state.get", "not_found",
                                                      agent="nobody")
    assert "params.value is required" in await refused(rt, "state.set", "bad_params",
                                                       agent="counter", key="k")
    assert "params.key must be a non-empty string" in await refused(
        rt, "state.set", "bad_params", agent="counter", key=["k"], value=1)
    assert "params.agent is required" in await refused(rt, "state.delete", "bad_params",
                                                       key="k")
    # Too large for one record: the store's refusal is the answer, and nothing is stored.
    seq = state.applied_seq
    assert "exceeds the" in await refused(rt, "state.set", "failed", agent="counter",
                                          key="big", value="x" * MAX_RECORD_BYTES)
    assert "big" not in state and ["set", "big"] not in [
        r[:2] for s, r in rt.store.read(stream) if s > seq]


async def test_send_stores_in_the_mailbox_once_per_key(rt: Runtime) -> None:
    first = await call(rt, "send", agent="spare", message={"do": "it"}, key="k1")
    again = await call(rt, "send", agent="spare", message={"do": "it"}, key="k1")
    assert first == again == {"agent": "spare", "seq": first["seq"]}
    nil = await call(rt, "send", agent="spare", message=None)
    assert dict(rt.store.read(inbox_stream("spare"))) == {
        first["seq"]: ["k1", None, {"do": "it"}], nil["seq"]: [None, None, None]}
    assert "no agent named 'nobody'" in await refused(rt, "send", "not_found",
                                                      agent="nobody", message=1)
    assert "params.message is required" in await refused(rt, "send", "bad_params",
                                                         agent="spare")
    assert "params.key must be a non-empty string" in await refused(
        rt, "send", "bad_params", agent="spare", message=1, key=7)
    assert "exceeds the" in await refused(rt, "send", "failed", agent="spare",
                                          message=b"x" * MAX_RECORD_BYTES)


async def test_agent_actions_on_agents_and_groups(rt: Runtime) -> None:
    stopped = await call(rt, "agent.stop", agent="spare")
    assert (stopped["agent"], stopped["action"], stopped["status"]["state"]) == \
        ("spare", "stop", "stopped")
    started = await call(rt, "agent.start", agent="spare")
    assert started["status"]["name"] == "spare" and started["status"]["state"] != "stopped"
    restarted = await call(rt, "agent.restart", agent="counter")
    assert restarted["status"]["state"] != "stopped"
    group = await call(rt, "agent.stop", agent="pair")
    assert group["status"] is None  # a group has no agent row
    rows = {r[0]: r for r in (await call(rt, "status"))["agents"].rows}
    state_at = rt.supervisor.STATUS_COLUMNS.index("state")
    assert rows["spare"][state_at] == "stopped" and rows["counter"][state_at] != "stopped"
    for action in ("start", "stop", "restart"):
        assert await refused(rt, f"agent.{action}", "not_found", agent="nobody") == \
            "no agent named 'nobody' (agents: counter, spare)"
        assert "params.agent is required" in await refused(rt, f"agent.{action}",
                                                           "bad_params")


async def test_events_query_and_follow(rt: Runtime) -> None:
    async def started() -> list:  # events are durable shortly after they are emitted
        return (await call(rt, "events.query", type="runtime-start"))["events"]

    (start,) = await until(started, "the runtime-start event stored")
    assert start["pid"] == os.getpid()
    assert len((await call(rt, "events.query", limit=1))["events"]) == 1
    assert (await call(rt, "events.query", since=start["ts"] + 3600))["events"] == []
    for bad, field in [({"limit": 0}, "params.limit must be an integer from 1 to 10000"),
                       ({"limit": 10_001}, "params.limit"),
                       ({"since": []}, "params.since must be a finite number"),
                       ({"until": float("nan")}, "params.until"),
                       ({"since": 2.0, "until": 1.0}, "params.since is after params.until"),
                       ({"backlog": 5}, "params.backlog is not a parameter")]:
        assert field in await refused(rt, "events.query", "bad_params", **bad)
    assert "params.until is not a parameter" in await refused(
        rt, "events.follow", "bad_params", until=1.0)
    assert "params.backlog must be an integer from 0 to 1000" in await refused(
        rt, "events.follow", "bad_params", backlog=1001)

    async def stored_of_spare() -> list:
        return (await call(rt, "events.query", agent="spare"))["events"]

    await until(stored_of_spare, "an event of spare stored")
    stream = await call(rt, "events.follow", agent="spare", backlog=1)
    items = stream.items
    try:
        with trio.fail_after(20):
            newest = await items.__anext__()  # the backlog: spare's newest stored event
        assert newest["agent"] == "spare"
        await call(rt, "agent.stop", agent="spare")
        with trio.fail_after(20):
            live = await items.__anext__()
            while live["type"] != "stopped":
                live = await items.__anext__()
        assert live["agent"] == "spare" and live["seq"] > newest["seq"]
    finally:
        await items.aclose()


async def test_checkpoint_writes_and_flushes(rt: Runtime) -> None:
    await until(lambda: count(rt), "a first tick")
    done = await call(rt, "checkpoint")
    assert done["checkpoints_written"] >= 1
    assert done["checkpoints_total"] >= done["checkpoints_written"]
    assert rt.store.checkpoints(state_stream("counter"))
    assert "params.now" in await refused(rt, "checkpoint", "bad_params", now=True)


async def test_maintain_runs_only_requests_it_understood(rt: Runtime) -> None:
    tasks = (await call(rt, "maintain"))["tasks"]
    assert {"checkpoint", "prune", "verify", "backup", "disk"} <= tasks.keys()
    assert "restore" not in tasks  # offline only
    await until(lambda: count(rt), "a first tick")
    stream = state_stream("counter")
    # Issue 15: these were answered with a result; each names its field now.
    for bad, field in [({"backlog": 1_000_000_000}, "params.backlog is not a parameter"),
                       ({"agent": {}}, "params.agent is not a parameter"),
                       ({"since": [], "until": None}, "params.since is not a parameter"),
                       ({"task": ""}, "params.task must be a non-empty string"),
                       ({"task": "checkpoint", "args": []}, "params.args must be a map"),
                       ({"args": {}}, "params.args needs params.task"),
                       ({"task": "checkpoint", "args": {"x": 1}},
                        "params.args.x is not a parameter"),
                       ({"task": "backup", "args": {"arg": 5}},
                        "params.args.arg must be a non-empty string")]:
        assert field in await refused(rt, "maintain", "bad_params", **bad)
    assert rt.store.checkpoints(stream) == []  # nothing ran
    assert "available: " in await refused(rt, "maintain", "not_available", task="restore")

    done = await call(rt, "maintain", task="checkpoint", args={})
    assert done["task"] == "checkpoint" and done["result"]["ok"] is True
    assert done["result"]["details"]["checkpointed"] >= 1
    assert rt.store.checkpoints(stream)


async def test_reload_applies_the_file_or_refuses_it(rt: Runtime, tmp_path: Path) -> None:
    assert "params.path" in await refused(rt, "reload", "bad_params", path="x")
    third = agent_block("third", COUNTER)
    write_config(tmp_path, AGENTS + third, extra="[control]\nallowed_uids = [4321]\n")
    assert not rt.control.allows(Peer(1, 4321, 4321)) or os.getuid() == 4321
    changes = await call(rt, "reload")
    assert changes["config"] == str(tmp_path / "outpost.toml")
    assert (changes["added"], changes["removed"]) == (["third"], [])
    assert sorted(changes["unchanged"]) == ["counter", "spare"]
    assert "third" in [row[0] for row in (await call(rt, "status"))["agents"].rows]
    assert rt.control.allows(Peer(1, 4321, 4321))  # [control] at once
    assert rt.config.allowed_uids == (4321,)

    (tmp_path / "outpost.toml").write_text("[runtime\n")
    assert "config not applied" in await refused(rt, "reload", "bad_config")
    (tmp_path / "outpost.toml").write_text(
        '[runtime]\ndata_dir = "elsewhere"\nrun_dir = "run"\n' + AGENTS)
    assert "data_dir and run_dir cannot change" in await refused(rt, "reload", "failed")
    assert len((await call(rt, "status"))["agents"].rows) == 3  # nothing was applied


async def test_shutdown_answers_then_stops_cleanly(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path))
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            runtime = await nursery.start(run_runtime, config)
            assert "params.force" in await refused(runtime, "shutdown", "bad_params",
                                                   force=True)
            assert not runtime.stopping
            assert await call(runtime, "shutdown") == {"stopping": True, "pid": os.getpid()}
            assert runtime.stopping
    # run_runtime returned: agents stopped, socket and segment removed.
    assert not config.socket_path.exists() and not config.segment_path.exists()
    assert [c.state for c in runtime.supervisor.children] == ["stopped", "stopped"]
