"""Due times: cron (cronsim) with seconds and time zones, and epoch-aligned intervals."""

from __future__ import annotations

import datetime as dt
import itertools
from zoneinfo import ZoneInfo

import pytest

from runtime.config.autonomy import JobSpec
from runtime.jobs.schedule import Schedule

BERLIN = ZoneInfo("Europe/Berlin")


def _at(*args: int, tz: dt.tzinfo = BERLIN) -> float:
    return dt.datetime(*args, tzinfo=tz).timestamp()


def _job(**keys: object) -> JobSpec:
    return JobSpec(name="j", command=("true",), **keys)  # type: ignore[arg-type]


def test_intervals_are_aligned_to_the_epoch_and_never_drift() -> None:
    s = Schedule(_job(every=300.0))
    assert s.next_after(1_000_000.0) == 1_000_200.0
    assert s.next_after(1_000_200.0) == 1_000_500.0  # strictly after
    due, dues = 1_000_200.0, []
    for _ in range(1000):  # from the previous due, not from "now": exact multiples
        due = s.next_after(due)
        dues.append(due)
    assert all(d % 300 == 0 for d in dues) and dues[-1] == 1_000_200.0 + 300_000
    assert s.last_at_or_before(1_000_499.9) == 1_000_200.0
    assert s.last_at_or_before(1_000_500.0) == 1_000_500.0
    assert s.count_between(1_000_200.0, 1_001_100.0) == 3


def test_cron_with_seconds_in_the_job_time_zone() -> None:
    s = Schedule(_job(schedule="*/15 * * * * *", timezone="Europe/Berlin"))
    start = _at(2024, 6, 1, 12, 0, 7)
    assert s.next_after(start) == _at(2024, 6, 1, 12, 0, 15)
    assert s.next_after(_at(2024, 6, 1, 12, 0, 15)) == _at(2024, 6, 1, 12, 0, 30)
    daily = Schedule(_job(schedule="30 6 * * *", timezone="Europe/Berlin"))
    assert daily.next_after(_at(2024, 6, 1, 12, 0)) == _at(2024, 6, 2, 6, 30)
    utc = Schedule(_job(schedule="30 6 * * *", timezone="UTC"))
    assert utc.next_after(_at(2024, 6, 1, 12, 0)) == _at(2024, 6, 2, 6, 30, tz=dt.UTC)


def test_cron_across_daylight_saving_time_changes() -> None:
    # 2024-03-31 02:00 Berlin does not exist: Debian cron (and cronsim) run it at 03:00.
    s = Schedule(_job(schedule="30 2 * * *", timezone="Europe/Berlin"))
    assert s.next_after(_at(2024, 3, 30, 12, 0)) == _at(2024, 3, 31, 3, 0)
    # Hourly across the autumn change: 25 distinct hours that day, none twice.
    hourly = Schedule(_job(schedule="0 * * * *", timezone="Europe/Berlin"))
    t, seen = _at(2024, 10, 27, 0, 0) - 1, []
    for _ in range(25):
        t = hourly.next_after(t)
        seen.append(t)
    assert len(set(seen)) == 25
    assert all(b - a == 3600 for a, b in itertools.pairwise(seen))


def test_missed_dues_are_counted_and_the_latest_found() -> None:
    s = Schedule(_job(schedule="0 * * * *", timezone="UTC"))
    after = _at(2024, 6, 1, 10, 0, tz=dt.UTC)
    now = _at(2024, 6, 1, 13, 20, tz=dt.UTC)
    assert s.count_between(after, now) == 3  # 11:00, 12:00, 13:00
    assert s.last_at_or_before(now) == _at(2024, 6, 1, 13, 0, tz=dt.UTC)
    assert s.last_at_or_before(_at(2024, 6, 1, 13, 0, tz=dt.UTC)) == \
        _at(2024, 6, 1, 13, 0, tz=dt.UTC)


@pytest.mark.parametrize("expr", ["* * */20 * 1L"])  # 1st/21st that is a last Monday
def test_a_schedule_that_never_falls_due(expr: str) -> None:
    assert Schedule(_job(schedule=expr, timezone="UTC")).next_after(0.0) == float("inf")
