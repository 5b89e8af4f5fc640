"""What goes up besides agents' messages: events by type, state changes of chosen
agents (whole state first, then each op), metric snapshots; and the uplink's own
slots in the shared-memory segment."""

from __future__ import annotations

import json

import trio

from runtime.events import EventLog
from runtime.store import StateBook, open_store
from runtime.uplink.uplink import Uplink
from shm import Counter, Segment, snapshot
from tests.uplink.helpers import read_stream, uplink_cfg
from tests.uplink.test_publish import wait_until


async def stored(url: str, subject: str, expect: int) -> list[dict]:
    return await trio.to_thread.run_sync(
        lambda: read_stream(url, subject=subject, expect=expect))


async def test_events_of_the_chosen_types_go_up_once(nats_server, tmp_path):
    cfg = uplink_cfg(nats_server.url, "h1", send={"events": ["agent-started", "agent-failed"]})
    async with open_store(tmp_path / "data") as store, trio.open_nursery() as nursery:
        events = EventLog(store)
        nursery.start_soon(events.run)
        events.emit("agent-started", "old")  # before the uplink: history is not sent
        with trio.fail_after(30):
            while store.last_seq("events") < 1:
                await trio.sleep(0.01)
        uplink = await nursery.start(Uplink(cfg, store, events=events).run)
        for i in range(20):
            events.emit("agent-started" if i % 2 else "noise", f"a{i}", n=i)
        events.emit("agent-failed", "a99", why="boom")
        msgs = await stored(nats_server.url, "outpost.h1.up.event.>", 11)
        await wait_until(lambda: uplink.outbox.backlog_msgs == 0)
        nursery.cancel_scope.cancel()
    bodies = [json.loads(m["data"]) for m in msgs]
    assert [b["agent"] for b in bodies] == [f"a{i}" for i in range(1, 20, 2)] + ["a99"]
    assert bodies[-1]["why"] == "boom" and bodies[0]["n"] == 1
    assert msgs[-1]["subject"] == "outpost.h1.up.event.agent-failed"
    assert [m["headers"]["Nats-Msg-Id"] for m in msgs] == \
        [f"h1/{uplink.outbox.epoch}/events/{b['seq']}" for b in bodies]


async def test_state_changes_go_up_whole_first_then_each_op(nats_server, tmp_path):
    cfg = uplink_cfg(nats_server.url, "h1", send={"state_of": ["counter"]})
    async with open_store(tmp_path / "data") as store, trio.open_nursery() as nursery:
        book = StateBook(store)
        state = await book.open("agent/counter/state")
        await state.set("name", "c")
        await state.incr("n", 5)
        uplink = await nursery.start(Uplink(cfg, store).run)
        await state.incr("n", 2)
        await state.delete("name")
        await state.merge("m", {"x": 1})
        await wait_until(lambda: uplink.outbox.sources["agent/counter/state"] == 5 and
                         uplink.outbox.backlog_msgs == 0)
        msgs = await stored(nats_server.url, "outpost.h1.up.state.counter", 1)
        nursery.cancel_scope.cancel()
    bodies = [json.loads(m["data"]) for m in msgs]
    # The whole state at some seq S (2 unless the copier was slow to start), then every
    # op after S, in order: a consumer can rebuild every later state exactly.
    whole = {2: {"name": "c", "n": 5}, 3: {"name": "c", "n": 7}, 4: {"n": 7},
             5: {"n": 7, "m": {"x": 1}}}
    first = bodies[0]
    assert first["resync"] and first["agent"] == "counter"
    assert first["state"] == whole[first["seq"]]
    ops = [("incr", "n", 2, 3), ("delete", "name", None, 4), ("merge", "m", {"x": 1}, 5)]
    assert [(b["op"], b["key"], b["value"], b["seq"]) for b in bodies[1:]] == \
        [op for op in ops if op[3] > first["seq"]]
    if len(msgs) > 1:
        assert msgs[1]["headers"]["Nats-Msg-Id"] == \
            f"h1/{uplink.outbox.epoch}/agent/counter/state/{bodies[1]['seq']}"


async def test_metrics_snapshots_and_the_uplinks_own_slots(nats_server, tmp_path):
    cfg = uplink_cfg(nats_server.url, "h1", send={"metrics_every_s": 0.1})
    segment = Segment.create(tmp_path / "outpost.shm", 256)
    try:
        Counter(segment, "sensor:reads").add(42)
        async with open_store(tmp_path / "data") as store, trio.open_nursery() as nursery:
            uplink = await nursery.start(Uplink(cfg, store, segment=segment).run)
            for i in range(10):
                await uplink.publish("sensor", "x", i)
            msgs = await stored(nats_server.url, "outpost.h1.up.metrics", 1)
            await wait_until(lambda: snapshot(segment).get("outpost:uplink_published",
                                                           {}).get("value", 0) >= 10)
            await wait_until(lambda: "outpost:uplink_backlog_bytes" in snapshot(segment))
            nursery.cancel_scope.cancel()
        assert json.loads(msgs[0]["data"])["sensor:reads"]["value"] == 42
        slots = snapshot(segment)
        assert {"outpost:uplink_dropped", "outpost:uplink_errors", "outpost:uplink_lag_seconds",
                "outpost:uplink_connected", "outpost:uplink_rate_per_s"} <= set(slots)
    finally:
        segment.close()
