"""The scheduler in process over a real store: trio's mock clock drives time (the wall
clock is derived from it), so downtime is a jump of the wall clock between two
schedulers on the same store."""

from __future__ import annotations

import contextlib
import itertools
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import trio

from runtime.control.dispatch import Caller, Methods
from runtime.control.errors import MethodError
from runtime.events import EventLog
from runtime.jobs.history import JobHistory
from runtime.jobs.methods import jobs_methods
from runtime.jobs.scheduler import JobError, PriorityGate, Scheduler
from runtime.store import StoreOptions, open_store
from tests.rules.helpers import HandlerTable, config_from, wait_for_event

BASE = 1_700_000_000.0  # a round wall-clock start: every-1s dues fall on whole seconds


class Wall:
    """A wall clock that follows trio's (mock) clock, plus any downtime added."""

    def __init__(self, base: float = BASE) -> None:
        self.base = base

    def __call__(self) -> float:
        return self.base + trio.current_time()


@dataclass
class Rig:
    scheduler: Scheduler
    events: EventLog
    table: HandlerTable
    follower: trio.MemoryReceiveChannel
    history: JobHistory


@pytest.fixture
def clock(mock_clock: trio.testing.MockClock) -> trio.testing.MockClock:
    # Jump only after 50 ms of real idleness, not at once: the loop also idles while
    # the store's writer thread commits, and time must not run ahead then.
    mock_clock.autojump_threshold = 0.05
    return mock_clock


async def _context(name: str) -> SimpleNamespace:
    return SimpleNamespace(name=name)


@contextlib.asynccontextmanager
async def scheduler_on(tmp_path: Path, toml: str, wall: Callable[[], float],
                       handlers: dict | None = None) -> AsyncIterator[Rig]:
    config = config_from(tmp_path, toml)
    options = StoreOptions(durability="interval")  # commits without waiting for fsync
    async with open_store(tmp_path / "data", options) as store:
        events = EventLog(store)
        table = HandlerTable(handlers)
        scheduler = Scheduler(config.autonomy, store=store, emit=events.emit, methods=table,
                              make_context=_context, logs_dir=tmp_path / "logs", wall=wall)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(events.run)
            follower = events.follow()
            await nursery.start(scheduler.run)
            yield Rig(scheduler, events, table, follower, JobHistory(store))
            nursery.cancel_scope.cancel()


def _entry(tmp_path: Path, body: str, name: str) -> str:
    path = tmp_path / f"job_{name}.py"
    path.write_text("import trio\n\nasync def run(ctx):\n" + textwrap.indent(body, "    "))
    return f"{path}:run"


def _job(tmp_path: Path, body: str = "pass\n", **keys: Any) -> str:
    name = keys.pop("name", "j")
    keys.setdefault("events", "all")  # the tests follow job_started and job_ok too
    lines = ['[[jobs]]', f'name = "{name}"', f'entry = "{_entry(tmp_path, body, name)}"']
    lines += [f"{k} = {v!r}" if not isinstance(v, str) else f'{k} = "{v}"'
              for k, v in keys.items()]
    return "\n".join(lines) + "\n"


def _runs(rig: Rig, job: str = "j") -> list[dict]:
    return [r for r in rig.history.runs(job, 1000) if r["run"] is not None]


async def test_a_job_every_second_runs_on_time_without_drift(tmp_path: Path,
                                                             clock: Any) -> None:
    wall = Wall()
    async with scheduler_on(tmp_path, _job(tmp_path, every="1s", concurrency="allow"),
                            wall) as rig:
        started = await wait_for_event(rig.follower, "job_started", 10, timeout=None)
        await wait_for_event(rig.follower, "job_ok", timeout=None)
        runs = _runs(rig)
    dues = [e["due"] for e in started]
    assert all(b - a == 1.0 for a, b in itertools.pairwise(dues))  # from due, not run
    assert all(d == int(d) for d in dues)  # aligned: whole seconds
    assert all(0 <= e["lateness_s"] < 0.5 for e in started)  # and reported per run
    assert [r["result"] for r in runs[:9]] == ["ok"] * 9
    assert all(r["lateness_s"] is not None for r in runs)
    status = rig.scheduler.status()[0]
    assert status["runs"] >= 10 and status["lateness_last_s"] is not None


async def test_forbid_never_overlaps(tmp_path: Path, clock: Any) -> None:
    wall = Wall()
    toml = _job(tmp_path, "await trio.sleep(2.5)\n", every="1s")
    async with scheduler_on(tmp_path, toml, wall) as rig:
        await wait_for_event(rig.follower, "job_started", timeout=None)
        with pytest.raises(JobError) as caught:
            await rig.scheduler.trigger("j", by="manual")  # running now: refused too
        assert caught.value.code == "busy"
        await wait_for_event(rig.follower, "job_ok", 4, timeout=None)
        skipped = rig.events.query(type="job_skipped")
        runs = [r for r in _runs(rig) if r["result"] == "ok"]
    spans = [(r["started"], r["ended"]) for r in runs]
    assert all(end <= nxt for (_, end), (nxt, _) in itertools.pairwise(spans))
    assert skipped and all(s["reason"] == "overlap" for s in skipped)


async def test_replace_cancels_the_running_run_and_allow_lets_them_overlap(
        tmp_path: Path, clock: Any) -> None:
    wall = Wall()
    toml = _job(tmp_path, "await trio.sleep(1000)\n", name="r", every="1s",
                concurrency="replace")
    toml += _job(tmp_path, "await trio.sleep(1000)\n", name="a", every="1s",
                 concurrency="allow")
    async with scheduler_on(tmp_path, toml, wall) as rig:
        await wait_for_event(rig.follower, "job_failed", 3, timeout=None, job="r")
        replaced = [r["result"] for r in _runs(rig, "r") if r["result"] != "running"]
        running = next(s for s in rig.scheduler.status() if s["name"] == "a")["running"]
    assert replaced[:3] == ["replaced"] * 3
    assert len(running) >= 3  # allow: every run still going at once


async def test_missed_run_once_catches_up_exactly_once_after_downtime(
        tmp_path: Path, clock: Any) -> None:
    wall = Wall()
    toml = _job(tmp_path, every="10s", missed="run_once")
    toml += _job(tmp_path, name="s", every="10s", missed="skip")
    async with scheduler_on(tmp_path, toml, wall) as rig:
        await wait_for_event(rig.follower, "job_ok", 4, timeout=None)
    before = wall()
    wall.base += 3600  # the runtime is down for an hour: 360 dues of each job missed
    async with scheduler_on(tmp_path, toml, wall) as rig:
        catch_up = (await wait_for_event(rig.follower, "job_started", timeout=None,
                                         job="j"))[0]
        later = await wait_for_event(rig.follower, "job_started", 2, timeout=None, job="j")
        skipped = [e for e in rig.events.query(type="job_skipped") if e["due"] > before]
        runs_after = [r for r in _runs(rig) if r["started"] > before]
    assert catch_up["by"] == "catch_up"
    assert 0 <= runs_after[0]["started"] - catch_up["due"] < 10  # the latest due missed
    assert [(s["job"], s["reason"]) for s in skipped] == [("s", "missed")]
    assert skipped[0]["missed"] >= 359
    assert [e["by"] for e in later] == ["schedule", "schedule"]
    assert later[0]["due"] == catch_up["due"] + 10  # back on the schedule, no replay
    assert [r["by"] for r in runs_after].count("catch_up") == 1
    wall.base += 1  # restarted right away: nothing was missed, nothing to catch up
    async with scheduler_on(tmp_path, toml, wall) as rig:
        first = (await wait_for_event(rig.follower, "job_started", timeout=None,
                                      job="j"))[0]
        assert first["by"] == "schedule"


async def test_max_concurrent_starts_the_highest_priority_first(tmp_path: Path,
                                                                clock: Any) -> None:
    wall = Wall(BASE + 0.5)  # dues at BASE + 1 (the hog) and BASE + 2 (the rest)
    toml = '[scheduler]\nmax_concurrent = 1\n'
    toml += _job(tmp_path, "await trio.sleep(5)\n", name="hog", schedule="1 * * * * *",
                 timezone="UTC", priority=-5)
    for name, priority in (("low", 0), ("high", 5), ("mid", 1)):
        toml += _job(tmp_path, "await trio.sleep(1)\n", name=name,
                     schedule="2 * * * * *", timezone="UTC", priority=priority)
    wall.base = (BASE // 60) * 60 + 0.5  # just after a minute starts
    async with scheduler_on(tmp_path, toml, wall) as rig:
        started = await wait_for_event(rig.follower, "job_started", 4, timeout=None)
    assert [e["job"] for e in started] == ["hog", "high", "mid", "low"]
    assert started[3]["lateness_s"] >= 5  # waited for the slot, and said so


async def test_timeouts_and_retries_with_backoff(tmp_path: Path, clock: Any) -> None:
    wall = Wall()
    toml = _job(tmp_path, "await trio.sleep(1000)\n", every="1h", timeout="2s", retries=2,
                backoff="1s", backoff_max="1.5s")
    async with scheduler_on(tmp_path, toml, wall) as rig:
        t0 = trio.current_time()
        await rig.scheduler.trigger("j", by="manual")
        failed = await wait_for_event(rig.follower, "job_failed", 3, timeout=None)
        elapsed = trio.current_time() - t0
        runs = _runs(rig)
    assert [(f["final"], f["result"]) for f in failed] == [(False, "timeout")] * 2 + \
        [(True, "timeout")]
    assert failed[-1]["error"] == "timed out after 2s" and failed[-1]["attempts"] == 3
    assert 2 + 1 + 2 + 1.5 + 2 <= elapsed < 20
    assert runs[-1]["result"] == "timeout" and runs[-1]["by"] == "manual"


async def test_an_entry_that_raises_fails_with_its_error(tmp_path: Path, clock: Any) -> None:
    toml = _job(tmp_path, "raise ValueError('no network')\n", every="1h")
    async with scheduler_on(tmp_path, toml, Wall()) as rig:
        await rig.scheduler.trigger("j", by="manual")
        failed = (await wait_for_event(rig.follower, "job_failed", timeout=None))[0]
    assert failed["error"] == "ValueError: no network" and failed["result"] == "failed"


async def test_command_jobs_log_their_output_bounded(tmp_path: Path) -> None:
    toml = """
[[jobs]]
name = "talk"
every = "1h"
command = ["/bin/sh", "-c", "echo hello $OUTPOST_JOB; printf 'x%.0s' $(seq 3000); exit 4"]
log_max_bytes = 2048
log_keep = 1
"""
    async with scheduler_on(tmp_path, toml, Wall(BASE)) as rig:
        for _ in range(3):
            await rig.scheduler.trigger("talk", by="manual")
            await wait_for_event(rig.follower, "job_failed", timeout=30)
    log, older = tmp_path / "logs" / "jobs" / "talk.log", tmp_path / "logs" / "jobs" / "talk.log.1"
    assert "hello talk" in log.read_text() + older.read_text()
    assert log.stat().st_size <= 2048 + 65536  # rotated before a write that would pass it
    assert not (tmp_path / "logs" / "jobs" / "talk.log.2").exists()


async def test_maintain_jobs_go_through_the_maintain_method(tmp_path: Path,
                                                           clock: Any) -> None:
    calls: list[str] = []

    async def maintain(params: dict) -> dict:
        calls.append(params["task"])
        if params["task"] == "prune" and len(calls) > 2:
            raise MethodError("busy", "another maintenance task is running")
        return {"task": params["task"], "result": {"ok": True, "problems": []}}

    toml = '[[jobs]]\nname = "m"\nevery = "1h"\nmaintain = ["checkpoint", "prune"]\n' \
        'events = "all"\n'
    async with scheduler_on(tmp_path, toml, Wall(), {"maintain": maintain}) as rig:
        await rig.scheduler.trigger("m", by="manual")
        await wait_for_event(rig.follower, "job_ok", timeout=None)
        await rig.scheduler.trigger("m", by="manual")
        failed = (await wait_for_event(rig.follower, "job_failed", timeout=None))[0]
    assert calls == ["checkpoint", "prune", "checkpoint", "prune"]
    assert rig.table.calls[0][2] == Caller("job", "m")
    assert failed["error"] == "MethodError: another maintenance task is running"


async def test_jobs_methods(tmp_path: Path, clock: Any) -> None:
    toml = _job(tmp_path, "await trio.sleep(1)\n", every="1h")
    async with scheduler_on(tmp_path, toml, Wall()) as rig:
        methods = Methods()
        methods.add(jobs_methods(rig.scheduler))
        listed = (await methods.call("jobs"))["jobs"][0]
        assert listed["name"] == "j" and listed["schedule"] == "every 3600s"
        assert listed["next_due"] == (BASE // 3600 + 1) * 3600
        done = await methods.call("jobs.run", {"job": "j", "wait": True})
        assert done["end"]["result"] == "ok" and done["run"] == 1
        started = await methods.call("jobs.run", {"job": "j"})
        with pytest.raises(MethodError) as caught:
            await methods.call("jobs.run", {"job": "j"})
        assert caught.value.code == "busy"
        await wait_for_event(rig.follower, "job_started", timeout=None, run=started["run"])
        history = await methods.call("jobs.history", {"job": "j", "limit": 5})
        assert [r["run"] for r in history["runs"]] == [1, started["run"]]
        for name, params, field in [
                ("jobs.run", {"job": 3}, "params.job"),
                ("jobs.run", {"job": "j", "wait": "yes"}, "params.wait"),
                ("jobs.run", {"job": "j", "force": True}, "params.force"),
                ("jobs.history", {"job": "j", "limit": 0}, "params.limit"),
                ("jobs", {"x": 1}, "params.x")]:
            with pytest.raises(MethodError) as caught:
                await methods.call(name, params)
            assert caught.value.code == "bad_params" and field in str(caught.value)
        with pytest.raises(MethodError) as caught:
            await methods.call("jobs.run", {"job": "nope"})
        assert caught.value.code == "not_found"


async def test_reload_adds_changes_and_removes_jobs(tmp_path: Path, clock: Any) -> None:
    toml = _job(tmp_path, every="1h") + _job(tmp_path, name="gone", every="1h")
    async with scheduler_on(tmp_path, toml, Wall()) as rig:
        new = config_from(tmp_path, _job(tmp_path, every="1s") +
                          _job(tmp_path, name="fresh", every="1h"))
        changes = rig.scheduler.reload(new.autonomy)
        assert changes == {"added": ["fresh"], "changed": ["j"], "removed": ["gone"]}
        started = (await wait_for_event(rig.follower, "job_started", timeout=None))[0]
        assert started["job"] == "j"  # the new every-second schedule took over
        assert [s["name"] for s in rig.scheduler.status()] == ["j", "fresh"]


async def test_the_priority_gate_survives_cancelled_waiters() -> None:
    gate = PriorityGate(1)
    order: list[str] = []

    async def take(name: str, priority: int, hold: trio.Event) -> None:
        async with gate.slot(priority):
            order.append(name)
            await hold.wait()

    release = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(take, "first", 0, release)
        await trio.testing.wait_all_tasks_blocked()
        cancel_me = trio.CancelScope()

        async def waiter() -> None:
            with cancel_me:
                await take("cancelled", 8, trio.Event())
        nursery.start_soon(waiter)
        nursery.start_soon(take, "low", 1, trio.Event())
        await trio.testing.wait_all_tasks_blocked()
        cancel_me.cancel()
        await trio.testing.wait_all_tasks_blocked()
        release.set()
        await trio.testing.wait_all_tasks_blocked()
        assert order == ["first", "low"]  # the cancelled one (priority 8) gave up its turn
        assert gate.active == 1
        nursery.cancel_scope.cancel()
    assert gate.active == 0


KILLED = textwrap.dedent("""
    import sys, time, trio
    from pathlib import Path
    from tests.jobs.test_scheduler import scheduler_on, Wall

    async def main():
        tmp = Path(sys.argv[1])
        async with scheduler_on(tmp, (tmp / "jobs.toml").read_text(), time.time) as rig:
            await rig.scheduler.trigger("j", by="manual")
            await trio.sleep_forever()
    trio.run(main)
""")


async def test_a_run_killed_with_minus_9_is_interrupted_and_follows_missed(
        tmp_path: Path) -> None:
    marker = tmp_path / "started"
    body = (f"from pathlib import Path\nif not Path({str(marker)!r}).exists():\n"
            f"    Path({str(marker)!r}).write_text('x')\n    await trio.sleep(1000)\n")
    toml = _job(tmp_path, body, every="1h", missed="run_once")
    (tmp_path / "jobs.toml").write_text(toml)
    proc = subprocess.Popen([sys.executable, "-c", KILLED, str(tmp_path)],
                            cwd=Path(__file__).resolve().parents[2])
    try:
        with trio.fail_after(60):
            while not marker.exists():  # the child's job wrote it after its start record
                await trio.sleep(0.02)
    finally:
        proc.kill()
        proc.wait()
    async with scheduler_on(tmp_path, toml, time.time) as rig:  # one wall clock for both
        interrupted = (await wait_for_event(rig.follower, "job_interrupted"))[0]
        catch_up = (await wait_for_event(rig.follower, "job_started"))[0]
        await wait_for_event(rig.follower, "job_ok")
        runs = _runs(rig)
    assert interrupted["run"] == 1
    assert catch_up["by"] == "catch_up" and catch_up["run"] == 2
    assert [(r["run"], r["result"]) for r in runs] == [(1, "interrupted"), (2, "ok")]
