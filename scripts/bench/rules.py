#!/usr/bin/env python3
"""Autonomy: rule dispatch, the scheduler, and the event index, each against its baseline.

1. Rules: 1,000 rules (50 event types, 100 agents, globs and field conditions).
   Live: events are emitted at a paced 10,000/s into a real event log (real store,
   sync durability) and the engine follows it; the cost of its dispatch per event
   is measured inside the running pipeline, and its share of one core.
   Replay: the same recorded events through the indexed engine and through an
   engine whose index is a linear scan of the same rules, interleaved in chunks in
   one process; the ratio is scan / index.
2. Scheduler: 1,000 jobs due every second (entry jobs that return at once, with the
   default config: durable run history, events for failures only); lateness (start
   minus due) per run from the history, and the process's CPU time over the window
   as a share of one core.
3. Event index: 1,000,000 stored events (100 agents, 20 types); one agent's newest
   100 by the index (outpost events --agent X) against the full scan the query used
   before, in the same run on the same store.

    .venv/bin/python scripts/bench/rules.py            # table
    .venv/bin/python scripts/bench/rules.py --json     # one JSON object
    .venv/bin/python scripts/bench/rules.py --quick    # shorter (proves it works)

Percentiles are nearest-rank; nothing is rounded before ratios are computed.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import random
import resource
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import trio

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.append(str(Path(__file__).resolve().parent))  # last: scripts/bench/shm.py is not shm

from restart import machine, summary  # noqa: E402

from runtime.config.autonomy import Action, Autonomy, Condition, JobSpec, RuleSpec  # noqa: E402
from runtime.events import STREAM, EventLog, index_entries  # noqa: E402
from runtime.jobs.history import JobHistory  # noqa: E402
from runtime.jobs.scheduler import Scheduler  # noqa: E402
from runtime.rules.engine import RuleEngine  # noqa: E402
from runtime.rules.index import LinearRules  # noqa: E402
from runtime.store import StoreOptions, open_store  # noqa: E402

TYPES = [f"type{i}" for i in range(45)] + ["exit", "restart", "health", "start", "output"]
AGENTS = [f"agent{i:03d}" for i in range(100)]


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def make_rules(n: int, rng: random.Random) -> list[RuleSpec]:
    rules = []
    for i in range(n):
        kind = rng.random()
        agent = (None if kind < 0.2 else f"agent{rng.randrange(10)}*" if kind < 0.3
                 else rng.choice(AGENTS))
        where = (Condition("code", "eq", rng.randrange(1000)),) if rng.random() < 0.7 else ()
        rules.append(RuleSpec(name=f"rule{i}", on=(rng.choice(TYPES),), agent=agent,
                              where=where, do=Action("checkpoint"), cooldown=3600.0))
    return rules


def make_event(rng: random.Random, seq: int) -> dict[str, Any]:
    return {"seq": seq, "ts": time.time(), "type": rng.choice(TYPES),
            "agent": rng.choice(AGENTS), "code": rng.randrange(1000)}


class Methods:
    async def call(self, method: str, params: Any = None, *, caller: Any = None) -> Any:
        return {}


class Timed:
    """Wraps an engine's handle() to add up the time it takes (the dispatch cost)."""

    def __init__(self, engine: RuleEngine) -> None:
        self.engine, self.seconds, self.events = engine, 0.0, 0
        self._handle = engine.handle
        engine.handle = self  # type: ignore[method-assign]

    def __call__(self, event: dict[str, Any]) -> None:
        start = time.perf_counter()
        self._handle(event)
        self.seconds += time.perf_counter() - start
        self.events += 1


async def bench_dispatch(tmp: Path, rules: list[RuleSpec], rate: int, seconds: float,
                         rng: random.Random) -> dict[str, Any]:
    autonomy = Autonomy(rules=tuple(rules))
    recorded: list[dict[str, Any]] = []
    async with open_store(tmp / "dispatch") as store:
        events = EventLog(store)
        engine = RuleEngine(autonomy, AGENTS, events=events, methods=Methods())
        timed = Timed(engine)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(events.run)
            await nursery.start(engine.run)
            tick = 0.01
            per_tick = max(1, int(rate * tick))
            start, cpu0 = trio.current_time(), _cpu()
            sent = 0
            while trio.current_time() - start < seconds:
                for _ in range(per_tick):
                    event = make_event(rng, 0)
                    del event["seq"], event["ts"]
                    events.emit(event.pop("type"), event.pop("agent"), **event)
                    sent += 1
                await trio.sleep_until(start + (sent // per_tick) * tick)
            wall = trio.current_time() - start
            cpu = _cpu() - cpu0
            with trio.fail_after(60):
                while timed.events < sent:  # let the engine catch up before stopping
                    await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
        recorded = [e for e in events.query(limit=10_000) if e["type"] in TYPES]
    live_us = timed.seconds / max(1, timed.events) * 1e6
    replay = replay_dispatch(autonomy, rules, recorded or [make_event(rng, i)
                                                           for i in range(10_000)])
    return {"rules": len(rules), "rate_target_per_s": rate,
            "live_events": sent, "live_events_per_s": sent / wall,
            "live_dispatch_us_per_event": live_us,
            "live_dispatch_cpu_share_of_core_pct": timed.seconds / wall * 100,
            "live_process_cpu_share_of_core_pct": cpu / wall * 100,
            "gaps": engine.gaps, **replay}


def replay_dispatch(autonomy: Autonomy, rules: list[RuleSpec],
                    recorded: list[dict[str, Any]]) -> dict[str, Any]:
    class Sink:
        def emit(self, *args: Any, **fields: Any) -> None:
            pass

        def follow(self) -> Any:
            raise NotImplementedError

    def engine(linear: bool) -> RuleEngine:
        e = RuleEngine(autonomy, AGENTS, events=Sink(), methods=Methods())
        if linear:
            e.index = LinearRules(rules, AGENTS)  # type: ignore[assignment]
        return e

    indexed, linear = engine(False), engine(True)
    times = {"index": 0.0, "scan": 0.0}
    n = 0
    for _ in range(3):
        for chunk in range(0, len(recorded), 500):  # interleaved A/B: same cache, same load
            part = recorded[chunk:chunk + 500]
            for name, e in (("index", indexed), ("scan", linear)):
                handle = e.handle
                start = time.perf_counter()
                for event in part:
                    handle(event)
                times[name] += time.perf_counter() - start
            n += len(part)
    index_us, scan_us = times["index"] / n * 1e6, times["scan"] / n * 1e6
    return {"replay_events": n, "replay_index_us_per_event": index_us,
            "replay_scan_us_per_event": scan_us, "replay_scan_over_index": scan_us / index_us,
            "firings_index": sum(s.fired for s in indexed._states.values()),
            "firings_scan": sum(s.fired for s in linear._states.values())}


async def bench_scheduler(tmp: Path, jobs: int, seconds: float) -> dict[str, Any]:
    entry = tmp / "noop.py"
    entry.write_text("async def run(ctx):\n    pass\n")
    specs = tuple(JobSpec(name=f"job{i}", every=1.0, entry=f"{entry}:run") for i in range(jobs))
    autonomy = Autonomy(jobs=specs, scheduler=SimpleNamespace(max_concurrent=jobs))  # type: ignore[arg-type]

    async def context(name: str) -> Any:
        return SimpleNamespace(name=name)

    async with open_store(tmp / "scheduler", StoreOptions(map_size_max=4 << 30)) as store:
        events = EventLog(store)
        scheduler = Scheduler(autonomy, store=store, emit=events.emit, methods=Methods(),
                              make_context=context, logs_dir=tmp / "logs")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(events.run)
            await nursery.start(scheduler.run)
            # Measure whole seconds: from just after one due to just after a later one.
            await trio.sleep(1.5 - time.time() % 1)
            cpu0, wall0 = _cpu(), time.time()
            await trio.sleep(seconds)
            cpu, wall = _cpu() - cpu0, time.time() - wall0
            nursery.cancel_scope.cancel()
        history = JobHistory(store)  # jobs keep their events to failures: read the runs
        lateness = [r["lateness_s"] * 1000 for spec in specs
                    for r in history.runs(spec.name, int(seconds) + 5)
                    if r.get("lateness_s") is not None and wall0 <= r["due"] < wall0 + wall]
        skipped = len(events.query(type="job_skipped", since=wall0, limit=10**7))
    late = summary(lateness) if lateness else {"n": 0}
    return {"jobs": jobs, "every_s": 1.0, "runs": len(lateness),
            "runs_expected": int(jobs * wall), "skipped": skipped,
            "lateness_ms": late, "process_cpu_share_of_core_pct": cpu / wall * 100,
            "window_s": wall}


async def bench_index(tmp: Path, total: int, rng: random.Random) -> dict[str, Any]:
    build0 = time.perf_counter()
    async with open_store(tmp / "index", StoreOptions(map_size_max=8 << 30)) as store:
        ts = time.time() - total / 1000
        batch = 10_000
        for start in range(0, total, batch):
            records = []
            for _ in range(min(batch, total - start)):
                ts += 0.001
                records.append([ts, rng.choice(TYPES[:20]), rng.choice(AGENTS), {"n": start}])
            await store.append_many(STREAM, records, index=index_entries)
        build_s = time.perf_counter() - build0
        events = EventLog(store)
        index_ms, scan_ms = [], []
        for i in range(60):
            agent = rng.choice(AGENTS)
            start = time.perf_counter()
            got = events.query(agent=agent, limit=100)
            index_ms.append((time.perf_counter() - start) * 1000)
            if i % 20 == 0:  # the scan takes seconds at 1M: a few of them
                start = time.perf_counter()
                want = events.scan_query(agent=agent, limit=100)
                scan_ms.append((time.perf_counter() - start) * 1000)
                assert got == want, "index and scan disagree"
        typed = time.perf_counter()
        events.query(type="exit", agent=AGENTS[0], since=ts - 60, limit=100)
        window_ms = (time.perf_counter() - typed) * 1000
    index, scan = summary(index_ms), summary(scan_ms)
    return {"events": total, "build_s": build_s, "query": "one agent's newest 100",
            "index_query_ms": index, "scan_query_ms": scan,
            "scan_over_index_p50": scan["p50"] / index["p50"],
            "agent_type_last_minute_query_ms": window_ms}


async def run(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(16)
    with tempfile.TemporaryDirectory(prefix="outpost-bench-rules-") as tmp:
        base = Path(tmp)
        out: dict[str, Any] = {}
        if args.only in (None, "dispatch"):
            rules = make_rules(args.rules, rng)
            out["dispatch"] = await bench_dispatch(base, rules, args.rate, args.seconds, rng)
        if args.only in (None, "scheduler"):
            out["scheduler"] = await bench_scheduler(base, args.jobs, args.seconds)
        if args.only in (None, "index"):
            out["event_index"] = await bench_index(base, args.events, rng)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--quick", action="store_true", help="short run (100k events, 3 s)")
    p.add_argument("--rules", type=int, default=1000)
    p.add_argument("--rate", type=int, default=10_000, help="events per second (live)")
    p.add_argument("--jobs", type=int, default=1000)
    p.add_argument("--seconds", type=float, default=None, help="live windows (default 10)")
    p.add_argument("--events", type=int, default=None, help="stored events for the index")
    p.add_argument("--only", choices=("dispatch", "scheduler", "index"), default=None,
                   help="run one part (the others are left out of the output)")
    args = p.parse_args()
    args.seconds = args.seconds or (3.0 if args.quick else 10.0)
    args.events = args.events or (100_000 if args.quick else 1_000_000)
    started = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    host = machine()
    figures = trio.run(run, args)
    if args.only:
        print(json.dumps(figures, indent=2))
        return 0
    d, s, x = figures["dispatch"], figures["scheduler"], figures["event_index"]
    result = {
        "benchmark": "rules dispatch, scheduler lateness and CPU, event index query",
        "date": started, "quick": args.quick,
        "machine": {**host, "load_avg_1m_at_end": os.getloadavg()[0]},
        "percentile_method": "nearest rank",
        **figures,
        "target_dispatch_le_10us_per_event": d["live_dispatch_us_per_event"] <= 10,
        "target_dispatch_ge_20x_scan": d["replay_scan_over_index"] >= 20,
        "target_scheduler_p99_lateness_le_20ms": s["lateness_ms"].get("p99", 1e9) <= 20,
        "target_scheduler_cpu_le_10pct_core": s["process_cpu_share_of_core_pct"] <= 10,
        "target_index_query_le_5ms": x["index_query_ms"]["p99"] <= 5,
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"rules: {d['rules']} rules, {d['live_events_per_s']:.0f} events/s live: "
          f"dispatch {d['live_dispatch_us_per_event']:.2f} us/event "
          f"({d['live_dispatch_cpu_share_of_core_pct']:.2f}% of a core; whole process "
          f"{d['live_process_cpu_share_of_core_pct']:.1f}%)")
    print(f"       replay: index {d['replay_index_us_per_event']:.2f} us, linear scan "
          f"{d['replay_scan_us_per_event']:.2f} us per event -> scan/index "
          f"{d['replay_scan_over_index']:.1f}x")
    late = s["lateness_ms"]
    print(f"scheduler: {s['jobs']} jobs every 1 s, {s['runs']} runs in {s['window_s']:.1f} s "
          f"({s['skipped']} skipped): lateness p50 {late.get('p50', float('nan')):.2f} ms, "
          f"p99 {late.get('p99', float('nan')):.2f} ms, max {late.get('max', float('nan')):.2f}"
          f" ms; CPU {s['process_cpu_share_of_core_pct']:.1f}% of a core")
    print(f"event index: {x['events']} events; one agent's newest 100: index p50 "
          f"{x['index_query_ms']['p50']:.3f} ms p99 {x['index_query_ms']['p99']:.3f} ms, "
          f"full scan p50 {x['scan_query_ms']['p50']:.1f} ms -> "
          f"{x['scan_over_index_p50']:.0f}x")
    for key, value in result.items():
        if key.startswith("target_"):
            print(f"  {key}: {'yes' if value else 'NO'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
