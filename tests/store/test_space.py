"""Issue 3 item 6: map growth up to a cap, and real full disks / file size limits.

The full-disk tests use real failing writes: a 4 MiB tmpfs (we are root in CI),
and RLIMIT_FSIZE in a child process. No mocks.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from runtime.store import DiskError, StoreError, StoreFullError, StoreOptions, open_store

from .crash_harness import ROOT


async def fill_until_refused(store, writers: int, size: int,
                             tag: str) -> tuple[dict[int, str], list[StoreError]]:
    """Concurrent writers append `size`-byte records until each is refused once.

    Returns every acknowledged seq with its record id, and the errors seen.
    """
    acked: dict[int, str] = {}
    errors: list[StoreError] = []

    async def writer(w: int) -> None:
        for n in range(100_000):
            rid = f"{tag}-{w}-{n}"
            try:
                seq = await store.append("fill", {"id": rid, "pad": b"x" * size})
            except StoreError as exc:
                errors.append(exc)
                return
            acked[seq] = rid

    async with trio.open_nursery() as nursery:
        for w in range(writers):
            nursery.start_soon(writer, w)
    return acked, errors


def stored_ids(store) -> dict[int, str]:
    return {seq: rec["id"] for seq, rec in store.read("fill")}


async def test_map_grows_to_the_cap_then_store_full_and_reads_still_work(
        data_dir: Path) -> None:
    opts = StoreOptions(map_size=64 << 10, map_size_max=1 << 20)
    async with open_store(data_dir, opts) as store:
        assert store.map_size == 64 << 10
        acked, errors = await fill_until_refused(store, writers=8, size=6000, tag="a")
        assert len(errors) == 8
        assert all(isinstance(e, StoreFullError) for e in errors)
        assert "raise [store] map_size_max" in str(errors[0])
        assert store.map_size == 1 << 20  # grew step by step up to the cap, no further
        assert len(acked) > 100  # far more than the initial 64 KiB could hold
        # Nothing unacknowledged was stored, everything acknowledged is readable.
        assert stored_ids(store) == acked
        await store.flush()  # the writer is alive
        with pytest.raises(StoreFullError):
            await store.append("fill", {"id": "big", "pad": b"y" * 60_000})
        # Freeing space makes writes work again.
        last = max(acked)
        await store.prune("fill", last - 10, uncovered=True)
        seq = await store.append("fill", {"id": "after", "pad": b""})
        assert seq == last + 1
    async with open_store(data_dir, opts) as store:
        assert store.last_seq("fill") == last + 1
        assert len(store.read("fill")) == 11


async def test_full_disk_refuses_writes_clearly_and_resumes_when_space_returns(
        small_fs: Path) -> None:
    filler = small_fs / "filler"
    filler.write_bytes(b"\0" * (1 << 20))  # space we can give back later
    data_dir = small_fs / "data"
    opts = StoreOptions(map_size=1 << 20, map_size_max=64 << 20)  # cap far above the disk
    async with open_store(data_dir, opts) as store:
        acked, errors = await fill_until_refused(store, writers=6, size=20_000, tag="a")
        assert len(errors) == 6
        assert all(type(e) is DiskError for e in errors), errors
        assert "disk full" in str(errors[0]) and "free space" in str(errors[0])
        assert len(acked) > 50
        assert stored_ids(store) == acked  # reads work; nothing unwritten was acked
        assert sorted(acked) == list(range(1, len(acked) + 1))  # gap-free: seqs rolled back
        with pytest.raises(DiskError):  # still full: still refused, still clear
            await store.append("fill", {"id": "still-full", "pad": b"z" * 20_000})
        filler.unlink()  # space returns
        seq = await store.append("fill", {"id": "resumed", "pad": b"z" * 20_000})
        assert seq == len(acked) + 1
        more, _ = await fill_until_refused(store, writers=2, size=20_000, tag="b")
        assert len(more) > 10  # writing really resumed, then the disk filled again
        acked.update(more)
        acked[seq] = "resumed"
    async with open_store(data_dir, opts) as store:
        assert stored_ids(store) == acked


_FSIZE_CHILD = r"""
import json, resource, sys, trio
from runtime.store import StoreError, StoreOptions, open_store

async def main(path):
    out = {"acked": {}, "errors": []}
    async with open_store(path, StoreOptions(map_size=1 << 20, map_size_max=64 << 20)) as store:
        await store.append("fill", {"id": "warm", "pad": b""})
        out["acked"][1] = "warm"
        size = (store.path / "data.mdb").stat().st_size
        # Python ignores SIGXFSZ, so a write past the limit fails with EFBIG.
        resource.setrlimit(resource.RLIMIT_FSIZE, (size + (512 << 10), resource.RLIM_INFINITY))
        for n in range(10_000):
            try:
                seq = await store.append("fill", {"id": f"r{n}", "pad": b"x" * 20_000})
                out["acked"][seq] = f"r{n}"
            except StoreError as exc:
                out["errors"].append([type(exc).__name__, str(exc)])
                break
        resource.setrlimit(resource.RLIMIT_FSIZE,
                           (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        seq = await store.append("fill", {"id": "resumed", "pad": b"x" * 20_000})
        out["acked"][seq] = "resumed"
    print(json.dumps(out))

trio.run(main, sys.argv[1])
"""


async def test_file_size_limit_in_child(data_dir: Path) -> None:
    done = subprocess.run([sys.executable, "-c", _FSIZE_CHILD, str(data_dir)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout)
    acked = {int(seq): rid for seq, rid in out["acked"].items()}
    [(kind, message)] = out["errors"]
    assert kind == "DiskError"
    assert "file size limit" in message
    assert len(acked) > 10
    assert acked[max(acked)] == "resumed"
    assert sorted(acked) == list(range(1, len(acked) + 1))
    async with open_store(data_dir) as store:
        assert stored_ids(store) == acked
