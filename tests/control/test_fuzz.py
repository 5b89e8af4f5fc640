"""10k malformed frames and abrupt disconnects against a live runtime; the agents
must not notice. The long form is scripts/chaos/control_fuzz.py (same code)."""

from __future__ import annotations

import json
from pathlib import Path

from tests.control.fuzzing import run_fuzz
from tests.runtime_proc import ROOT, RuntimeProc, agent_block, wait_for, write_config

COUNTER = agent_block("counter", str(ROOT / "examples" / "agents" / "counter.py") + ":run")


def count(rt: RuntimeProc) -> int:
    """The counter agent's durable count (0 before its first increment)."""
    with rt.client() as c:
        return c.call("state.get", agent="counter")["state"].get("count", 0)


def check_undisturbed(rt: RuntimeProc, before: dict, count_before: int) -> None:
    """Status is right, the agent is the same instance, it kept counting, nothing leaked,
    and the runtime logged no handler crash. Shared with the chaos script."""
    with rt.client() as c:
        status = c.call("status")
        info = c.call("info")
    (row,) = status["agents"]
    (row_before,) = before["agents"]
    assert (row["name"], row["state"], row["restarts"]) == ("counter", "running", 0), row
    assert row["pid"] == row_before["pid"] == rt.proc.pid
    assert row["uptime_s"] > row_before["uptime_s"]  # the same instance, never restarted
    assert count(rt) > count_before
    now = count(rt)
    wait_for(lambda: count(rt) > now, what="the counter still counting after the fuzz")
    assert info["control"]["connections"] == 1, info  # only ours: no connection leaked
    log = rt.log()
    assert "connection handler failed" not in log
    assert "control method" not in log and "Traceback" not in log


def test_fuzz_10k_frames_leaves_agents_undisturbed(tmp_path: Path, start_runtime) -> None:
    rt = start_runtime(write_config(tmp_path, COUNTER))
    before = rt.wait_running("counter")
    wait_for(lambda: count(rt) >= 2, what="count >= 2")
    count_before = count(rt)

    stats = run_fuzz(rt.socket, frames=10_000, seed=20261121, agents=["counter"])

    print(json.dumps(stats.to_dict(), indent=1))
    assert stats.frames >= 10_000
    assert stats.internal == []  # no handler tripped over a wrong type
    assert stats.abrupt_disconnects > 500
    assert stats.answers["ok"] > 1000 and stats.answers["bad_params"] > 500
    assert stats.closed_with["too_large"] > 50 and stats.closed_with["bad_frame"] > 200
    assert stats.closed_with["no_hello"] + stats.closed_with["version"] > 20
    check_undisturbed(rt, before, count_before)
