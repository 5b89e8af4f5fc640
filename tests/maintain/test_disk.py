"""The disk guard over a real data dir: critical refuses events, never state."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import trio

from runtime.config import parse_config
from runtime.events import EventLog
from runtime.maintain.disk import CRITICAL, OK, DiskGuard, measure
from runtime.store import StateBook, open_store


def config_with_budget(tmp_path: Path, budget: str, factor: float = 1.0):
    raw = {"runtime": {"data_dir": "data"},
           "maintain": {"disk_budget": budget, "disk_critical_factor": factor}}
    return parse_config(raw, tmp_path / "outpost.toml")


async def test_critical_suspends_events_but_not_state(tmp_path: Path) -> None:
    config = config_with_budget(tmp_path, "4KiB")
    async with open_store(config.data_dir) as store:
        events = EventLog(store)
        state = await StateBook(store).open("agent/a/state")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(events.run)
            guard = DiskGuard(config, events)
            assert guard.check().level == CRITICAL
            assert not guard.allows_nonessential()
            events.emit("restart", "a")  # non-essential: refused
            assert events.refused == 1
            assert await state.incr("count") == 1  # essential: written
            await store.flush()

            # Space comes back (here: a bigger budget) -> events resume.
            big = dataclasses.replace(
                config, maintain=dataclasses.replace(config.maintain, disk_budget=1 << 40))
            guard.config = big
            assert guard.check().level == OK and guard.allows_nonessential()
            events.emit("restart", "a")
            await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()
        types = [e["type"] for e in events.query(limit=100)]
        assert types == ["disk-critical", "disk-ok", "restart"]
        assert state.get("count") == 1


def test_usage_counts_archives_and_logs_inside_the_data_dir_once(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "archive").mkdir(parents=True)
    (data / "archive" / "a.opa").write_bytes(b"x" * 100_000)
    (data / "data.mdb").write_bytes(b"y" * 50_000)
    usage = measure(data, data / "archive", tmp_path / "logs", budget=1 << 30,
                    critical_factor=2)
    assert usage.archive_bytes >= 100_000
    assert 50_000 <= usage.data_bytes < 100_000
    assert usage.total < 200_000
