"""Shared fixtures: real runtimes in temporary directories."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.runtime_proc import RuntimeProc


@pytest.fixture
def runtimes() -> Iterator[list[RuntimeProc]]:
    """Collects RuntimeProcs started by a test and kills any still alive afterwards."""
    started: list[RuntimeProc] = []
    yield started
    for rt in started:
        rt.cleanup()


@pytest.fixture
def start_runtime(runtimes: list[RuntimeProc]):
    def start(config: Path, command: list[str] | None = None) -> RuntimeProc:
        rt = RuntimeProc(config, command).start()
        runtimes.append(rt)
        return rt
    return start
