"""A shared-memory segment: one mmap'd file, a header, a directory of named slots.

The runtime creates the segment and owns its lifecycle (we do not use
multiprocessing.shared_memory: its resource tracker unlinks segments a process
merely attached to). Agent processes attach read-write, the CLI read-only.
Every value lives in a fixed slot found by name, so readers need no IPC and no
per-process files.

Layout (all integers little-endian, 8-byte aligned):

    header    HEADER_SIZE bytes: magic, layout version, capacity, creator pid,
              creator boot id, creation stamp
    directory capacity x DIR_ENTRY_SIZE: state word, claimer pid, name
    data      capacity x SLOT_SIZE: the slot's values

A directory entry's state word is 0 (free), -pid (being claimed by pid) or the
slot kind (> 0, ready). Claiming is a compare-and-swap, so two processes that
register the same name at once end up sharing one slot.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import struct
from collections.abc import Iterator
from pathlib import Path

from shm._native import ffi, lib

MAGIC = b"OUTPOSTM"
LAYOUT_VERSION = 1
HEADER_SIZE = 256
DIR_ENTRY_SIZE = 64
NAME_MAX = DIR_ENTRY_SIZE - 16
SLOT_SIZE = 256
SLOT_WORDS = SLOT_SIZE // 8
DEFAULT_CAPACITY = 256

# header: magic, version, capacity, creator pid, created ns, boot id (36 ascii)
_HEADER = struct.Struct("<8sIIqq36s")

COUNTER, GAUGE, HISTOGRAM, HEARTBEAT, RECORD = 1, 2, 3, 4, 5
KIND_NAMES = {
    COUNTER: "counter",
    GAUGE: "gauge",
    HISTOGRAM: "histogram",
    HEARTBEAT: "heartbeat",
    RECORD: "record",
}

_CLAIM_SPINS = 100_000


class SegmentError(Exception):
    """The segment file cannot be used: the message says why and what to do."""


class SegmentFullError(SegmentError):
    """Every slot of the directory is taken."""


def boot_id() -> str:
    """This boot's id: a segment from an earlier boot is stale whatever its pid says."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()[:36]
    except OSError:
        return ""


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def segment_size(capacity: int) -> int:
    """Bytes needed for a segment with `capacity` slots."""
    return HEADER_SIZE + capacity * (DIR_ENTRY_SIZE + SLOT_SIZE)


class Segment:
    """A mapped segment. Create with `Segment.create`, attach with `Segment.attach`."""

    def __init__(self, path: Path, mm: mmap.mmap, capacity: int, writable: bool,
                 creator_pid: int, creator_boot_id: str, owner: bool) -> None:
        self.path = path
        self.capacity = capacity
        self.writable = writable
        self.creator_pid = creator_pid
        self.creator_boot_id = creator_boot_id
        self._owner = owner
        self._mm = mm
        self._base = ffi.from_buffer("char[]", mm)
        self._words = ffi.cast("int64_t *", self._base)

    # -- lifecycle -------------------------------------------------------------

    @classmethod
    def create(cls, path: str | os.PathLike[str], capacity: int = DEFAULT_CAPACITY) -> Segment:
        """Create a fresh segment at `path`, replacing any file left there.

        Only the runtime that holds the data-dir lock calls this, so a file
        already at `path` belongs to a dead runtime and is safely replaced.
        The new file is built under a temporary name and renamed into place, so
        an attacher never sees a half-written header.
        """
        if not 1 <= capacity <= 1 << 20:
            raise SegmentError(f"segment capacity must be 1..{1 << 20} slots, got {capacity}")
        path = Path(path)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        size = segment_size(capacity)
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.ftruncate(fd, size)
            mm = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        finally:
            os.close(fd)
        bid = boot_id()
        mm[: _HEADER.size] = _HEADER.pack(
            MAGIC, LAYOUT_VERSION, capacity, os.getpid(), lib.op_now_ns(),
            bid.encode("ascii", "replace"),
        )
        os.replace(tmp, path)
        return cls(path, mm, capacity, True, os.getpid(), bid, owner=True)

    @classmethod
    def attach(cls, path: str | os.PathLike[str], writable: bool = False) -> Segment:
        """Map an existing segment, checking that it is ours, complete and live.

        Raises SegmentError with a message naming the file and the problem for a
        missing file, a foreign or truncated file, another layout version, or a
        segment whose creator is gone (stale: left by a runtime that died).
        """
        path = Path(path)
        try:
            fd = os.open(path, os.O_RDWR if writable else os.O_RDONLY)
        except FileNotFoundError:
            raise SegmentError(f"{path}: no shared-memory segment (is the runtime running?)") \
                from None
        try:
            size = os.fstat(fd).st_size
            if size < HEADER_SIZE:
                raise SegmentError(f"{path}: truncated segment ({size} bytes < header)")
            prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
            mm = mmap.mmap(fd, size, mmap.MAP_SHARED, prot)
        finally:
            os.close(fd)
        magic, version, capacity, pid, _created, bid = _HEADER.unpack_from(mm, 0)
        problem = None
        if magic != MAGIC:
            problem = "not an outpost segment (wrong magic)"
        elif version != LAYOUT_VERSION:
            problem = f"layout version {version}, this outpost reads {LAYOUT_VERSION}: " \
                      "restart the runtime with the same outpost version"
        elif size < segment_size(capacity):
            problem = f"truncated segment ({size} bytes, needs {segment_size(capacity)})"
        else:
            bid = bid.decode("ascii", "replace").rstrip("\0")
            if bid != boot_id() or not _pid_alive(pid):
                problem = f"stale segment left by runtime pid {pid}, which is no longer running"
        if problem:
            mm.close()
            raise SegmentError(f"{path}: {problem}")
        return cls(path, mm, capacity, writable, pid, bid, owner=False)

    def close(self) -> None:
        """Unmap. Metric objects taken from this segment must not be used afterwards."""
        if self._mm is None:
            return
        self._words = self._base = None
        with contextlib.suppress(BufferError):  # a live cdata view still pins the buffer
            self._mm.close()
        self._mm = None

    def unlink(self) -> None:
        """Remove the file (the creator does this at a clean stop)."""
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def __enter__(self) -> Segment:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- slots -----------------------------------------------------------------

    def _entry_word(self, index: int) -> int:
        return (HEADER_SIZE + index * DIR_ENTRY_SIZE) // 8

    def slot_words(self, index: int):  # -> ffi cdata int64_t*
        """Pointer to the first word of slot `index`'s data."""
        offset = HEADER_SIZE + self.capacity * DIR_ENTRY_SIZE + index * SLOT_SIZE
        return self._words + offset // 8

    def _name_at(self, index: int) -> str:
        start = HEADER_SIZE + index * DIR_ENTRY_SIZE + 16
        return bytes(self._mm[start: start + NAME_MAX]).rstrip(b"\0").decode("utf-8", "replace")

    def find(self, name: str) -> tuple[int, int] | None:
        """(index, kind) of the ready slot called `name`, or None."""
        for index, slot_name, kind in self.slots():
            if slot_name == name:
                return index, kind
        return None

    def slots(self) -> Iterator[tuple[int, str, int]]:
        """(index, name, kind) of every ready slot, in directory order."""
        for index in range(self.capacity):
            state = lib.op_load_i64(self._words + self._entry_word(index))
            if state == 0:
                return  # slots are claimed in order: the first free one ends the list
            if state > 0:
                yield index, self._name_at(index), state

    def claim(self, name: str, kind: int, init: bytes = b"") -> int:
        """Index of the slot called `name`, claiming a free one if none exists.

        `init` is written at the start of a newly claimed slot's data before the
        slot is published, so readers never see a half-initialised slot.
        """
        if not self.writable:
            raise SegmentError(f"{self.path}: attached read-only, cannot register {name!r}")
        raw = name.encode("utf-8")
        if not raw or len(raw) > NAME_MAX or b"\0" in raw:
            raise SegmentError(f"slot name must be 1..{NAME_MAX} bytes without NUL: {name!r}")
        if len(init) > SLOT_SIZE:
            raise SegmentError(f"slot init data of {len(init)} bytes exceeds {SLOT_SIZE}")
        me = os.getpid()
        index = 0
        while index < self.capacity:
            state_ptr = self._words + self._entry_word(index)
            state = lib.op_load_i64(state_ptr)
            if state == 0 and lib.op_cas_i64(state_ptr, 0, -me):
                entry = HEADER_SIZE + index * DIR_ENTRY_SIZE
                self._mm[entry + 16: entry + 16 + NAME_MAX] = raw.ljust(NAME_MAX, b"\0")
                data = HEADER_SIZE + self.capacity * DIR_ENTRY_SIZE + index * SLOT_SIZE
                self._mm[data: data + SLOT_SIZE] = init.ljust(SLOT_SIZE, b"\0")
                lib.op_store_i64(state_ptr, kind)  # release: name and data first
                return index
            state = self._wait_claimed(state_ptr, index)
            if state == 0:
                continue  # a dead claimer's slot was freed: try it again
            if self._name_at(index) == name:
                if state != kind:
                    raise SegmentError(
                        f"slot {name!r} is a {KIND_NAMES.get(state, state)}, "
                        f"not a {KIND_NAMES.get(kind, kind)}")
                return index
            index += 1
        raise SegmentFullError(
            f"{self.path}: all {self.capacity} slots are taken; raise [shm] slots in the config")

    def _wait_claimed(self, state_ptr, index: int) -> int:
        """Wait out another process's claim in progress; take over a dead claimer's."""
        for spin in range(_CLAIM_SPINS):
            state = lib.op_load_i64(state_ptr)
            if state >= 0:
                return state
            if spin % 1000 == 999 and not _pid_alive(-state):
                # The claimer died between CAS and publish: the slot is unnamed, free it.
                lib.op_cas_i64(state_ptr, state, 0)
        raise SegmentError(f"{self.path}: slot {index} stuck being claimed by pid {-state}")
