"""Maintenance inside a live runtime: its tasks, for the `maintain` control method.

The runtime owns the only LMDB writer, so while it runs, maintenance goes
through it. One maintenance task runs at a time; a second caller is told the
runtime is busy (the CLI turns that into exit 75, like a held lock offline).
"""

from __future__ import annotations

from typing import Any

import trio

from runtime.config import Config
from runtime.control.dispatch import Handler
from runtime.control.errors import MethodError
from runtime.control.ledger import RequestLedger
from runtime.control.params import Str, accepts
from runtime.events import EventLog
from runtime.maintain.disk import DiskGuard
from runtime.maintain.tasks import OFFLINE_ONLY, TASKS, Maintenance, run_task
from runtime.store import StateBook, Store

MaintenanceTask = Handler
"""One online task: its declared args in (see `accepts`), its report (a
TaskResult's plain data) out."""


def online_tasks(config: Config, store: Store, book: StateBook, events: EventLog,
                 guard: DiskGuard, requests: RequestLedger | None = None) \
        -> dict[str, MaintenanceTask]:
    """Every task that can run online, by name, working on these parts of the runtime
    (`requests`: the live request ledger, which `prune` also prunes)."""
    running = trio.Lock()
    maintenance = Maintenance(config, store, book, events, online=True,
                              compact=store.compact_online, guard=guard, requests=requests)

    def bind(name: str) -> MaintenanceTask:
        @accepts(Str("arg", doc="the task's argument, e.g. backup's destination folder"))
        async def task(args: dict[str, Any]) -> dict[str, Any]:
            if running.locked():
                raise MethodError("busy", "another maintenance task is running in this "
                                  "runtime; try again later")
            async with running:
                return (await run_task(maintenance, name, args["arg"])).to_dict()
        task.__doc__ = (TASKS[name].__doc__ or name).strip()
        return task

    return {name: bind(name) for name in TASKS if name not in OFFLINE_ONLY}
