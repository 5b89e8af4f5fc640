"""The value types that live in segment slots: Counter, Gauge, Histogram, Heartbeat, Record.

Each object holds a pointer into the mapping. The hot operations are instance
attributes that are native callables, so a call runs no Python frame:

- Counter.inc is a zero-argument trampoline compiled at install time
  (native/outpost_native.h, OP_TRAMP_COUNT of them): a cffi METH_NOARGS
  builtin whose body is one atomic add on the slot bound to it, so the call
  converts no argument. Each process binds one per (mapping, slot) it makes a
  Counter for; when its pool is used up, inc falls back to the path below.
- Everything else (Counter.add, Gauge.set and add, Histogram.observe,
  Heartbeat.beat, and inc after the pool ran out) is functools.partial bound
  straight to the native function and the slot pointer.

See scripts/bench/shm.py for what each layer costs.

Making one pins the mapping for the life of the process (Segment.pin), so an
object, a bound `inc` or a trampoline that outlives its segment or a runtime
restart writes to the old, unseen mapping rather than to unmapped memory.
"""

from __future__ import annotations

import math
import os
import struct
import time
from collections.abc import Callable, Sequence
from functools import partial

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

HIST_MAX_BOUNDS = lib.OP_HIST_MAX_BOUNDS  # [n, bounds (n), buckets (n + 1), sum] fit a slot
RECORD_HEADER_WORDS = lib.OP_SEQ_HEADER_WORDS
RECORD_MAX_BYTES = (SLOT_WORDS - RECORD_HEADER_WORDS) * 8
# Spins per native seqlock call before Python looks at the writer's pid (and
# yields the CPU: on 2 cores the writer we wait for may need ours).
_SEQ_SPINS = 20_000
RECORD_TIMEOUT_S = 1.0

_load_i64 = lib.op_load_i64
# Counter.inc trampolines per process (see the module docstring).
TRAMPOLINES = lib.OP_TRAMP_COUNT
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


def trampolines_in_use() -> int:
    """How many of this process's TRAMPOLINES Counter.inc trampolines are bound.

    Once all are, new Counters on other slots get the slower partial-bound inc
    (same results, ~10 ns more per call; scripts/bench/shm.py measures both).
    """
    return lib.op_tramp_used()


def _bind_inc(ptr) -> tuple[Callable[[], None], int | None]:
    """(inc, trampoline index) for the counter word at `ptr`; index None on the fallback.

    The caller has pinned the mapping: a trampoline is never unbound, so its
    word must stay mapped until exit. Claiming is one atomic native call that
    returns the index already bound to `ptr` if there is one, so every Counter
    object on a (mapping, slot) shares one trampoline and a full pool still
    serves the slots bound before it filled up.
    """
    k = lib.op_tramp_claim(ptr)
    if k < 0:
        return partial(lib.op_inc_i64, ptr), None
    return getattr(lib, f"op_inc_t{k}"), k


class Counter:
    """A monotonically increasing int64 shared by every process that maps the segment.

    inc() adds one and returns None; add(n) adds n (>= 0 by convention, not
    checked on the hot path) and returns the new total. Both are one atomic add.
    `trampoline` is the index of the native trampoline that inc is, or None if
    this process's pool was used up and inc is the partial-bound fallback.
    """

    __slots__ = ("_ptr", "add", "inc", "name", "trampoline")

    inc: Callable[[], None]
    add: Callable[[int], int]
    trampoline: int | None

    def __init__(self, segment: Segment, name: str) -> None:
        self.name = name
        self._ptr = segment.slot_words(segment.claim(name, COUNTER))
        segment.pin()  # first: a trampoline stays bound to this word until exit
        self.inc, self.trampoline = _bind_inc(self._ptr)
        self.add = partial(lib.op_add_i64, self._ptr)

    def native(self) -> tuple[Callable[[object], None], object]:
        """(function, pointer): `f, p = c.native()`, then `f(p)` adds one.

        The one-argument form of inc. Hoisting `inc = c.inc` out of a loop is
        at least as fast while c has a trampoline (see scripts/bench/shm.py);
        this stays for code that wants the pointer. The pointer stays valid for
        the life of the process (the mapping is pinned).
        """
        return lib.op_inc_i64, self._ptr

    def value(self) -> int:
        """The current total (an acquire load)."""
        return _load_i64(self._ptr)


class CounterBatch:
    """Several counters updated or read in one native call, for bulk paths.

    A loop that touches k counters per item can keep local deltas and call
    add() once per batch instead of k times per item; values() reads them all
    in one call. Each counter still gets its own atomic add.
    """

    __slots__ = ("_ptrs", "counters")

    def __init__(self, counters: Sequence[Counter]) -> None:
        self.counters = tuple(counters)
        self._ptrs = ffi.new("int64_t *[]", [c._ptr for c in self.counters])

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


class Gauge:
    """A float that goes up and down: set(v) is an atomic store, add(v) a CAS loop.

    add returns the new value. Two processes adding at once lose nothing.
    """

    __slots__ = ("_ptr", "add", "name", "set")

    set: Callable[[float], None]
    add: Callable[[float], float]

    def __init__(self, segment: Segment, name: str) -> None:
        self.name = name
        self._ptr = ffi.cast("double *", segment.slot_words(segment.claim(name, GAUGE)))
        segment.pin()
        self.set = partial(lib.op_store_f64, self._ptr)
        self.add = partial(lib.op_add_f64, self._ptr)

    def exchange(self, v: float) -> float:
        """Store v and return the value it replaced, atomically (e.g. read-and-reset)."""
        return lib.op_xchg_f64(self._ptr, v)

    def compare_and_set(self, expected: float, v: float) -> bool:
        """Store v if the gauge holds exactly `expected` (bit for bit); say whether it did."""
        return bool(lib.op_cas_f64(self._ptr, expected, v))

    def value(self) -> float:
        """The current value (an acquire load)."""
        return lib.op_load_f64(self._ptr)


class Histogram:
    """Fixed buckets, lock-free: an observation is one atomic bucket add plus a CAS on the sum.

    Slot words: [nbounds, bounds..., buckets (nbounds + 1, last is +Inf)..., sum].
    Buckets count v <= bound ("le"), NaN goes to +Inf. observe(v) returns the
    bucket index. A reader sees every bucket and the sum whole, but may see an
    observation's bucket before its sum (as with every Prometheus client).
    """

    __slots__ = ("_words", "bounds", "name", "observe")

    observe: Callable[[float], int]

    def __init__(self, segment: Segment, name: str, bounds: Sequence[float]) -> None:
        bounds = [float(b) for b in bounds]
        if not bounds or len(bounds) > HIST_MAX_BOUNDS or sorted(set(bounds)) != bounds \
                or any(math.isnan(b) or math.isinf(b) for b in bounds):
            raise SegmentError(
                f"histogram {name!r}: bounds must be 1..{HIST_MAX_BOUNDS} finite, "
                f"strictly increasing numbers, got {bounds}")
        init = struct.pack(f"<q{len(bounds)}d", len(bounds), *bounds)
        words = segment.slot_words(segment.claim(name, HISTOGRAM, init))
        stored = _read_bounds(words)
        if stored != bounds:
            raise SegmentError(f"histogram {name!r} exists with bounds {stored}, not {bounds}")
        self.name, self.bounds, self._words = name, bounds, words
        segment.pin()
        self.observe = partial(lib.op_hist_observe, words)

    def value(self) -> dict:
        """{"bounds", "buckets" (per bucket, not cumulative), "count", "sum"}."""
        return _histogram_value(self._words)


class Heartbeat:
    """A monotonic-clock stamp: beat() records now (one atomic store), age() says how long ago."""

    __slots__ = ("_ptr", "beat", "name")

    beat: Callable[[], None]

    def __init__(self, segment: Segment, name: str) -> None:
        self.name = name
        self._ptr = segment.slot_words(segment.claim(name, HEARTBEAT))
        segment.pin()
        self.beat = partial(lib.op_beat, self._ptr)

    def age(self) -> float | None:
        """Seconds since the last beat, or None if it never beat."""
        return heartbeat_age(self._ptr)


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


def _read_bounds(words) -> list[float]:
    n = _load_i64(words)
    if not 1 <= n <= HIST_MAX_BOUNDS:
        raise SegmentError(f"corrupt histogram slot ({n} bounds)")
    doubles = ffi.cast("double *", words + 1)
    return [doubles[i] for i in range(n)]


def _histogram_value(words) -> dict:
    bounds = _read_bounds(words)
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
