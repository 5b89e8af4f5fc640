"""Maintenance with no runtime: the tasks run here, holding the data-dir lock.

`outpost maintain` comes here only when no runtime answers on the socket, so
this is where trio and the store are imported, not before.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trio

from runtime.config import Config
from runtime.events import EventLog
from runtime.maintain import copy
from runtime.maintain.progress import Progress
from runtime.maintain.report import MaintainError, TaskResult
from runtime.maintain.tasks import Maintenance, run_task
from runtime.store import StateBook, StoreOptions, open_store
from runtime.store.lock import DataDirLock


def run_tasks(config: Config, tasks: list[tuple[str, str | None]],
              progress: Progress | None = None) -> list[TaskResult]:
    """Run `tasks` in order under the lock; DataDirLockedError at once if it is held."""
    return trio.run(_run_tasks, config, tasks, progress)


async def _run_tasks(config: Config, tasks: list[tuple[str, str | None]],
                     progress: Progress | None) -> list[TaskResult]:
    results = []
    with DataDirLock(config.data_dir):  # DataDirLockedError -> exit 75 in the caller
        for name, arg in tasks:
            if name == "restore":
                result = await _timed(name, trio.to_thread.run_sync(
                    copy.restore, config.data_dir, Path(arg).absolute(), progress))
            elif name == "compact":
                result = await _timed(name, trio.to_thread.run_sync(
                    copy.compact_offline, config.data_dir, progress))
            else:
                async with open_store(config.data_dir, StoreOptions.of(config.store)) as store:
                    events = EventLog(store)
                    m = Maintenance(config, store, StateBook(store), events, online=False,
                                    progress=progress)
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(events.run)
                        result = await run_task(m, name, arg)
                        nursery.cancel_scope.cancel()
                if name == "disk" and result.details["before"]["level"] != "ok":
                    # The LMDB file only shrinks by compaction, which needs the store closed.
                    compacted = await trio.to_thread.run_sync(copy.compact_offline,
                                                              config.data_dir)
                    result.details["actions"].append(compacted.summary)
            results.append(result)
    return results


async def _timed(name: str, work: Any) -> TaskResult:
    started = trio.current_time()
    try:
        result = await work
    except MaintainError as exc:
        result = TaskResult(name, problems=[str(exc)])
    result.seconds = round(trio.current_time() - started, 3)
    return result
