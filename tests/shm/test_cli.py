"""`outpost metrics` and `outpost status` read the segment directly.

The in-process tests let this test process play the runtime (it creates the
segment, so its creator is alive) with no control socket at all: anything that
still needed RPC would fail. The last test runs a real runtime and the real CLI.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import runtime.cli.agents as cli_agents
import runtime.cli.main as cli
from shm import Counter, Gauge, Heartbeat, Histogram, Segment
from tests.shm.conftest import FORK

CONFIG = '[runtime]\ndata_dir = "data"\nrun_dir = "run"\n'


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "outpost.toml"
    path.write_text(CONFIG)
    (tmp_path / "run").mkdir()
    return path


@pytest.fixture
def live(config: Path) -> Segment:
    seg = Segment.create(config.parent / "run" / "outpost.shm", 32)
    Counter(seg, "counter:ticks").add(7)
    Gauge(seg, "counter:temp").set(3.5)
    Histogram(seg, "counter:lat", [1.0]).observe(0.5)
    Heartbeat(seg, "counter:heartbeat").beat()
    return seg


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_metrics_prints_prometheus_text_without_a_runtime_socket(
        config: Path, live: Segment, capsys) -> None:
    assert not (config.parent / "run" / "outpost.sock").exists()
    code, out, _ = run_cli(capsys, "metrics", "--config", str(config))
    assert code == 0
    assert 'outpost_ticks_total{agent="counter"} 7\n' in out
    assert 'outpost_temp{agent="counter"} 3.5\n' in out
    assert 'outpost_lat_bucket{agent="counter",le="+Inf"} 1\n' in out
    assert "outpost_heartbeat_age_seconds{agent=\"counter\"} " in out


def test_metrics_json_prints_the_snapshot(config: Path, live: Segment, capsys) -> None:
    code, out, _ = run_cli(capsys, "metrics", "--json", "--config", str(config))
    assert code == 0
    doc = json.loads(out)
    assert doc["runtime_pid"] == os.getpid()
    assert doc["metrics"]["counter:ticks"] == {"kind": "counter", "value": 7}
    assert doc["metrics"]["counter:lat"]["value"]["count"] == 1


def test_metrics_finds_the_segment_next_to_a_socket_given_by_path(
        config: Path, live: Segment, capsys) -> None:
    sock = config.parent / "run" / "outpost.sock"
    code, out, _ = run_cli(capsys, "metrics", "--socket", str(sock))
    assert code == 0 and "outpost_ticks_total" in out


def test_metrics_exits_3_with_how_to_start_when_no_segment(config: Path, capsys) -> None:
    code, out, err = run_cli(capsys, "metrics", "--config", str(config))
    assert code == 3 and out == ""
    assert "no shared-memory segment" in err
    assert f"outpost run --config {config}" in err


def test_metrics_exits_3_for_a_dead_runtimes_segment(config: Path, capsys) -> None:
    def crashed_runtime() -> None:
        Counter(Segment.create(config.parent / "run" / "outpost.shm", 8), "x").inc()
        os._exit(0)
    p = FORK.Process(target=crashed_runtime)
    p.start()
    p.join(30)
    code, _, err = run_cli(capsys, "metrics", "--config", str(config))
    assert code == 3
    assert f"stale segment left by runtime pid {p.pid}" in err and "outpost run" in err


def test_metrics_exits_1_for_a_file_that_is_not_a_segment(config: Path, capsys) -> None:
    (config.parent / "run" / "outpost.shm").write_bytes(b"\x7fELF" + bytes(4092))
    code, _, err = run_cli(capsys, "metrics", "--config", str(config))
    assert code == 1 and "wrong magic" in err


def rpc_rows(age: float | None) -> dict:
    return {"agents": [
        {"name": "counter", "kind": "task", "state": "running", "pid": None, "restarts": 0,
         "uptime_s": 12.0, "heartbeat_age_s": age},
        {"name": "quiet", "kind": "task", "state": "running", "pid": None, "restarts": 0,
         "uptime_s": 12.0, "heartbeat_age_s": None}]}


def test_status_overlays_heartbeat_ages_and_counters_from_the_segment(
        config: Path, live: Segment, capsys, monkeypatch) -> None:
    monkeypatch.setattr(cli_agents, "call", lambda args, method, **params: rpc_rows(999.0))
    code, out, _ = run_cli(capsys, "status", "--json", "--config", str(config))
    assert code == 0
    rows = {r["name"]: r for r in json.loads(out)["agents"]}
    assert rows["counter"]["heartbeat_age_s"] < 5  # the segment's age, not the RPC's 999
    assert rows["counter"]["counters"] == {"ticks": 7}
    assert rows["quiet"]["heartbeat_age_s"] is None and rows["quiet"]["counters"] == {}
    code, out, _ = run_cli(capsys, "status", "--config", str(config))
    assert code == 0
    assert "16m39s" not in out and " ago" in out
    assert out.splitlines()[-2:] == ["AGENT    COUNTER  VALUE", "counter  ticks    7"]


def test_status_falls_back_to_rpc_values_without_a_segment(
        config: Path, capsys, monkeypatch) -> None:
    monkeypatch.setattr(cli_agents, "call", lambda args, method, **params: rpc_rows(12.5))
    code, out, _ = run_cli(capsys, "status", "--json", "--config", str(config))
    assert code == 0
    rows = {r["name"]: r for r in json.loads(out)["agents"]}
    assert rows["counter"]["heartbeat_age_s"] == 12.5 and "counters" not in rows["counter"]


AGENT = '''
import trio

async def run(ctx):
    ticks = ctx.metrics.counter("ticks")
    ctx.ready()
    while True:
        ticks.inc()
        ctx.heartbeat()
        await trio.sleep(0.01)
'''


def outpost(*args: str, config: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "runtime", *args, "--config", str(config)],
                          capture_output=True, text=True, timeout=60)


def test_real_runtime_metrics_status_and_clean_stop(tmp_path: Path) -> None:
    (tmp_path / "ticker.py").write_text(AGENT)
    config = tmp_path / "outpost.toml"
    config.write_text(CONFIG + '\n[[agents]]\nname = "ticker"\nentry = "ticker.py:run"\n')
    segment = tmp_path / "run" / "outpost.shm"
    log = open(tmp_path / "runtime.log", "wb")  # noqa: SIM115 - the child writes it
    proc = subprocess.Popen([sys.executable, "-m", "runtime", "run", "--config", str(config)],
                            stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
    log.close()
    try:
        deadline = time.monotonic() + 30
        while True:  # poll as cron would: until the agent's counter shows up
            assert proc.poll() is None, (tmp_path / "runtime.log").read_text()
            metrics = outpost("metrics", config=config)
            if 'outpost_ticks_total{agent="ticker"}' in metrics.stdout:
                break
            assert time.monotonic() < deadline, metrics.stderr
            time.sleep(0.05)
        assert metrics.returncode == 0
        assert 'outpost_heartbeat_age_seconds{agent="ticker"}' in metrics.stdout
        status = outpost("status", "--json", config=config)
        assert status.returncode == 0, status.stderr
        row = json.loads(status.stdout)["agents"][0]
        assert row["name"] == "ticker" and row["counters"]["ticks"] >= 1
        assert row["heartbeat_age_s"] is not None and row["heartbeat_age_s"] < 5
        assert segment.exists()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    assert not segment.exists()  # removed at a clean stop
    after = outpost("metrics", config=config)
    assert after.returncode == 3 and "outpost run" in after.stderr
