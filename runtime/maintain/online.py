"""Maintenance inside a live runtime: its tasks registered for the `maintain` method.

The runtime owns the only LMDB writer, so while it runs, maintenance goes
through it. One maintenance task runs at a time; a second caller is told the
runtime is busy (the CLI turns that into exit 75, like a held lock offline).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import trio

from runtime.control import MethodError
from runtime.maintain.report import TaskResult
from runtime.maintain.tasks import OFFLINE_ONLY, TASKS, Maintenance, run_task

if TYPE_CHECKING:
    from runtime.app import Runtime


def register(rt: Runtime) -> None:
    """Fill `rt.maintenance_tasks` with every task that can run online."""
    running = trio.Lock()
    maintenance = Maintenance(rt.config, rt.store, rt.book, rt.events, online=True,
                              compact=getattr(rt.store, "compact_online", None),
                              guard=rt.disk_guard)

    def bind(name: str) -> Any:
        async def task(args: dict[str, Any]) -> TaskResult:
            if running.locked():
                raise MethodError("busy", "another maintenance task is running in this "
                                  "runtime; try again later")
            arg = args.get("arg")
            if arg is not None and not isinstance(arg, str):
                raise MethodError("bad_params", "args.arg must be a string")
            async with running:
                return await run_task(maintenance, name, arg)
        task.__doc__ = (TASKS[name].__doc__ or name).strip()
        return task

    for name in TASKS:
        if name not in OFFLINE_ONLY:
            rt.maintenance_tasks[name] = bind(name)
