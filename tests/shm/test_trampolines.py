"""Counter.inc trampolines: one per (mapping, slot), exact across real processes, and a
process whose pool is used up falls back to the partial-bound inc and still counts exactly.

The pool is per process and never shrinks, so the exhaustion test runs in a forked
child: the test process keeps its free trampolines for the other tests.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

from shm._native import ffi, lib

from shm import Counter, Segment
from shm.metrics import TRAMPOLINES, trampolines_in_use
from tests.shm.conftest import FORK, run_all

PROCS = 4
MILLION = 1_000_000


def attach(path: Path) -> Segment:
    return Segment.attach(path, writable=True)


def trampoline_fn(k: int):
    return getattr(lib, f"op_inc_t{k}")


def test_claim_binds_once_per_pointer_and_refuses_null(seg: Segment) -> None:
    p, q = seg.slot_words(0), seg.slot_words(1)
    used = lib.op_tramp_used()
    k = lib.op_tramp_claim(p)
    assert 0 <= k < TRAMPOLINES
    assert lib.op_tramp_claim(p) == k and lib.op_tramp_used() == used + 1
    assert lib.op_tramp_claim(q) not in (-1, k) and lib.op_tramp_used() == used + 2
    assert lib.op_tramp_claim(ffi.NULL) == -1 and lib.op_tramp_used() == used + 2
    trampoline_fn(k)()
    trampoline_fn(k)()
    assert lib.op_load_i64(p) == 2 and lib.op_load_i64(q) == 0


def test_counters_on_one_slot_share_one_trampoline_and_one_count(
        seg: Segment, seg_path: Path) -> None:
    a, b = Counter(seg, "x"), Counter(seg, "x")
    assert a.trampoline is not None, "the test process has no free trampoline"
    assert b.trampoline == a.trampoline
    assert a.inc is b.inc is trampoline_fn(a.trampoline)
    used = trampolines_in_use()
    Counter(seg, "x")
    assert trampolines_in_use() == used  # a third object on the slot binds nothing new
    a.inc()
    b.inc()
    b.inc()
    assert a.value() == b.value() == 3
    y = Counter(seg, "y")
    assert y.trampoline not in (None, a.trampoline)
    y.inc()
    assert (a.value(), y.value()) == (3, 1)
    # Another mapping of the file is another address: its own trampoline, the same count.
    other = Counter(attach(seg_path), "x")
    assert other.trampoline not in (None, a.trampoline, y.trampoline)
    other.inc()
    assert a.value() == 4


def _inc_inherited(c: Counter, barrier) -> None:
    # The forked child inherits the parent's table: same mapping address, same binding.
    assert c.trampoline is not None and c.inc is trampoline_fn(c.trampoline)
    barrier.wait()
    for _ in range(MILLION):
        c.inc()


def test_counter_made_before_fork_four_processes_times_a_million_is_exactly_four_million(
        seg: Segment) -> None:
    c = Counter(seg, "hits")
    assert c.trampoline is not None, "the test process has no free trampoline"
    barrier = FORK.Barrier(PROCS)
    run_all(_inc_inherited, [(c, barrier)] * PROCS)
    assert c.value() == PROCS * MILLION


def _inc_fresh(path: Path, barrier, inherited_used: int) -> None:
    c = Counter(attach(path), "hits")  # a new mapping in this process: a new binding
    assert c.trampoline is not None and c.inc is trampoline_fn(c.trampoline)
    assert trampolines_in_use() == inherited_used + 1
    barrier.wait()
    for _ in range(MILLION):
        c.inc()


def test_counter_attached_in_children_four_processes_times_a_million_is_exactly_four_million(
        seg: Segment, seg_path: Path) -> None:
    used = trampolines_in_use()
    assert used < TRAMPOLINES, "the test process has no free trampoline"
    barrier = FORK.Barrier(PROCS)
    run_all(_inc_fresh, [(seg_path, barrier, used)] * PROCS)
    assert Counter(seg, "hits").value() == PROCS * MILLION
    # The children's bindings were theirs: the parent's pool is as it was, plus this Counter.
    assert trampolines_in_use() == used + 1


# -- a used-up pool ----------------------------------------------------------------

FALLBACK_INCS = 100_000


def _fallback_inc(path: Path, barrier) -> None:
    seg = attach(path)  # inherits a full pool, so the fresh mapping gets the fallback too
    c = Counter(seg, "late0")
    assert c.trampoline is None and isinstance(c.inc, partial)
    barrier.wait()
    for _ in range(FALLBACK_INCS):
        c.inc()


def _exhaust_then_count(path: Path) -> None:
    seg = Segment.create(path, TRAMPOLINES + 8)
    free = TRAMPOLINES - trampolines_in_use()
    bound = [Counter(seg, f"bound{i}") for i in range(free)]
    assert all(c.trampoline is not None for c in bound)
    assert trampolines_in_use() == TRAMPOLINES
    late = [Counter(seg, f"late{i}") for i in range(3)]
    assert all(c.trampoline is None and isinstance(c.inc, partial) for c in late)
    # A slot bound before the pool filled up keeps its trampoline for new objects.
    again = Counter(seg, "bound0")
    assert again.trampoline == bound[0].trampoline and again.inc is bound[0].inc
    # Two fallback objects on one slot share the count.
    late0_again = Counter(seg, "late0")
    assert late0_again.trampoline is None
    for c in (bound[0], again, bound[-1], late[0], late0_again, late[2]):
        for _ in range(1000):
            c.inc()
    assert [c.value() for c in (bound[0], bound[-1], late[0], late[1], late[2])] == \
        [2000, 1000, 2000, 0, 1000]
    # Fallback counters from real processes (forked from this full-pool process) are exact.
    barrier = FORK.Barrier(PROCS)
    run_all(_fallback_inc, [(path, barrier)] * PROCS)
    assert late[0].value() == 2000 + PROCS * FALLBACK_INCS
    assert trampolines_in_use() == TRAMPOLINES


def test_a_used_up_pool_falls_back_and_still_counts_exactly(tmp_path: Path) -> None:
    run_all(_exhaust_then_count, [(tmp_path / "full.shm",)], timeout=120)
