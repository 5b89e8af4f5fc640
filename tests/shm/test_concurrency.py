"""Real processes hammering one segment: nothing is lost, nothing is torn, dead writers are seen.

Every child attaches the segment file itself (as an agent process would), starts
at a barrier, and reports through the segment or its exit code (no pickling).
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import struct
import time
from pathlib import Path

import pytest
from shm._native import lib

from shm import (
    Counter,
    CounterBatch,
    Gauge,
    Histogram,
    Record,
    RecordBusyError,
    RecordWriterDiedError,
    Segment,
    snapshot,
)
from shm.metrics import word_pointer
from tests.shm.conftest import FORK, MILLION, PROCS, attach, run_all

# -- counters ---------------------------------------------------------------------


def _inc_a_million(path: Path, barrier) -> None:
    inc = Counter(attach(path), "hits").inc
    barrier.wait()
    for _ in range(MILLION):
        inc()


def test_four_processes_times_a_million_python_incs_is_exactly_four_million(
        seg: Segment, seg_path: Path) -> None:
    barrier = FORK.Barrier(PROCS)
    run_all(_inc_a_million, [(seg_path, barrier)] * PROCS)
    assert Counter(seg, "hits").value() == PROCS * MILLION


def _repeat_a_million(path: Path, barrier) -> None:
    c = Counter(attach(path), "hits")
    barrier.wait()
    lib.op_add_i64_repeat(word_pointer(c), 1, MILLION)  # back-to-back atomic adds: worst contention


def test_four_processes_times_a_million_native_adds_is_exactly_four_million(
        seg: Segment, seg_path: Path) -> None:
    barrier = FORK.Barrier(PROCS)
    run_all(_repeat_a_million, [(seg_path, barrier)] * PROCS)
    assert Counter(seg, "hits").value() == PROCS * MILLION


def _racy_increments(path: Path, barrier) -> None:
    c = Counter(attach(path), "racy")
    barrier.wait()
    p, load, store = word_pointer(c), lib.op_load_i64, lib.op_store_i64
    for _ in range(200_000):
        store(p, load(p) + 1)  # load then store: not one atomic step


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs two cores to race")
def test_control_non_atomic_increments_do_lose_updates(seg: Segment, seg_path: Path) -> None:
    """The harness really runs the children at once: a racy increment loses counts."""
    barrier = FORK.Barrier(PROCS)
    run_all(_racy_increments, [(seg_path, barrier)] * PROCS)
    assert Counter(seg, "racy").value() < PROCS * 200_000


def _batch_adds(path: Path, barrier) -> None:
    seg = attach(path)
    batch = CounterBatch([Counter(seg, f"b{i}") for i in range(3)])
    barrier.wait()
    for _ in range(100_000):
        batch.add([1, 2, 3])


def test_batch_adds_from_four_processes_lose_nothing(seg: Segment, seg_path: Path) -> None:
    barrier = FORK.Barrier(PROCS)
    run_all(_batch_adds, [(seg_path, barrier)] * PROCS)
    batch = CounterBatch([Counter(seg, f"b{i}") for i in range(3)])
    assert batch.values() == [PROCS * 100_000 * k for k in (1, 2, 3)]


# -- doubles: CAS loops -----------------------------------------------------------


def _double_adds(path: Path, barrier) -> None:
    seg = attach(path)
    add = Gauge(seg, "g").add
    observe = Histogram(seg, "h", [0.1, 1.0]).observe
    barrier.wait()
    for _ in range(200_000):
        add(0.5)  # 0.5 steps are exact in binary: any lost CAS shows in the total
        observe(0.25)


def test_concurrent_double_adds_lose_nothing(seg: Segment, seg_path: Path) -> None:
    barrier = FORK.Barrier(PROCS)
    run_all(_double_adds, [(seg_path, barrier)] * PROCS)
    assert Gauge(seg, "g").value() == PROCS * 200_000 * 0.5
    h = Histogram(seg, "h", [0.1, 1.0]).value()
    assert h["buckets"] == [0, PROCS * 200_000, 0]
    assert h["count"] == PROCS * 200_000 and h["sum"] == PROCS * 200_000 * 0.25


# -- directory claims -------------------------------------------------------------


def _claim_names(path: Path, barrier, seed: int) -> None:
    seg = attach(path)
    names = [f"n{i}" for i in range(20)]
    random.Random(seed).shuffle(names)
    barrier.wait()
    for name in names:
        Counter(seg, name).inc()


def test_processes_registering_the_same_names_at_once_share_one_slot_each(
        seg: Segment, seg_path: Path) -> None:
    barrier = FORK.Barrier(PROCS)
    run_all(_claim_names, [(seg_path, barrier, seed) for seed in range(PROCS)])
    names = [name for _, name, _ in seg.slots()]
    assert sorted(names) == sorted(f"n{i}" for i in range(20))  # no duplicates, none lost
    assert all(Counter(seg, f"n{i}").value() == PROCS for i in range(20))


def test_a_claimer_that_died_mid_claim_is_freed(seg: Segment, seg_path: Path) -> None:
    def child() -> None:
        s = attach(seg_path)
        state = s._words + s._entry_word(0)
        assert lib.op_cas_i64(state, 0, -os.getpid()) == 1  # claimed, never published
        os._exit(0)

    p = FORK.Process(target=child)
    p.start()
    p.join(30)
    assert lib.op_load_i64(seg._words + seg._entry_word(0)) == -p.pid
    c = Counter(seg, "mine")
    assert seg.find("mine") == (0, 1)  # the dead claim was freed and reused
    c.inc()
    assert [name for _, name, _ in seg.slots()] == ["mine"]


# -- seqlock records --------------------------------------------------------------

RECORD_SIZE = 240  # the largest record: 30 words, so a tear has many places to show


def make_payload(writer: int, n: int) -> bytes:
    body = struct.pack("<2q", writer, n) + bytes(
        (writer * 31 + n * 7 + i) & 0xFF for i in range(RECORD_SIZE - 16 - 8))
    return body + hashlib.blake2b(body, digest_size=8).digest()


def intact(payload: bytes) -> bool:
    return hashlib.blake2b(payload[:-8], digest_size=8).digest() == payload[-8:]


def _writer(path: Path, barrier, writer: int, min_writes: int, min_reads: int) -> None:
    seg = attach(path)
    rec = Record(seg, "status", RECORD_SIZE)
    done, reads = Counter(seg, "writers_done"), Counter(seg, "reads")
    changes, seen = Counter(seg, "changes"), Counter(seg, f"seen_writer_{writer}")
    barrier.wait()
    n = 0
    # Keep writing until the readers have read plenty and seen many versions from
    # this writer: overlap is guaranteed, not left to the scheduler (on a busy box
    # readers can spin through many reads while the writers are descheduled). The
    # cap only bounds a run whose readers died.
    while n < min_writes or ((reads.value() < min_reads or changes.value() <= 100
                              or seen.value() <= 10) and n < 5_000_000):
        n += 1
        rec.write(make_payload(writer, n))
    done.inc()


def _reader(path: Path, barrier, writers: int) -> None:
    seg = attach(path)
    rec = Record(seg, "status", RECORD_SIZE)
    done = Counter(seg, "writers_done")
    reads, torn, changes = (Counter(seg, n) for n in ("reads", "torn", "changes"))
    seen = [Counter(seg, f"seen_writer_{w}") for w in range(writers)]
    barrier.wait()
    last = None
    while done.value() < writers:
        payload = rec.read()
        reads.inc()
        if not intact(payload):
            torn.inc()
            continue
        head = payload[:16]
        if head != last:
            changes.inc()
            last = head
            writer, n = struct.unpack("<2q", head)
            if n:
                seen[writer].inc()


def test_concurrent_seqlock_writers_and_readers_never_see_a_torn_record(
        seg: Segment, seg_path: Path) -> None:
    writers, readers, min_reads = 2, 2, 50_000
    Record(seg, "status", RECORD_SIZE).write(make_payload(0, 0))
    barrier = FORK.Barrier(writers + readers)
    procs = [FORK.Process(target=_writer, args=(seg_path, barrier, w, 10_000, min_reads))
             for w in range(writers)]
    procs += [FORK.Process(target=_reader, args=(seg_path, barrier, writers))
              for _ in range(readers)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0] * len(procs)
    value = {name: Counter(seg, name).value() for name in
             ("reads", "torn", "changes", "seen_writer_0", "seen_writer_1")}
    assert value["torn"] == 0, value
    assert value["reads"] >= min_reads, value
    # The readers ran while both writers wrote: they saw many versions from each.
    assert value["changes"] > 100 and value["seen_writer_0"] > 10 \
        and value["seen_writer_1"] > 10, value
    assert intact(Record(seg, "status", RECORD_SIZE).read())


def test_the_checksum_catches_a_mixed_record(seg: Segment) -> None:
    """Control for the test above: bytes from two versions fail the check."""
    a, b = make_payload(0, 1), make_payload(1, 2)
    assert intact(a) and intact(b)
    assert not intact(a[:120] + b[120:])


def _begin_write_and_hold(path: Path, ready_w: int, hold_r: int) -> None:
    """Enter a record write (sequence odd, lock = our pid), half-write, then hold there."""
    seg = attach(path)
    rec = Record(seg, "status", 16)
    assert lib.op_seq_begin(rec._ptr, os.getpid(), 1000) == 0
    lib.op_store_i64(rec._ptr + 2, 0x0BAD)  # half of a new value
    os.write(ready_w, b"w")
    os.read(hold_r, 1)  # never answered: killed here


@pytest.fixture
def start_holder(seg_path: Path):
    """Starts a child that holds a record write open until killed (killed at teardown)."""
    fds: list[int] = []
    procs = []

    def start():
        ready_r, ready_w = os.pipe()
        hold_r, hold_w = os.pipe()  # hold_w stays open: the child's read never returns
        fds.extend((ready_r, ready_w, hold_r, hold_w))
        p = FORK.Process(target=_begin_write_and_hold, args=(seg_path, ready_w, hold_r))
        p.start()
        procs.append(p)
        assert os.read(ready_r, 1) == b"w"
        return p

    yield start
    for p in procs:
        if p.exitcode is None:
            os.kill(p.pid, signal.SIGKILL)
            p.join()
    for fd in fds:
        os.close(fd)


def test_a_writer_killed_mid_write_is_detected_not_spun_on(seg: Segment, start_holder) -> None:
    rec = Record(seg, "status", 16)
    rec.write(b"old-value-16byte")
    p = start_holder()
    os.kill(p.pid, signal.SIGKILL)
    # Wait for its death without reaping it: a zombie must count as dead too.
    os.waitid(os.P_PID, p.pid, os.WEXITED | os.WNOWAIT)
    started = time.monotonic()
    with pytest.raises(RecordWriterDiedError, match=f"pid {p.pid} died in the middle"):
        rec.read(timeout=30)
    assert time.monotonic() - started < 5  # found by pid, far from the 30 s timeout
    p.join()
    # The next write takes the dead writer's lock over and repairs the record.
    rec.write(b"new-value-16byte", timeout=30)
    assert rec.read() == b"new-value-16byte"
    assert lib.op_load_i64(rec._ptr + 1) == 0  # unlocked


def test_a_live_writer_holding_a_record_times_out_readers_and_writers(
        seg: Segment, start_holder) -> None:
    rec = Record(seg, "status", 16)
    rec.write(b"old-value-16byte")
    p = start_holder()
    try:
        with pytest.raises(RecordBusyError, match=f"pid {p.pid}"):
            rec.read(timeout=0.2)
        with pytest.raises(RecordBusyError, match=f"writer pid {p.pid} has held it"):
            rec.write(b"new-value-16byte", timeout=0.2)
    finally:
        os.kill(p.pid, signal.SIGKILL)
        p.join()
    rec.write(b"new-value-16byte")
    assert rec.read() == b"new-value-16byte"


def test_a_dead_writer_record_shows_as_an_error_in_the_snapshot(
        seg: Segment, start_holder) -> None:
    Counter(seg, "ok").inc()
    Record(seg, "status", 16).write(b"old-value-16byte")
    p = start_holder()
    os.kill(p.pid, signal.SIGKILL)
    p.join()
    snap = snapshot(seg)
    assert snap["ok"]["value"] == 1  # the rest of the segment still reads
    assert snap["status"]["value"] is None
    assert "died in the middle of a write" in snap["status"]["error"]
