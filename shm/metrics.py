"""The value types that live in segment slots: Counter, Gauge, Histogram, Heartbeat, Record.

Each object holds a pointer into the mapping and calls one native function per
operation, so an update is one atomic instruction plus the cffi call. Objects
must not outlive the Segment they came from.
"""

from __future__ import annotations

import math
import os
import struct
from collections.abc import Sequence

from shm._native import ffi, lib
from shm.segment import (
    COUNTER,
    GAUGE,
    HEARTBEAT,
    HISTOGRAM,
    RECORD,
    SLOT_WORDS,
    Segment,
    SegmentError,
    _pid_alive,
)

HIST_MAX_BOUNDS = (SLOT_WORDS - 2) // 2 - 1  # bounds + buckets(+Inf) + count word + sum
RECORD_MAX_BYTES = (SLOT_WORDS - 2) * 8
_SEQ_SPINS = 100_000

_add_i64 = lib.op_add_i64
_load_i64 = lib.op_load_i64
_beat = lib.op_beat


class Counter:
    """A monotonically increasing int64 shared by every process that maps the segment."""

    __slots__ = ("_ptr", "name")

    def __init__(self, segment: Segment, name: str) -> None:
        self.name = name
        self._ptr = segment.slot_words(segment.claim(name, COUNTER))

    def inc(self, n: int = 1) -> None:
        """Add `n` (>= 0 by convention; not checked on the hot path)."""
        _add_i64(self._ptr, n)

    add = inc

    def value(self) -> int:
        return _load_i64(self._ptr)


class Gauge:
    """A float that goes up and down; set and add are atomic."""

    __slots__ = ("_ptr", "name")

    def __init__(self, segment: Segment, name: str) -> None:
        self.name = name
        self._ptr = ffi.cast("double *", segment.slot_words(segment.claim(name, GAUGE)))

    def set(self, v: float) -> None:
        lib.op_store_f64(self._ptr, v)

    def add(self, v: float) -> None:
        lib.op_add_f64(self._ptr, v)

    def value(self) -> float:
        return lib.op_load_f64(self._ptr)


class Histogram:
    """Fixed buckets, lock-free: an observation is one atomic bucket add plus a CAS on the sum.

    Slot words: [nbounds, bounds..., buckets (nbounds + 1, last is +Inf)..., sum].
    """

    __slots__ = ("_buckets", "_bounds", "_n", "_sum", "bounds", "name")

    def __init__(self, segment: Segment, name: str, bounds: Sequence[float]) -> None:
        bounds = [float(b) for b in bounds]
        if not bounds or len(bounds) > HIST_MAX_BOUNDS or sorted(bounds) != bounds \
                or any(math.isnan(b) or math.isinf(b) for b in bounds):
            raise SegmentError(
                f"histogram {name!r}: bounds must be 1..{HIST_MAX_BOUNDS} finite, "
                f"increasing numbers, got {bounds}")
        init = struct.pack(f"<q{len(bounds)}d", len(bounds), *bounds)
        words = segment.slot_words(segment.claim(name, HISTOGRAM, init))
        stored = _read_bounds(words)
        if stored != bounds:
            raise SegmentError(f"histogram {name!r} exists with bounds {stored}, not {bounds}")
        self.name, self.bounds, self._n = name, bounds, len(bounds)
        self._bounds = ffi.cast("double *", words + 1)
        self._buckets = words + 1 + self._n
        self._sum = ffi.cast("double *", words + 2 + 2 * self._n)

    def observe(self, v: float) -> None:
        lib.op_hist_observe(self._buckets, self._bounds, self._n, self._sum, v)

    def value(self) -> dict:
        return _histogram_value(self._buckets - 1 - self._n)


class Heartbeat:
    """A monotonic-clock stamp: beat() records now, age() says how long ago."""

    __slots__ = ("_ptr", "name")

    def __init__(self, segment: Segment, name: str) -> None:
        self.name = name
        self._ptr = segment.slot_words(segment.claim(name, HEARTBEAT))

    def beat(self) -> None:
        _beat(self._ptr)

    def age(self) -> float | None:
        """Seconds since the last beat, or None if it never beat."""
        return heartbeat_age(self._ptr)


class Record:
    """A small seqlocked struct: readers get a whole old or a whole new value, never a mix.

    Slot words: [sequence, writer pid, payload...]. A reader that finds a write
    in progress for too long checks the writer's pid, so a writer that died
    mid-write is reported instead of spun on forever.
    """

    __slots__ = ("_buf", "_nwords", "_out", "_ptr", "name", "size")

    def __init__(self, segment: Segment, name: str, size: int) -> None:
        if not 1 <= size <= RECORD_MAX_BYTES:
            raise SegmentError(f"record {name!r}: size must be 1..{RECORD_MAX_BYTES} bytes")
        self.name, self.size = name, size
        self._nwords = (size + 7) // 8
        self._ptr = segment.slot_words(segment.claim(name, RECORD))
        self._buf = ffi.new("int64_t[]", self._nwords)
        self._out = ffi.new("int64_t[]", self._nwords)

    def write(self, data: bytes) -> None:
        if len(data) != self.size:
            raise ValueError(f"record {self.name!r} holds {self.size} bytes, got {len(data)}")
        ffi.memmove(self._buf, data, len(data))
        lib.op_seq_write(self._ptr, self._buf, self._nwords, os.getpid())

    def read(self) -> bytes:
        return read_record(self._ptr, self._out, self._nwords)[: self.size]


def read_record(ptr, out, nwords: int) -> bytes:
    """Consistent copy of a seqlocked record, or SegmentError if its writer died mid-write."""
    while lib.op_seq_read(ptr, out, nwords, _SEQ_SPINS) != 0:
        writer = lib.op_load_i64(ptr + 1)
        if not _pid_alive(writer):
            raise SegmentError(f"record writer pid {writer} died in the middle of a write")
    return bytes(ffi.buffer(out, nwords * 8))


def heartbeat_age(ptr) -> float | None:
    stamp = _load_i64(ptr)
    if stamp == 0:
        return None
    return max(0.0, (lib.op_now_ns() - stamp) / 1e9)


def _read_bounds(words) -> list[float]:
    n = _load_i64(words)
    doubles = ffi.cast("double *", words + 1)
    return [doubles[i] for i in range(n)]


def _histogram_value(words) -> dict:
    bounds = _read_bounds(words)
    n = len(bounds)
    buckets = [_load_i64(words + 1 + n + i) for i in range(n + 1)]
    total = lib.op_load_f64(ffi.cast("double *", words + 2 + 2 * n))
    return {"bounds": bounds, "buckets": buckets, "count": sum(buckets), "sum": total}


def slot_value(segment: Segment, index: int, kind: int):
    """The current value of any slot, as plain Python data (for snapshots)."""
    words = segment.slot_words(index)
    if kind == COUNTER:
        return _load_i64(words)
    if kind == GAUGE:
        return lib.op_load_f64(ffi.cast("double *", words))
    if kind == HEARTBEAT:
        return heartbeat_age(words)
    if kind == HISTOGRAM:
        return _histogram_value(words)
    if kind == RECORD:
        return read_record(words, ffi.new("int64_t[]", SLOT_WORDS - 2), SLOT_WORDS - 2)
    raise SegmentError(f"slot {index} has unknown kind {kind}")
