"""The native primitives, one at a time, on a real mapping (no other process involved)."""

from __future__ import annotations

import math
import struct

from shm._native import ffi, lib

from shm import Segment


def words(seg: Segment, index: int = 0):
    return seg.slot_words(index)


def test_int64_add_inc_load_store(seg: Segment) -> None:
    p = words(seg)
    assert lib.op_load_i64(p) == 0
    assert lib.op_add_i64(p, 5) == 5
    lib.op_inc_i64(p)
    assert lib.op_add_i64(p, -2) == 4
    lib.op_store_i64(p, 2**63 - 1)
    assert lib.op_load_i64(p) == 2**63 - 1
    assert lib.op_add_i64(p, 1) == -(2**63)  # wraps like a C int64, no UB, no exception


def test_int64_cas_and_exchange(seg: Segment) -> None:
    p = words(seg)
    lib.op_store_i64(p, 7)
    assert lib.op_cas_i64(p, 6, 100) == 0 and lib.op_load_i64(p) == 7
    assert lib.op_cas_i64(p, 7, 100) == 1 and lib.op_load_i64(p) == 100
    assert lib.op_xchg_i64(p, 3) == 100 and lib.op_load_i64(p) == 3


def test_batch_add_and_load_touch_each_slot_once(seg: Segment) -> None:
    ptrs = ffi.new("int64_t *[]", [words(seg, i) for i in range(4)])
    lib.op_add_i64_batch(ptrs, ffi.new("int64_t[]", [1, 2, 3, 4]), 4)
    lib.op_add_i64_batch(ptrs, ffi.new("int64_t[]", [10, 20, 30, 40]), 3)  # n limits it
    out = ffi.new("int64_t[]", 4)
    lib.op_load_i64_batch(ptrs, out, 4)
    assert list(out) == [11, 22, 33, 4]


def test_repeat_does_every_add(seg: Segment) -> None:
    p = words(seg)
    assert lib.op_add_i64_repeat(p, 3, 1000) == 3000
    assert lib.op_add_i64_repeat(p, 1, 0) == 0 and lib.op_load_i64(p) == 3000


def test_double_ops(seg: Segment) -> None:
    d = ffi.cast("double *", words(seg))
    assert lib.op_load_f64(d) == 0.0
    lib.op_store_f64(d, 1.5)
    assert lib.op_add_f64(d, 0.25) == 1.75
    assert lib.op_cas_f64(d, 1.0, 9.0) == 0 and lib.op_load_f64(d) == 1.75
    assert lib.op_cas_f64(d, 1.75, 9.0) == 1 and lib.op_load_f64(d) == 9.0
    assert lib.op_xchg_f64(d, -0.0) == 9.0
    # CAS compares bit patterns: -0.0 is not 0.0 here.
    assert lib.op_cas_f64(d, 0.0, 1.0) == 0
    assert math.copysign(1, lib.op_load_f64(d)) == -1


def test_beat_stamps_the_monotonic_clock(seg: Segment) -> None:
    p = words(seg)
    before = lib.op_now_ns()
    lib.op_beat(p)
    after = lib.op_now_ns()
    assert before <= lib.op_load_i64(p) <= after


def hist_slot(seg: Segment, bounds: list[float]):
    p = words(seg)
    raw = struct.pack(f"<q{len(bounds)}d", len(bounds), *bounds)
    ffi.memmove(p, raw, len(raw))
    return p


def test_hist_observe_le_buckets_nan_and_sum(seg: Segment) -> None:
    p = hist_slot(seg, [1.0, 2.0])
    assert [lib.op_hist_observe(p, v) for v in (0.5, 1.0, 1.5, 2.0, 3.0, math.inf)] == \
        [0, 0, 1, 1, 2, 2]
    assert lib.op_hist_observe(p, math.nan) == 2  # NaN to +Inf, as Prometheus does
    buckets = [lib.op_load_i64(p + 3 + i) for i in range(3)]
    assert buckets == [2, 2, 3]
    assert math.isnan(lib.op_load_f64(ffi.cast("double *", p + 6)))


def test_hist_observe_refuses_a_corrupt_bound_count(seg: Segment) -> None:
    p = words(seg)
    for bad in (0, -1, lib.OP_HIST_MAX_BOUNDS + 1, 10**12):
        lib.op_store_i64(p, bad)
        assert lib.op_hist_observe(p, 1.0) == -1
    # Nothing was written into the slot (or past it) by the refused calls.
    assert all(lib.op_load_i64(p + i) == 0 for i in range(1, lib.OP_SLOT_WORDS))
    assert lib.op_load_i64(words(seg, 1)) == 0


def test_seqlock_write_read_roundtrip_and_sequence(seg: Segment) -> None:
    rec = words(seg)
    dst = ffi.new("char[]", 11)
    assert lib.op_seq_write(rec, b"hello world", 11, 4242, 10) == 0
    assert lib.op_load_i64(rec) == 2 and lib.op_load_i64(rec + 1) == 0  # even, unlocked
    assert lib.op_seq_read(rec, dst, 11, 10) == 0 and ffi.unpack(dst, 11) == b"hello world"
    assert lib.op_load_i64(rec + 3) == int.from_bytes(b"rld\0\0\0\0\0", "little")  # padded


def test_seqlock_lock_held_is_reported_with_holder_pid(seg: Segment) -> None:
    rec = words(seg)
    assert lib.op_seq_write(rec, b"before!!", 8, 1, 10) == 0
    assert lib.op_seq_begin(rec, 111, 10) == 0
    assert lib.op_load_i64(rec) & 1
    assert lib.op_seq_write(rec, b"newvalue", 8, 222, 100) == 111  # busy: says who holds it
    dst = ffi.new("char[]", b"untouch")
    assert lib.op_seq_read(rec, dst, 8, 100) == 1  # odd: no copy...
    assert ffi.unpack(dst, 8) == b"untouch\0"  # ...and dst is left alone, not half-filled
    # Steal only from the named holder; then the write completes and the sequence is even.
    assert lib.op_seq_write_steal(rec, b"newvalue", 8, 333, 222) == 0
    assert lib.op_seq_write_steal(rec, b"newvalue", 8, 111, 222) == 1
    assert lib.op_load_i64(rec) % 2 == 0 and lib.op_load_i64(rec + 1) == 0
    assert lib.op_seq_read(rec, dst, 8, 10) == 0 and ffi.unpack(dst, 8) == b"newvalue"


def test_seqlock_never_writes_past_its_slot(seg: Segment) -> None:
    rec = words(seg)
    n = lib.OP_SLOT_WORDS * 8 + 64
    assert lib.op_seq_write(rec, b"\x07" * n, n, 1, 10) == 0
    assert lib.op_load_i64(rec + lib.OP_SLOT_WORDS - 1) == 0x0707070707070707
    assert lib.op_load_i64(words(seg, 1)) == 0  # the next slot is untouched
    big = ffi.new("char[]", n)
    assert lib.op_seq_read(rec, big, n, 10) == 0  # reads are cut at the slot too
    assert ffi.unpack(big, n) == b"\x07" * ((lib.OP_SLOT_WORDS - 2) * 8) + bytes(n - 240)
