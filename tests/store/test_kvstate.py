"""runtime/store/kvstate: key-value state over one stream — its ops and their
refusals, materialisation (checkpoint + replay), and the StateBook that shares
states and checkpoints them off the hot path. Real LMDB files throughout."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import trio

from runtime.store import KeyValueState, StateBook, StateError, StoreError, open_store
from runtime.store.kvstate import apply_op, digest_of

from .conftest import gather, until
from .state_ops import full_replay, random_ops, run_op

STREAM = "agent/demo/state"


async def test_state_ops_and_their_errors(data_dir: Path) -> None:
    async with open_store(data_dir) as store:
        state = await KeyValueState.load(store, STREAM)
        await state.set("name", "probe")
        assert await state.incr("count") == 1
        assert await state.incr("count", 2.5) == 3.5
        assert await state.merge("cfg", {"a": 1}) == {"a": 1}
        assert await state.merge("cfg", {"b": 2}) == {"a": 1, "b": 2}
        await state.delete("name")
        await state.delete("never-there")
        assert state.to_dict() == {"count": 3.5, "cfg": {"a": 1, "b": 2}}
        with pytest.raises(StateError, match="is not a number"):
            await state.incr("cfg")
        with pytest.raises(StateError, match="finite number"):
            await state.incr("count", float("nan"))
        with pytest.raises(StateError, match="expected a mapping"):
            await state.merge("cfg", [1])
        with pytest.raises(StateError, match="non-empty strings"):
            await state.set("", 1)
        with pytest.raises(StoreError, match="msgpack"):
            await state.set("x", object())
        assert state.applied_seq == 7  # refused ops never reached the log
    async with open_store(data_dir) as store:
        again = await KeyValueState.load(store, STREAM)
        assert again.to_dict() == {"count": 3.5, "cfg": {"a": 1, "b": 2}}


async def test_recovering_twice_gives_the_same_digest(data_dir: Path) -> None:
    rng = random.Random(7)
    async with open_store(data_dir) as store:
        state = await KeyValueState.load(store, STREAM)
        for i, op in enumerate(random_ops(rng, 300)):
            await run_op(state, op)
            if i % 70 == 69:
                await state.checkpoint()
        live = state.digest()
    digests = []
    for _ in range(2):
        async with open_store(data_dir) as store:
            digests.append((await KeyValueState.load(store, STREAM)).digest())
    assert digests == [live, live]


async def test_checkpoint_plus_replay_equals_full_replay(data_dir: Path) -> None:
    rng = random.Random(11)
    model: dict = {}
    async with open_store(data_dir) as store:
        state = await KeyValueState.load(store, STREAM)
        checked = 0
        for i, op in enumerate(random_ops(rng, 400)):
            await run_op(state, op)
            if i % 50 == 49:
                # keep_tail covers everything, so the whole log stays for the full replay
                await state.checkpoint(keep_tail=10**6)
                loaded = await KeyValueState.load(store, STREAM)
                assert loaded.checkpoint_seq == state.applied_seq
                replayed, last = full_replay(store, STREAM)
                assert last == state.applied_seq
                assert loaded.digest() == digest_of(replayed) == state.digest()
                checked += 1
        for _, op in store.read(STREAM):
            apply_op(model, op)
    assert checked == 8
    assert digest_of(model) == state.digest()


async def test_statebook_checkpoints_every_n_ops_off_the_hot_path(data_dir: Path) -> None:
    async with open_store(data_dir) as store:
        book = StateBook(store, every_ops=10, every_s=3600)
        state = await book.open(STREAM)
        assert await book.open(STREAM) is state
        for _ in range(25):
            await state.incr("n")
        # Writers never checkpoint: nothing is written until the book's task runs.
        assert store.checkpoints(STREAM) == []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(book.run)
            await until(lambda: state.checkpoint_seq == 25, what="an ops-triggered checkpoint")
            for _ in range(5):
                await state.incr("n")
            await trio.testing.wait_all_tasks_blocked()
            assert state.checkpoint_seq == 25  # 5 < every_ops: not due yet
            for _ in range(5):
                await state.incr("n")
            await until(lambda: state.checkpoint_seq == 35, what="second checkpoint")
            nursery.cancel_scope.cancel()
        assert [s for s, _ in store.checkpoints(STREAM)] == [25, 35]


async def test_statebook_checkpoints_every_t_seconds(data_dir: Path) -> None:
    async with open_store(data_dir) as store:
        book = StateBook(store, every_ops=10**6, every_s=0.05)
        state = await book.open(STREAM)
        await state.set("a", 1)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(book.run)
            await until(lambda: state.checkpoint_seq == 1, what="a timed checkpoint")
            nursery.cancel_scope.cancel()
        assert book.checkpoints_written >= 1


async def test_a_malformed_op_record_is_named_by_seq(data_dir: Path) -> None:
    async with open_store(data_dir) as store:
        await store.append_many(STREAM, [["set", "a", 1]] * 10 + [["set", ["unhashable"], 1]]
                                + [["set", "b", 2]])
        with pytest.raises(StoreError, match="seq 11: cannot replay"):
            await KeyValueState.load(store, STREAM)
        await store.append_many("s2", [["set", "a", 1], ["frobnicate", "a", 1]])
        with pytest.raises(StoreError, match=r"seq 2: cannot replay .*unknown state op"):
            await KeyValueState.load(store, "s2")
        await store.append_many("s3", [["set", "a", 1], "not an op"])
        with pytest.raises(StoreError, match="seq 2: cannot replay"):
            await KeyValueState.load(store, "s3")


async def test_state_is_a_read_only_mapping_whose_copies_are_its_own(data_dir: Path) -> None:
    async with open_store(data_dir) as store:
        state = await KeyValueState.load(store, STREAM)
        await state.set("a", 1)
        await state.merge("m", {"x": 1})
        assert (len(state), sorted(state), "a" in state, state.get("zz")) == \
            (2, ["a", "m"], True, None)
        copy = state.to_dict()
        copy["a"] = 99
        assert state["a"] == 1
        with pytest.raises(TypeError):
            state["a"] = 2  # type: ignore[index]  # writes go through the log only
        assert await state.incr("n") == 1 and type(state["n"]) is int  # missing = 0
        assert await state.incr("f", 0.5) == 0.5


async def test_a_refused_op_changes_nothing_in_memory_or_on_disk(data_dir: Path) -> None:
    async with open_store(data_dir) as store:
        state = await KeyValueState.load(store, STREAM)
        await state.set("cfg", {"a": 1})
        before, seq = state.to_dict(), state.applied_seq
        for op in (state.incr("cfg"), state.incr("x", True), state.merge("cfg", "ab"),
                   state.delete(""), state.set(5, 1)):  # type: ignore[arg-type]
            with pytest.raises(StateError):
                await op
        assert (state.to_dict(), state.applied_seq, store.last_seq(STREAM)) == (before, seq, seq)


def test_the_digest_depends_on_content_not_insertion_order() -> None:
    assert digest_of({"a": 1, "b": [2]}) == digest_of({"b": [2], "a": 1})
    assert digest_of({"a": 1}) != digest_of({"a": 1.0}) != digest_of({"a": True})
    data: dict = {}
    for op in (["set", "a", 1], ["incr", "a", 2], ["merge", "m", {"k": 1}], ["del", "a", None]):
        apply_op(data, op)
    assert data == {"m": {"k": 1}}


async def test_statebook_shares_one_load_and_checkpoints_only_what_changed(
        data_dir: Path) -> None:
    async with open_store(data_dir) as store:
        book = StateBook(store, every_ops=3, every_s=3600)
        first, second = await gather(lambda: book.open(STREAM), lambda: book.open(STREAM))
        assert first is second  # two openers at once: one load, one shared state
        other = await book.open("agent/other/state")
        await first.set("a", 1)
        assert first.ops_since_checkpoint == 1
        assert await book.checkpoint_all(only_due=True) == 0  # 1 < every_ops
        assert await book.checkpoint_all() == 1  # only the changed one
        assert (first.ops_since_checkpoint, first.checkpoint_seq) == (0, 1)
        assert other.checkpoint_seq == 0 and store.checkpoints("agent/other/state") == []
        assert await book.checkpoint_all() == 0  # nothing new
        assert book.checkpoints_written == 1
