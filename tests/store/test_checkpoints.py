"""Issue 3 items 4 and 5: checkpoints, retention, quarantine and recovery from the
store's side (the key-value state itself: test_kvstate.py)."""

from __future__ import annotations

import logging
import os
import random
import struct
from pathlib import Path

import lmdb
import pytest

from runtime.store import KeyValueState, StoreError, StoreOptions, open_store

from .state_ops import random_ops, run_op

STREAM = "agent/demo/state"


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


