"""A populated data dir: real LMDB, real agent state streams, real events."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import trio

from runtime.agents import state_stream
from runtime.config import load_config
from runtime.events import STREAM as EVENTS
from runtime.store import KeyValueState, StateBook, open_store
from tests.runtime_proc import write_config

DAY = 86400.0


async def populate(data_dir: Path, agents: int = 3, ops: int = 300,
                   old_events: int = 500, new_events: int = 50) -> None:
    """Agent state with checkpoints and a WAL tail, plus old and recent events."""
    async with open_store(data_dir) as store:
        book = StateBook(store)
        for a in range(agents):
            state = await book.open(state_stream(f"agent{a}"))
            for i in range(ops):
                await state.incr("count")
                if i % 7 == 0:
                    await state.set(f"k{i % 20}", {"i": i, "blob": "x" * 50})
                if i == ops // 2:
                    await state.checkpoint()
            await state.merge("meta", {"agent": a})
        now = time.time()
        await store.append_many(EVENTS, [[now - 30 * DAY + i, "old", None, {"i": i}]
                                         for i in range(old_events)])
        await store.append_many(EVENTS, [[now - 60 + i, "new", None, {"i": i}]
                                         for i in range(new_events)])


async def digests(data_dir: Path) -> dict[str, str]:
    async with open_store(data_dir) as store:
        return {s: (await KeyValueState.load(store, s)).digest()
                for s in store.streams() if s.startswith("agent/")}


@pytest.fixture
def populated(tmp_path: Path) -> Path:
    config = write_config(tmp_path, "", extra='[maintain]\narchive_dir = "archive"\n')
    trio.run(populate, load_config(config).data_dir)
    return config


def maintain(config: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "runtime", "maintain", *args,
                           "--config", str(config)], capture_output=True, text=True,
                          timeout=300, cwd=config.parent)
