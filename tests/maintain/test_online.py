"""Maintenance through a live runtime: the runtime's own writer does the work."""

from __future__ import annotations

import json
from pathlib import Path

from runtime.config import load_config
from runtime.control.params import params_of
from runtime.events import EventLog
from runtime.maintain.disk import DiskGuard
from runtime.maintain.online import online_tasks
from runtime.maintain.tasks import OFFLINE_ONLY, TASKS
from runtime.store import StateBook, StoreOptions, open_store
from tests.maintain.conftest import maintain
from tests.runtime_proc import ROOT, agent_block, wait_for, write_config

COUNTER = agent_block("counter", str(ROOT / "examples" / "agents" / "counter.py") + ":run")


def count(rt) -> int:
    result = rt.cli("state", "get", "counter", "count", "--json")
    return json.loads(result.stdout)["value"] if result.returncode == 0 else 0


def test_tasks_run_inside_the_runtime_while_agents_keep_writing(tmp_path: Path,
                                                               start_runtime) -> None:
    config = write_config(tmp_path, COUNTER, extra='[maintain]\narchive_dir = "archive"\n')
    rt = start_runtime(config)
    rt.wait_running("counter")
    wait_for(lambda: count(rt) >= 3, what="count >= 3")

    result = maintain(config, "checkpoint", "prune", "archive", "compact", "verify", "disk",
                      "backup", str(tmp_path / "backups"), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["where"] == "runtime" and report["ok"]
    tasks = {t["task"]: t for t in report["tasks"]}
    assert tasks["checkpoint"]["details"]["checkpointed"] >= 1
    assert tasks["compact"]["details"]["online"] is True
    assert "agent/counter/state" in tasks["verify"]["details"]["streams"]
    backup = Path(tasks["backup"]["details"]["path"])
    assert (backup / "manifest.json").is_file()

    before = count(rt)
    wait_for(lambda: count(rt) > before, what="counter still counting")
    status = json.loads(rt.cli("status", "--json").stdout)["agents"][0]
    assert status["state"] == "running" and status["restarts"] == 0


def test_restore_is_refused_while_a_runtime_runs(tmp_path: Path, start_runtime) -> None:
    config = write_config(tmp_path, COUNTER)
    rt = start_runtime(config)
    rt.wait_running("counter")
    result = maintain(config, "restore", str(tmp_path))
    assert result.returncode == 1
    assert "offline only" in result.stderr and "outpost stop" in result.stderr
    assert rt.proc.poll() is None


async def test_online_tasks_are_returned_declared_and_report_plain_data(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path, COUNTER))
    async with open_store(config.data_dir, StoreOptions.of(config.store)) as store:
        book, events = StateBook(store), EventLog(store)
        state = await book.open("agent/counter/state")
        await state.incr("count")
        tasks = online_tasks(config, store, book, events, DiskGuard(config, events))
        assert sorted(tasks) == sorted(set(TASKS) - OFFLINE_ONLY)
        for name, task in tasks.items():
            assert params_of(task).names == ["arg"], name  # what `maintain` checks args by
            assert task.__doc__
        report = await tasks["checkpoint"]({"arg": None})
        assert report["task"] == "checkpoint" and report["ok"] is True
        assert report["details"] == {"checkpointed": 1}
        assert store.checkpoints("agent/counter/state")
