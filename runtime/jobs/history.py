"""Durable run history: one store stream per job, `jobs/<name>/runs`.

Records (msgpack maps), appended through the store's one write path:

    {"e": "start", "run", "due", "offset", "started", "by"}  before the run's work begins
    {"e": "end", "run", "result", "ended", "seconds", "attempts", "error", "next_due"}
    {"e": "skip", "due", "reason", "missed", "next_due"}     a due that did not run

A start is durable before the job's work begins, so after a kill -9 a start
without its end is a run that was interrupted: recovery writes its end
("interrupted") and the job's `missed` policy decides whether it runs again.
Results: ok, failed, timeout, replaced, cancelled, interrupted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from runtime.store import Store

_TAIL = 512  # records read back at start: enough for every run still open


def runs_stream(job: str) -> str:
    """The store stream holding a job's run history."""
    return f"jobs/{job}/runs"


@dataclass
class Recovered:
    """What a job's history says at start: where it left off."""

    last_due: float | None = None  # the newest due that was run or skipped
    last_run: int = 0  # the newest run number used
    open_runs: list[dict[str, Any]] = field(default_factory=list)  # started, never ended
    last_end: dict[str, Any] | None = None


class JobHistory:
    """Appends and reads back the run records of every job in one store."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def start(self, job: str, run: int, due: float, offset: float, started: float,
                    by: str) -> None:
        """`offset` is the run's jitter: it was meant to start at due + offset."""
        await self.store.append(runs_stream(job), {"e": "start", "run": run, "due": due,
                                                   "offset": offset, "started": started,
                                                   "by": by})

    async def end(self, job: str, record: dict[str, Any]) -> None:
        await self.store.append(runs_stream(job), {"e": "end", **record})

    async def skip(self, job: str, due: float, reason: str, missed: int,
                   next_due: float) -> None:
        await self.store.append(runs_stream(job), {"e": "skip", "due": due, "reason": reason,
                                                   "missed": missed, "next_due": next_due})

    async def trim(self, job: str, keep_runs: int) -> None:
        """Drop the oldest records beyond about `keep_runs` runs (two records each)."""
        stream = runs_stream(job)
        first, last = self.store.first_seq(stream), self.store.last_seq(stream)
        if first and last - first + 1 > 4 * keep_runs:
            await self.store.prune(stream, last - 2 * keep_runs, uncovered=True)

    def tail(self, job: str, count: int) -> list[dict[str, Any]]:
        """The newest `count` records, oldest first (synchronous: a short read)."""
        stream = runs_stream(job)
        last = self.store.last_seq(stream)
        if not last:
            return []
        start = max(self.store.first_seq(stream), last - count + 1)
        return [record for _, record in self.store.read(stream, start, limit=count)
                if isinstance(record, dict)]

    def recover(self, job: str) -> Recovered:
        found = Recovered()
        open_runs: dict[int, dict[str, Any]] = {}
        for record in self.tail(job, _TAIL):
            kind = record.get("e")
            if kind in ("start", "skip") and isinstance(record.get("due"), int | float):
                found.last_due = max(found.last_due or record["due"], record["due"])
            if kind == "start":
                found.last_run = max(found.last_run, int(record.get("run", 0)))
                open_runs[record.get("run", 0)] = record
            elif kind == "end":
                open_runs.pop(record.get("run"), None)
                found.last_end = record
        found.open_runs = sorted(open_runs.values(), key=lambda r: r.get("run", 0))
        return found

    def runs(self, job: str, limit: int) -> list[dict[str, Any]]:
        """The newest `limit` runs (start and end merged) and skips, oldest first."""
        rows: list[dict[str, Any]] = []
        by_run: dict[int, dict[str, Any]] = {}
        for record in self.tail(job, 2 * limit + 64):
            kind = record.get("e")
            if kind == "start":
                row = {"run": record.get("run"), "due": record.get("due"),
                       "started": record.get("started"), "by": record.get("by"),
                       "result": "running", "lateness_s": _late(record)}
                by_run[row["run"]] = row
                rows.append(row)
            elif kind == "end":
                row = by_run.get(record.get("run"))
                if row is None:  # its start was trimmed
                    row = {"run": record.get("run")}
                    rows.append(row)
                row.update({k: v for k, v in record.items() if k not in ("e", "run")})
            elif kind == "skip":
                rows.append({"run": None, "due": record.get("due"), "result": "skipped",
                             "reason": record.get("reason"), "missed": record.get("missed"),
                             "next_due": record.get("next_due")})
        return rows[-limit:]


def _late(record: dict[str, Any]) -> float | None:
    due, started = record.get("due"), record.get("started")
    offset = record.get("offset", 0.0)
    if all(isinstance(v, int | float) for v in (due, started, offset)):
        return round(started - due - offset, 6)
    return None
