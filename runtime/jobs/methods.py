"""The jobs room's control methods: `jobs`, `jobs.run`, `jobs.history`.

app.py adds this table to the runtime's Methods. Params are checked strictly: an
unknown or mistyped one is `bad_params` naming the field.
"""

from __future__ import annotations

from typing import Any

import trio

from runtime.control import MethodError
from runtime.jobs.scheduler import JobError, Scheduler
from runtime.rules.methods import check_params, name_param
from runtime.rules.ports import Handler

HISTORY_MAX = 1000


def jobs_methods(scheduler: Scheduler) -> dict[str, Handler]:
    """The handlers app.py adds to the runtime's Methods."""

    async def jobs(params: dict[str, Any]) -> dict:
        """Every job: schedule, next due, last result, running runs."""
        check_params(params, "jobs", set())
        return {"jobs": scheduler.status()}

    async def jobs_run(params: dict[str, Any]) -> dict:
        """Run a job now (params.job), honouring its concurrency; with params.wait, answer
        when the run has ended, with its end record."""
        check_params(params, "jobs.run", {"job", "wait"})
        name = name_param(params, "job")
        wait = params.get("wait", False)
        if not isinstance(wait, bool):
            raise MethodError("bad_params", "params.wait must be true or false")
        try:
            started = await scheduler.trigger(name, by="manual")
        except JobError as exc:
            raise MethodError(exc.code, str(exc)) from None
        if wait:
            started["end"] = await scheduler.wait(name, started["run"])
        return started

    async def jobs_history(params: dict[str, Any]) -> dict:
        """A job's newest runs from the durable history (params.job, params.limit)."""
        check_params(params, "jobs.history", {"job", "limit"})
        name = name_param(params, "job")
        limit = params.get("limit", 20)
        if isinstance(limit, bool) or not isinstance(limit, int) or \
                not 1 <= limit <= HISTORY_MAX:
            raise MethodError("bad_params", f"params.limit must be an integer from 1 to "
                              f"{HISTORY_MAX}")
        try:
            runs = await trio.to_thread.run_sync(scheduler.history, name, limit)
        except JobError as exc:
            raise MethodError(exc.code, str(exc)) from None
        return {"job": name, "runs": runs}

    return {"jobs": jobs, "jobs.run": jobs_run, "jobs.history": jobs_history}
