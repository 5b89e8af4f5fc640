"""Actions that touch the real world: exec commands (real processes, real clock) and
metric thresholds read from a real shared-memory segment."""

from __future__ import annotations

import json
from pathlib import Path

import trio

from runtime.rules.metrics import SegmentMetrics
from shm import Counter, Gauge, Segment
from tests.rules.helpers import dies, settle, wait_for_event
from tests.rules.test_engine import engine_on, ok


async def test_an_exec_that_hangs_is_killed_at_its_timeout_and_retried(
        tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    # The command ignores SIGTERM and leaves a child behind: the whole group must die.
    script = tmp_path / "hang.sh"
    script.write_text(f"trap '' TERM\nsleep 1000 &\necho $$ $! >> {pids}\nwait\n")
    toml = f"""
[actions.exec.hang]
command = ["/bin/sh", "{script}"]
kill_grace = "0.2s"

[[rules]]
name = "stuck"
on = "health"
agent = "a"
do = "exec hang"
timeout = "0.5s"
retries = 1
backoff = "0.1s"
"""
    async with engine_on(tmp_path, toml) as rig:
        rig.events.emit("health", "a", breach="memory")
        failed = await wait_for_event(rig.follower, "action_failed", 2)
    assert [f["attempt"] for f in failed] == [1, 2]
    assert all("timed out after 0.5s; its process group was killed" in f["error"]
               for f in failed)
    started = [line.split() for line in pids.read_text().splitlines()]
    assert len(started) == 2  # it was retried
    for shell, child in started:
        assert await dies(int(shell)) and await dies(int(child))


async def test_an_exec_gets_the_event_in_its_environment_and_reports_its_output(
        tmp_path: Path) -> None:
    toml = """
[actions.exec.show]
command = ["/bin/sh", "-c", "echo \\"$OUTPOST_RULE $OUTPOST_AGENT\\"; echo \\"$OUTPOST_EVENT\\""]
env = { EXTRA = "1" }

[actions.exec.fails]
command = ["/bin/sh", "-c", "echo nope >&2; exit 3"]

[[rules]]
name = "show"
on = "health"
do = "exec show"

[[rules]]
name = "fails"
on = "health"
do = "exec fails"
retries = 0
"""
    async with engine_on(tmp_path, toml) as rig:
        rig.events.emit("health", "a", breach="memory; rm -rf /")  # data, never a shell string
        outcomes: dict[str, dict] = {}
        with trio.fail_after(60):
            async for event in rig.follower:  # the two actions end in either order
                if event["type"] in ("action_ok", "action_failed"):
                    outcomes[event["type"]] = event
                    if len(outcomes) == 2:
                        break
        done, failed = outcomes["action_ok"], outcomes["action_failed"]
    first, second = done["output"].splitlines()
    assert first == "show a"
    trigger = json.loads(second)
    assert trigger["breach"] == "memory; rm -rf /" and trigger["seq"] == done["trigger_seq"]
    assert failed["error"] == "exec fails: exit code 3; output: nope\n"


METRIC = """
[[rules]]
name = "deep-queue"
on = "metric"
metric = "a:queue"
above = 100
for = "30s"
cooldown = "45s"
do = "restart"
"""


async def test_a_metric_rule_fires_once_per_for_window_and_respects_its_cooldown(
        tmp_path: Path, mock_clock: trio.testing.MockClock) -> None:
    # Jump only after 20 ms of real idleness: with 0 the clock would run ahead through
    # the 1 s samples each time the loop waits for the store's writer thread.
    mock_clock.autojump_threshold = 0.02
    segment = Segment.create(tmp_path / "outpost.shm", 64)
    try:
        queue = Gauge(segment, "a:queue")
        queue.set(500.0)
        async with engine_on(tmp_path, METRIC, {"agent.restart": ok},
                             metrics=SegmentMetrics(segment)) as rig:
            start = trio.current_time()
            first = (await wait_for_event(rig.follower, "metric", timeout=None))[0]
            assert trio.current_time() - start >= 30
            assert first["agent"] == "a" and first["value"] == 500.0
            assert first["rule"] == "deep-queue" and first["above"] == 100
            await trio.sleep(max(0.0, 100 - (trio.current_time() - start)))
            await settle(rig.events, rig.follower)
            # Metric events near 30, 60, 90 s: the first fires, the second is inside
            # the 45 s cooldown, the third fires.
            assert len(rig.events.query(type="metric")) == 3
            fired = rig.events.query(type="rule_fired")
            assert len(fired) == 2
            assert rig.engine.state("deep-queue").suppressed == {"cooldown": 1}
            assert [p["agent"] for p in rig.table.of("agent.restart")] == ["a", "a"]
            queue.set(5.0)  # back under: the window resets, nothing more fires
            await trio.sleep(200)
            await settle(rig.events, rig.follower)
            assert len(rig.events.query(type="metric")) == 3
    finally:
        segment.close()


async def test_segment_metrics_reads_numbers_and_nothing_else(tmp_path: Path) -> None:
    segment = Segment.create(tmp_path / "outpost.shm", 64)
    try:
        metrics = SegmentMetrics(segment)
        assert metrics.read("a:missing") is None
        Counter(segment, "a:count").add(7)
        Gauge(segment, "a:level").set(2.5)
        assert metrics.read("a:count") == 7.0
        assert metrics.read("a:level") == 2.5
    finally:
        segment.close()
