"""`outpost run` with process and exec agents, end to end: kill -9 of the runtime, the root
giving up, config errors. Real runtimes, real signals."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psutil

from tests.runtime_proc import FIXTURE_AGENTS, wait_for, write_config


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def agents_toml(tmp: Path) -> str:
    return f'''
[[agents]]
name = "forker"
kind = "process"
entry = "{FIXTURE_AGENTS / 'forker.py'}:run"
env = {{ OUTPOST_TEST_DIR = "{tmp}" }}

[[agents]]
name = "shell"
kind = "exec"
command = ["sh", "-c", "echo $$ > {tmp}/shell.pid; sleep 3600 & echo $! > {tmp}/sleep.pid; wait"]
'''


def test_kill9_of_the_runtime_leaves_no_agent_after_the_next_start(
        tmp_path: Path, start_runtime) -> None:
    config = write_config(tmp_path, agents_toml(tmp_path))
    rt = start_runtime(config)
    rt.wait_running("forker")
    rt.wait_running("shell")
    pids_file = tmp_path / "forker.pids"
    wait_for(lambda: pids_file.exists() and (tmp_path / "sleep.pid").exists()
             and (tmp_path / "sleep.pid").read_text().strip(), what="agents' pids")
    agent_pids = [int(p) for p in pids_file.read_text().split()]
    agent_pids += [int((tmp_path / n).read_text()) for n in ("shell.pid", "sleep.pid")]
    assert all(psutil.pid_exists(p) for p in agent_pids)
    # Let the health sampler see the grandchild that left the agent's process group.
    recorded = tmp_path / "data" / "agent-pids.json"
    wait_for(lambda: str(agent_pids[3]) in recorded.read_text(), what="descendants recorded")

    rt.kill9()
    rt2 = start_runtime(config)
    rt2.wait_running("forker")
    # Everything the first runtime started is gone (killed by PDEATHSIG or by the sweep
    # of the recorded process groups and descendants at the second start).
    wait_for(lambda: all(gone(p) for p in agent_pids), timeout=10,
             what=f"old agents gone: {[p for p in agent_pids if not gone(p)]}")
    assert rt2.terminate() == 0


def test_root_giving_up_stops_the_runtime_with_a_clear_message_and_exit_1(
        tmp_path: Path, start_runtime) -> None:
    agents = ('[[agents]]\nname = "crasher"\nkind = "exec"\ncommand = "false"\n'
              'max_restarts = 100\n')
    config = write_config(tmp_path, agents,
                          extra="[supervisor]\nmax_restarts = 3\nrestart_window_s = 60\n")
    rt = start_runtime(config)
    assert rt.proc.wait(timeout=60) == 1
    log = rt.log()
    assert "outpost: stopped: the root supervisor gave up: more than 3 restarts within 60s" \
        in log, log[-2000:]
    assert not rt.socket.exists()


def test_keep_running_leaves_the_runtime_up_with_failed_agents(
        tmp_path: Path, start_runtime) -> None:
    agents = ('[[agents]]\nname = "crasher"\nkind = "exec"\ncommand = "false"\n'
              'max_restarts = 100\n')
    config = write_config(tmp_path, agents, extra="[supervisor]\nmax_restarts = 2\n"
                          'on_give_up = "keep_running"\n')
    rt = start_runtime(config)
    st = wait_for(lambda: (s := rt.try_status()) and s["agents"][0]["state"] == "failed" and s,
                  what="agent failed")
    assert st["agents"][0]["restarts"] >= 2
    assert rt.proc.poll() is None
    assert rt.terminate() == 0


def test_bad_supervision_config_is_one_line_with_exit_2(tmp_path: Path) -> None:
    cases = {
        '[[agents]]\nname = "a"\nkind = "exec"\n': "agents[0].command: missing",
        '[[agents]]\nname = "a"\nentry = "m:f"\ngroup = "nope"\n': "agents[0].group: no group",
        '[[groups]]\nname = "g"\nstrategy = "all_at_once"\n': "groups[0].strategy: expected one",
        '[[agents]]\nname = "a"\nentry = "m:f"\ndepends_on = ["b"]\n'
        '[[agents]]\nname = "b"\nentry = "m:f"\ndepends_on = ["a"]\n': "cycle",
        '[[groups]]\nname = "g"\n[[agents]]\nname = "a"\nentry = "m:f"\ndepends_on = ["b"]\n'
        '[[agents]]\nname = "b"\nentry = "m:f"\ngroup = "g"\n': "which starts later",
        '[supervisor]\non_give_up = "pray"\n': "supervisor.on_give_up: expected one of",
    }
    for body, expected in cases.items():
        path = tmp_path / "outpost.toml"
        path.write_text(body)
        result = subprocess.run([sys.executable, "-m", "runtime", "run", "--config", str(path)],
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 2, (body, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and str(path) in lines[0] and expected in lines[0], lines


def test_status_rows_for_process_and_exec_agents(tmp_path: Path, start_runtime) -> None:
    config = write_config(tmp_path, agents_toml(tmp_path))
    rt = start_runtime(config)
    rt.wait_running("forker")
    rows = wait_for(lambda: (s := rt.try_status()) and all(
        r["memory_rss_bytes"] for r in s["agents"]) and s["agents"], what="sampled rows")
    for row in rows:
        assert {"name", "kind", "state", "pid", "restarts", "uptime_s", "heartbeat_age_s",
                "last_exit", "cpu_percent", "memory_rss_bytes", "group"} <= row.keys()
        assert row["group"] == "/" and row["pid"] not in (None, rt.proc.pid)
        assert os.getpgid(row["pid"]) == row["pid"]
    metrics = json.loads(rt.cli("metrics", "--json").stdout)["metrics"]
    assert "forker:memory_rss_bytes" in metrics and "forker:heartbeat" in metrics
    assert rt.terminate() == 0


def test_the_supervision_example_runs(tmp_path: Path, start_runtime) -> None:
    import shutil

    from tests.runtime_proc import ROOT
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    rt = start_runtime(tmp_path / "examples" / "supervision.toml")
    rt.wait_running("ticker")
    rows = {r["name"]: r for r in rt.try_status()["agents"]}
    assert {n: (r["kind"], r["group"]) for n, r in rows.items()} == {
        "counter": ("task", "/"), "sensor": ("process", "/sensing"),
        "ticker": ("exec", "/sensing")}
    wait_for(lambda: json.loads(rt.cli("state", "get", "sensor", "samples", "--json").stdout
                                or "{}").get("value", 0) >= 1, what="a durable sample")
    assert rt.terminate() == 0


def test_cli_send_restart_and_reload_drive_the_supervisor(tmp_path: Path,
                                                          start_runtime) -> None:
    ctl = (f'[[agents]]\nname = "ctl_auto"\nkind = "process"\nmax_restarts = 0\n'
           f'entry = "{FIXTURE_AGENTS / "controlled.py"}:run"\n'
           f'env = {{ OUTPOST_TEST_DIR = "{tmp_path}" }}\n')
    config = write_config(tmp_path, ctl)
    rt = start_runtime(config)
    rt.wait_running("ctl_auto")

    def row() -> dict:
        return next(r for r in rt.try_status()["agents"] if r["name"] == "ctl_auto")
    # A message with a key, sent twice: stored once (same seq), acted on once.
    first = json.loads(rt.cli("send", "ctl_auto", "crash", "--key", "k", "--json").stdout)
    again = json.loads(rt.cli("send", "ctl_auto", "crash", "--key", "k", "--json").stdout)
    assert first["seq"] == again["seq"]
    wait_for(lambda: row()["state"] == "failed", what="failed (budget 0)")
    assert "crash requested" in row()["last_exit"]
    restart = rt.cli("agent", "restart", "ctl_auto")
    assert restart.returncode == 0, restart.stderr
    wait_for(lambda: row()["state"] == "running", what="running again")
    starts = (tmp_path / "ctl_auto.starts").read_text().splitlines()
    assert len(starts) == 2  # the keyed message was acked before the crash: not redelivered
    # reload: a new agent is started, the running one is left alone.
    pid = row()["pid"]
    config.write_text(config.read_text() + ctl.replace("ctl_auto", "ctl2_auto"))
    reload = json.loads(rt.cli("reload", "--json").stdout)
    assert reload["added"] == ["ctl2_auto"] and reload["unchanged"] == ["ctl_auto"]
    rt.wait_running("ctl2_auto")
    assert row()["pid"] == pid
    assert rt.terminate() == 0
