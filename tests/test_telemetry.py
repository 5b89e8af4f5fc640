"""The runtime's own metrics in the segment: commit latency and failures from a real
store (a real full filesystem), and the sampled agent, event and disk figures."""

from __future__ import annotations

from pathlib import Path

import pytest

from runtime.config import load_config
from runtime.control import Table
from runtime.events import EventLog
from runtime.maintain.disk import DiskGuard
from runtime.store import StoreError, StoreOptions, open_store
from runtime.telemetry import COMMIT_BOUNDS, CommitProbe, Telemetry
from shm import Counter, Histogram, Segment, snapshot
from tests.store.conftest import small_fs  # noqa: F401 - the fixture

COLUMNS = ("name", "state", "restarts")


@pytest.fixture
def segment(tmp_path: Path):
    seg = Segment.create(tmp_path / "outpost.shm", 64)
    yield seg
    seg.close()


def values(segment: Segment) -> dict:
    return {name: entry["value"] for name, entry in snapshot(segment).items()}


async def test_commits_are_timed_and_a_full_disk_counts_as_errors(
        segment: Segment, small_fs: Path) -> None:  # noqa: F811
    latency = Histogram(segment, "outpost:store_commit_seconds", COMMIT_BOUNDS)
    errors = Counter(segment, "outpost:store_commit_errors")
    probe = CommitProbe(latency, errors)
    opts = StoreOptions(map_size=1 << 20, map_size_max=64 << 20)
    async with open_store(small_fs / "data", opts) as store:
        store.set_commit_hooks(probe.before, probe.after)
        committed = 0
        await store.append("fill", {"pad": b"a"})
        assert probe.writable() and latency.value()["count"] == 1
        failures = 0
        for i in range(10_000):
            try:
                await store.append("fill", {"i": i, "pad": b"x" * 20_000})
                committed += 1
            except StoreError:
                failures += 1
                if failures == 3:
                    break
        assert failures == 3, "the 4 MiB filesystem never filled"
        assert latency.value()["count"] == committed + 1
        assert errors.value() >= 2  # each failed commit is counted at the next attempt
        assert not probe.writable()
        store.set_commit_hooks(None, None)


async def test_a_sample_publishes_agents_events_and_disk(segment: Segment,
                                                         tmp_path: Path) -> None:
    config_path = tmp_path / "outpost.toml"
    config_path.write_text('[runtime]\ndata_dir = "data"\nrun_dir = "run"\n'
                           '[maintain]\ndisk_budget = "10MiB"\n')
    config = load_config(config_path)
    agents = {"a": "running", "b": "restarting"}

    async def call(method: str, params: dict) -> dict:
        assert method == "status"
        return {"agents": Table(COLUMNS, [(n, s, 0) for n, s in agents.items()])}

    async with open_store(config.data_dir, StoreOptions()) as store:
        events = EventLog(store)
        guard = DiskGuard(config, events)
        telemetry = Telemetry(segment, store, events, guard, call)
        guard.check()
        await telemetry.sample()
        got = values(segment)
        assert got["outpost:agents"] == 2 and got["outpost:agents_up"] == 1
        assert got["a:restarts"] == 0 and got["b:restarts"] == 0  # there from the start
        assert got["outpost:store_writable"] == 1
        assert got["outpost:disk_budget_bytes"] == 10 << 20
        assert got["outpost:disk_used_bytes"] == guard.usage.total
        assert got["outpost:disk_level"] == 0
        assert got["outpost:events_dropped"] == 0
        events.dropped, events.refused = 3, 1  # what the event log counts on overflow
        agents["b"] = "running"
        await telemetry.sample()
        got = values(segment)
        assert (got["outpost:events_dropped"], got["outpost:events_refused"]) == (3, 1)
        assert got["outpost:agents_up"] == 2
        await telemetry.sample()  # counters follow the totals, they do not add them again
        assert values(segment)["outpost:events_dropped"] == 3
