"""Mutating methods through the one Methods table: request ids that apply once (in a real
store, across reopening it), one mutation at a time per agent, the audit event."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from runtime.control.dispatch import Caller, Methods
from runtime.control.errors import METHOD_CODES, MethodError
from runtime.control.ledger import STREAM, RequestLedger, params_digest
from runtime.control.mutations import AgentLocks, Mutations
from runtime.control.params import EVERY_AGENT, Int, Str, accepts
from runtime.store import open_store

PEER = Caller("socket", uid=1000, pid=4242)


def table(guard: Mutations) -> tuple[Methods, list[tuple[str, Any]]]:
    """Methods whose effects are visible: `applied` records each application."""
    applied: list[tuple[str, Any]] = []

    @accepts(Str("agent", required=True), Int("n", lo=0, hi=100, default=1), mutates="agent")
    async def bump(params: dict[str, Any]) -> dict:
        applied.append(("enter", params["agent"]))
        await trio.sleep(0.01)  # a checkpoint: another call may run meanwhile
        applied.append(("exit", params["agent"]))
        return {"agent": params["agent"], "count": len(applied) // 2}

    @accepts(mutates=EVERY_AGENT)
    async def everything(params: dict[str, Any]) -> dict:
        applied.append(("enter", "*"))
        await trio.sleep(0.01)
        applied.append(("exit", "*"))
        return {}

    @accepts(Str("agent", required=True))
    async def look(params: dict[str, Any]) -> dict:
        return {"agent": params["agent"]}

    methods = Methods(guard)
    methods.add({"bump": bump, "everything": everything, "look": look})
    return methods, applied


def test_conflict_is_a_code_clients_can_branch_on() -> None:
    assert "conflict" in METHOD_CODES and "busy" in METHOD_CODES


def test_only_mutating_methods_take_a_request_id() -> None:
    methods, _ = table(Mutations(None, lambda *a, **k: None))
    assert methods.mutates("bump") == "agent" and methods.mutates("look") is None
    names = [p["name"] for p in methods.params("bump").describe()]
    assert names[-2:] == ["request_id", "wait"]
    with pytest.raises(ValueError, match="names no declared param"):
        accepts(mutates="agent")


async def test_a_repeated_request_id_answers_the_first_answer_and_applies_once(
        tmp_path: Path) -> None:
    async with open_store(tmp_path) as store:
        events: list[tuple] = []
        guard = Mutations(await RequestLedger.load(store),
                          lambda *a, **k: events.append((a, k)))
        methods, applied = table(guard)
        first = await methods.call("bump", {"agent": "a", "request_id": "r-1"}, caller=PEER)
        again = await methods.call("bump", {"agent": "a", "request_id": "r-1"}, caller=PEER)
        other = await methods.call("bump", {"agent": "a", "request_id": "r-2"}, caller=PEER)
        assert first == again == {"agent": "a", "count": 1}
        assert other == {"agent": "a", "count": 2}
        assert applied.count(("enter", "a")) == 2
        # The same id for another request is refused, whatever differs.
        for params, method in (({"agent": "a", "n": 5}, "bump"), ({}, "everything")):
            with pytest.raises(MethodError) as refused:
                await methods.call(method, {**params, "request_id": "r-1"}, caller=PEER)
            assert refused.value.code == "conflict"
        assert applied.count(("enter", "a")) == 2
        # A retry may wait where the first try did not: still the same request.
        assert await methods.call("bump", {"agent": "a", "wait": True,
                                           "request_id": "r-1"}) == first
        audit = [k for a, k in events if a[0] == "command"]
        assert [(k["request_id"], k["replayed"], k["outcome"]) for k in audit] == [
            ("r-1", False, "ok"), ("r-1", True, "ok"), ("r-2", False, "ok"),
            ("r-1", False, "conflict"), ("r-1", False, "conflict"), ("r-1", True, "ok")]
        assert (audit[0]["caller"], audit[0]["uid"], audit[0]["pid"], audit[0]["method"]) == \
            ("socket", 1000, 4242, "bump")
        assert next(a[1] for a, k in events if a[0] == "command") == "a"  # the agent column

    # Reopened (a restart): the ids are in the store.
    async with open_store(tmp_path) as store:
        guard = Mutations(await RequestLedger.load(store), lambda *a, **k: None)
        methods, applied = table(guard)
        assert await methods.call("bump", {"agent": "a", "request_id": "r-1"}) == first
        assert await methods.call("bump", {"agent": "a", "request_id": "r-2"}) == other
        assert applied == []


async def test_a_request_without_an_id_gets_one_for_the_audit_only(tmp_path: Path) -> None:
    async with open_store(tmp_path) as store:
        events: list[dict] = []
        guard = Mutations(await RequestLedger.load(store), lambda *a, **k: events.append(k))
        methods, applied = table(guard)
        await methods.call("bump", {"agent": "a"})
        await methods.call("bump", {"agent": "a"})
        assert applied.count(("enter", "a")) == 2
        ids = [e["request_id"] for e in events]
        assert len(set(ids)) == 2 and all(len(i) == 32 for i in ids)
        assert store.last_seq(STREAM) == 0  # nothing to remember: nobody can repeat it


async def test_the_same_id_sent_twice_at_once_applies_once(tmp_path: Path) -> None:
    async with open_store(tmp_path) as store:
        methods, applied = table(Mutations(await RequestLedger.load(store),
                                           lambda *a, **k: None))
        answers = []

        async def send() -> None:
            answers.append(await methods.call("bump", {"agent": "a", "wait": True,
                                                       "request_id": "twice"}))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(send)
            nursery.start_soon(send)
        assert answers[0] == answers[1] and applied.count(("enter", "a")) == 1


async def test_a_failed_request_is_not_remembered(tmp_path: Path) -> None:
    async with open_store(tmp_path) as store:
        guard = Mutations(await RequestLedger.load(store), lambda *a, **k: None)
        calls = []

        @accepts(Str("agent", required=True), mutates="agent")
        async def flaky(params: dict[str, Any]) -> dict:
            calls.append(1)
            if len(calls) == 1:
                raise MethodError("failed", "not this time")
            return {"ok": True}
        methods = Methods(guard)
        methods.add({"flaky": flaky})
        with pytest.raises(MethodError):
            await methods.call("flaky", {"agent": "a", "request_id": "x"})
        assert await methods.call("flaky", {"agent": "a", "request_id": "x"}) == {"ok": True}
        assert await methods.call("flaky", {"agent": "a", "request_id": "x"}) == {"ok": True}
        assert len(calls) == 2


async def test_maintenance_prunes_ids_past_their_ttl(tmp_path: Path) -> None:
    async with open_store(tmp_path) as store:
        ledger = await RequestLedger.load(store)
        for i in range(5):
            await ledger.record(f"old-{i}", "m", params_digest("m", {}), {"i": i})
        await ledger.record("new", "m", params_digest("m", {}), {"new": True})
        between = (ledger.get("old-4").ts + ledger.get("new").ts) / 2
        assert await ledger.prune(ttl_s=1.0, now=between + 1.0) == 5
        assert ledger.get("old-0") is None and len(ledger) == 1
        assert ledger.answer(ledger.get("new")) == {"new": True}
    async with open_store(tmp_path) as store:  # pruned from the store too
        ledger = await RequestLedger.load(store)
        assert len(ledger) == 1 and store.first_seq(STREAM) == 6


async def test_two_mutations_of_one_agent_never_interleave() -> None:
    methods, applied = table(Mutations(None, lambda *a, **k: None))
    results: list[Any] = []

    async def bump(agent: str, wait: bool) -> None:
        try:
            results.append(await methods.call("bump", {"agent": agent, "wait": wait}))
        except MethodError as exc:
            results.append(exc.code)

    async with trio.open_nursery() as nursery:  # without wait: the second is busy
        nursery.start_soon(bump, "a", False)
        await trio.sleep(0)
        nursery.start_soon(bump, "a", False)
        nursery.start_soon(bump, "b", False)  # another agent is not held up
    assert results.count("busy") == 1
    assert applied.count(("enter", "a")) == 1 and applied.count(("enter", "b")) == 1

    applied.clear()
    async with trio.open_nursery() as nursery:  # with wait: one after the other
        for _ in range(3):
            nursery.start_soon(bump, "a", True)
    assert applied == [("enter", "a"), ("exit", "a")] * 3  # never enter, enter


async def test_every_agent_excludes_and_is_excluded_by_any_agent() -> None:
    methods, applied = table(Mutations(None, lambda *a, **k: None))

    async def call(method: str, agent: str | None = None) -> None:
        await methods.call(method, {"wait": True, **({"agent": agent} if agent else {})})
    async with trio.open_nursery() as nursery:
        nursery.start_soon(call, "bump", "a")
        await trio.sleep(0)
        nursery.start_soon(call, "everything")
        await trio.sleep(0)
        nursery.start_soon(call, "bump", "b")
    # a and b may overlap (different agents); nothing overlaps the one over every agent.
    at = applied.index(("enter", "*"))
    assert applied[at + 1] == ("exit", "*")
    before = applied[:at]
    assert all(("exit", k) in before for e, k in before if e == "enter")
    assert len(applied) == 6


async def test_a_group_holds_its_agents() -> None:
    guard = Mutations(None, lambda *a, **k: None,
                      scope_of=lambda name: ["g", "a", "b"] if name == "g" else [name])
    methods, applied = table(guard)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(methods.call, "bump", {"agent": "g"})
        while ("enter", "g") not in applied:
            await trio.sleep(0)
        with pytest.raises(MethodError) as refused:
            await methods.call("bump", {"agent": "b"})
    assert refused.value.code == "busy" and "'b' is busy" in str(refused.value)


async def test_a_hold_is_shared_by_the_tasks_its_holder_starts_and_ends_with_the_last() -> None:
    locks = AgentLocks()
    released = trio.Event()
    order = []

    async def heir(task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        async with locks.hold(["a"], "the heir"):  # shared: the starter holds "a"
            task_status.started()
            await released.wait()
            order.append("heir done")

    async with trio.open_nursery() as nursery:
        async with locks.hold(["a"], "the starter"):
            await nursery.start(heir)
        order.append("starter done")
        assert locks.holding("a") == "the heir"  # outlives the starter
        with pytest.raises(MethodError, match="the heir"):
            async with locks.hold(["a"], "someone else"):
                pass
        released.set()
    assert order == ["starter done", "heir done"] and locks.holding("a") is None

    # A task that only inherited the context of a hold that has ended holds nothing.
    outcome: list[str] = []
    async with trio.open_nursery() as nursery:
        gate = trio.Event()
        async with locks.hold(["a"], "gone soon"):
            async def late() -> None:
                await gate.wait()
                try:
                    async with locks.hold(["a"], "late"):
                        outcome.append("held")
                except MethodError as exc:
                    outcome.append(exc.code)
            nursery.start_soon(late)  # inherits the context holding "a"
        async with locks.hold(["a"], "now"):
            gate.set()
            await trio.sleep(0.01)
    assert outcome == ["busy"] and locks.holding("a") is None


async def test_an_in_process_caller_may_give_the_request_id_apart(tmp_path: Path) -> None:
    async with open_store(tmp_path) as store:
        methods, applied = table(Mutations(await RequestLedger.load(store),
                                           lambda *a, **k: None))
        uplink = Caller("uplink", "fleet")
        first = await methods.request("bump", {"agent": "a"}, request_id="nats-7",
                                      caller=uplink)
        assert await methods.request("bump", {"agent": "a"}, request_id="nats-7",
                                     caller=uplink) == first
        assert await methods.call("bump", {"agent": "a", "request_id": "nats-7"}) == first
        assert applied.count(("enter", "a")) == 1
        with pytest.raises(MethodError) as refused:  # only mutating methods take one
            await methods.request("look", {"agent": "a"}, request_id="x")
        assert refused.value.code == "bad_params"
