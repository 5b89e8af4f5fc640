"""Helpers for the shm tests: segments in temporary dirs and real forked processes."""

from __future__ import annotations

import multiprocessing
import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from shm import Segment

# fork: children start at once and share nothing but the segment file they attach.
FORK = multiprocessing.get_context("fork")
PROCS = 4  # processes of the lost-update tests
MILLION = 1_000_000


def attach(path: Path) -> Segment:
    """Attach the segment file read-write, as an agent process does."""
    return Segment.attach(path, writable=True)


@pytest.fixture
def seg_path(tmp_path: Path) -> Path:
    return tmp_path / "outpost.shm"


@pytest.fixture
def seg(seg_path: Path) -> Iterator[Segment]:
    segment = Segment.create(seg_path, 64)
    yield segment
    segment.close()


def run_all(target: Callable[..., None], args: list[tuple], timeout: float = 60) -> None:
    """Run target(*a) in one forked process per `a`, at the same time; all must exit 0."""
    procs = [FORK.Process(target=target, args=a) for a in args]
    for p in procs:
        p.start()
    try:
        for p in procs:
            p.join(timeout)
        codes = [p.exitcode for p in procs]
        assert codes == [0] * len(procs), f"child exit codes {codes}"
    finally:
        for p in procs:
            if p.exitcode is None:
                os.kill(p.pid, signal.SIGKILL)
                p.join()
