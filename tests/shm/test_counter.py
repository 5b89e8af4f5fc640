"""Counter, the native type: one count per slot across objects, mappings and processes,
an owned mapping (no use-after-unmap), clear errors for bad input (with the other
metric types in test_metric_types.py), and final.
"""

from __future__ import annotations

import gc
import weakref
from pathlib import Path

import pytest
from shm._native import lib

from shm import Counter, CounterBatch, Segment
from shm.metrics import word_pointer
from shm.segment import COUNTER
from tests.shm.conftest import FORK, MILLION, PROCS, attach, run_all


def test_objects_and_mappings_of_one_slot_share_one_count(seg: Segment, seg_path: Path) -> None:
    a, b = Counter(seg, "x"), Counter(seg, "x")
    a.inc()
    b.inc()
    assert b.add(3) == 5
    assert a.value() == b.value() == 5
    y = Counter(seg, "y")
    y.inc()
    assert (a.value(), y.value()) == (5, 1)
    other = Counter(attach(seg_path), "x")  # another mapping of the file, the same word
    other.inc()
    assert a.value() == 6
    assert (a.name, y.name) == ("x", "y")
    assert repr(a) == "Counter('x', value=6)"


def test_the_word_is_the_slot_the_directory_names(seg: Segment) -> None:
    c = Counter(seg, "w")
    c.add(41)
    index = seg.claim("w", COUNTER)  # the existing slot, not a new one
    assert lib.op_load_i64(seg.slot_words(index)) == 41
    assert len(c.word) == 8 and not c.word.readonly


def test_add_keeps_int64_semantics_and_rejects_what_does_not_fit(seg: Segment) -> None:
    c = Counter(seg, "big")
    assert c.add(2**63 - 1) == 2**63 - 1
    assert c.add(1) == -(2**63)  # wraps like the C counter it is, never raises mid-add
    with pytest.raises(OverflowError):
        c.add(2**63)
    with pytest.raises(TypeError):
        c.add(1.5)
    assert c.value() == -(2**63)


def test_a_counter_keeps_its_mapping_after_the_segment_is_closed(
        seg: Segment, seg_path: Path) -> None:
    mine = attach(seg_path)
    inc = Counter(mine, "kept").inc
    mine.close()
    inc()  # writes to the still-mapped word: no crash, and the file sees it
    assert Counter(seg, "kept").value() == 1


def test_the_mapping_is_released_with_the_last_counter(seg: Segment, seg_path: Path) -> None:
    mine = attach(seg_path)
    c = Counter(mine, "gone")
    view = weakref.ref(c.word)
    mine.close()
    del c
    gc.collect()
    assert view() is None


def test_counter_is_final() -> None:
    # Subclasses would lose the specialised call path that is the type's reason to be.
    with pytest.raises(TypeError):
        type("Sub", (Counter,), {})


def test_batch_adds_and_reads_through_the_words(seg: Segment) -> None:
    counters = [Counter(seg, f"b{i}") for i in range(3)]
    batch = CounterBatch(counters)
    batch.add([1, 2, 3])
    batch.add([1, 0, 0])
    assert batch.values() == [2, 2, 3] == [c.value() for c in counters]
    p = word_pointer(counters[0])
    lib.op_inc_i64(p)
    assert counters[0].value() == 3


def _inc_inherited(c: Counter, barrier) -> None:
    barrier.wait()
    for _ in range(MILLION):
        c.inc()


def test_counter_made_before_fork_four_processes_times_a_million_is_exactly_four_million(
        seg: Segment) -> None:
    c = Counter(seg, "hits")
    barrier = FORK.Barrier(PROCS)
    run_all(_inc_inherited, [(c, barrier)] * PROCS)
    assert c.value() == PROCS * MILLION
