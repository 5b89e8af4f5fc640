"""Issue 3 items 4 and 5: key-value state, checkpoints, retention and recovery."""

from __future__ import annotations

import logging
import os
import random
import struct
from pathlib import Path

import lmdb
import pytest
import trio

from runtime.store import (
    KeyValueState,
    StateBook,
    StateError,
    StoreError,
    StoreOptions,
    open_store,
)
from runtime.store.kvstate import apply_op, digest_of

from .conftest import until

STREAM = "agent/demo/state"


def random_ops(rng: random.Random, count: int) -> list[tuple[str, str, object]]:
    keys = [f"k{i}" for i in range(25)]
    ops: list[tuple[str, str, object]] = []
    for _ in range(count):
        kind = rng.choice(("set", "set", "incr", "incr", "merge", "del"))
        key = rng.choice(keys)
        if kind == "set":
            arg = rng.choice([rng.randrange(-5, 5), "text", [1, 2], {"a": 1}, None, 2.5, True])
        elif kind == "incr":
            arg = rng.choice([1, 2, -3, 0.25])
        elif kind == "merge":
            arg = {rng.choice("abc"): rng.randrange(100)}
        else:
            arg = None
        ops.append((kind, key, arg))
    return ops


async def run_op(state: KeyValueState, op: tuple[str, str, object]) -> None:
    kind, key, arg = op
    if kind == "set":
        await state.set(key, arg)
    elif kind == "del":
        await state.delete(key)
    elif kind == "incr":
        current = state.get(key, 0)
        if isinstance(current, bool) or not isinstance(current, int | float):
            await state.set(key, 0)  # incr refuses non-numbers; keep the model total
        await state.incr(key, arg)
    else:
        await state.merge(key, arg)


def full_replay(store, stream: str) -> tuple[dict, int]:
    data: dict = {}
    last = store.replay(stream, 1, lambda seq, op: apply_op(data, op))
    return data, last


def corrupt_on_disk(data_dir: Path, blob: bytes) -> int:
    """Flip one byte in the middle of `blob` wherever it sits in data.mdb; how many copies."""
    path = data_dir / "data.mdb"
    raw = bytearray(path.read_bytes())
    mid = len(blob) // 2
    copies, start = 0, 0
    while (at := raw.find(blob, start)) >= 0:
        raw[at + mid] ^= 0x40
        copies += 1
        start = at + len(blob)
    path.write_bytes(bytes(raw))
    return copies


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


async def test_checkpoint_and_prune_commit_together_with_retention(data_dir: Path) -> None:
    async with open_store(data_dir, StoreOptions(keep_checkpoints=2)) as store:
        state = await KeyValueState.load(store, STREAM)
        for i in range(10):
            await state.set(f"k{i}", i)
        before = store.commits
        assert await state.checkpoint() == 10
        assert store.commits == before + 1  # blob write + pruning: one transaction
        assert store.first_seq(STREAM) == 1  # first checkpoint: fallback is a full replay
        for _ in range(10):
            await state.incr("n")
        await state.checkpoint()
        assert [s for s, _ in store.checkpoints(STREAM)] == [10, 20]
        assert store.first_seq(STREAM) == 11  # WAL after the older checkpoint stays
        for _ in range(10):
            await state.incr("n")
        await state.checkpoint()
        assert [s for s, _ in store.checkpoints(STREAM)] == [20, 30]
        assert store.first_seq(STREAM) == 21
        before = store.commits
        assert await state.checkpoint() == 30  # nothing new: nothing written
        assert store.commits == before


async def test_keep_tail_keeps_covered_records(data_dir: Path) -> None:
    async with open_store(data_dir, StoreOptions(keep_checkpoints=1)) as store:
        state = await KeyValueState.load(store, STREAM)
        for _i in range(20):
            await state.incr("n")
        await state.checkpoint(keep_tail=5)
        assert store.first_seq(STREAM) == 16
        assert [s for s, _ in store.checkpoints(STREAM)] == [20]


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


async def test_corrupt_newest_checkpoint_is_quarantined_and_state_still_exact(
        data_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    rng = random.Random(3)
    async with open_store(data_dir) as store:
        state = await KeyValueState.load(store, STREAM)
        for round_ in range(3):
            for op in random_ops(rng, 60):
                await run_op(state, op)
            # incompressible filler so the blob is large and unique in the file
            await state.set(f"blob{round_}", os.urandom(6000))
            await state.checkpoint()
        for op in random_ops(rng, 20):
            await run_op(state, op)
        expected, expected_seq = state.digest(), state.applied_seq
        (older, _), (newest, blob) = store.checkpoints(STREAM)
    assert corrupt_on_disk(data_dir, blob) >= 1
    caplog.set_level(logging.ERROR, logger="outpost.store")
    async with open_store(data_dir) as store:
        recovered = await KeyValueState.load(store, STREAM)
        assert recovered.digest() == expected
        assert recovered.applied_seq == expected_seq
        assert recovered.checkpoint_seq == older  # the previous one + a longer replay
        assert store.quarantined() == [(STREAM, newest)]
        kept, why = store.quarantined_checkpoint(STREAM, newest)
        assert len(kept) == len(blob) and kept != blob  # the damaged bytes, as found
        assert "checksum mismatch" in why
        assert [s for s, _ in store.checkpoints(STREAM)] == [older]
        # Life goes on: a new checkpoint is written and retention resumes.
        await recovered.incr("after")
        assert await recovered.checkpoint() == expected_seq + 1
    assert any("QUARANTINED bad checkpoint" in r.getMessage() and r.levelno == logging.ERROR
               for r in caplog.records)
    async with open_store(data_dir) as store:
        final = await KeyValueState.load(store, STREAM)
        assert final.get("after") == 1
        assert final.checkpoint_seq == expected_seq + 1


async def test_every_checkpoint_bad_refuses_rather_than_loading_partial_state(
        data_dir: Path) -> None:
    async with open_store(data_dir) as store:
        state = await KeyValueState.load(store, STREAM)
        for round_ in range(3):
            for _i in range(30):
                await state.incr("n")
            await state.set(f"blob{round_}", os.urandom(6000))
            await state.checkpoint()
        blobs = [b for _, b in store.checkpoints(STREAM)]
    for blob in blobs:
        assert corrupt_on_disk(data_dir, blob) >= 1
    async with open_store(data_dir) as store:
        with pytest.raises(StoreError, match="no verified checkpoint covers them"):
            await KeyValueState.load(store, STREAM)
        assert len(store.quarantined()) == 2


async def test_keep_one_checkpoint_means_no_fallback_and_a_loud_error(data_dir: Path) -> None:
    async with open_store(data_dir, StoreOptions(keep_checkpoints=1)) as store:
        state = await KeyValueState.load(store, STREAM)
        for _i in range(30):
            await state.incr("n")
        await state.set("blob", os.urandom(6000))
        await state.checkpoint()
        [(_, blob)] = store.checkpoints(STREAM)
    assert corrupt_on_disk(data_dir, blob) >= 1
    async with open_store(data_dir, StoreOptions(keep_checkpoints=1)) as store:
        with pytest.raises(StoreError, match="state rebuilt only up to seq 0"):
            await KeyValueState.load(store, STREAM)


async def test_misfiled_or_garbage_checkpoints_are_quarantined(data_dir: Path) -> None:
    async with open_store(data_dir) as store:
        state = await KeyValueState.load(store, STREAM)
        for i in range(12):
            await state.incr("n")
            if i in (3, 7):
                await state.checkpoint()
        [(_, good3), _] = store.checkpoints(STREAM)
    # Plant, behind the store's back, a valid blob under the wrong seq and garbage.
    env = lmdb.open(str(data_dir), max_dbs=8)
    db = env.open_db(b"checkpoints")
    key = STREAM.encode() + b"\0"
    with env.begin(write=True, db=db) as txn:
        txn.put(key + struct.pack(">Q", 10), good3)
        txn.put(key + struct.pack(">Q", 11), b"OPCK\x01 not a checkpoint")
    env.close()
    async with open_store(data_dir) as store:
        state = await KeyValueState.load(store, STREAM)
        assert state.get("n") == 12
        assert state.checkpoint_seq == 8
        assert sorted(seq for _, seq in store.quarantined()) == [10, 11]
        assert "key says 10" in store.quarantined_checkpoint(STREAM, 10)[1]


async def test_wal_gap_is_refused(data_dir: Path) -> None:
    async with open_store(data_dir) as store:
        await store.append_many(STREAM, [["incr", "n", 1]] * 10)
        await store.prune(STREAM, 4, uncovered=True)  # a gap nothing covers
        with pytest.raises(StoreError, match="WAL jumps from seq 0 to 5"):
            await KeyValueState.load(store, STREAM)


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


async def test_zstd_level_is_used(data_dir: Path) -> None:
    payload = b"abcdefgh" * 50_000
    sizes = {}
    for level in (1, 19):
        async with open_store(data_dir / str(level), StoreOptions(zstd_level=level)) as store:
            await store.append("s", 1)
            await store.write_checkpoint("s", 1, payload)
            sizes[level] = len(store.checkpoints("s")[0][1])
            assert await store.load_checkpoint("s") == (1, payload)
    assert sizes[19] < sizes[1]


async def test_gap_or_damaged_record_in_the_middle_is_named(data_dir: Path) -> None:
    async with open_store(data_dir) as store:
        await store.append_many(STREAM, [["incr", "n", 1]] * 9000)
        await store.append("zz-after", 1)  # a later stream right behind this one
    key = STREAM.encode() + b"\0"
    env = lmdb.open(str(data_dir), max_dbs=8)
    wal = env.open_db(b"wal")
    with env.begin(write=True, db=wal) as txn:
        txn.delete(key + struct.pack(">Q", 5000))
    env.close()
    async with open_store(data_dir) as store:
        with pytest.raises(StoreError, match="WAL jumps from seq 4999 to 5001"):
            await KeyValueState.load(store, STREAM)
        assert len(store.read(STREAM)) == 8999  # reads still work
    env = lmdb.open(str(data_dir), max_dbs=8)
    wal = env.open_db(b"wal")
    with env.begin(write=True, db=wal) as txn:
        txn.put(key + struct.pack(">Q", 5000), b"\xc1\xc1")  # not msgpack
    env.close()
    async with open_store(data_dir) as store:
        with pytest.raises(StoreError, match="seq 5000: stored value is not valid msgpack"):
            await KeyValueState.load(store, STREAM)


async def test_replay_chunks_matches_read(data_dir: Path) -> None:
    async with open_store(data_dir) as store:
        await store.append_many("a", list(range(10_000)))
        await store.append_many("b", ["x"] * 5)
        runs: list[tuple[int, int]] = []
        got: list[int] = []

        def take(first: int, records: list) -> None:
            runs.append((first, len(records)))
            got.extend(records)

        assert store.replay_chunks("a", 3, take, chunk=4096) == 10_000
        assert got == list(range(2, 10_000))
        assert runs == [(3, 4096), (4099, 4096), (8195, 1806)]
        assert store.replay_chunks("a", 10_001, take) == 10_000
        assert store.replay_chunks("none", 1, take) == 0
        seen: list[tuple[int, object]] = []
        assert store.replay("b", 1, lambda seq, rec: seen.append((seq, rec))) == 5
        assert seen == store.read("b")


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
