"""Fixtures for the store tests: real LMDB files, real filesystems, real processes."""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
import trio


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A real 4 MiB tmpfs (we run as root in CI); skipped where mounting is not allowed."""
    mnt = tmp_path / "small-fs"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({done.stderr.strip() or 'not root'}); "
                    "test_file_size_limit_in_child covers a real failing write instead")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


class CommitGate:
    """Commit hooks that hold the writer inside `before_commit` of commit `hold` until
    `released` is set, and record each commit's ops (`batches`) and size (`sizes`)."""

    def __init__(self, hold: int) -> None:
        self.hold = hold
        self.entered = threading.Event()
        self.released = threading.Event()
        self.sizes: dict[int, int] = {}
        self.batches: dict[int, list] = {}

    def before(self, batch_no: int, ops: list) -> None:
        if batch_no == self.hold:
            self.entered.set()
            self.released.wait(30)

    def after(self, batch_no: int, ops: list) -> None:
        self.sizes[batch_no] = len(ops)
        self.batches[batch_no] = list(ops)


async def until(condition: Callable[[], object], timeout: float = 10.0,
                what: str = "condition") -> object:
    """Poll `condition()` (yielding to trio between polls) until truthy or fail at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await trio.sleep(0.002)


async def gather(*fns: Callable[[], Awaitable[object]]) -> list[object]:
    """Run coroutines concurrently and return their results (or exceptions) in order."""
    results: list[object] = [None] * len(fns)

    async def one(i: int, fn: Callable[[], Awaitable[object]]) -> None:
        try:
            results[i] = await fn()
        except Exception as exc:
            results[i] = exc

    async with trio.open_nursery() as nursery:
        for i, fn in enumerate(fns):
            nursery.start_soon(one, i, fn)
    return results
