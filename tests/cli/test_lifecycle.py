"""Commands that change the runtime: durable state writes across kill -9, agent
start/stop/restart, reload, send, shutdown. Each test has its own runtime.

Agent actions, reload and send are the supervision work's (issue 5): until its
methods exist the runtime answers `not_available`, and these tests skip saying so.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.runtime_proc import ROOT, RuntimeProc, agent_block, wait_for, write_config

AGENTS = Path(__file__).resolve().parent.parent / "control" / "agents"
BUSY = agent_block("busy", f"{AGENTS / 'busy.py'}:run")
COUNTER = agent_block("counter", str(ROOT / "examples" / "agents" / "counter.py") + ":run")


def run_json(rt: RuntimeProc, *args: str, ok: bool = True) -> dict:
    result = rt.cli(*args, "--json")
    if ok:
        assert result.returncode == 0, (args, result.stderr)
    return json.loads(result.stdout)


def skip_if_not_available(result: dict, what: str) -> None:
    if result.get("error", {}).get("code") == "not_available":
        pytest.skip(f"{what}: the supervisor does not offer it yet (issue 5): "
                    f"{result['error']['message']}")


def row(rt: RuntimeProc, name: str) -> dict:
    with rt.client() as c:
        return c.call("status", agent=name)["agents"][0]


def test_state_set_and_delete_are_durable_across_kill9(tmp_path: Path, start_runtime) -> None:
    config = write_config(tmp_path, BUSY)
    rt = start_runtime(config)
    rt.wait_running("busy")
    run_json(rt, "state", "set", "busy", "keep", '{"v": [1, 2]}')
    run_json(rt, "state", "set", "busy", "drop", "1")
    run_json(rt, "state", "delete", "busy", "drop")
    rt.kill9()  # the answers above came after the writes were durable
    rt = start_runtime(config)
    rt.wait_running("busy")
    assert run_json(rt, "state", "get", "busy", "keep")["value"] == {"v": [1, 2]}
    assert "drop" not in run_json(rt, "state", "get", "busy")["state"]


def test_agent_stop_start_restart(tmp_path: Path, start_runtime) -> None:
    rt = start_runtime(write_config(tmp_path, BUSY + COUNTER))
    rt.wait_running("busy")
    rt.wait_running("counter")
    stopped = run_json(rt, "agent", "stop", "busy", ok=False)
    skip_if_not_available(stopped, "agent stop")
    assert "error" not in stopped, stopped
    wait_for(lambda: row(rt, "busy")["state"] == "stopped", what="busy stopped")
    ticks = run_json(rt, "state", "get", "busy", "ticks")["value"]
    assert row(rt, "counter")["state"] == "running"  # one_for_one: the other is untouched
    run_json(rt, "agent", "start", "busy")
    wait_for(lambda: row(rt, "busy")["state"] == "running", what="busy running again")
    wait_for(lambda: run_json(rt, "state", "get", "busy", "ticks")["value"] > ticks,
             what="busy counting again")
    before = row(rt, "busy")
    restarted = run_json(rt, "agent", "restart", "busy")
    assert restarted["agent"] == "busy"
    wait_for(lambda: row(rt, "busy")["state"] == "running", what="busy running after restart")
    assert (row(rt, "busy")["uptime_s"] or 0) < before["uptime_s"] + 5
    unknown = rt.cli("agent", "restart", "nope")
    assert unknown.returncode == 1 and "not_found" in unknown.stderr


def test_reload_adds_and_removes_without_touching_the_unchanged(tmp_path: Path,
                                                              start_runtime) -> None:
    config = write_config(tmp_path, BUSY + COUNTER)
    rt = start_runtime(config)
    rt.wait_running("busy")
    rt.wait_running("counter")
    counter_before = row(rt, "counter")
    write_config(tmp_path, COUNTER + agent_block(
        "extra", str(ROOT / "examples" / "agents" / "counter.py") + ":run"))
    result = run_json(rt, "reload", ok=False)
    skip_if_not_available(result, "reload")
    assert "error" not in result, result
    assert result["added"] == ["extra"] and result["removed"] == ["busy"]
    assert result["unchanged"] == ["counter"] and result["changed"] == []
    rt.wait_running("extra")
    counter_after = row(rt, "counter")
    assert counter_after["restarts"] == counter_before["restarts"]
    assert counter_after["uptime_s"] > counter_before["uptime_s"]  # never restarted
    names = [a["name"] for a in run_json(rt, "status")["agents"]]
    assert "busy" not in names and {"counter", "extra"} <= set(names)

    (tmp_path / "outpost.toml").write_text("this is not toml [")
    # --socket: the CLI itself need not read the config; the runtime refuses it.
    broken = subprocess.run([*rt.command, "reload", "--socket", str(rt.socket)],
                            capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert broken.returncode == 2 and "not applied" in broken.stderr, broken.stderr
    assert row(rt, "counter")["state"] == "running"


def test_send_puts_a_message_in_the_mailbox(tmp_path: Path, start_runtime) -> None:
    rt = start_runtime(write_config(tmp_path, BUSY))
    rt.wait_running("busy")
    first = run_json(rt, "send", "busy", '{"hello": 1}', ok=False)
    skip_if_not_available(first, "send")
    assert isinstance(first["seq"], int)
    second = run_json(rt, "send", "busy", "plain text", "--key", "k1")
    assert second["seq"] > first["seq"]
    again = run_json(rt, "send", "busy", "plain text", "--key", "k1")
    assert again["seq"] == second["seq"]  # the key makes a resend idempotent
    unknown = rt.cli("send", "nope", "1")
    assert unknown.returncode == 1 and "no agent named 'nope'" in unknown.stderr


def test_shutdown_alias_stops_cleanly_and_followers_end(tmp_path: Path,
                                                        start_runtime) -> None:
    rt = start_runtime(write_config(tmp_path, BUSY))
    rt.wait_running("busy")
    watchers = {name: subprocess.Popen([*rt.command, *args, "--config", str(rt.config)],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                       text=True, cwd=tmp_path)
                for name, args in (("top", ["top", "--json", "-d", "0.1"]),
                                   ("follow", ["events", "-f"]))}
    with rt.client() as c:
        wait_for(lambda: c.call("info")["control"]["connections"] >= 3,
                 what="top and the follower connected")
    result = run_json(rt, "shutdown")
    assert result == {"stopped": True, "pid": rt.proc.pid}
    assert rt.proc.wait(timeout=30) == 0
    assert not rt.socket.exists()
    # Neither hangs on a runtime that is gone: top says so (exit 3), a follower ends.
    top, follow = watchers["top"], watchers["follow"]
    assert top.wait(timeout=30) == 3 and "went away" in top.stderr.read()
    assert follow.wait(timeout=30) in (0, 3)
    assert "runtime" in follow.stderr.read()
