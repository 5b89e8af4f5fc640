"""The scheduler: runs [[jobs]] when due, with timeouts, retries, concurrency policies, a
global cap with priorities, and a durable history that survives kill -9.

One loop wakes at the earliest due time. Each due is computed from the previous
due (never from the run), so nothing drifts; how late a run actually started is
recorded with it (`lateness_s`) and reported. A due the loop reaches more than a
whole period late (the host slept, the clock jumped, the runtime was down) is
"missed": `missed = "skip"` records it and waits for the next one, `"run_once"`
runs once now, however many were missed. At start, a run whose start record has
no end was interrupted (the runtime died): it is recorded as such and follows
`missed` too.

Events (agent None, the job in `job`): job_failed (run, result, error, attempts,
final), job_skipped (due, reason: overlap|missed, missed), job_interrupted (run);
with `events = "all"` also job_started (run, due, lateness_s, by) and job_ok (run,
seconds, attempts). A job every second would otherwise write two events a second
forever; its runs are in the history either way.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from runtime.agents.entry import EntryError, load_entry
from runtime.config.autonomy import Autonomy, JobSpec
from runtime.control.dispatch import Caller
from runtime.jobs.command import command_env, run_command
from runtime.jobs.history import JobHistory, Recovered
from runtime.jobs.schedule import Schedule
from runtime.rules.ports import MethodsPort
from runtime.store import Store, StoreError
from runtime.supervisor.procs import RotatingLog

log = logging.getLogger("outpost.jobs")

MAX_SLEEP = 30.0  # re-read the wall clock at least this often (it may be stepped)
# Runs are launched this long before their due and wait in their own task, so starting
# a thousand runs due at once costs each only its wake-up at the due time itself.
LEAD = 0.25
MakeContext = Callable[[str], Awaitable[Any]]
Emit = Callable[..., None]


class JobError(Exception):
    """A job run that could not be started: `code` is "not_found" or "busy"."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class JobFailed(Exception):
    """One attempt of a job failed; the message says how."""


@dataclass(eq=False)
class Run:
    """One run of a job, from launch (maybe waiting for its jitter or a slot) to its end."""

    number: int
    due: float
    by: str
    offset: float  # its jitter: meant to start at due + offset
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    done: trio.Event = field(default_factory=trio.Event)
    wake: trio.Event | None = None  # launched ahead: set at its due time
    started: float | None = None
    replaced: bool = False
    end: dict[str, Any] | None = None


@dataclass(eq=False)
class JobState:
    """A job as the scheduler tracks it."""

    spec: JobSpec
    schedule: Schedule
    next_due: float = math.inf
    last_due: float | None = None
    last_run: int = 0
    runs: dict[int, Run] = field(default_factory=dict)  # admitted: running or about to
    waiting: dict[int, Run] = field(default_factory=dict)  # launched ahead of their due
    last_end: dict[str, Any] | None = None
    started: int = 0
    skipped: int = 0
    missed: int = 0
    lateness_last: float | None = None
    lateness_max: float = 0.0
    main: Any = None  # an entry job's function, loaded at its first run


class PriorityGate:
    """At most `limit` holders; when full, the waiter with the highest priority goes
    first (then the earliest). `async with gate.slot(priority): ...`"""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.active = 0
        self._waiting: list[list[Any]] = []  # [-priority, order, event, state]
        self._order = itertools.count()

    def slot(self, priority: int) -> _Slot:
        return _Slot(self, priority)

    async def _acquire(self, priority: int) -> None:
        while self._waiting and self._waiting[0][3] != "waiting":
            heapq.heappop(self._waiting)  # cancelled waiters
        if self.active < self.limit and not self._waiting:
            self.active += 1
            return
        entry = [-priority, next(self._order), trio.Event(), "waiting"]
        heapq.heappush(self._waiting, entry)
        try:
            await entry[2].wait()
        except BaseException:
            if entry[3] == "granted":  # handed over as we were cancelled: pass it on
                self._release()
            entry[3] = "gone"
            raise

    def _release(self) -> None:
        while self._waiting:
            entry = heapq.heappop(self._waiting)
            if entry[3] == "waiting":
                entry[3] = "granted"
                entry[2].set()
                return
        self.active -= 1

    def resize(self, limit: int) -> None:
        self.limit = limit
        while self.active < self.limit and self._waiting:
            self.active += 1
            self._release()


class _Slot:
    __slots__ = ("gate", "priority")

    def __init__(self, gate: PriorityGate, priority: int) -> None:
        self.gate, self.priority = gate, priority

    async def __aenter__(self) -> None:
        await self.gate._acquire(self.priority)

    async def __aexit__(self, *exc: object) -> None:
        self.gate._release()


class Scheduler:
    """Runs the config's jobs. Start with `nursery.start(scheduler.run)`.

    Ports: `store` for the run history, `emit` for events, `methods` for maintain
    jobs (the `maintain` control method, which holds the lock cron's path holds),
    `make_context(job)` for entry jobs' ctx. `wall` is the wall clock (seconds since
    the epoch): due times are wall times; sleeping uses trio's clock.
    """

    def __init__(self, autonomy: Autonomy, *, store: Store, emit: Emit, methods: MethodsPort,
                 make_context: MakeContext, logs_dir: Path,
                 wall: Callable[[], float] = time.time,
                 rng: random.Random | None = None) -> None:
        self._history = JobHistory(store)
        self._emit = emit
        self._methods = methods
        self._make_context = make_context
        self._logs_dir = logs_dir
        self._wall = wall
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not a secret
        self._jobs: dict[str, JobState] = {}
        self._heap: list[tuple[float, int, str]] = []
        # Runs launched ahead wait on one event per due time: waking a thousand of them
        # is a thousand reschedules, not a thousand expiring timeouts.
        self._wakeups: dict[float, trio.Event] = {}
        self._wakeup_times: list[float] = []
        self._order = itertools.count()
        self._changed = trio.Event()
        self._nursery: trio.Nursery | None = None
        self._gate = PriorityGate(autonomy.scheduler.max_concurrent)
        self._specs = autonomy.jobs

    # -- the loop -------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) \
            -> None:
        """Recover the history, then run jobs as they fall due until cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await self._recover(self._specs)
            task_status.started()
            while True:
                now = self._wall()
                while self._wakeup_times and self._wakeup_times[0] <= now:
                    self._wakeups.pop(heapq.heappop(self._wakeup_times)).set()
                while self._heap and self._heap[0][0] <= now + LEAD:
                    due, _, name = heapq.heappop(self._heap)
                    job = self._jobs.get(name)
                    if job is not None and job.next_due == due:
                        self._on_due(job, now)
                now = self._wall()
                wait = min(self._heap[0][0] - LEAD if self._heap else math.inf,
                           self._wakeup_times[0] if self._wakeup_times else math.inf) - now
                with trio.move_on_after(min(wait, MAX_SLEEP)):
                    await self._changed.wait()
                    self._changed = trio.Event()

    def _plan(self, job: JobState, due: float) -> None:
        job.next_due = due
        if due < math.inf:
            heapq.heappush(self._heap, (due, next(self._order), job.spec.name))

    def _on_due(self, job: JobState, now: float) -> None:
        due = job.next_due
        following = job.schedule.next_after(due)
        if following > now:
            self._plan(job, following)
            self._launch(job, due, "schedule", ahead=True)
            return
        # More than a whole period late: every due up to now was missed.
        latest = job.schedule.last_at_or_before(now)
        missed = 1 + job.schedule.count_between(due, latest)
        self._plan(job, job.schedule.next_after(now))
        self._missed(job, latest, missed)

    def _missed(self, job: JobState, latest: float, missed: int) -> None:
        job.missed += missed
        if job.spec.missed == "run_once":
            log.info("job %s: %d due(s) missed; catching up once", job.spec.name, missed)
            self._launch(job, latest, "catch_up")
        else:
            self._skip(job, latest, "missed", missed)

    def _skip(self, job: JobState, due: float, reason: str, missed: int = 1) -> None:
        job.skipped += 1
        job.last_due = max(job.last_due or due, due)
        self._emit("job_skipped", None, job=job.spec.name, due=due, reason=reason,
                   missed=missed)
        assert self._nursery is not None
        self._nursery.start_soon(self._record_skip, job.spec.name, due, reason, missed,
                                 job.next_due)

    async def _record_skip(self, name: str, due: float, reason: str, missed: int,
                           next_due: float) -> None:
        try:
            await self._history.skip(name, due, reason, missed, next_due)
        except StoreError as exc:
            log.error("job %s: could not record a skipped run: %s", name, exc)

    def _launch(self, job: JobState, due: float, by: str, ahead: bool = False) -> Run | None:
        """A run for `due`, admitted now (None if forbid skips it); or, `ahead` of a due
        still to come, started early, to be admitted by its own task at the due time."""
        job.last_run += 1
        job.last_due = max(job.last_due or due, due)
        offset = self._rng.uniform(0, job.spec.jitter) if job.spec.jitter else 0.0
        run = Run(job.last_run, due, by, offset)
        if ahead and due > self._wall():
            job.waiting[run.number] = run
            run.wake = self._wakeups.get(due)
            if run.wake is None:
                run.wake = self._wakeups[due] = trio.Event()
                heapq.heappush(self._wakeup_times, due)
        elif not self._admit(job, run):
            return None
        assert self._nursery is not None
        self._nursery.start_soon(self._run, job, run)
        return run

    def _admit(self, job: JobState, run: Run) -> bool:
        """Apply the job's concurrency as the run falls due; False if it is skipped."""
        job.waiting.pop(run.number, None)
        if job.runs:
            if job.spec.concurrency == "forbid":
                self._skip(job, run.due, "overlap")
                return False
            if job.spec.concurrency == "replace":
                for old in job.runs.values():
                    old.replaced = True
                    old.scope.cancel()
        job.runs[run.number] = run
        return True

    # -- one run ----------------------------------------------------------------------------

    async def _run(self, job: JobState, run: Run) -> None:
        spec = job.spec
        result, error, attempts = "cancelled", None, 0
        try:
            with run.scope:
                if run.wake is not None:  # launched ahead: wait for the due, then admit
                    await run.wake.wait()
                    if not self._admit(job, run):
                        return
                if run.offset:
                    await trio.sleep(run.offset)
                async with self._gate.slot(spec.priority):
                    run.started = self._wall()
                    # Runs falling due together each take their start time before any of
                    # them spends time writing its start record.
                    await trio.lowlevel.cancel_shielded_checkpoint()
                    late = run.started - run.due - run.offset
                    job.started += 1
                    job.lateness_last = late
                    job.lateness_max = max(job.lateness_max, late)
                    await self._history.start(spec.name, run.number, run.due, run.offset,
                                              run.started, run.by)
                    if spec.events == "all":
                        self._emit("job_started", None, job=spec.name, run=run.number,
                                   due=run.due, lateness_s=round(late, 6), by=run.by)
                    result, error, attempts = await self._attempts(job, run)
            if run.scope.cancelled_caught:
                result = "replaced" if run.replaced else "cancelled"
        except StoreError as exc:
            log.error("job %s: could not record run %d: %s", spec.name, run.number, exc)
            result, error = "failed", f"run history not writable: {exc}"
        finally:
            with trio.CancelScope(shield=True):
                await self._finish(job, run, result, error, attempts)

    async def _attempts(self, job: JobState, run: Run) -> tuple[str, str | None, int]:
        spec = job.spec
        result, error = "failed", None
        for attempt in range(1, spec.retries + 2):
            with trio.move_on_after(spec.timeout or math.inf) as limit:
                try:
                    await self._execute(job, run)
                    return "ok", None, attempt
                except JobFailed as exc:
                    error = str(exc)
                except (Exception, SystemExit) as exc:  # a job's bug is its failure
                    error = f"{type(exc).__name__}: {exc}"
            if limit.cancelled_caught:
                result, error = "timeout", f"timed out after {spec.timeout:g}s"
            else:
                result = "failed"
            final = attempt == spec.retries + 1
            if not final:
                self._emit("job_failed", None, job=spec.name, run=run.number, result=result,
                           error=error, attempts=attempt, final=False)
                await trio.sleep(min(spec.backoff_max, spec.backoff * 2 ** (attempt - 1)))
        return result, error, spec.retries + 1

    async def _execute(self, job: JobState, run: Run) -> None:
        spec = job.spec
        if spec.entry is not None:
            if job.main is None:  # loaded once per config (re)load, like an import
                try:
                    job.main = load_entry(spec.entry)
                except EntryError as exc:
                    raise JobFailed(str(exc)) from None
            await job.main(await self._make_context(spec.name))
        elif spec.command:
            path = self._logs_dir / "jobs" / f"{spec.name}.log"
            out = RotatingLog(path, spec.log_max_bytes, spec.log_keep)
            try:
                out.write(f"--- run {run.number} at {time.strftime('%Y-%m-%dT%H:%M:%S%z')} "
                          f"({run.by})\n".encode())
                done = await run_command(
                    spec.command, cwd=spec.cwd, sink=out.write, tail_max=1024,
                    env=command_env([*spec.env, ("OUTPOST_JOB", spec.name),
                                     ("OUTPOST_RUN", str(run.number))]))
            finally:
                out.close()
            if not done.ok:
                tail = done.output.decode("utf-8", "replace").strip()[-300:]
                raise JobFailed(done.describe() + (f"; output: {tail}" if tail else ""))
        else:
            caller = Caller("job", spec.name)
            for task in spec.maintain:
                answer = await self._methods.call("maintain", {"task": task}, caller=caller)
                result = answer.get("result") if isinstance(answer, dict) else None
                if isinstance(result, dict) and result.get("ok") is False:
                    raise JobFailed(f"maintain {task}: "
                                    + "; ".join(map(str, result.get("problems") or [])))

    async def _finish(self, job: JobState, run: Run, result: str, error: str | None,
                      attempts: int) -> None:
        spec = job.spec
        job.runs.pop(run.number, None)
        job.waiting.pop(run.number, None)
        try:
            if run.started is None:
                return  # cancelled before it began (waiting for its jitter or a slot)
            ended = self._wall()
            run.end = {"run": run.number, "result": result, "ended": ended,
                       "seconds": round(ended - run.started, 6), "attempts": attempts,
                       "error": error, "next_due": job.next_due}
            job.last_end = run.end
            if result != "ok":
                self._emit("job_failed", None, job=spec.name, run=run.number, result=result,
                           error=error, attempts=attempts, final=True)
            elif spec.events == "all":
                self._emit("job_ok", None, job=spec.name, run=run.number,
                           seconds=run.end["seconds"], attempts=attempts)
            try:
                await self._history.end(spec.name, run.end)
                if run.number % max(1, spec.history_keep // 2) == 0:
                    await self._history.trim(spec.name, spec.history_keep)
            except StoreError as exc:
                log.error("job %s: could not record the end of run %d: %s", spec.name,
                          run.number, exc)
        finally:
            run.done.set()

    # -- start-up and reload -----------------------------------------------------------------

    async def _recover(self, specs: tuple[JobSpec, ...]) -> None:
        now = self._wall()
        async with trio.open_nursery() as nursery:  # the writes share group commits
            for spec in specs:
                job = JobState(spec, Schedule(spec))
                self._jobs[spec.name] = job
                found = await trio.to_thread.run_sync(self._history.recover, spec.name)
                nursery.start_soon(self._resume, job, found, now)

    async def _resume(self, job: JobState, found: Recovered, now: float) -> None:
        spec = job.spec
        job.last_run, job.last_due, job.last_end = found.last_run, found.last_due, \
            found.last_end
        for open_run in found.open_runs:
            record = {"run": open_run.get("run"), "result": "interrupted", "ended": now,
                      "seconds": None, "attempts": None, "next_due": None,
                      "error": "the runtime stopped during this run (killed?)"}
            log.warning("job %s: run %s was interrupted", spec.name, open_run.get("run"))
            self._emit("job_interrupted", None, job=spec.name, run=open_run.get("run"))
            job.last_end = record
            await self._history.end(spec.name, record)
        if found.last_due is None:  # a new job: from now on
            self._plan(job, job.schedule.next_after(now))
            return
        following = job.schedule.next_after(found.last_due)
        self._plan(job, job.schedule.next_after(now) if following <= now else following)
        if following <= now:
            latest = job.schedule.last_at_or_before(now)
            self._missed(job, latest, 1 + job.schedule.count_between(following, latest))
        elif found.open_runs and spec.missed == "run_once":  # its due was not missed, but
            self._missed(job, found.last_due, 0)             # its run did not complete

    def reload(self, autonomy: Autonomy) -> dict[str, list[str]]:
        """Apply new jobs: removed ones are cancelled, changed ones keep their history
        and running runs but take the new schedule from now on, new ones start from now."""
        now = self._wall()
        changes: dict[str, list[str]] = {"added": [], "changed": [], "removed": []}
        wanted = {spec.name: spec for spec in autonomy.jobs}
        for name in list(self._jobs):
            if name not in wanted:
                gone = self._jobs.pop(name)
                for run in [*gone.runs.values(), *gone.waiting.values()]:
                    run.scope.cancel()
                changes["removed"].append(name)
        for name, spec in wanted.items():
            job = self._jobs.get(name)
            if job is not None and job.spec == spec:
                continue
            changes["changed" if job is not None else "added"].append(name)
            if job is None:
                job = self._jobs[name] = JobState(spec, Schedule(spec))
            for run in job.waiting.values():  # launched for the old schedule
                run.scope.cancel()
            job.spec, job.schedule, job.main = spec, Schedule(spec), None
            self._plan(job, job.schedule.next_after(max(now, job.last_due or now)))
        self._specs = autonomy.jobs
        self._gate.resize(autonomy.scheduler.max_concurrent)
        self._changed.set()
        return changes

    # -- on demand and views ------------------------------------------------------------------

    async def trigger(self, job: str, *, by: str) -> dict[str, Any]:
        """Run `job` now, honouring its concurrency (JobError "busy" under forbid)."""
        state = self._jobs.get(job)
        if state is None:
            raise JobError("not_found", f"no job named {job!r} (jobs: "
                           f"{', '.join(self._jobs) or 'none'})")
        running = sorted(state.runs)
        if running and state.spec.concurrency == "forbid":
            raise JobError("busy", f"job {job!r} is running (run {running[-1]}) and its "
                           "concurrency is forbid; try again when it ends")
        run = self._launch(state, self._wall(), by)
        assert run is not None
        return {"job": job, "run": run.number,
                "replaced": running if state.spec.concurrency == "replace" else []}

    async def wait(self, job: str, run: int) -> dict[str, Any] | None:
        """The end record of a run launched by `trigger`, once it ends."""
        state = self._jobs.get(job)
        handle = None if state is None else state.runs.get(run)
        if handle is not None:
            await handle.done.wait()
            return handle.end
        return None if state is None else state.last_end

    def status(self) -> list[dict[str, Any]]:
        """Every job: schedule, next due, last result, running runs (`outpost jobs`)."""
        return [{"name": name, "kind": job.spec.kind, "schedule": job.schedule.text,
                 "timezone": job.spec.timezone, "next_due": job.next_due
                 if job.next_due < math.inf else None,
                 "running": sorted(job.runs), "last": job.last_end, "runs": job.started,
                 "skipped": job.skipped, "missed": job.missed,
                 "lateness_last_s": job.lateness_last,
                 "lateness_max_s": round(job.lateness_max, 6),
                 "concurrency": job.spec.concurrency, "missed_policy": job.spec.missed,
                 "priority": job.spec.priority}
                for name, job in self._jobs.items()]

    def history(self, job: str, limit: int) -> list[dict[str, Any]]:
        """A job's newest runs from the store (synchronous: a short read)."""
        if job not in self._jobs:
            raise JobError("not_found", f"no job named {job!r}")
        return self._history.runs(job, limit)

    def names(self) -> list[str]:
        return list(self._jobs)
