"""A shared-memory segment: one mmap'd file, a header, a directory of named slots.

The runtime creates the segment and owns its lifecycle (we do not use
multiprocessing.shared_memory: its resource tracker unlinks segments a process
merely attached to). Agent processes attach read-write, the CLI read-only.
Every value lives in a fixed slot found by name, so readers need no IPC and no
per-process files.

Layout (all integers little-endian, every word 8-byte aligned):

    header    HEADER_SIZE bytes: magic, layout version, capacity, creator pid,
              creation stamp, creator boot id, creator process start time
    directory capacity x DIR_ENTRY_SIZE: state word, meta word, name
    data      capacity x SLOT_SIZE (a multiple of the cache line, so two slots
              never share one): the slot's values

A directory entry's state word is 0 (free), -pid (being claimed by pid) or the
slot kind (> 0, ready). Claiming is a compare-and-swap, so two processes that
register the same name at once end up sharing one slot. A claimer that dies
between its CAS and publishing is detected by pid and its entry freed. Slots
are claimed in index order and a ready slot never becomes free again, so the
first free entry ends the directory.

Lifecycle, including what happens when the runtime restarts:

- `Segment.create` builds the file under a temporary name and renames it into
  place, so nobody ever maps a half-written header. It replaces a file left by
  a dead runtime (stale: its creator pid is gone, was reused by a process that
  started later, or it comes from an earlier boot) and any file that is not a
  valid segment; it refuses to replace the live segment of another process.
- The runtime unlinks the file at a clean stop. After a crash the file stays;
  `attach` then reports it as stale (SegmentNotLiveError) and the next `create`
  replaces it.
- When the runtime restarts, processes still attached to the old segment keep
  mapping the old, now unlinked, file: their reads and writes keep working but
  nobody else sees them. `is_current()` turns False for them (the path now
  names another file, or the creator is gone) and they must attach again. A new
  `attach` always sees the new file. Slots start empty in a new segment: values
  are not carried over a restart (durable state lives in the store).
"""

from __future__ import annotations

import contextlib
import math
import mmap
import os
import struct
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from shm._native import ffi, lib

MAGIC = b"OUTPOSTM"
# 2: directory entries of 128 bytes with a meta word; records locked by writer pid;
#    header carries the creator's process start time.
LAYOUT_VERSION = 2
HEADER_SIZE = 256
DIR_ENTRY_SIZE = 128
NAME_OFFSET = 16
NAME_MAX = DIR_ENTRY_SIZE - NAME_OFFSET
SLOT_SIZE = 256
SLOT_WORDS = SLOT_SIZE // 8
DEFAULT_CAPACITY = 256
MAX_CAPACITY = 1 << 20

# magic, version, capacity, creator pid, created ns (CLOCK_MONOTONIC), boot id (36 ascii),
# creator start time (clock ticks after boot, from /proc; 0 if unknown)
_HEADER = struct.Struct("<8sIIqq36s4xq")

COUNTER, GAUGE, HISTOGRAM, HEARTBEAT, RECORD = 1, 2, 3, 4, 5
KIND_NAMES = {
    COUNTER: "counter",
    GAUGE: "gauge",
    HISTOGRAM: "histogram",
    HEARTBEAT: "heartbeat",
    RECORD: "record",
}

# The C side indexes slots with these; a mismatch would be a build from other sources.
assert lib.OP_SLOT_WORDS == SLOT_WORDS, "shm/_native was built from another layout"
HIST_MAX_BOUNDS = lib.OP_HIST_MAX_BOUNDS  # [n, bounds (n), buckets (n + 1), sum] fit a slot

_CLAIM_TIMEOUT_S = 5.0
# Mappings that handed out slot pointers to Records: never unmapped (Segment.pin).
_PINNED: list[mmap.mmap] = []
_HAVE_PROC = os.path.exists("/proc/self/stat")


class SegmentError(Exception):
    """The segment cannot be used as asked: the message says why and what to do."""


class SegmentNotLiveError(SegmentError):
    """No live runtime owns the segment: the file is missing or its creator is gone."""


class SegmentFullError(SegmentError):
    """Every slot of the directory is taken."""


def boot_id() -> str:
    """This boot's id: a segment from an earlier boot is stale whatever its pid says."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()[:36]
    except OSError:
        return ""


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state letter, start time in clock ticks after boot) of `pid` from /proc, or None."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    # The command name may hold spaces and parentheses: fields start after the last ')'.
    fields = raw[raw.rfind(b")") + 2:].split()
    try:
        return fields[0].decode("ascii", "replace"), int(fields[19])
    except (IndexError, ValueError):
        return None


def process_start(pid: int) -> int:
    """When `pid` started (clock ticks after boot), 0 if unknown. Tells a reused pid apart."""
    stat = _proc_stat(pid)
    return 0 if stat is None else stat[1]


def _pid_alive(pid: int, start: int = 0) -> bool:
    """Does `pid` run (and, if `start` is known, is it still the process that started then)?

    A zombie counts as dead: it will never finish a write or beat again, and
    its parent may take a while to reap it.
    """
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, another user's
    stat = _proc_stat(pid)
    if stat is None:
        if not _HAVE_PROC:
            return True
        try:  # /proc hidden from us, or the process ended between the two looks
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
        return True
    state, started = stat
    if state in ("Z", "X"):
        return False
    return not start or started == start


def segment_size(capacity: int) -> int:
    """Bytes needed for a segment with `capacity` slots."""
    return HEADER_SIZE + capacity * (DIR_ENTRY_SIZE + SLOT_SIZE)


class Segment:
    """A mapped segment. Create with `Segment.create`, attach with `Segment.attach`."""

    def __init__(self, path: Path, mm: mmap.mmap, capacity: int, writable: bool,
                 creator_pid: int, creator_boot_id: str, creator_start: int,
                 file_id: tuple[int, int]) -> None:
        self.path = path
        self.capacity = capacity
        self.writable = writable
        self.creator_pid = creator_pid
        self.creator_boot_id = creator_boot_id
        self.creator_start = creator_start
        self._file_id = file_id
        self._mm: mmap.mmap | None = mm
        self._base = ffi.from_buffer("char[]", mm)
        self._words = ffi.cast("int64_t *", self._base)
        # find()'s cache: a ready slot never changes its name or kind while the
        # segment lives, so each directory entry is read once; entries before
        # _scanned are all cached.
        self._found: dict[str, tuple[int, int]] = {}
        self._ready: list[tuple[int, str, int]] = []
        self._scanned = 0

    # -- lifecycle -------------------------------------------------------------

    @classmethod
    def create(cls, path: str | os.PathLike[str], capacity: int = DEFAULT_CAPACITY) -> Segment:
        """Create a fresh, empty segment at `path`.

        A file already there is replaced if it is stale or not a segment at all
        (the runtime holds the data-dir lock, so such a file is a dead
        runtime's); the live segment of another process is never replaced. The
        new file is built under a temporary name and renamed into place, so an
        attacher never sees a half-written header.
        """
        if not 1 <= capacity <= MAX_CAPACITY:
            raise SegmentError(f"segment capacity must be 1..{MAX_CAPACITY} slots, got {capacity}")
        path = Path(path)
        try:
            with cls.attach(path) as other:
                live_pid = other.creator_pid
        except SegmentError:
            live_pid = None  # nothing there, stale, or not a segment: ours to replace
        if live_pid is not None and live_pid != os.getpid():
            raise SegmentError(f"{path}: in use by the live runtime pid {live_pid}; "
                               "stop it or give this runtime another run_dir")
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        size = segment_size(capacity)
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.ftruncate(fd, size)  # a sparse file of zeros: every slot free
            mm = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
            st = os.fstat(fd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        finally:
            os.close(fd)
        me, bid, started = os.getpid(), boot_id(), process_start(os.getpid())
        mm[: _HEADER.size] = _HEADER.pack(
            MAGIC, LAYOUT_VERSION, capacity, me, lib.op_now_ns(),
            bid.encode("ascii", "replace"), started)
        os.replace(tmp, path)
        return cls(path, mm, capacity, True, me, bid, started, (st.st_dev, st.st_ino))

    @classmethod
    def attach(cls, path: str | os.PathLike[str], writable: bool = False) -> Segment:
        """Map an existing segment, checking that it is ours, complete and live.

        Raises SegmentNotLiveError for a missing file or a stale one (left by a
        runtime that is gone), SegmentError naming the file and the problem for
        a foreign or truncated file or another layout version. Never maps past
        the end of the file, so a bad file cannot crash the reader.
        """
        path = Path(path)
        try:
            fd = os.open(path, os.O_RDWR if writable else os.O_RDONLY)
        except FileNotFoundError:
            raise SegmentNotLiveError(
                f"{path}: no shared-memory segment (is the runtime running?)") from None
        except OSError as exc:
            raise SegmentError(f"{path}: cannot open segment: {exc.strerror}") from None
        try:
            st = os.fstat(fd)
            if st.st_size < HEADER_SIZE:
                raise SegmentError(f"{path}: truncated segment ({st.st_size} bytes, "
                                   f"less than the {HEADER_SIZE}-byte header)")
            prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
            mm = mmap.mmap(fd, st.st_size, mmap.MAP_SHARED, prot)
        finally:
            os.close(fd)
        magic, version, capacity, pid, _created, raw_bid, started = _HEADER.unpack_from(mm, 0)
        bid = raw_bid.decode("ascii", "replace").rstrip("\0")
        error: SegmentError | None = None
        if magic != MAGIC:
            error = SegmentError(f"{path}: not an outpost segment (wrong magic {magic!r})")
        elif version != LAYOUT_VERSION:
            error = SegmentError(
                f"{path}: segment layout version {version}, this outpost reads "
                f"{LAYOUT_VERSION}: use the outpost that started the runtime, or restart it")
        elif not 1 <= capacity <= MAX_CAPACITY:
            error = SegmentError(f"{path}: corrupt header (capacity {capacity})")
        elif st.st_size < segment_size(capacity):
            error = SegmentError(f"{path}: truncated segment ({st.st_size} bytes, "
                                 f"{capacity} slots need {segment_size(capacity)})")
        elif bid != boot_id():
            error = SegmentNotLiveError(
                f"{path}: stale segment from an earlier boot (runtime pid {pid})")
        elif not _pid_alive(pid, started):
            error = SegmentNotLiveError(
                f"{path}: stale segment left by runtime pid {pid}, which is no longer running")
        if error is not None:
            mm.close()
            raise error
        return cls(path, mm, capacity, writable, pid, bid, started, (st.st_dev, st.st_ino))

    def is_current(self) -> bool:
        """Is this still the segment at `path`, owned by a live creator?

        False after the runtime restarted (the path names a new file) or died:
        a long-lived attacher then attaches again to reach the new segment.
        """
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return False
        return (st.st_dev, st.st_ino) == self._file_id and \
            _pid_alive(self.creator_pid, self.creator_start)

    def close(self) -> None:
        """Let go of the mapping; unmap it unless metric objects were made from it.

        A pinned mapping (see pin) stays mapped until the process exits, so a
        metric object or a bound `inc` that outlives its segment never touches
        unmapped memory; values written to it after a restart are simply unseen.
        """
        if self._mm is None:
            return
        mm, self._mm = self._mm, None
        self._words = self._base = None
        if not any(m is mm for m in _PINNED):
            with contextlib.suppress(BufferError):  # a stray buffer view: the GC unmaps it
                mm.close()

    def pin(self) -> None:
        """Keep this mapping until the process exits. Record's constructor calls this.

        A Record's reads and writes go through a bare slot pointer, which does
        not keep the mapping alive, and the Record may outlive every other
        reference to its segment. (Counter, Gauge, Heartbeat and Histogram own
        an export of their slot instead; see counter_word.) A process maps one
        segment per runtime it serves, so this keeps one mapping per restart.
        """
        if self._mm is None:
            raise SegmentError(f"{self.path}: segment is closed")
        if not any(m is self._mm for m in _PINNED):
            _PINNED.append(self._mm)

    @property
    def closed(self) -> bool:
        """Has close() been called on this Segment object?"""
        return self._mm is None

    def unlink(self) -> None:
        """Remove the file (the creator does this at a clean stop), if it is still ours."""
        with contextlib.suppress(FileNotFoundError):
            st = os.stat(self.path)
            if (st.st_dev, st.st_ino) == self._file_id:
                self.path.unlink()

    def __enter__(self) -> Segment:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- slots -----------------------------------------------------------------

    def _entry_word(self, index: int) -> int:
        return (HEADER_SIZE + index * DIR_ENTRY_SIZE) // 8

    def _words_or_raise(self):
        if self._words is None:
            raise SegmentError(f"{self.path}: segment is closed")
        return self._words

    def _slot_offset(self, index: int) -> int:
        if not 0 <= index < self.capacity:
            raise SegmentError(f"slot index {index} out of 0..{self.capacity - 1}")
        return HEADER_SIZE + self.capacity * DIR_ENTRY_SIZE + index * SLOT_SIZE

    def slot_words(self, index: int):  # -> ffi cdata int64_t*
        """Pointer to the first word of slot `index`'s data."""
        return self._words_or_raise() + self._slot_offset(index) // 8

    def _slot_view(self, index: int, nbytes: int) -> memoryview:
        offset = self._slot_offset(index)
        if self._mm is None:
            raise SegmentError(f"{self.path}: segment is closed")
        return memoryview(self._mm)[offset:offset + nbytes]

    def counter_word(self, name: str) -> memoryview:
        """The word of counter slot `name` (claimed on first use), as a writable view.

        shm.metrics.Counter, a native type, calls this when it is made and holds
        an export of the view, which keeps the mapping alive for as long as the
        counter (or a bound `inc`) lives: close() then leaves unmapping to the GC.
        Gauge, Heartbeat and Histogram do the same through the methods below.
        """
        return self._slot_view(self.claim(name, COUNTER), 8)

    def gauge_word(self, name: str) -> memoryview:
        """The float64 word of gauge slot `name` (claimed on first use); see counter_word."""
        return self._slot_view(self.claim(name, GAUGE), 8)

    def heartbeat_word(self, name: str) -> memoryview:
        """The stamp word of heartbeat slot `name` (claimed on first use); see counter_word."""
        return self._slot_view(self.claim(name, HEARTBEAT), 8)

    def histogram_slot(self, name: str, bounds: Sequence[float]) -> tuple[memoryview, list]:
        """(the whole slot as a writable view, its bounds) of histogram `name`.

        A new slot is laid out as [nbounds, bounds...] before it is published; an
        existing one must hold exactly these bounds. SegmentError says what is
        wrong otherwise. See counter_word for why a view.
        """
        given = bounds
        try:
            bounds = [float(b) for b in given]
        except (TypeError, ValueError):
            bounds = []
        if not bounds or len(bounds) > HIST_MAX_BOUNDS or sorted(set(bounds)) != bounds \
                or any(math.isnan(b) or math.isinf(b) for b in bounds):
            raise SegmentError(
                f"histogram {name!r}: bounds must be 1..{HIST_MAX_BOUNDS} finite, "
                f"strictly increasing numbers, got {given!r:.200}")
        init = struct.pack(f"<q{len(bounds)}d", len(bounds), *bounds)
        index = self.claim(name, HISTOGRAM, init)
        stored = histogram_bounds(self.slot_words(index))
        if stored != bounds:
            raise SegmentError(f"histogram {name!r} exists with bounds {stored}, not {bounds}")
        return self._slot_view(index, SLOT_SIZE), stored

    def slot_meta(self, index: int) -> int:
        """The meta word of slot `index`'s directory entry (a record's size in bytes)."""
        return lib.op_load_i64(self._words_or_raise() + self._entry_word(index) + 1)

    def _name_at(self, index: int) -> str:
        start = HEADER_SIZE + index * DIR_ENTRY_SIZE + NAME_OFFSET
        return bytes(self._mm[start: start + NAME_MAX]).rstrip(b"\0").decode("utf-8", "replace")

    def find(self, name: str) -> tuple[int, int] | None:
        """(index, kind) of the ready slot called `name`, or None.

        Reads only the directory entries it has not seen yet (status asks for
        every agent's heartbeat slot per call, and most exec agents have none).
        """
        found = self._found.get(name)
        if found is None:
            self._read_new_entries()
            found = self._found.get(name)
        return found

    def _read_new_entries(self) -> None:
        words = self._words_or_raise()
        index, contiguous = self._scanned, True
        while index < self.capacity:
            state = lib.op_load_i64(words + self._entry_word(index))
            if state == 0:
                break  # slots are claimed in order: the first free one ends the list
            if state > 0:
                self._found.setdefault(self._name_at(index), (index, state))
            else:
                contiguous = False  # being claimed: read it again next time
            index += 1
            if contiguous:
                self._scanned = index

    def ready_slots(self) -> list[tuple[int, str, int]]:
        """(index, name, kind) of every ready slot, like slots(), but reading only the
        directory entries not seen before (a ready slot never changes): what a
        scrape walks instead of decoding every name each time. Do not modify it."""
        self._read_new_entries()
        if len(self._ready) != len(self._found):
            self._ready = [(index, name, kind) for name, (index, kind) in self._found.items()]
        return self._ready

    def slots(self) -> Iterator[tuple[int, str, int]]:
        """(index, name, kind) of every ready slot, in directory order."""
        words = self._words_or_raise()
        for index in range(self.capacity):
            state = lib.op_load_i64(words + self._entry_word(index))
            if state == 0:
                return  # slots are claimed in order: the first free one ends the list
            if state > 0:
                yield index, self._name_at(index), state

    def claim(self, name: str, kind: int, init: bytes = b"", meta: int = 0) -> int:
        """Index of the slot called `name`, claiming a free one if none exists.

        `init` is written at the start of a newly claimed slot's data and `meta`
        into its directory entry before the slot is published (a release store
        of its kind), so readers never see a half-initialised slot. An existing
        slot of another kind or another meta is an error, not a silent share.
        """
        if not self.writable:
            raise SegmentError(f"{self.path}: attached read-only, cannot register {name!r}")
        raw = name.encode("utf-8")
        if not raw or len(raw) > NAME_MAX or b"\0" in raw:
            raise SegmentError(f"slot name must be 1..{NAME_MAX} bytes without NUL: {name!r}")
        if len(init) > SLOT_SIZE:
            raise SegmentError(f"slot init data of {len(init)} bytes exceeds {SLOT_SIZE}")
        words = self._words_or_raise()
        me = os.getpid()
        index = 0
        while index < self.capacity:
            state_ptr = words + self._entry_word(index)
            state = lib.op_load_i64(state_ptr)
            if state == 0 and lib.op_cas_i64(state_ptr, 0, -me):
                entry = HEADER_SIZE + index * DIR_ENTRY_SIZE
                self._mm[entry + NAME_OFFSET: entry + DIR_ENTRY_SIZE] = raw.ljust(NAME_MAX, b"\0")
                lib.op_store_i64(state_ptr + 1, meta)
                data = HEADER_SIZE + self.capacity * DIR_ENTRY_SIZE + index * SLOT_SIZE
                self._mm[data: data + SLOT_SIZE] = init.ljust(SLOT_SIZE, b"\0")
                lib.op_store_i64(state_ptr, kind)  # release: name, meta and data first
                return index
            state = self._wait_claimed(state_ptr, index)
            if state == 0:
                continue  # a dead claimer's slot was freed: try it again
            if self._name_at(index) == name:
                if state != kind:
                    raise SegmentError(
                        f"slot {name!r} is a {KIND_NAMES.get(state, state)}, "
                        f"not a {KIND_NAMES.get(kind, kind)}")
                found_meta = lib.op_load_i64(state_ptr + 1)
                if found_meta != meta:
                    raise SegmentError(
                        f"{KIND_NAMES.get(kind, kind)} {name!r} exists with size {found_meta}, "
                        f"not {meta}")
                return index
            index += 1
        raise SegmentFullError(
            f"{self.path}: all {self.capacity} slots are taken; raise [shm] slots in the config")

    def _wait_claimed(self, state_ptr, index: int) -> int:
        """Wait out another process's claim in progress; free a dead claimer's entry."""
        deadline = time.monotonic() + _CLAIM_TIMEOUT_S
        spin = 0
        while True:
            state = lib.op_load_i64(state_ptr)
            if state >= 0:
                return state
            spin += 1
            if spin % 64 == 0:
                if not _pid_alive(-state):
                    # The claimer died between CAS and publish: nothing was published, free it.
                    lib.op_cas_i64(state_ptr, state, 0)
                    continue
                if time.monotonic() > deadline:
                    raise SegmentError(
                        f"{self.path}: slot {index} stuck being claimed by pid {-state}")
            os.sched_yield()  # a claimer preempted on a busy box needs the CPU, not us


def histogram_bounds(words) -> list[float]:
    """The bounds stored in the histogram slot at `words` (an int64_t pointer)."""
    n = lib.op_load_i64(words)
    if not 1 <= n <= HIST_MAX_BOUNDS:
        raise SegmentError(f"corrupt histogram slot ({n} bounds)")
    doubles = ffi.cast("double *", words + 1)
    return [doubles[i] for i in range(n)]
