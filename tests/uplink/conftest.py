"""Fixtures for the uplink: a real nats-server (installed when missing), real stores."""

from __future__ import annotations

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

