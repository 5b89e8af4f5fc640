"""`outpost run` end to end, as a real process driven through the real CLI."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

from tests.runtime_proc import FIXTURE_AGENTS, ROOT, agent_block, wait_for, write_config

COUNTER = agent_block("counter", str(ROOT / "examples" / "agents" / "counter.py") + ":run")
ACKED = agent_block("acked", f"{FIXTURE_AGENTS / 'acked_counter.py'}:run")


def acked_lines(directory: Path) -> list[str]:
    path = directory / "acked.log"
    if not path.exists():
        return []
    text = path.read_text()
    return text.splitlines() if text.endswith("\n") else text.splitlines()[:-1]


def test_status_state_and_clean_stop(tmp_path: Path, start_runtime) -> None:
    rt = start_runtime(write_config(tmp_path, COUNTER))
    rt.wait_running("counter")

    status = rt.cli("status", "--json")
    assert status.returncode == 0, status.stderr
    (row,) = json.loads(status.stdout)["agents"]
    assert {"name", "state", "pid", "restarts", "uptime_s", "heartbeat_age_s"} <= row.keys()
    assert (row["name"], row["state"], row["pid"]) == ("counter", "running", rt.proc.pid)

    human = rt.cli("status")
    assert human.stdout.splitlines()[0].split()[:3] == ["NAME", "KIND", "STATE"]
    assert "counter" in human.stdout and "running" in human.stdout

    count = wait_for(lambda: json.loads(rt.cli("state", "get", "counter", "count", "--json")
                                        .stdout or "{}").get("value", 0) >= 2, what="count >= 2")
    assert count
    whole = json.loads(rt.cli("state", "get", "counter", "--json").stdout)
    assert whole["state"]["count"] >= 2

    assert stat.S_IMODE(os.stat(rt.socket).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(rt.socket.parent).st_mode) == 0o700

    stop = rt.cli("stop")
    assert stop.returncode == 0, stop.stderr
    assert rt.proc.wait(timeout=30) == 0
    assert not rt.socket.exists()
    assert not rt.segment.exists()
    assert "stopped cleanly" in rt.log()


def test_sigterm_stops_cleanly_with_exit_0(tmp_path: Path, start_runtime) -> None:
    rt = start_runtime(write_config(tmp_path, COUNTER))
    rt.wait_running("counter")
    assert rt.terminate() == 0
    assert not rt.socket.exists() and not rt.segment.exists()


def test_kill9_resumes_from_the_last_acknowledged_value(tmp_path: Path, start_runtime) -> None:
    config = write_config(tmp_path, ACKED)
    rt = start_runtime(config)
    rt.wait_running("acked")
    for round_ in range(1, 4):
        before = len(acked_lines(tmp_path))
        wait_for(lambda before=before: len(acked_lines(tmp_path)) > before + 20,
                 what="acked increments")
        rt.kill9()
        lines = acked_lines(tmp_path)
        last_acked = int(next(v for v in reversed(lines) if not v.startswith("resume")))

        rt = start_runtime(config)
        rt.wait_running("acked")
        resumes = wait_for(lambda round_=round_: [
            line for line in acked_lines(tmp_path) if line.startswith("resume")][round_:],
            what="resume line")
        resumed_at = int(resumes[0].split()[1])
        # Durable: never below an acknowledged value. Honest: at most the one increment
        # that may have been committed but not yet reported when the kill landed.
        assert last_acked <= resumed_at <= last_acked + 1, (round_, last_acked, resumed_at)
    rt.kill9()


def test_second_runtime_on_the_same_data_dir_refuses_and_leaves_the_first(
        tmp_path: Path, start_runtime) -> None:
    config = write_config(tmp_path, COUNTER)
    first = start_runtime(config)
    first.wait_running("counter")
    second = start_runtime(config)
    assert second.proc.wait(timeout=30) == 1
    assert "in use by another outpost process" in second.log()
    assert f"pid {first.proc.pid}" in second.log()
    status = first.cli("status", "--json")
    assert json.loads(status.stdout)["agents"][0]["state"] == "running"
    assert first.terminate() == 0


def test_client_commands_exit_3_when_no_runtime_runs(tmp_path: Path) -> None:
    config = write_config(tmp_path, COUNTER)
    for args in (["status"], ["state", "get", "counter"], ["stop"], ["metrics"]):
        result = subprocess.run([sys.executable, "-m", "runtime", *args, "--config", str(config)],
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 3, (args, result.stderr)
        assert "outpost run" in result.stderr
    by_socket = subprocess.run(
        [sys.executable, "-m", "runtime", "status", "--socket", str(tmp_path / "none.sock")],
        capture_output=True, text=True, timeout=60)
    assert by_socket.returncode == 3


def test_unknown_agent_is_an_error_with_exit_1(tmp_path: Path, start_runtime) -> None:
    rt = start_runtime(write_config(tmp_path, COUNTER))
    rt.wait_running("counter")
    result = rt.cli("state", "get", "nobody")
    assert result.returncode == 1
    assert "no agent named 'nobody'" in result.stderr
