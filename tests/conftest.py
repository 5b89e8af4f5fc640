"""Shared fixtures: real runtimes in temporary directories."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.runtime_proc import ROOT, RuntimeProc


@pytest.fixture(scope="session")
def binary() -> Path:
    """dist/outpost, built once per test session (or $OUTPOST_BINARY if given)."""
    given = os.environ.get("OUTPOST_BINARY")
    if given:
        return Path(given)
    result = subprocess.run([str(ROOT / "scripts" / "build-binary")], capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    path = ROOT / "dist" / "outpost"
    assert path.is_file() and os.access(path, os.X_OK)
    return path


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


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Soak tests (long chaos runs, marked soak) run only when asked: `-m soak` or
    OUTPOST_SOAK=1; CI runs their short forms."""
    if "soak" in (config.getoption("markexpr") or "") or os.environ.get("OUTPOST_SOAK"):
        return
    skip = pytest.mark.skip(reason="soak test: run with -m soak or OUTPOST_SOAK=1")
    for item in items:
        if item.get_closest_marker("soak"):
            item.add_marker(skip)
