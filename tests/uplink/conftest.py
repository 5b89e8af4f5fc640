"""Fixtures for the uplink: a real nats-server (installed when missing), real stores."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.uplink.natsserver import NatsServer, ensure_nats_server


@pytest.fixture(scope="session")
def nats_binary() -> str:
    path, why = ensure_nats_server()
    if path is None:
        pytest.skip(f"no nats-server: {why}")
    return path


@pytest.fixture
def nats_server(nats_binary: str, tmp_path: Path) -> Iterator[NatsServer]:
    server = NatsServer(nats_binary, tmp_path / "jetstream").start()
    try:
        yield server
    finally:
        server.kill9()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The long forms (marked soak) run only when asked: `-m soak` or OUTPOST_SOAK=1."""
    if "soak" in (config.getoption("markexpr") or "") or os.environ.get("OUTPOST_SOAK"):
        return
    here = Path(__file__).parent
    skip = pytest.mark.skip(reason="soak test: run with -m soak or OUTPOST_SOAK=1")
    for item in items:
        if item.get_closest_marker("soak") and here in Path(str(item.fspath)).parents:
            item.add_marker(skip)
