"""When a job is due: a cron expression (cronsim) or a fixed interval, as wall-clock times.

Every due time is computed from the previous DUE time, never from when a run
happened, so slow runs and late wake-ups do not drift the schedule. Intervals are
aligned to the epoch (every = "5m" is due at :00, :05, ... UTC), so they are the
same across restarts. Cron expressions are read in the job's time zone (default
the host's); cronsim handles DST the way Debian's cron does.
"""

from __future__ import annotations

import datetime as dt
import math

from cronsim import CronSim

from runtime.config.autonomy import JobSpec, job_timezone

_MAX_COUNT = 100_000  # missed dues counted one by one at most (cron), then "at least"


class Schedule:
    """A job's due times: `next_after(t)` is the first one strictly after `t`."""

    def __init__(self, job: JobSpec, tz: dt.tzinfo | None = None) -> None:
        self.expression = job.schedule
        self.every = job.every
        self.tz = tz if tz is not None or self.every is not None else job_timezone(job)
        self.text = job.schedule_text
        self._cursor: tuple[float, CronSim] | None = None  # (last due given, its iterator)

    def next_after(self, t: float) -> float:
        """The first due time after `t` (seconds since the epoch)."""
        if self.every is not None:
            return (math.floor(t / self.every) + 1) * self.every
        if self._cursor is not None and self._cursor[0] == t:
            it = self._cursor[1]  # asked from the previous due: continue, no re-parse
        else:
            it = CronSim(self.expression or "", dt.datetime.fromtimestamp(t, self.tz))
        try:
            due = next(it).timestamp()
        except StopIteration:  # cronsim looks 50 years ahead: e.g. "0 0 30 2 *"
            return math.inf
        self._cursor = (due, it)
        return due

    def last_at_or_before(self, t: float) -> float:
        """The newest due time <= `t`."""
        if self.every is not None:
            return math.floor(t / self.every) * self.every
        # Dues fall on whole seconds: one <= t is one before floor(t) + 1.
        start = dt.datetime.fromtimestamp(math.floor(t) + 1, self.tz)
        try:
            return next(CronSim(self.expression or "", start, reverse=True)).timestamp()
        except StopIteration:
            return -math.inf

    def count_between(self, after: float, upto: float) -> int:
        """How many dues fall in (after, upto]."""
        if upto <= after:
            return 0
        if self.every is not None:
            return max(0, math.floor(upto / self.every) - math.floor(after / self.every))
        count, t = 0, after
        while count < _MAX_COUNT:
            t = self.next_after(t)
            if t > upto:
                break
            count += 1
        return count
