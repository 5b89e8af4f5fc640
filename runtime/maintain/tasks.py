"""The maintenance tasks, each an async function over a `Maintenance` context.

The same functions run inside a live runtime (called through the control
socket, sharing its single LMDB writer) and offline (the maintain command holds
the data-dir lock and opens the store itself).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from runtime.config import Config
from runtime.control.ledger import RequestLedger
from runtime.events import EventLog
from runtime.maintain import copy, disk
from runtime.maintain.archive import archive_events
from runtime.maintain.catalog import OFFLINE_ONLY  # noqa: F401 - online.py takes it from here
from runtime.maintain.report import MaintainError, TaskResult
from runtime.maintain.textfile import task_metrics_textfile
from runtime.maintain.verify import STATE_STREAM, Progress, verify
from runtime.store import StateBook, Store


@dataclass
class Maintenance:
    """What a task works on. `compact` is the online compaction hook (None offline)."""

    config: Config
    store: Store
    book: StateBook
    events: EventLog
    online: bool
    progress: Progress | None = None
    compact: Callable[[], Awaitable[dict]] | None = None
    guard: disk.DiskGuard | None = None  # online: re-checked after disk maintenance
    requests: RequestLedger | None = None  # online: the live one (offline: loaded to prune)

    def setting(self, key: str) -> Any:
        """A [maintain] setting (the loader fills every key, paths made absolute)."""
        return getattr(self.config.maintain, key)


def state_streams(store: Store) -> list[str]:
    return [s for s in store.streams() if STATE_STREAM.match(s)]


async def task_checkpoint(m: Maintenance, arg: str | None = None) -> TaskResult:
    """Checkpoint every agent's state."""
    result = TaskResult("checkpoint")
    written = 0
    for stream in state_streams(m.store):
        state = await m.book.open(stream)
        if state.ops_since_checkpoint:
            await state.checkpoint(m.setting("prune_keep_tail"))
            written += 1
    result.summary = f"checkpointed {written} state stream(s)"
    result.details = {"checkpointed": written}
    return result


async def task_prune(m: Maintenance, arg: str | None = None) -> TaskResult:
    """Drop WAL records that retained checkpoints cover, and request ids past their TTL."""
    result = TaskResult("prune")
    removed = {}
    for stream in m.store.streams():
        if m.store.checkpoints(stream):
            removed[stream] = await m.store.prune(stream)
    requests = m.requests if m.requests is not None else await RequestLedger.load(m.store)
    expired = await requests.prune(m.config.request_id_ttl_s)
    result.summary = (f"pruned {sum(removed.values())} WAL record(s) and {expired} request "
                      "id(s)")
    result.details = {"removed": removed, "request_ids_expired": expired}
    return result


async def task_archive(m: Maintenance, arg: str | None = None,
                       older_than_days: float | None = None) -> TaskResult:
    """Move old events into checksummed zstd archives; delete expired archives."""
    days = m.setting("archive_after_days") if older_than_days is None else older_than_days
    return await archive_events(m.store, Path(m.setting("archive_dir")), days,
                                m.setting("archive_keep_days"))


async def task_verify(m: Maintenance, arg: str | None = None) -> TaskResult:
    return await trio.to_thread.run_sync(
        verify, m.store, Path(m.setting("archive_dir")), m.progress)


async def task_backup(m: Maintenance, arg: str | None = None) -> TaskResult:
    if not arg:
        raise MaintainError("backup needs a destination folder: outpost maintain backup DIR")
    return await trio.to_thread.run_sync(copy.backup, m.store, Path(arg).absolute(),
                                         m.progress)


async def task_compact(m: Maintenance, arg: str | None = None) -> TaskResult:
    if m.compact is None:
        raise MaintainError("online compaction is not available in this runtime")
    result = TaskResult("compact")
    result.details = await m.compact()
    result.summary = (f"compacted {result.details['bytes_before']} -> "
                      f"{result.details['bytes_after']} bytes online; writes paused "
                      f"{result.details['paused_s']:.3f}s")
    return result


def _usage(m: Maintenance) -> disk.DiskUsage:
    return disk.measure(m.config.data_dir, Path(m.setting("archive_dir")),
                        Path(m.setting("logs_dir")), m.setting("disk_budget"),
                        m.setting("disk_critical_factor"))


async def task_disk(m: Maintenance, arg: str | None = None) -> TaskResult:
    """Measure against the byte budget; over it, archive and prune early."""
    result = TaskResult("disk")
    before = await trio.to_thread.run_sync(_usage, m)
    actions = []
    if before.level != disk.OK:
        m.events.emit("disk-over-budget", None, **before.to_dict())
        actions.append((await task_archive(m, older_than_days=0)).summary)
        await task_checkpoint(m)
        actions.append((await task_prune(m)).summary)
        if m.compact is not None:
            actions.append((await task_compact(m)).summary)
    after = await trio.to_thread.run_sync(m.guard.check if m.guard is not None
                                          else lambda: _usage(m))
    result.details = {"before": before.to_dict(), "after": after.to_dict(), "actions": actions}
    result.summary = (f"disk {after.total} of {after.budget} budget bytes ({after.level})"
                      + (f"; was {before.total} ({before.level}); " + "; ".join(actions)
                         if actions else ""))
    if after.level == disk.CRITICAL:
        result.problems.append(
            f"disk use {after.total} bytes is past the critical mark {after.critical_at} "
            f"(budget {after.budget}) or the filesystem is nearly full: non-essential "
            "writes are refused; raise [maintain] disk_budget or free space")
    return result


TASKS: dict[str, Callable[..., Awaitable[TaskResult]]] = {
    "checkpoint": task_checkpoint,
    "prune": task_prune,
    "compact": task_compact,
    "archive": task_archive,
    "verify": task_verify,
    "backup": task_backup,
    "disk": task_disk,
    "metrics-textfile": task_metrics_textfile,
}


async def run_task(m: Maintenance, name: str, arg: str | None = None) -> TaskResult:
    """Run one task, timing it; a MaintainError becomes a problem in its result."""
    started = time.monotonic()
    try:
        result = await TASKS[name](m, arg)
    except MaintainError as exc:
        result = TaskResult(name, problems=[str(exc)])
    result.seconds = round(time.monotonic() - started, 3)
    return result
