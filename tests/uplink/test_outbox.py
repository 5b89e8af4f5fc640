"""The outbox alone (no server): durable puts, bounds, drops counted, recovery."""

from __future__ import annotations

import json

import pytest
import trio

from runtime.store import open_store
from runtime.uplink.errors import MessageError, OutboxFullError
from runtime.uplink.outbox import CURSOR, OUTBOX, Outbox


def outbox(store, **kw) -> Outbox:
    kw.setdefault("max_bytes", 10_000)
    return Outbox(store, **kw)


def event(ob: Outbox, n: int, pad: int = 50):
    return ob.item("event.test", {"n": n, "pad": "x" * pad}, kind="event",
                   origin=("events", n))


async def test_put_is_durable_when_it_returns(tmp_path):
    committed = []
    async with open_store(tmp_path) as store:
        store.set_commit_hooks(after=lambda no, ops: committed.append(store.last_seq(OUTBOX)))
        ob = outbox(store)
        await ob.open()
        seq = await ob.put("pub.a.x", {"v": 1}, agent="a")
        assert committed and committed[-1] >= seq == 1
        assert ob.backlog_msgs == 1 and ob.backlog_bytes > 0
    async with open_store(tmp_path) as store:
        rec = store.read(OUTBOX, 1)[0][1]
        assert rec[1:5] == ["publish", "pub.a.x", "a", b'{"v":1}']


async def test_refuse_new_raises_for_puts_and_drops_events(tmp_path):
    async with open_store(tmp_path) as store:
        ob = outbox(store, max_bytes=1000, when_full="refuse_new")
        await ob.open()
        stored = 0
        with pytest.raises(OutboxFullError, match="refuse_new"):
            for i in range(100):
                await ob.put("pub.a.x", {"i": i, "pad": "y" * 50})
                stored += 1
        assert 0 < stored < 100 and ob.refused == 1
        assert ob.backlog_bytes <= 1000
        assert await ob.offer([event(ob, 1), event(ob, 2)]) == 0
        assert ob.dropped["event"] == 2
        # What was stored is kept: refuse_new never evicts.
        assert [r["i"] for r in map(lambda x: json.loads(x[1][4]),
                                    store.read(OUTBOX, 1))] == list(range(stored))


async def test_drop_oldest_evicts_and_counts(tmp_path):
    async with open_store(tmp_path) as store:
        ob = outbox(store, max_bytes=5000, when_full="drop_oldest")
        await ob.open()
        for n in range(1, 501):
            await ob.offer([event(ob, n)])
            assert ob.backlog_bytes <= 5000
        kept = store.read(OUTBOX, ob.next_seq)
        assert len(kept) == ob.backlog_msgs
        assert ob.dropped["event"] == 500 - len(kept)
        # The newest are the ones kept, contiguous up to the last.
        assert kept[-1][0] == 500 and [s for s, _ in kept] == list(range(kept[0][0], 501))
        assert store.first_seq(OUTBOX) == kept[0][0]  # the dropped ones are gone from disk


async def test_counts_and_position_survive_reopen(tmp_path):
    async with open_store(tmp_path) as store:
        ob = outbox(store, max_bytes=3000)
        await ob.open()
        async with trio.open_nursery() as nursery:
            await nursery.start(ob.run)
            for n in range(1, 200):
                await ob.offer([event(ob, n)])
            nursery.cancel_scope.cancel()
        before = ob.stats()
    async with open_store(tmp_path) as store:
        ob = outbox(store, max_bytes=3000)
        await ob.open()
        after = ob.stats()
        assert store.last_seq(CURSOR) >= 1
    for key in ("backlog_msgs", "backlog_bytes", "next_seq", "dropped"):
        assert after[key] == before[key], key


async def test_acks_advance_the_cursor_and_prune(tmp_path):
    async with open_store(tmp_path) as store:
        ob = outbox(store, max_bytes=1 << 20)
        await ob.open()
        async with trio.open_nursery() as nursery:
            await nursery.start(ob.run)
            seqs = [await ob.put("pub.a.x", i) for i in range(10)]
            sizes = [r for _, r in store.read(OUTBOX, 1)]
            from runtime.uplink.outbox import record_size
            ob.report_acked(1, [record_size(r) for r in sizes[:6]])
            with trio.fail_after(30):
                while ob.next_seq != 7:
                    await trio.sleep(0.01)
            assert ob.backlog_msgs == 4 and ob.acked == 6
            # A report overlapping what a drop already took counts only the rest.
            ob.report_acked(7, [record_size(r) for r in sizes[6:]])
            with trio.fail_after(30):
                while ob.backlog_msgs:
                    await trio.sleep(0.01)
                while store.first_seq(OUTBOX) != 0:  # idle: everything sent is pruned
                    await trio.sleep(0.01)
            assert ob.backlog_bytes == 0 and seqs[-1] == 10
            nursery.cancel_scope.cancel()
    async with open_store(tmp_path) as store:
        ob = outbox(store, max_bytes=1 << 20)
        await ob.open()
        assert ob.next_seq == 11 and ob.backlog_msgs == 0


async def test_max_age_expires_unsent(tmp_path):
    now = [1000.0]
    async with open_store(tmp_path) as store:
        ob = outbox(store, max_bytes=1 << 20, max_age_s=60, clock=lambda: now[0])
        await ob.open()
        for i in range(5):
            await ob.put("pub.a.x", i)
        now[0] += 30
        for i in range(3):
            await ob.put("pub.a.x", i)
        now[0] += 45  # the first five are 75 s old, the last three 45 s
        assert await ob.expire() == 5
        assert ob.expired["publish"] == 5 and ob.backlog_msgs == 3 and ob.next_seq == 6


async def test_bad_messages_are_refused_clearly(tmp_path):
    async with open_store(tmp_path) as store:
        ob = outbox(store, max_bytes=1 << 20, max_message_bytes=100)
        await ob.open()
        with pytest.raises(MessageError, match="max_message_bytes"):
            await ob.put("pub.a.x", "z" * 200)
        with pytest.raises(MessageError, match="JSON"):
            await ob.put("pub.a.x", {"s": {1, 2}})
        assert await ob.put("pub.a.x", b"\x00raw") == 1
        assert store.last_seq(OUTBOX) == 1
