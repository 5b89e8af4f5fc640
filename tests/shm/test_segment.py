"""Segment files: creation, attach checks, bad files, stale and restarted runtimes.

Every bad file here is a real file on disk (garbage, truncated, patched header),
and every dead or live owner is a real process.
"""

from __future__ import annotations

import gc
import os
from pathlib import Path

import pytest
from shm._native import ffi, lib

from shm import (
    Counter,
    Gauge,
    Heartbeat,
    Histogram,
    Record,
    Segment,
    SegmentError,
    SegmentFullError,
    SegmentNotLiveError,
    snapshot,
)
from shm.segment import (
    _HEADER,
    COUNTER,
    HEADER_SIZE,
    HEARTBEAT,
    LAYOUT_VERSION,
    NAME_MAX,
    segment_size,
)
from tests.shm.conftest import FORK, run_all


def header_fields(path: Path) -> list:
    return list(_HEADER.unpack(path.read_bytes()[: _HEADER.size]))


def patch_header(path: Path, **changes: object) -> None:
    names = ["magic", "version", "capacity", "pid", "created", "boot_id", "start"]
    fields = header_fields(path)
    for key, value in changes.items():
        fields[names.index(key)] = value
    with open(path, "r+b") as f:
        f.write(_HEADER.pack(*fields))


def dead_runtime_segment(path: Path, capacity: int = 16, unlink: bool = False) -> int:
    """A real process creates a segment with a counter at 5 and exits; returns its pid."""
    def child() -> None:
        seg = Segment.create(path, capacity)
        Counter(seg, "c").add(5)
        if unlink:
            seg.unlink()
        os._exit(0)  # no cleanup: like a runtime that crashed (unless unlink)
    p = FORK.Process(target=child)
    p.start()
    p.join(30)
    assert p.exitcode == 0
    return p.pid


# -- create / attach --------------------------------------------------------------


def test_create_writes_header_and_attach_reads_it(seg_path: Path) -> None:
    seg = Segment.create(seg_path, 16)
    assert seg_path.stat().st_size == segment_size(16)
    assert oct(seg_path.stat().st_mode & 0o777) == "0o600"
    magic, version, capacity, pid, _, _, start = header_fields(seg_path)
    assert (magic, version, capacity, pid) == (b"OUTPOSTM", LAYOUT_VERSION, 16, os.getpid())
    assert start > 0  # our own start time, so a reused pid is told apart
    ro = Segment.attach(seg_path)
    assert (ro.capacity, ro.creator_pid, ro.writable) == (16, os.getpid(), False)
    assert ro.is_current() and seg.is_current()
    assert not list(seg_path.parent.glob(".*.tmp"))  # built aside, renamed into place


def test_read_only_attach_sees_values_but_cannot_register(seg: Segment, seg_path: Path) -> None:
    Counter(seg, "a:c").add(3)
    ro = Segment.attach(seg_path)
    assert snapshot(ro)["a:c"] == {"kind": "counter", "value": 3}
    with pytest.raises(SegmentError, match="read-only"):
        Counter(ro, "a:other")


def test_rw_attach_shares_slots_with_creator(seg: Segment, seg_path: Path) -> None:
    mine = Counter(seg, "x")
    theirs = Counter(Segment.attach(seg_path, writable=True), "x")
    theirs.add(2)
    mine.inc()
    assert mine.value() == theirs.value() == 3


def test_missing_file_is_not_live(seg_path: Path) -> None:
    with pytest.raises(SegmentNotLiveError, match="is the runtime running"):
        Segment.attach(seg_path)


# -- bad files: clear errors, never a crash, and create() replaces them -----------


def test_garbage_file_is_wrong_magic_and_create_replaces_it(seg_path: Path) -> None:
    seg_path.write_bytes(os.urandom(64 * 1024))
    with pytest.raises(SegmentError, match="wrong magic") as err:
        Segment.attach(seg_path)
    assert not isinstance(err.value, SegmentNotLiveError)
    assert str(seg_path) in str(err.value)
    seg = Segment.create(seg_path, 8)
    Counter(seg, "c").inc()
    assert snapshot(Segment.attach(seg_path)) == {"c": {"kind": "counter", "value": 1}}


def test_other_layout_version_names_both_versions(seg: Segment, seg_path: Path) -> None:
    patch_header(seg_path, version=LAYOUT_VERSION + 1)
    with pytest.raises(SegmentError, match=f"layout version {LAYOUT_VERSION + 1}.*reads "
                                           f"{LAYOUT_VERSION}"):
        Segment.attach(seg_path)


@pytest.mark.parametrize("size", [0, 10, HEADER_SIZE - 1])
def test_file_shorter_than_a_header_is_truncated(seg_path: Path, size: int) -> None:
    seg_path.write_bytes(b"OUTPOSTM"[:size] + b"\0" * max(0, size - 8))
    with pytest.raises(SegmentError, match="truncated segment"):
        Segment.attach(seg_path)


def test_truncated_directory_or_data_is_refused_before_mapping_past_eof(
        seg: Segment, seg_path: Path) -> None:
    Counter(seg, "c").inc()
    os.truncate(seg_path, segment_size(seg.capacity) // 2)
    with pytest.raises(SegmentError, match=r"truncated segment \(\d+ bytes, 64 slots need"):
        Segment.attach(seg_path)
    # create() over it starts clean (it is our own pid's file, so not "in use").
    fresh = Segment.create(seg_path, 8)
    assert list(fresh.slots()) == []


def test_corrupt_capacity_is_refused(seg: Segment, seg_path: Path) -> None:
    for capacity in (0, 2**31):
        patch_header(seg_path, capacity=capacity)
        with pytest.raises(SegmentError, match="corrupt header"):
            Segment.attach(seg_path)


def test_full_directory_raises_and_existing_names_still_work(seg_path: Path) -> None:
    seg = Segment.create(seg_path, 4)
    counters = [Counter(seg, f"c{i}") for i in range(4)]
    with pytest.raises(SegmentFullError, match="all 4 slots are taken"):
        Gauge(seg, "one-too-many")
    again = Counter(seg, "c2")  # an existing name needs no free slot
    again.inc()
    assert counters[2].value() == 1


def test_names_kinds_and_sizes_are_checked(seg: Segment) -> None:
    with pytest.raises(SegmentError, match="slot name"):
        Counter(seg, "x" * (NAME_MAX + 1))
    with pytest.raises(SegmentError, match="slot name"):
        Counter(seg, "")
    Counter(seg, "a" * 48 + ":heartbeat")  # the longest agent name plus a metric fits
    Counter(seg, "n")
    with pytest.raises(SegmentError, match="is a counter, not a gauge"):
        Gauge(seg, "n")
    Record(seg, "r", 16)
    with pytest.raises(SegmentError, match="size 16, not 8"):
        Record(seg, "r", 8)
    Histogram(seg, "h", [1, 2])
    with pytest.raises(SegmentError, match="exists with bounds"):
        Histogram(seg, "h", [1, 3])
    with pytest.raises(SegmentError, match="strictly increasing"):
        Histogram(seg, "h2", [2, 1])


def test_corrupt_histogram_slot_reads_as_an_error_not_garbage(seg: Segment) -> None:
    h = Histogram(seg, "h", [1.0])
    lib.op_store_i64(seg.slot_words(seg.find("h")[0]), 10**9)  # bound count smashed
    assert h.observe(0.5) == -1  # refused in C, nothing written
    with pytest.raises(SegmentError, match="corrupt histogram"):
        h.value()
    assert "corrupt histogram" in snapshot(seg)["h"]["error"]


# -- stale segments of dead runtimes ----------------------------------------------


def test_segment_of_a_dead_runtime_is_stale_and_create_replaces_it(seg_path: Path) -> None:
    pid = dead_runtime_segment(seg_path)
    assert seg_path.exists()
    with pytest.raises(SegmentNotLiveError, match=f"stale segment left by runtime pid {pid}"):
        Segment.attach(seg_path)
    seg = Segment.create(seg_path, 16)
    assert seg.find("c") is None  # values do not survive a restart
    assert Segment.attach(seg_path).creator_pid == os.getpid()


def test_a_reused_pid_does_not_make_a_stale_segment_live(seg: Segment, seg_path: Path) -> None:
    # Our parent is alive; a header naming it with another start time is a reused pid.
    patch_header(seg_path, pid=os.getppid(), start=1)
    with pytest.raises(SegmentNotLiveError, match=f"runtime pid {os.getppid()}"):
        Segment.attach(seg_path)


def test_segment_from_an_earlier_boot_is_stale(seg: Segment, seg_path: Path) -> None:
    patch_header(seg_path, boot_id=b"00000000-0000-0000-0000-000000000000")
    with pytest.raises(SegmentNotLiveError, match="earlier boot"):
        Segment.attach(seg_path)


def test_create_refuses_to_replace_a_live_runtimes_segment(seg_path: Path) -> None:
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()

    def child() -> None:
        seg = Segment.create(seg_path, 8)
        Counter(seg, "theirs").inc()
        os.write(ready_w, b"x")
        os.read(go_r, 1)  # live until told
        os._exit(0)

    p = FORK.Process(target=child)
    p.start()
    try:
        assert os.read(ready_r, 1) == b"x"
        with pytest.raises(SegmentError, match=f"in use by the live runtime pid {p.pid}"):
            Segment.create(seg_path, 8)
        assert Segment.attach(seg_path).find("theirs") is not None  # untouched
    finally:
        os.write(go_w, b"x")
        p.join(30)
    seg = Segment.create(seg_path, 8)  # its owner is gone now
    assert seg.find("theirs") is None


# -- restarts ---------------------------------------------------------------------


def test_attach_across_a_runtime_restart_behaves_as_documented(seg_path: Path) -> None:
    """Old attachments keep the old file, new attaches see the new one (segment docstring)."""
    cmd_r, cmd_w = os.pipe()
    ready_r, ready_w = os.pipe()

    def runtime(generation: int) -> None:
        seg = Segment.create(seg_path, 16)
        Counter(seg, "gen").add(generation)
        os.write(ready_w, b"r")
        os.read(cmd_r, 1)  # b"c" clean stop (unlink), b"k" crash
        if os.read(cmd_r, 1) == b"c":
            seg.unlink()
        os._exit(0)

    first = FORK.Process(target=runtime, args=(1,))
    first.start()
    assert os.read(ready_r, 1) == b"r"
    old = Segment.attach(seg_path, writable=True)
    old_gen = Counter(old, "gen")
    assert old_gen.value() == 1 and old.is_current()

    os.write(cmd_w, b"gk")  # the first runtime crashes
    first.join(30)
    assert not old.is_current()
    with pytest.raises(SegmentNotLiveError, match="stale"):
        Segment.attach(seg_path)

    second = FORK.Process(target=runtime, args=(2,))
    second.start()
    assert os.read(ready_r, 1) == b"r"
    new = Segment.attach(seg_path)
    assert snapshot(new) == {"gen": {"kind": "counter", "value": 2}}
    assert new.is_current() and not old.is_current()
    # The old attachment still works, on the old unlinked file nobody else sees.
    old_gen.inc()
    assert old_gen.value() == 2
    assert snapshot(Segment.attach(seg_path))["gen"]["value"] == 2

    os.write(cmd_w, b"gc")  # the second runtime stops cleanly: the file goes with it
    second.join(30)
    assert not seg_path.exists() and not new.is_current()
    with pytest.raises(SegmentNotLiveError, match="no shared-memory segment"):
        Segment.attach(seg_path)


def test_unlink_leaves_a_newer_runtimes_file_alone(seg_path: Path) -> None:
    old = Segment.create(seg_path, 8)
    os.rename(seg_path, seg_path.with_suffix(".old"))
    newer = Segment.create(seg_path, 8)
    old.unlink()  # the path now names someone else's file
    assert seg_path.exists() and newer.is_current()
    newer.unlink()
    assert not seg_path.exists()


def test_metric_objects_keep_the_mapping_after_close(seg: Segment) -> None:
    c = Counter(seg, "c")
    r = Record(seg, "r", 8)
    seg.close()
    assert seg.closed
    c.inc()  # no crash: the object pins the mapping
    r.write(b"12345678")
    assert c.value() == 1 and r.read() == b"12345678"
    with pytest.raises(SegmentError, match="closed"):
        Counter(seg, "after-close")


def test_slots_are_cache_line_aligned_and_the_header_fits(seg: Segment) -> None:
    assert _HEADER.size <= HEADER_SIZE
    addrs = [int(ffi.cast("uintptr_t", seg.slot_words(i))) for i in range(3)]
    assert all(a % 64 == 0 for a in addrs)  # no two slots share a cache line


def _bound_inc_outlives_everything(path: Path) -> None:
    inc = Counter(Segment.attach(path, writable=True), "c").inc  # segment and Counter dropped
    gc.collect()
    for _ in range(1000):
        inc()  # would be a SIGSEGV on an unmapped page


def test_a_bound_inc_outlives_its_counter_and_segment(seg: Segment, seg_path: Path) -> None:
    # In a child, so a crash shows as an exit code instead of taking pytest down.
    run_all(_bound_inc_outlives_everything, [(seg_path,)])
    assert Counter(seg, "c").value() == 1000


def test_find_sees_slots_claimed_after_a_miss_and_by_other_mappings(
        seg: Segment, seg_path: Path) -> None:
    assert seg.find("late:heartbeat") is None  # a miss is not remembered as absent
    Heartbeat(seg, "late:heartbeat")
    assert seg.find("late:heartbeat") == (0, HEARTBEAT)
    other = Segment.attach(seg_path, writable=True)
    assert other.find("theirs") is None
    Counter(other, "theirs")
    assert seg.find("theirs") == (1, COUNTER)  # claimed through another mapping
    assert seg.find("late:heartbeat") == (0, HEARTBEAT)
