"""The jobs room's control methods: `jobs`, `jobs.run`, `jobs.history`.

app.py adds this table to the runtime's Methods. Each handler declares its params
(runtime.control.params), so a bad one is answered bad_params naming the field
before the handler runs.
"""

from __future__ import annotations

from typing import Any

import trio

from runtime.control.dispatch import Handler
from runtime.control.errors import MethodError
from runtime.control.params import Bool, Int, Str, accepts
from runtime.jobs.scheduler import JobError, Scheduler

HISTORY_MAX = 1000


def jobs_methods(scheduler: Scheduler) -> dict[str, Handler]:
    """The handlers app.py adds to the runtime's Methods."""

    @accepts()
    async def jobs(params: dict[str, Any]) -> dict:
        """Every job: schedule, next due, last result, running runs."""
        return {"jobs": scheduler.status()}

    @accepts(Str("job", required=True, doc="a job's name"),
             Bool("wait", default=False, doc="answer when the run has ended"))
    async def jobs_run(params: dict[str, Any]) -> dict:
        """Run a job now, honouring its concurrency (busy while it runs under forbid);
        with wait, answer when the run has ended, with its end record."""
        name = params["job"]
        try:
            started = await scheduler.trigger(name, by="manual")
        except JobError as exc:
            raise MethodError(exc.code, str(exc)) from None
        if params["wait"]:
            started["end"] = await scheduler.wait(name, started["run"])
        return started

    @accepts(Str("job", required=True, doc="a job's name"),
             Int("limit", lo=1, hi=HISTORY_MAX, default=20))
    async def jobs_history(params: dict[str, Any]) -> dict:
        """A job's newest runs from the durable history."""
        name = params["job"]
        try:
            runs = await trio.to_thread.run_sync(scheduler.history, name, params["limit"])
        except JobError as exc:
            raise MethodError(exc.code, str(exc)) from None
        return {"job": name, "runs": runs}

    return {"jobs": jobs, "jobs.run": jobs_run, "jobs.history": jobs_history}
