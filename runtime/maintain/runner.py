"""Running maintenance: through a live runtime if one answers, else offline under the lock.

Exit codes (documented for cron, defined in runtime.exitcodes): 0 every task
ok; 1 a task found or hit a problem; 2 usage or config error; 75 (EX_TEMPFAIL)
the data dir is locked by another maintenance run or a starting runtime — we
never wait, so cron jobs cannot stack up.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import trio

from runtime.config import Config
from runtime.control import ControlClient, NotRunningError
from runtime.events import EventLog
from runtime.maintain import copy
from runtime.maintain.report import MaintainError, TaskResult
from runtime.maintain.tasks import (
    OFFLINE_ONLY,
    ROUTINE,
    TAKES_ARG,
    TASKS,
    Maintenance,
    run_task,
)
from runtime.maintain.verify import Progress
from runtime.store import StateBook, open_store
from runtime.store.lock import DataDirLock

ALL_TASKS = (*TASKS, *OFFLINE_ONLY)


def parse_tasks(words: list[str]) -> list[tuple[str, str | None]]:
    """['checkpoint', 'backup', '/b'] -> [('checkpoint', None), ('backup', '/b')]."""
    if not words:
        return [(name, None) for name in ROUTINE]
    out: list[tuple[str, str | None]] = []
    i = 0
    while i < len(words):
        name = words[i]
        if name not in ALL_TASKS:
            raise MaintainError(f"unknown maintenance task {name!r}; tasks: "
                                + ", ".join(ALL_TASKS))
        arg = None
        if name in TAKES_ARG:
            if i + 1 >= len(words):
                raise MaintainError(f"{name} needs a folder: outpost maintain {name} DIR")
            arg = words[i + 1]
            i += 1
        out.append((name, arg))
        i += 1
    return out


def run_online(config: Config, tasks: list[tuple[str, str | None]],
               progress: Progress | None = None) -> list[dict] | None:
    """Ask the running runtime to do the tasks; None if no runtime answers.

    The runtime reports no progress while it works, so `progress` gets the elapsed
    time (done = seconds, total = 0) to show the task is alive.
    """
    try:
        client = ControlClient(config.socket_path, timeout=3600)
    except NotRunningError:
        return None
    with client:
        for name, _ in tasks:
            if name in OFFLINE_ONLY:
                raise MaintainError(f"{name} is offline only and a runtime is running "
                                    f"(pid {client.call('info')['pid']}): stop it first "
                                    "with `outpost stop`")
        results = []
        for name, arg in tasks:
            # A relative backup folder means relative to where the command was typed.
            args = {"arg": str(Path(arg).absolute())} if arg else {}
            with _ticking(progress, f"{name} (in the runtime)"):
                results.append(client.call("maintain", task=name, args=args)["result"])
        return results


async def run_offline(config: Config, tasks: list[tuple[str, str | None]],
                      progress: Progress | None = None) -> list[TaskResult]:
    """Do the tasks with no runtime: hold the data-dir lock for the whole run."""
    from runtime.app import store_options

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
                async with open_store(config.data_dir, store_options(config)) as store:
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


@contextlib.contextmanager
def _ticking(progress: Progress | None, label: str) -> Iterator[None]:
    if progress is None:
        yield
        return
    started = time.monotonic()
    with copy.reporting(lambda: progress(int(time.monotonic() - started), 0, label), 0.25):
        yield


async def _timed(name: str, work: Any) -> TaskResult:
    started = trio.current_time()
    try:
        result = await work
    except MaintainError as exc:
        result = TaskResult(name, problems=[str(exc)])
    result.seconds = round(trio.current_time() - started, 3)
    return result
