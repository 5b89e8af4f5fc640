"""The event log over a real store."""

from __future__ import annotations

from pathlib import Path

import trio

from runtime.events import EventLog
from runtime.store import open_store


async def test_events_are_stored_queryable_and_followed(tmp_path: Path) -> None:
    async with open_store(tmp_path) as store:
        events = EventLog(store)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(events.run)
            follower = events.follow()
            events.emit("start", "a", pid=1)
            events.emit("exit", "a", outcome="raised")
            events.emit("start", "b", pid=2)
            got = [await follower.receive() for _ in range(3)]
            nursery.cancel_scope.cancel()
        assert [(e["type"], e["agent"]) for e in got] == [("start", "a"), ("exit", "a"),
                                                          ("start", "b")]
        assert [e["seq"] for e in got] == [1, 2, 3]
        assert [e["type"] for e in events.query(agent="a")] == ["start", "exit"]
        assert events.query(type="start", limit=1)[0]["agent"] == "b"
        assert events.query(since=got[2]["ts"] + 1) == []

    async with open_store(tmp_path) as store:  # durable across reopen
        assert len(EventLog(store).query()) == 3


async def test_events_emitted_before_cancel_are_flushed(tmp_path: Path) -> None:
    async with open_store(tmp_path) as store:
        events = EventLog(store)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(events.run)
            await trio.testing.wait_all_tasks_blocked()
            for i in range(100):
                events.emit("tick", None, i=i)
            nursery.cancel_scope.cancel()
        assert [e["i"] for e in events.query(limit=1000)] == list(range(100))


async def test_query_across_many_pages_keeps_the_newest_matches_in_order(tmp_path: Path) -> None:
    from runtime.events import _QUERY_PAGE, STREAM

    total = 3 * _QUERY_PAGE + 17
    async with open_store(tmp_path) as store:
        await store.append_many(STREAM, [[float(i), "tick" if i % 3 else "tock", "a", {"i": i}]
                                         for i in range(total)])
        events = EventLog(store)
        tocks = events.query(type="tock", limit=5)
        assert [e["i"] for e in tocks] == [i for i in range(total) if i % 3 == 0][-5:]
        everything = events.query(limit=total + 10)
        assert [e["seq"] for e in everything] == list(range(1, total + 1))
        window = events.query(since=100.0, until=104.0, limit=100)
        assert [e["i"] for e in window] == [100, 101, 102, 103, 104]
        assert events.query(limit=0) == []
