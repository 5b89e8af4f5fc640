"""The event index: per-type and per-agent streams written in the same transaction as
the events, queried instead of scanning, pruned with them. Checked against the full
scan on seeded random logs, over real stores."""

from __future__ import annotations

import random
import subprocess
import sys
import textwrap
from pathlib import Path

import trio

from runtime.events import (
    STREAM,
    EventLog,
    agent_index,
    index_entries,
    is_index_stream,
    prune_events,
    type_index,
)
from runtime.store import open_store
from tests.rules.helpers import event_log

TYPES = ["start", "exit", "restart", "health", "output", "rule_fired"]
AGENTS = ["a", "b", "c", "worker-1", None]


def _random_batch(rng: random.Random, ts: float, n: int) -> tuple[list[list], float]:
    records = []
    for _ in range(n):
        ts += rng.choice([0.0, 0.0, 0.5, 1.0, 3.0])  # repeated timestamps included
        records.append([ts, rng.choice(TYPES), rng.choice(AGENTS), {"n": rng.random()}])
    return records, ts


async def _fill(events: EventLog, rng: random.Random, batches: int, ts: float = 1000.0) \
        -> float:
    for _ in range(batches):
        records, ts = _random_batch(rng, ts, rng.randint(1, 200))
        seqs = await events.store.append_many(STREAM, records, index=index_entries)
        events._indexed_upto = seqs[-1]  # what _flush does after a durable batch
    return ts


def _queries(rng: random.Random, lo: float, hi: float, count: int) -> list[dict]:
    out = []
    for _ in range(count):
        q: dict = {"limit": rng.choice([1, 5, 100, 10_000])}
        if rng.random() < 0.6:
            q["agent"] = rng.choice(["a", "b", "c", "worker-1", "nobody"])
        if rng.random() < 0.5:
            q["type"] = rng.choice([*TYPES, "never"])
        if rng.random() < 0.5:
            q["since"] = rng.uniform(lo - 10, hi)
        if rng.random() < 0.5:
            q["until"] = rng.uniform(q.get("since", lo), hi + 10)
        out.append(q)
    return out


def _check_same(events: EventLog, queries: list[dict]) -> int:
    checked = 0
    for q in queries:
        assert events.query(**q) == events.scan_query(**q), q
        checked += len(events.scan_query(**q))
    return checked


async def test_index_and_scan_agree_on_random_logs(tmp_path: Path) -> None:
    for seed in range(4):
        rng = random.Random(seed)
        async with open_store(tmp_path / str(seed)) as store:
            events = EventLog(store)
            end = await _fill(events, rng, 30)
            assert _check_same(events, _queries(rng, 1000.0, end, 150)) > 0


async def test_index_entries_are_in_the_same_transaction_as_their_events(
        tmp_path: Path) -> None:
    async with event_log(tmp_path) as (store, events):
        follower = events.follow()
        events.emit("start", "a", pid=1)
        events.emit("exit", None)
        [await follower.receive() for _ in range(2)]  # durable
        assert store.commits == 1  # one batch, one commit: events and index together
        assert [e["seq"] for e in events.query(type="exit")] == [2]
        assert [e["seq"] for e in events.query(agent="a")] == [1]
        assert store.read(type_index("start"), 1) == [(1, [1, events.query()[0]["ts"]])]
        assert store.read(agent_index("a"), 1)[0][1][0] == 1


async def test_events_stored_before_the_index_or_around_it_are_found(tmp_path: Path) -> None:
    rng = random.Random(7)
    async with open_store(tmp_path) as store:
        old, ts = _random_batch(rng, 0.0, 700)
        await store.append_many(STREAM, old)  # as an older version wrote them: no index
        events = EventLog(store)
        assert events._indexed_from == 701
        ts = await _fill(events, rng, 10, ts)
        extra, ts = _random_batch(rng, ts, 50)
        await store.append_many(STREAM, extra)  # written past the log: the tail is scanned
        assert _check_same(events, _queries(rng, 0.0, ts, 200)) > 0
    async with open_store(tmp_path) as store:  # bounds recovered from the index itself
        events = EventLog(store)
        assert events._indexed_from == 701
        assert _check_same(events, _queries(rng, 0.0, ts, 100)) > 0


async def test_pruning_keeps_the_index_consistent_and_never_returns_pruned_events(
        tmp_path: Path) -> None:
    rng = random.Random(3)
    async with open_store(tmp_path) as store:
        events = EventLog(store)
        end = await _fill(events, rng, 40)
        last = store.last_seq(STREAM)
        removed = await prune_events(store, last // 2)
        assert removed == last // 2
        for stream in store.streams():
            if is_index_stream(stream) and store.first_seq(stream):
                oldest = store.read(stream, store.first_seq(stream), limit=1)[0][1][0]
                assert oldest > last // 2, stream
        assert _check_same(events, _queries(rng, 1000.0, end, 150)) > 0
        # A crash between pruning the events and their entries leaves entries pointing
        # at nothing: they are skipped, never returned.
        await store.prune(STREAM, last - 10, uncovered=True)
        for q in _queries(rng, 1000.0, end, 100):
            got = events.query(**q)
            assert got == events.scan_query(**q)
            assert all(e["seq"] > last - 10 for e in got)


async def test_timestamps_never_decrease_so_windows_can_be_searched(tmp_path: Path) -> None:
    async with event_log(tmp_path) as (_, events):
        events._last_ts = 4e9  # as if the clock had been ahead and was stepped back
        follower = events.follow()
        events.emit("start", "a")
        events.emit("exit", "a")
        got = [await follower.receive() for _ in range(2)]
        assert [e["ts"] for e in got] == [4e9, 4e9]
        assert len(events.query(since=4e9, until=4e9)) == 2


AFTER_KILL = textwrap.dedent("""
    import sys, trio
    from runtime.events import EventLog
    from runtime.store import open_store

    async def main():
        async with open_store(sys.argv[1]) as store:
            events = EventLog(store)
            said = False
            async with trio.open_nursery() as nursery:
                nursery.start_soon(events.run)
                for i in range(10**9):
                    events.emit(["start", "exit", "output"][i % 3], f"agent{i % 5}", i=i)
                    if i % 50 == 0:
                        await trio.sleep(0)
                    if i % 50 == 0 and store.last_seq("events") > 2000 and not said:
                        said = print("ready", flush=True) or True
    trio.run(main)
""")


async def test_after_kill_9_the_index_agrees_with_the_log(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", AFTER_KILL, str(tmp_path)],
                            stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        line = await trio.to_thread.run_sync(proc.stdout.readline)
        assert line.strip() == b"ready"
    finally:
        proc.kill()
        proc.wait()
    async with open_store(tmp_path) as store:
        events = EventLog(store)
        total = store.last_seq(STREAM)
        assert total > 0
        indexed = sum(store.last_seq(s) for s in store.streams()
                      if s.startswith("events/type/"))
        assert indexed == total  # every stored event has its type entry, no more
        for agent in [f"agent{i}" for i in range(5)]:
            assert events.query(agent=agent, limit=50) == \
                events.scan_query(agent=agent, limit=50)
        assert events.query(type="exit", limit=10_000) == \
            events.scan_query(type="exit", limit=10_000)
