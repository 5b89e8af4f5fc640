"""Issue 20: the batched write path keeps the durability contract.

Appends are packed and put by the writer, state writes fold into the state when
they are durable, and a burst of ops is taken and acknowledged as one batch.
These tests hold commits in the writer's hooks and compare what trio tasks see
with what was committed; no timing is involved.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import trio
import trio.testing

from runtime.agents.context import CountingState
from runtime.store import KeyValueState, StateError, StoreError, StoreOptions, open_store
from runtime.store.store import stream_key
from shm import Counter, Segment

from .conftest import CommitGate, gather, until


@pytest.fixture
def segment(tmp_path: Path):
    seg = Segment.create(tmp_path / "seg.shm", 16)
    yield seg
    seg.close()


async def _queue_behind_a_held_commit(store, hold: CommitGate, nursery: trio.Nursery) -> None:
    store.set_commit_hooks(hold.before, hold.after)
    nursery.start_soon(store.flush)
    await trio.to_thread.run_sync(hold.entered.wait, 30)


async def test_bad_records_in_a_batch_fail_alone_and_the_rest_commit_as_one(
        data_dir: Path) -> None:
    async with open_store(data_dir, StoreOptions(max_record_bytes=1000)) as store:
        hold = CommitGate(1)
        async with trio.open_nursery() as nursery:
            await _queue_behind_a_held_commit(store, hold, nursery)
            calls = [
                lambda: store.append("s", "a"),
                lambda: store.append("s", {1, 2}),  # not plain data: refused by the packer
                lambda: store.append("s", "b"),
                lambda: store.append("s", "x" * 2000),  # over max_record_bytes
                lambda: store.prune("s", 1),  # past the newest checkpoint: refused
                lambda: store.append("t", "c"),
                lambda: store.append("s", "d"),
            ]
            results: list[object] = [None] * len(calls)

            async def run(i: int) -> None:
                [results[i]] = await gather(calls[i])

            for i in range(len(calls)):  # queued one by one: submission order is known
                nursery.start_soon(run, i)
                await until(lambda i=i: store._writer.queued() == i + 1, what=f"op {i} queued")
            hold.released.set()
        ok = [r for i, r in enumerate(results) if i in (0, 2, 5, 6)]
        assert ok == [1, 2, 1, 3]  # gap-free seqs per stream, in submission order
        assert "cannot be stored as msgpack" in str(results[1])
        assert "exceeds the 1000-byte limit" in str(results[3])
        assert "goes past its newest checkpoint" in str(results[4])
        assert all(isinstance(results[i], StoreError) for i in (1, 3, 4))
        assert len(hold.batches[2]) == 4  # the four good ops: one commit
        assert [r for _, r in store.read("s")] == ["a", "b", "d"]
        assert [r for _, r in store.read("t")] == ["c"]
    async with open_store(data_dir) as store:
        assert [r for _, r in store.read("s")] == ["a", "b", "d"]
        assert store.last_seq("t") == 1


async def test_state_writes_ack_after_their_commit_in_commit_order(
        data_dir: Path, segment: Segment) -> None:
    """50 ctx.state writers incr one key: ops fold into the state in commit order
    (so their results, commit by commit, count up by one), every ack follows the
    commit that carried it, and the state and the write counter move only with
    durable ops."""
    events: list[tuple] = []  # list.append is atomic: the writer thread and trio share it
    async with open_store(data_dir) as store:
        writes = Counter(segment, "w:state_writes")
        state = CountingState(await KeyValueState.load(store, "kv"), writes)
        store.set_commit_hooks(after=lambda n, ops: events.append(("committed", list(ops))))

        async def writer() -> None:
            for _ in range(40):
                value = await state.incr("n")
                # What a reader sees is the durable prefix, counted as it became durable.
                assert state["n"] >= value and writes.value() == state["n"]
                events.append(("ack", value))

        async with trio.open_nursery() as nursery:
            for _ in range(50):
                nursery.start_soon(writer)
    assert writes.value() == 2000 and state["n"] == 2000 and state.applied_seq == 2000
    committed_at: dict[int, int] = {}  # value -> index of its commit event
    in_commit_order: list[int] = []
    for index, event in enumerate(events):
        if event[0] == "committed":
            for op in event[1]:
                committed_at[op.result] = index
                in_commit_order.append(op.result)
        else:
            assert committed_at.get(event[1], index) < index, \
                f"value {event[1]} acked before its commit"
    assert in_commit_order == list(range(1, 2001))
    assert sorted(e[1] for e in events if e[0] == "ack") == list(range(1, 2001))
    assert 1 < sum(1 for e in events if e[0] == "committed") < 2000  # batching happened


async def test_nothing_is_visible_or_counted_while_its_commit_is_held(
        data_dir: Path, segment: Segment) -> None:
    async with open_store(data_dir) as store:
        writes = Counter(segment, "w:state_writes")
        state = CountingState(await KeyValueState.load(store, "kv"), writes)
        await state.set("before", 1)
        hold = CommitGate(store.commits + 1)
        store.set_commit_hooks(hold.before, hold.after)
        async with trio.open_nursery() as nursery:
            for i in range(20):
                nursery.start_soon(state.set, f"k{i}", i)
            nursery.start_soon(state.delete, "before")
            await trio.to_thread.run_sync(hold.entered.wait, 30)
            await trio.testing.wait_all_tasks_blocked()
            # Applied in an open transaction, not committed: not in the state, not counted.
            assert dict(state.items()) == {"before": 1} and writes.value() == 1
            hold.released.set()
        assert writes.value() == 22
        assert dict(state.items()) == {f"k{i}": i for i in range(20)}
    async with open_store(data_dir) as store:
        again = await KeyValueState.load(store, "kv")
        assert again.to_dict() == {f"k{i}": i for i in range(20)}


async def test_refused_state_writes_store_nothing_and_count_nothing(
        data_dir: Path, segment: Segment) -> None:
    async with open_store(data_dir, StoreOptions(max_record_bytes=200)) as store:
        writes = Counter(segment, "w:state_writes")
        state = CountingState(await KeyValueState.load(store, "kv"), writes)
        await state.set("s", "text")
        pending = state.incr("s")  # checked when awaited, as a coroutine's body is
        with pytest.raises(StateError, match="is not a number"):
            await pending
        with pytest.raises(StateError, match="non-empty strings"):
            await state.set("", 1)
        with pytest.raises(StateError, match="expected a mapping"):
            await state.merge("m", [1])
        with pytest.raises(StoreError, match="200-byte limit"):
            await state.set("big", "x" * 500)
        with pytest.raises(StoreError, match="msgpack"):
            await state.set("obj", object())
        assert writes.value() == 1 and dict(state.items()) == {"s": "text"}
        assert state.applied_seq == 1 == store.last_seq("kv")
        assert await state.merge("m", {"a": 1}) == {"a": 1}
        assert await state.incr("n", 2) == 2
        assert await state.set("s", None) is None and await state.delete("s") is None
        assert writes.value() == 5


async def test_a_cancelled_state_write_still_learns_its_outcome(
        data_dir: Path, segment: Segment) -> None:
    async with open_store(data_dir) as store:
        state = CountingState(await KeyValueState.load(store, "kv"),
                              Counter(segment, "w:state_writes"))
        hold = CommitGate(1)
        got: list[object] = []
        with trio.CancelScope() as scope:
            async with trio.open_nursery() as nursery:
                await _queue_behind_a_held_commit(store, hold, nursery)

                async def writer() -> None:
                    got.append(await state.incr("n"))
                    await trio.sleep(0)  # the pending cancellation lands here
                    got.append("not reached")

                nursery.start_soon(writer)
                await until(lambda: store._writer.queued() == 1, what="the queued write")
                scope.cancel()
                hold.released.set()
        assert scope.cancelled_caught
        assert got == [1] and state["n"] == 1


async def test_headroom_keeps_allocated_zeroed_space_ahead_of_lmdb(data_dir: Path) -> None:
    async with open_store(data_dir, StoreOptions(map_size=32 << 20)) as store:
        for n in range(60):
            await store.append_many("s", [{"n": n, "pad": "x" * 100} for _ in range(200)])
        headroom = store._writer._headroom
        assert headroom.chunks >= 1
        info, psize = store.env.info(), store.env.stat()["psize"]
        used = (info["last_pgno"] + 1) * psize
        st = os.stat(data_dir / "data.mdb")
        assert st.st_size > used  # zeroed space ahead of the last page
        assert st.st_blocks * 512 >= st.st_size - (64 << 10)  # allocated, not a sparse hole
        assert st.st_size <= info["map_size"]
    async with open_store(data_dir) as store:
        records = store.read("s")
        assert len(records) == 12_000 and records[-1][1]["n"] == 59


async def test_a_seq_already_in_the_log_fails_only_its_append(data_dir: Path) -> None:
    """Something else wrote the key the next append would take: that append is
    refused and named, the one before it in the same batch commits."""
    async with open_store(data_dir) as store:
        assert await store.append("s", "a") == 1

        def intrude(tx) -> None:  # as if another program had written seq 3
            tx.txn.put(stream_key("s") + (3).to_bytes(8, "big"), b"\xa1x",
                       db=store._wal)

        await store._submit(intrude)
        hold = CommitGate(store.commits + 1)
        async with trio.open_nursery() as nursery:
            await _queue_behind_a_held_commit(store, hold, nursery)
            results: list[object] = [None, None]

            async def run(i: int, record: str) -> None:
                [results[i]] = await gather(lambda: store.append("s", record))

            nursery.start_soon(run, 0, "b")
            await until(lambda: store._writer.queued() == 1, what="first append queued")
            nursery.start_soon(run, 1, "c")
            await until(lambda: store._writer.queued() == 2, what="second append queued")
            hold.released.set()
        assert results[0] == 2
        assert isinstance(results[1], StoreError)
        assert "seq 3 is already stored" in str(results[1])
        assert [r for _, r in store.read("s")] == ["a", "b", "x"]
