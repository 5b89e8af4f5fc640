"""Issue 3 items 1 and 7: the store's API, its refusals, and its process rules."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import trio

from runtime.store import (
    Store,
    StoreClosedError,
    StoreError,
    StoreOptions,
    open_store,
)
from runtime.store.codec import decode_checkpoint

from .conftest import gather, until
from .crash_harness import ROOT


async def test_append_returns_gap_free_seqs_and_read_returns_records(data_dir: Path) -> None:
    async with open_store(data_dir) as store:
        seqs = [await store.append("events", {"i": i, "b": b"\x00\x01"}) for i in range(5)]
        assert seqs == [1, 2, 3, 4, 5]
        assert store.read("events") == [(i + 1, {"i": i, "b": b"\x00\x01"}) for i in range(5)]
        assert [s for s, _ in store.read("events", from_seq=3)] == [3, 4, 5]
        assert [s for s, _ in store.read("events", from_seq=2, limit=2)] == [2, 3]
        assert store.read("events", limit=0) == []
        assert store.read("nothing-here") == []
        assert store.last_seq("events") == 5
        assert store.first_seq("events") == 1
        assert store.last_seq("nothing-here") == 0


async def test_append_many_is_one_commit_with_consecutive_seqs(data_dir: Path) -> None:
    async with open_store(data_dir) as store:
        await store.append("a", "first")
        before = store.commits
        seqs = await store.append_many("a", [f"r{i}" for i in range(100)])
        assert seqs == list(range(2, 102))
        assert store.commits == before + 1
        assert store.read("a", 100) == [(100, "r98"), (101, "r99")]
        assert await store.append_many("a", []) == []


async def test_streams_interleave_without_losing_records(data_dir: Path) -> None:
    # Regression: MDB_APPEND against another stream's last key made py-lmdb
    # return False, and acked records were silently not stored.
    async with open_store(data_dir) as store:
        for i in range(20):
            await store.append("b-stream", i)
            await store.append("a-stream", i)
            await store.append_many("a-stream", [i, i])
            await store.append_many("c-stream", [i])
    async with open_store(data_dir) as store:
        assert [r for _, r in store.read("a-stream")] == [x for i in range(20) for x in (i, i, i)]
        assert [r for _, r in store.read("b-stream")] == list(range(20))
        assert [r for _, r in store.read("c-stream")] == list(range(20))
        assert store.streams() == ["a-stream", "b-stream", "c-stream"]


async def test_seqs_continue_after_reopen(data_dir: Path) -> None:
    async with open_store(data_dir) as store:
        await store.append_many("s", [1, 2, 3])
        await store.write_checkpoint("s", 3, b"state")
        await store.append("other", 0)
    async with open_store(data_dir) as store:
        assert store.last_seq("s") == 3
        assert await store.append("s", 4) == 4
        assert store.streams() == ["other", "s"]


async def test_checkpoint_roundtrip_and_newest_good_wins(data_dir: Path) -> None:
    async with open_store(data_dir) as store:
        await store.append_many("s", list(range(10)))
        assert await store.load_checkpoint("s") is None
        await store.write_checkpoint("s", 4, b"four")
        await store.write_checkpoint("s", 9, b"nine" * 1000)
        assert await store.load_checkpoint("s") == (9, b"nine" * 1000)
        blobs = store.checkpoints("s")
        assert [seq for seq, _ in blobs] == [4, 9]
        assert decode_checkpoint(blobs[0][1]) == (4, b"four")


async def test_checkpoint_refuses_bad_seqs_with_clear_errors(data_dir: Path) -> None:
    async with open_store(data_dir) as store:
        await store.append_many("s", [1, 2, 3])
        with pytest.raises(StoreError, match="past the stream's last seq 3"):
            await store.write_checkpoint("s", 4, b"x")
        await store.write_checkpoint("s", 2, b"x")
        with pytest.raises(StoreError, match="not newer than the stored one at seq 2"):
            await store.write_checkpoint("s", 2, b"y")
        with pytest.raises(StoreError, match="covered_seq must be an int >= 1"):
            await store.write_checkpoint("s", 0, b"y")
        assert [seq for seq, _ in store.checkpoints("s")] == [2]


async def test_prune_stops_at_what_checkpoints_cover(data_dir: Path) -> None:
    async with open_store(data_dir, StoreOptions(keep_checkpoints=2)) as store:
        await store.append_many("s", list(range(30)))
        with pytest.raises(StoreError, match="past its newest checkpoint"):
            await store.prune("s", 5)
        await store.write_checkpoint("s", 10, b"a")
        await store.write_checkpoint("s", 20, b"b")
        assert store.first_seq("s") == 11  # retention pruned up to the older checkpoint
        assert await store.prune("s", 15) == 5
        assert store.first_seq("s") == 16
        with pytest.raises(StoreError, match="past its newest checkpoint"):
            await store.prune("s", 21)
        # A plain log without checkpoints may prune, but must say so.
        await store.append_many("log", list(range(10)))
        assert await store.prune("log", 4, uncovered=True) == 4
        assert [s for s, _ in store.read("log")] == list(range(5, 11))


async def test_bad_input_gets_an_error_saying_what_to_fix(data_dir: Path) -> None:
    async with open_store(data_dir, StoreOptions(max_record_bytes=1000)) as store:
        with pytest.raises(StoreError, match="stream name must be"):
            await store.append("", 1)
        with pytest.raises(StoreError, match="stream name must be"):
            await store.append("a\0b", 1)
        with pytest.raises(StoreError, match="stream name must be a string"):
            await store.append(["not", "a", "name"], 1)  # type: ignore[arg-type]
        with pytest.raises(StoreError, match="stream name must be"):
            await store.append("x" * 201, 1)
        with pytest.raises(StoreError, match="cannot be stored as msgpack"):
            await store.append("s", object())
        with pytest.raises(StoreError, match="exceeds the 1000-byte limit"):
            await store.append("s", "x" * 2000)
        with pytest.raises(StoreError, match="cannot be stored as msgpack"):
            await store.append_many("s", [1, object()])
        assert store.read("s") == []  # nothing of a refused batch was stored
    for bad, match in [({"durability": "sometimes"}, "durability"),
                       ({"batch_window_ms": 101}, "batch_window_ms"),
                       ({"map_size": 1 << 20, "map_size_max": 1 << 19}, "map_size_max"),
                       ({"max_batch": 0}, "max_batch"),
                       ({"keep_checkpoints": 0}, "keep_checkpoints")]:
        with pytest.raises(StoreError, match=match):
            StoreOptions(**bad)


async def test_a_refused_op_fails_alone_in_its_batch(data_dir: Path) -> None:
    """A bad checkpoint batched with good appends must not take them down."""
    async with open_store(data_dir) as store:
        await store.append("s", 0)
        release = threading.Event()
        entered = threading.Event()
        sizes: list[int] = []

        def before(batch_no: int, ops: list) -> None:
            if batch_no == 2:  # hold the first batch so the rest queue up behind it
                entered.set()
                release.wait(10)

        store.set_commit_hooks(before=before, after=lambda n, ops: sizes.append(len(ops)))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(store.flush)
            await trio.to_thread.run_sync(entered.wait, 10)
            goods = [lambda i=i: store.append("s", i) for i in range(10)]
            bad = [lambda: store.write_checkpoint("s", 999, b"nope")]
            results: list[object] = []

            async def run_all() -> None:
                results.extend(await gather(*goods, *bad))

            nursery.start_soon(run_all)
            await until(lambda: store._writer.queued() >= 11, what="11 queued ops")
            release.set()
        assert sorted(results[:10]) == list(range(2, 12))
        assert isinstance(results[10], StoreError)
        assert "past the stream's last seq" in str(results[10])
        assert sizes[-1] == 10  # one commit carried all ten appends
        assert len(store.read("s")) == 11


async def test_second_opener_is_refused(data_dir: Path) -> None:
    async with open_store(data_dir):
        # Another process: the data-dir lock names the holder.
        other = subprocess.run(
            [sys.executable, "-c",
             "import sys, trio\n"
             "from runtime.store import open_store, DataDirLockedError\n"
             "async def main():\n"
             "    try:\n"
             "        async with open_store(sys.argv[1]):\n"
             "            print('opened')\n"
             "    except DataDirLockedError as exc:\n"
             "        print('refused:', exc)\n"
             "trio.run(main)\n", str(data_dir)],
            cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
        assert other.stdout.startswith("refused:"), other.stdout + other.stderr
        assert f"in use by another outpost process (pid {os.getpid()})" in other.stdout
        # This process again: LMDB refuses a second env on one path, clearly.
        with pytest.raises(StoreError, match="already open in this process"):
            Store(data_dir, StoreOptions())


async def test_writes_after_close_are_refused(data_dir: Path) -> None:
    async with open_store(data_dir) as store:
        await store.append("s", 1)
    with pytest.raises(StoreClosedError):
        await store.append("s", 2)
    async with open_store(data_dir) as store:
        assert store.read("s") == [(1, 1)]


async def test_store_is_refused_in_a_forked_child(data_dir: Path) -> None:
    async with open_store(data_dir) as store:
        await store.append("s", "parent")
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: report what the store did, never touch trio or the env
            code = 0
            try:
                outcomes = []
                for attempt in (lambda: store.read("s"), lambda: store.append("s", 1).send(None),
                                lambda: store.checkpoints("s")):
                    try:
                        attempt()
                        outcomes.append("used")
                    except StoreError as exc:
                        outcomes.append("refused" if "across fork" in str(exc) else repr(exc))
                os.write(w, ",".join(outcomes).encode())
            except BaseException:
                code = 1
            finally:
                os._exit(code)
        os.close(w)
        _, status = os.waitpid(pid, 0)
        with os.fdopen(r, "rb") as f:
            report = f.read().decode()
        assert os.waitstatus_to_exitcode(status) == 0
        assert report == "refused,refused,refused"
        # The parent's store is untouched by the child.
        assert await store.append("s", "after fork") == 2


def _lmdb_process(data_dir: Path, in_txn: bool) -> subprocess.Popen:
    """A process with the env open (and a read txn if `in_txn`); waits for stdin EOF."""
    code = ("import lmdb, sys; env = lmdb.open(sys.argv[1], max_dbs=8, readonly=True); "
            + ("txn = env.begin(); " if in_txn else "")
            + "sys.stdout.write('open\\n'); sys.stdout.flush(); sys.stdin.read()")
    proc = subprocess.Popen([sys.executable, "-c", code, str(data_dir)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "open"
    return proc


async def test_open_clears_stale_reader_slots_of_killed_processes(data_dir: Path) -> None:
    async with open_store(data_dir) as store:
        await store.append("s", 1)
    # LMDB resets its reader table when the first process opens the env, so a
    # stale slot matters (and reader_check has work) while some other process
    # keeps the env open: a holder stays, a reader dies inside its transaction.
    holder = _lmdb_process(data_dir, in_txn=False)
    victim = _lmdb_process(data_dir, in_txn=True)
    try:
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        async with open_store(data_dir) as store:
            assert store.stale_readers_cleared == 1
            assert store.read("s") == [(1, 1)]
            assert store.reader_check() == 0
    finally:
        for proc in (victim, holder):
            if proc.poll() is None:
                proc.kill()
            proc.wait()
