"""Issue 3 items 2 and 3: group commit, batching knobs, and acks that never precede commits.

The writer's commit hooks run in the writer thread right before `commit()` and
right after it returned; the tests hold commits there or record them, and compare
with what the trio tasks observe. No timing is involved.
"""

from __future__ import annotations

from pathlib import Path

import trio
import trio.testing

from runtime.store import StoreOptions, open_store

from .conftest import CommitGate, until


async def _hold_first_batch(store, gate: CommitGate, nursery: trio.Nursery) -> None:
    store.set_commit_hooks(gate.before, gate.after)
    nursery.start_soon(store.flush)
    await trio.to_thread.run_sync(gate.entered.wait, 30)


async def test_waiting_ops_share_one_transaction(data_dir: Path) -> None:
    async with open_store(data_dir) as store:
        gate = CommitGate(hold=1)
        async with trio.open_nursery() as nursery:
            await _hold_first_batch(store, gate, nursery)
            for i in range(50):
                nursery.start_soon(store.append, "s", i)
            await until(lambda: store._writer.queued() == 50, what="50 queued appends")
            gate.released.set()
        assert gate.sizes == {1: 1, 2: 50}  # the held flush, then all 50 in one commit
        assert store.commits == 2
        assert sorted(r for _, r in store.read("s")) == list(range(50))


async def test_max_batch_caps_a_transaction(data_dir: Path) -> None:
    async with open_store(data_dir, StoreOptions(max_batch=8)) as store:
        gate = CommitGate(hold=1)
        async with trio.open_nursery() as nursery:
            await _hold_first_batch(store, gate, nursery)
            for i in range(50):
                nursery.start_soon(store.append, "s", i)
            await until(lambda: store._writer.queued() == 50, what="50 queued appends")
            gate.released.set()
        assert [gate.sizes[n] for n in sorted(gate.sizes)] == [1, 8, 8, 8, 8, 8, 8, 2]
        assert len(store.read("s")) == 50


async def test_batch_window_lingers_for_later_ops(data_dir: Path) -> None:
    # 100 ms window: an op submitted after the writer took the first one still
    # joins its transaction.
    async with open_store(data_dir, StoreOptions(batch_window_ms=100)) as store:
        batches: dict[int, int] = {}
        store.set_commit_hooks(after=lambda n, ops: batches.update(
            {op.result: n for op in ops}))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(store.append, "s", "first")
            await until(lambda: store._writer._inflight is not None, what="writer took op 1")
            nursery.start_soon(store.append, "s", "second")
        assert batches[1] == batches[2] == 1
        assert store.commits == 1


async def test_sync_never_acks_before_its_commit_returned(data_dir: Path) -> None:
    """Every ack (append returning) happens after the after-commit hook of the very
    transaction that carried it: 50 concurrent writers, 2000 appends."""
    events: list[tuple] = []  # list.append is atomic: the writer thread and trio share it
    async with open_store(data_dir) as store:
        assert store.env.flags()["sync"] and store.env.flags()["metasync"]
        store.set_commit_hooks(
            before=lambda n, ops: events.append(("before", n)),
            after=lambda n, ops: events.append(("committed", n, [op.result for op in ops])))

        async def writer(w: int) -> None:
            for i in range(40):
                seq = await store.append("s", [w, i])
                events.append(("ack", seq))

        async with trio.open_nursery() as nursery:
            for w in range(50):
                nursery.start_soon(writer, w)
    committed_at: dict[int, int] = {}  # seq -> index of its commit event
    acks = 0
    for index, event in enumerate(events):
        if event[0] == "committed":
            for seq in event[2]:
                committed_at[seq] = index
        elif event[0] == "ack":
            acks += 1
            seq = event[1]
            assert seq in committed_at, f"seq {seq} acked before its transaction committed"
            assert committed_at[seq] < index
    assert acks == 2000
    assert len(committed_at) == 2000
    assert sum(1 for e in events if e[0] == "committed") < 2000  # batching happened


async def test_no_ack_while_the_commit_is_held(data_dir: Path) -> None:
    """Hold the writer just before commit(): all trio tasks block, none has its ack."""
    async with open_store(data_dir) as store:
        gate = CommitGate(hold=1)
        store.set_commit_hooks(gate.before, gate.after)
        acked: list[int] = []

        async def writer(i: int) -> None:
            acked.append(await store.append("s", i))

        async with trio.open_nursery() as nursery:
            for i in range(20):
                nursery.start_soon(writer, i)
            await trio.to_thread.run_sync(gate.entered.wait, 30)
            await trio.testing.wait_all_tasks_blocked()
            assert acked == []  # applied in a transaction, but not committed: no ack
            assert store.last_seq("s") == 0
            gate.released.set()
        assert sorted(acked) == list(range(1, 21))
        assert store.last_seq("s") == 20


async def test_interval_mode_acks_after_commit_and_fsyncs_in_the_background(
        data_dir: Path) -> None:
    opts = StoreOptions(durability="interval", fsync_interval_ms=20)
    committed: set[int] = set()
    async with open_store(data_dir, opts) as store:
        assert not store.env.flags()["sync"]
        store.set_commit_hooks(after=lambda n, ops: committed.update(op.result for op in ops))
        for i in range(30):
            seq = await store.append("s", i)
            assert seq in committed  # even in interval mode the commit returned first
        await until(lambda: store.fsyncs >= 1, what="a background fsync")
    async with open_store(data_dir, opts) as store:
        assert [r for _, r in store.read("s")] == list(range(30))


async def test_on_durable_runs_in_commit_order_before_the_ack(data_dir: Path) -> None:
    async with open_store(data_dir) as store:
        seen: list[int] = []

        async def writer(i: int) -> None:
            seq = await store.append("s", i, on_durable=seen.append)
            assert seq in seen

        async with trio.open_nursery() as nursery:
            for i in range(100):
                nursery.start_soon(writer, i)
        assert seen == list(range(1, 101))


async def test_cancelled_waiter_still_learns_the_outcome(data_dir: Path) -> None:
    """An append cannot be withdrawn once queued; cancelling it delivers the
    cancellation after its commit, so no 'maybe stored' state is ever seen."""
    async with open_store(data_dir) as store:
        gate = CommitGate(hold=1)
        store.set_commit_hooks(gate.before, gate.after)
        got: list[int] = []
        with trio.CancelScope() as scope:
            async with trio.open_nursery() as nursery:
                async def writer() -> None:
                    got.append(await store.append("s", "x"))
                    await trio.sleep(0)  # the pending cancellation lands here
                    got.append(-1)
                nursery.start_soon(writer)
                await trio.to_thread.run_sync(gate.entered.wait, 30)
                scope.cancel()
                gate.released.set()
        assert scope.cancelled_caught
        assert got == [1]
        assert store.read("s") == [(1, "x")]
