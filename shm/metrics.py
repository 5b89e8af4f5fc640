"""The value types that live in segment slots: Counter, Gauge, Histogram, Heartbeat, Record.

Each object holds a pointer into the mapping, and its hot operations run no
Python frame. Counter, Gauge, Heartbeat and Histogram are native types
(native/outpost_metrics.c): `c.inc()`, `g.set(v)`, `g.add(v)`, `hb.beat()` and
`h.observe(v)` are method calls CPython specialises end to end, the cheapest
call it has. See scripts/bench/shm.py for what each layer costs.

Those four own a buffer export of their slot, so an object (or a bound method
such as `beat = hb.beat`) that outlives its segment or a runtime restart writes
to the old, unseen mapping rather than to unmapped memory. Record pins its
mapping for the life of the process instead (Segment.pin).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence

from shm import _native
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
    histogram_bounds,
)

RECORD_HEADER_WORDS = lib.OP_SEQ_HEADER_WORDS
RECORD_MAX_BYTES = (SLOT_WORDS - RECORD_HEADER_WORDS) * 8
# Spins per native seqlock call before Python looks at the writer's pid (and
# yields the CPU: on 2 cores the writer we wait for may need ours).
_SEQ_SPINS = 20_000
RECORD_TIMEOUT_S = 1.0

_load_i64 = lib.op_load_i64
_seq_read = lib.op_seq_read
_seq_write = lib.op_seq_write

# The pid a writer stamps into a record's lock. Cached (os.getpid is a syscall)
# and refreshed in a forked child, which inherits Record objects.
_pid = os.getpid()


def _after_fork() -> None:
    global _pid
    _pid = os.getpid()


os.register_at_fork(after_in_child=_after_fork)


class RecordWriterDiedError(SegmentError):
    """A record's writer died in the middle of a write: its bytes are not a value.

    The next write (from any process) repairs the record.
    """


class RecordBusyError(SegmentError):
    """A live writer held a record for longer than the timeout (stopped or stuck)."""


if not hasattr(_native, "Counter") and lib.op_py_register(_native.__name__.encode()) != 0:
    raise ImportError(f"{_native.__file__}: could not create the native metric types; "
                      "reinstall outpost (pip install .) to rebuild the extension")
# Native types (see native/outpost_metrics.c for why), final: not subclassable.
Counter = _native.Counter
"""Counter(segment, name): a shared int64 total; inc() adds one, add(n) adds n."""
Gauge = _native.Gauge
"""Gauge(segment, name): a shared float64; set(v) stores, add(v) adds (CAS) and returns it."""
Heartbeat = _native.Heartbeat
"""Heartbeat(segment, name): beat() stamps CLOCK_MONOTONIC, age() says how long ago."""
Histogram = _native.Histogram
"""Histogram(segment, name, bounds): fixed "le" buckets; observe(v) returns the bucket."""


def word_pointer(counter: Counter):  # -> ffi cdata int64_t*
    """A native pointer to `counter`'s word, for bulk native calls.

    Valid while the pointer object lives: it holds a buffer export of the word.
    """
    return ffi.from_buffer("int64_t[]", counter.word)


class CounterBatch:
    """Several counters updated or read in one native call, for bulk paths.

    A loop that touches k counters per item can keep local deltas and call
    add() once per batch instead of k times per item; values() reads them all
    in one call. Each counter still gets its own atomic add.
    """

    __slots__ = ("_ptrs", "counters")

    def __init__(self, counters: Sequence[Counter]) -> None:
        self.counters = tuple(counters)
        self._ptrs = ffi.new("int64_t *[]", [word_pointer(c) for c in self.counters])

    def add(self, deltas: Sequence[int]) -> None:
        """Add deltas[i] to counters[i], for every i, in one call."""
        if len(deltas) != len(self.counters):
            raise ValueError(f"{len(deltas)} deltas for {len(self.counters)} counters")
        # A fresh array per call: a shared one could be refilled by another thread mid-call.
        lib.op_add_i64_batch(self._ptrs, ffi.new("int64_t[]", deltas), len(deltas))

    def values(self) -> list[int]:
        """Every counter's total, in one call."""
        out = ffi.new("int64_t[]", len(self.counters))
        lib.op_load_i64_batch(self._ptrs, out, len(self.counters))
        return list(out)


class Record:
    """A small seqlocked struct: readers get a whole old or a whole new value, never a mix.

    Slot words: [sequence, lock (writer pid, 0 = free), payload...]. Writers
    from any number of processes take turns through the lock word. A reader or
    writer that waits too long checks the pid holding the lock: a writer that
    died mid-write raises RecordWriterDiedError for readers (rather than being
    spun on) and is taken over by the next writer, which repairs the record.
    """

    __slots__ = ("_out", "_ptr", "name", "size")

    def __init__(self, segment: Segment, name: str, size: int) -> None:
        if not 1 <= size <= RECORD_MAX_BYTES:
            raise SegmentError(f"record {name!r}: size must be 1..{RECORD_MAX_BYTES} bytes")
        self.name, self.size = name, size
        self._ptr = segment.slot_words(segment.claim(name, RECORD, meta=size))
        segment.pin()
        # Shared by reads: the native read fills it only with a consistent copy,
        # in one call that keeps the GIL, so a thread never sees another's torn one.
        self._out = ffi.new("char[]", size)

    def write(self, data: bytes, timeout: float = RECORD_TIMEOUT_S) -> None:
        """Publish `data` (exactly `size` bytes) as the record's new value.

        Raises RecordBusyError if a live writer holds the record past `timeout`.
        """
        if type(data) is not bytes:
            data = bytes(data)
        if len(data) != self.size:
            raise ValueError(f"record {self.name!r} holds {self.size} bytes, got {len(data)}")
        if _seq_write(self._ptr, data, self.size, _pid, _SEQ_SPINS) != 0:
            write_record(self._ptr, data, timeout)

    def read(self, timeout: float = RECORD_TIMEOUT_S) -> bytes:
        """The current value, whole. Raises RecordWriterDiedError or RecordBusyError."""
        if _seq_read(self._ptr, self._out, self.size, _SEQ_SPINS) == 0:
            return ffi.unpack(self._out, self.size)
        return read_record(self._ptr, self._out, self.size, timeout)


def write_record(ptr, data: bytes, timeout: float = RECORD_TIMEOUT_S) -> None:
    """Seqlocked write of `data` into the record at `ptr`, waiting out or taking over holders."""
    deadline = time.monotonic() + timeout
    while True:
        holder = _seq_write(ptr, data, len(data), _pid, _SEQ_SPINS)
        if holder == 0:
            return
        # Our own pid cannot be a live holder: a write is one native call that
        # keeps the GIL, so a lock with our pid was left by a process that died.
        if holder == _pid or (holder > 0 and not _pid_alive(holder)):
            if lib.op_seq_write_steal(ptr, data, len(data), holder, _pid):
                return
        elif time.monotonic() > deadline:
            raise RecordBusyError(
                f"record busy: writer pid {holder} has held it for more than {timeout}s")
        else:
            os.sched_yield()  # on 2 cores the writer we wait for may need ours


def read_record(ptr, out, nbytes: int, timeout: float = RECORD_TIMEOUT_S) -> bytes:
    """Consistent copy of a seqlocked record's first `nbytes` payload bytes (via `out`).

    Raises RecordWriterDiedError if the write in progress belongs to a dead
    process, RecordBusyError if a live writer holds it past `timeout`.
    """
    deadline = time.monotonic() + timeout
    while _seq_read(ptr, out, nbytes, _SEQ_SPINS) != 0:
        holder = _load_i64(ptr + 1)
        if holder > 0 and not _pid_alive(holder) and _load_i64(ptr) & 1:
            raise RecordWriterDiedError(
                f"record writer pid {holder} died in the middle of a write")
        if time.monotonic() > deadline:
            raise RecordBusyError(f"record busy: a write by pid {holder} has been in "
                                  f"progress for more than {timeout}s")
        os.sched_yield()
    return ffi.unpack(out, nbytes)


def heartbeat_age(ptr) -> float | None:
    """Seconds since the stamp at `ptr`, or None if it never beat."""
    stamp = _load_i64(ptr)
    if stamp == 0:
        return None
    return max(0.0, (lib.op_now_ns() - stamp) / 1e9)


def histogram_value_of_view(slot: memoryview) -> dict:
    """Histogram.value() of the histogram whose slot is `slot` (Histogram.slot)."""
    return _histogram_value(ffi.from_buffer("int64_t[]", slot))


def _histogram_value(words) -> dict:
    bounds = histogram_bounds(words)
    n = len(bounds)
    out = ffi.new("int64_t[]", n + 1)
    ptrs = ffi.new("int64_t *[]", [words + 1 + n + i for i in range(n + 1)])
    lib.op_load_i64_batch(ptrs, out, n + 1)
    buckets = list(out)
    total = lib.op_load_f64(ffi.cast("double *", words + 2 + 2 * n))
    return {"bounds": bounds, "buckets": buckets, "count": sum(buckets), "sum": total}


def slot_value(segment: Segment, index: int, kind: int):
    """The current value of any slot, as plain Python data (for snapshots).

    Records come back as bytes (their registered size); their errors propagate.
    """
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
        size = segment.slot_meta(index)
        if not 1 <= size <= RECORD_MAX_BYTES:
            raise SegmentError(f"corrupt record slot (size {size})")
        return read_record(words, ffi.new("char[]", size), size)
    raise SegmentError(f"slot {index} has unknown kind {kind}")
