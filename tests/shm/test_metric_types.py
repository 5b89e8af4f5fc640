"""Gauge, Heartbeat and Histogram, the native types: one value per slot across objects,
mappings and processes, nothing lost under four processes, clear errors for bad input
(Counter's too), an owned mapping (no use-after-unmap), and final.
"""

from __future__ import annotations

import gc
import math
import time
import weakref
from pathlib import Path

import pytest
from shm._native import ffi, lib

from shm import Counter, Gauge, Heartbeat, Histogram, Segment, SegmentError
from shm.segment import GAUGE, HEARTBEAT, HISTOGRAM
from tests.shm.conftest import FORK, MILLION, PROCS, attach, run_all

# -- shared values ------------------------------------------------------------------


def test_gauges_of_one_slot_share_one_value(seg: Segment, seg_path: Path) -> None:
    a, b = Gauge(seg, "g"), Gauge(seg, "g")
    a.set(1.5)
    assert b.add(2) == 3.5  # ints convert as before
    assert a.value() == b.value() == 3.5
    other = Gauge(attach(seg_path), "g")  # another mapping of the file, the same word
    other.add(-0.5)
    assert a.value() == 3.0
    assert a.exchange(7.25) == 3.0 and b.value() == 7.25
    assert a.compare_and_set(7.25, 1.0) is True
    assert a.compare_and_set(7.25, 2.0) is False and b.value() == 1.0
    assert lib.op_load_f64(_double(seg, "g")) == 1.0  # the slot the directory names
    assert a.name == "g" and repr(a) == "Gauge('g', value=1.0)"
    assert len(a.word) == 8 and not a.word.readonly


def _double(seg: Segment, name: str):
    return ffi.cast("double *", seg.slot_words(seg.find(name)[0]))


def test_gauge_set_keeps_float64_semantics(seg: Segment) -> None:
    g = Gauge(seg, "f")
    g.set(float("inf"))
    assert g.value() == math.inf
    g.set(float("nan"))
    assert math.isnan(g.value())
    g.set(2**53 + 1)  # rounds like any float64
    assert g.value() == float(2**53)
    assert g.compare_and_set(float(2**53), -0.0) and math.copysign(1, g.value()) == -1


def test_heartbeats_of_one_slot_share_one_stamp(seg: Segment, seg_path: Path) -> None:
    a = Heartbeat(seg, "hb")
    assert a.age() is None  # never beat
    before = lib.op_now_ns()
    Heartbeat(attach(seg_path), "hb").beat()
    after = lib.op_now_ns()
    stamp = lib.op_load_i64(seg.slot_words(seg.find("hb")[0]))
    assert before <= stamp <= after  # CLOCK_MONOTONIC, exact
    age = a.age()
    assert age is not None and 0 <= age < 60
    assert a.name == "hb" and len(a.word) == 8


def test_heartbeat_age_grows_between_beats(seg: Segment) -> None:
    hb = Heartbeat(seg, "hb")
    hb.beat()
    first = hb.age()
    deadline = time.monotonic() + 10
    while hb.age() <= first and time.monotonic() < deadline:
        pass  # a busy machine may need a while for the clock to move on
    assert hb.age() > first
    hb.beat()
    assert hb.age() < 10


def test_histograms_of_one_slot_share_buckets_and_sum(seg: Segment, seg_path: Path) -> None:
    a = Histogram(seg, "h", [1, 2.5])
    b = Histogram(attach(seg_path), "h", [1.0, 2.5])
    assert a.bounds == b.bounds == [1.0, 2.5]
    assert [a.observe(v) for v in (0.5, 1.0, 2.0)] == [0, 0, 1]
    assert b.observe(3) == 2 and b.observe(float("nan")) == 2  # +Inf bucket, as Prometheus
    value = a.value()
    assert value["buckets"] == [2, 1, 2] and value["count"] == 5
    assert math.isnan(value["sum"])
    c = Histogram(seg, "clean", [1.0])
    c.observe(0.25)
    c.observe(4)
    assert c.value() == {"bounds": [1.0], "buckets": [1, 1], "count": 2, "sum": 4.25}
    assert a.name == "h" and len(a.slot) == 256


# -- four processes ------------------------------------------------------------------


def _add_and_observe(path: Path, barrier) -> None:
    seg = attach(path)
    g, h = Gauge(seg, "g"), Histogram(seg, "h", [0.1, 1.0])
    barrier.wait()
    for _ in range(MILLION):
        g.add(0.5)  # 0.5 steps are exact in binary: a lost CAS shows in the total
        h.observe(0.25)


def test_four_processes_times_a_million_adds_and_observations_lose_nothing(
        seg: Segment, seg_path: Path) -> None:
    barrier = FORK.Barrier(PROCS)
    run_all(_add_and_observe, [(seg_path, barrier)] * PROCS, timeout=300)
    assert Gauge(seg, "g").value() == PROCS * MILLION * 0.5
    h = Histogram(seg, "h", [0.1, 1.0]).value()
    assert h["buckets"] == [0, PROCS * MILLION, 0]
    assert h["sum"] == PROCS * MILLION * 0.25


def _beat_inherited(hb: Heartbeat, barrier) -> None:
    barrier.wait()
    hb.beat()


def test_objects_made_before_fork_write_the_shared_slot(seg: Segment) -> None:
    hb, g = Heartbeat(seg, "kid:heartbeat"), Gauge(seg, "kid:g")
    g.set(1.0)
    barrier = FORK.Barrier(1)
    run_all(_beat_inherited, [(hb, barrier)])
    assert hb.age() is not None and g.value() == 1.0


# -- bad input -------------------------------------------------------------------------


def test_bad_arguments_say_what_is_wrong(seg: Segment) -> None:
    for kind in (Counter, Gauge, Heartbeat):
        with pytest.raises(TypeError, match="must be str"):
            kind(seg, 3)
        with pytest.raises(AttributeError, match="_word"):
            kind(object(), "x")
        with pytest.raises(SegmentError, match="slot name"):
            kind(seg, "")
    g = Gauge(seg, "g")
    with pytest.raises(TypeError, match="must be real number"):
        g.set("1.5")
    with pytest.raises(TypeError):
        g.add(None)
    with pytest.raises(TypeError):
        g.compare_and_set(1.0)
    assert g.value() == 0.0  # nothing was written by the refused calls
    h = Histogram(seg, "h", [1.0])
    with pytest.raises(TypeError, match="must be real number"):
        h.observe("x")
    assert h.value()["count"] == 0
    with pytest.raises(SegmentError, match="strictly increasing"):
        Histogram(seg, "bad", ["a"])
    with pytest.raises(SegmentError, match="strictly increasing"):
        Histogram(seg, "bad", [1.0, float("inf")])
    with pytest.raises(SegmentError, match="strictly increasing"):
        Histogram(seg, "bad", [float(i) for i in range(15)])  # one more than a slot holds
    with pytest.raises(TypeError):
        Histogram(seg, "no-bounds")


def test_kinds_do_not_share_slots(seg: Segment) -> None:
    Gauge(seg, "g")
    with pytest.raises(SegmentError, match="is a gauge, not a heartbeat"):
        Heartbeat(seg, "g")
    Heartbeat(seg, "hb")
    with pytest.raises(SegmentError, match="is a heartbeat, not a histogram"):
        Histogram(seg, "hb", [1.0])
    assert seg.find("g")[1] == GAUGE and seg.find("hb")[1] == HEARTBEAT
    Histogram(seg, "h", [1.0])
    assert seg.find("h")[1] == HISTOGRAM


# -- the mapping ---------------------------------------------------------------------


def test_objects_keep_their_mapping_after_the_segment_is_closed(
        seg: Segment, seg_path: Path) -> None:
    mine = attach(seg_path)
    beat = Heartbeat(mine, "kept:hb").beat
    add = Gauge(mine, "kept:g").add
    observe = Histogram(mine, "kept:h", [1.0]).observe
    mine.close()
    gc.collect()
    beat()  # writes to the still-mapped slots: no crash, and the file sees them
    add(2.0)
    observe(0.5)
    assert Heartbeat(seg, "kept:hb").age() is not None
    assert Gauge(seg, "kept:g").value() == 2.0
    assert Histogram(seg, "kept:h", [1.0]).value()["count"] == 1


@pytest.mark.parametrize("make", [lambda s: Gauge(s, "gone"), lambda s: Heartbeat(s, "gone"),
                                  lambda s: Histogram(s, "gone", [1.0])])
def test_the_mapping_is_released_with_the_last_object(seg_path: Path, seg: Segment,
                                                      make) -> None:
    mine = attach(seg_path)
    obj = make(mine)
    view = weakref.ref(getattr(obj, "slot", None) or obj.word)
    mine.close()
    del obj
    gc.collect()
    assert view() is None


@pytest.mark.parametrize("kind", [Gauge, Heartbeat, Histogram])
def test_the_types_are_final(kind) -> None:
    # Subclasses would lose the specialised call path that is the types' reason to be.
    with pytest.raises(TypeError):
        type("Sub", (kind,), {})
