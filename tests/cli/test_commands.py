"""Every `outpost` client command against a real runtime, through the real CLI."""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from runtime.cli.format import STATUS_HEADERS
from tests.runtime_proc import ROOT, RuntimeProc, agent_block, wait_for, write_config

AGENTS = Path(__file__).resolve().parent.parent / "control" / "agents"
BUSY = agent_block("busy", f"{AGENTS / 'busy.py'}:run")
COUNTER = agent_block("counter", str(ROOT / "examples" / "agents" / "counter.py") + ":run")


@pytest.fixture(scope="module")
def rt(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RuntimeProc]:
    """One runtime for the read-mostly tests of this module (starting one costs ~1s)."""
    directory = tmp_path_factory.mktemp("cli")
    proc = RuntimeProc(write_config(directory, BUSY + COUNTER)).start()
    try:
        proc.wait_running("busy")
        proc.wait_running("counter")
        yield proc
    finally:
        proc.cleanup()


def run_json(rt: RuntimeProc, *args: str) -> dict:
    result = rt.cli(*args, "--json")
    assert result.returncode == 0, (args, result.stderr)
    return json.loads(result.stdout)


def state(rt: RuntimeProc, agent: str) -> dict:
    with rt.client() as c:
        return c.call("state.get", agent=agent)["state"]


def test_status_is_an_aligned_table_with_every_column(rt: RuntimeProc) -> None:
    out = rt.cli("status").stdout.splitlines()
    assert out[0].split() == ["NAME", "KIND", "STATE", "PID", "UPTIME", "RESTARTS",
                              "HEARTBEAT", "CPU", "MEM"] == STATUS_HEADERS
    rows = {line.split()[0]: line for line in out[1:3]}
    assert set(rows) == {"busy", "counter"}
    state_col = out[0].index("STATE")
    assert all(line[state_col:].startswith("running") for line in rows.values())
    one = run_json(rt, "status", "busy")
    assert [r["name"] for r in one["agents"]] == ["busy"]
    missing = rt.cli("status", "nope")
    assert missing.returncode == 1 and "no agent named 'nope'" in missing.stderr


def test_state_set_reaches_the_agent_and_delete_removes(rt: RuntimeProc) -> None:
    assert run_json(rt, "state", "set", "busy", "echo_in", '{"n": 42}')["value"] == {"n": 42}
    # The agent itself copies echo_in to echo_out: it saw the control write.
    wait_for(lambda: state(rt, "busy").get("echo_out") == {"n": 42}, what="agent echo")
    literal = run_json(rt, "state", "set", "busy", "note", "42", "--string")
    assert literal["value"] == "42"
    word = rt.cli("state", "set", "busy", "mode", "eco")
    assert word.returncode == 0 and 'mode = "eco"' in word.stdout
    assert run_json(rt, "state", "get", "busy", "mode")["value"] == "eco"
    deleted = run_json(rt, "state", "delete", "busy", "mode")
    assert deleted["deleted"] is True
    gone = rt.cli("state", "get", "busy", "mode")
    assert gone.returncode == 1 and "no state key 'mode'" in gone.stderr


def test_events_query_filters(rt: RuntimeProc) -> None:
    starts = run_json(rt, "events", "--type", "start")["events"]
    assert {e["agent"] for e in starts} >= {"busy", "counter"}
    assert all(e["type"] == "start" for e in starts)
    busy = run_json(rt, "events", "--agent", "busy")["events"]
    assert busy and all(e["agent"] == "busy" for e in busy)
    newest = run_json(rt, "events", "-n", "1")["events"]
    assert len(newest) == 1
    assert run_json(rt, "events", "--since", "1h")["events"]
    assert run_json(rt, "events", "--until", "2000-01-01T00:00")["events"] == []
    human = rt.cli("events", "--type", "runtime-start").stdout.splitlines()
    assert human and "runtime-start" in human[0] and "pid=" in human[0]
    bad_time = rt.cli("events", "--since", "yesterday-ish")
    assert bad_time.returncode == 2 and "cannot read the time" in bad_time.stderr
    too_many = rt.cli("events", "--limit", "20000")  # refused by the runtime: bad_params
    assert too_many.returncode == 2 and "bad_params" in too_many.stderr


def _read_lines(proc: subprocess.Popen, until, timeout: float = 30) -> list[str]:
    """Lines from proc.stdout until `until(lines)` holds (deadline, no sleeps).

    Reads the raw fd: a buffered reader would swallow lines that select() then
    never reports again.
    """
    lines: list[str] = []
    fd = proc.stdout.fileno()
    pending = b""
    deadline = time.monotonic() + timeout
    while not until(lines):
        left = deadline - time.monotonic()
        assert left > 0, f"timed out; got {lines}"
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            chunk = os.read(fd, 65536)
            assert chunk, f"follower ended early: {lines}"
            pending += chunk
            *complete, pending = pending.split(b"\n")
            lines += [line.decode() for line in complete]
    assert not pending, pending  # `until` held exactly at a line boundary
    return lines


def test_events_follow_streams_live_events(rt: RuntimeProc) -> None:
    since = str(time.time())
    follower = subprocess.Popen(
        [*rt.command, "events", "-f", "--json", "--agent", "busy", "--since", since,
         "--config", str(rt.config)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        cwd=rt.config.parent)

    def crash_and_read(lines: list[str]) -> list[dict]:
        with rt.client() as c:
            c.call("state.set", agent="busy", key="crash", value=True)
        starts = sum(json.loads(x)["type"] == "start" for x in lines)
        lines += _read_lines(follower, lambda new: sum(
            json.loads(x)["type"] == "start" for x in new) > 0)
        assert sum(json.loads(x)["type"] == "start" for x in lines) == starts + 1
        return [json.loads(x) for x in lines]

    try:
        lines: list[str] = []
        crash_and_read(lines)  # may arrive as backlog (--since) or live
        events = crash_and_read(lines)  # the follower is subscribed by now: live
        lifecycle = [e for e in events if e["type"] in ("exit", "restart", "start")]
        assert [e["type"] for e in lifecycle] == ["exit", "restart", "start"] * 2
        assert all("crash requested" in json.dumps(e) for e in lifecycle if e["type"] == "exit")
        assert all(e["agent"] == "busy" for e in events)
        seqs = [e["seq"] for e in events]
        assert seqs == sorted(set(seqs))  # in order, no duplicates across backlog and live
    finally:
        follower.send_signal(signal.SIGINT)
        code = follower.wait(timeout=10)
    assert code == 130  # Ctrl-C, as shells report it
    wait_for(lambda: run_json(rt, "info")["control"]["connections"] == 1,
             what="the follower's connection closed")


def test_top_plain_and_json_read_shared_memory_not_rpc(rt: RuntimeProc) -> None:
    before = run_json(rt, "info")["control"]["requests"]
    frames = rt.cli("top", "-n", "8", "-d", "0.15", "--json")
    assert frames.returncode == 0, frames.stderr
    after = run_json(rt, "info")["control"]["requests"]
    lines = [json.loads(x) for x in frames.stdout.splitlines()]
    assert len(lines) == 8
    # 8 frames cost the runtime one info and one status call (plus our own info).
    assert after - before <= 3, after - before
    busy = [next(a for a in f["agents"] if a["name"] == "busy") for f in lines]
    assert busy[0]["messages_in_per_s"] is None  # no rate before a second frame
    rates = [b for b in busy[1:] if b["messages_in_per_s"]]
    assert rates, busy
    for b in rates:  # the agent sends two messages out per message in
        assert 1.0 <= b["messages_out_per_s"] / b["messages_in_per_s"] <= 3.0, b
        assert b["state_writes_per_s"] > 0
    assert busy[-1]["state"] == "running" and busy[-1]["heartbeat_age_s"] < 5

    plain = rt.cli("top", "-n", "2", "-d", "0.1")
    assert plain.returncode == 0
    headers = [line for line in plain.stdout.splitlines() if line.startswith("NAME ")]
    assert len(headers) == 2 and "MSG IN/s" in headers[0] and "WRITES/s" in headers[0]
    assert "\x1b[" not in plain.stdout  # no escapes when stdout is not a terminal


def test_top_full_screen_in_a_terminal_quits_on_q(rt: RuntimeProc, tmp_path: Path) -> None:
    if shutil.which("tmux") is None:
        pytest.skip("tmux is not installed: the full-screen mode needs a terminal")
    server = f"outpost-test-{os.getpid()}"
    done = tmp_path / "exit-code"
    command = (f"{' '.join(rt.command)} top -d 0.2 --config {rt.config}; "
               f"echo $? > {done}")
    tmux = ["tmux", "-L", server]
    subprocess.run([*tmux, "new-session", "-d", "-x", "120", "-y", "20", "-c",
                    str(rt.config.parent), command],
                   check=True, env={**os.environ, "TERM": "xterm-256color"},
                   cwd=rt.config.parent)
    try:
        def screen() -> str:
            return subprocess.run([*tmux, "capture-pane", "-p"], capture_output=True,
                                  text=True).stdout

        def drawn() -> str | None:
            text = screen()
            return text if "busy" in text and "q quits" in text else None

        shown = wait_for(drawn, what="top drawn in the terminal")
        assert "MSG IN/s" in shown and "counter" in shown
        subprocess.run([*tmux, "send-keys", "q"], check=True)
        wait_for(lambda: done.exists() and done.read_text().strip(), what="top to quit")
        assert done.read_text().strip() == "0"
    finally:
        subprocess.run([*tmux, "kill-server"], capture_output=True)


def test_checkpoint_now(rt: RuntimeProc) -> None:
    result = run_json(rt, "checkpoint")
    assert result["checkpoints_written"] >= 1  # busy writes all the time
    assert rt.cli("checkpoint").stdout.startswith("checkpointed ")


def test_every_command_speaks_json(rt: RuntimeProc) -> None:
    """--json gives JSON on stdout for results and for refusals alike."""
    commands = [
        ["status"], ["info"], ["metrics"], ["state", "get", "counter"],
        ["state", "set", "busy", "k", "1"], ["state", "delete", "busy", "k"],
        ["events", "-n", "2"], ["checkpoint"], ["top", "-n", "1"],
        ["agent", "restart", "nope"], ["send", "nope", "1"], ["state", "get", "nope"],
    ]
    for args in commands:
        result = rt.cli(*args, "--json")
        parsed = json.loads(result.stdout.splitlines()[0] if args[0] == "top" else result.stdout)
        if result.returncode == 0:
            assert "error" not in parsed, args
        else:
            assert parsed["error"]["code"] == "not_found", (args, parsed)
            assert parsed["exit"] == result.returncode == 1


def test_not_running_and_usage_exit_codes(tmp_path: Path) -> None:
    config = write_config(tmp_path, COUNTER)
    proc = RuntimeProc(config)
    for args in (["status"], ["events", "-f"], ["top", "-n", "1"], ["checkpoint"]):
        result = proc.cli(*args)
        assert result.returncode == 3, (args, result.stderr)
        assert "start it with `outpost run --config" in result.stderr
    usage = proc.cli("state", "set", "busy")
    assert usage.returncode == 2
    bad_config = subprocess.run([*proc.command, "status", "--config", str(tmp_path / "no.toml")],
                                capture_output=True, text=True, cwd=tmp_path)
    assert bad_config.returncode == 2


def test_info_metrics_and_maintain_methods(rt: RuntimeProc) -> None:
    from runtime.control import RemoteError

    with rt.client() as c:
        info = c.call("info")
        assert info["pid"] == rt.proc.pid and info["uptime_s"] > 0
        assert info["version"] and info["data_dir"].endswith("data")
        assert info["agents"] == 2
        text = c.call("metrics", format="prometheus")["text"]
        assert 'agent="busy"' in text and "messages_in" in text
        snap = c.call("metrics")["metrics"]
        assert snap["busy:messages_in"]["kind"] == "counter"
        with pytest.raises(RemoteError) as bad_format:
            c.call("metrics", format="xml")
        assert bad_format.value.code == "bad_params"
        tasks = c.call("maintain")["tasks"]
        assert "checkpoint" in tasks
        with pytest.raises(RemoteError) as unknown:
            c.call("maintain", task="defragment-the-moon")
        assert unknown.value.code == "not_available" and "checkpoint" in str(unknown.value)
        done = c.call("maintain", task="checkpoint", args={})
        assert done["task"] == "checkpoint" and done["result"]["ok"] is True
