"""A real `outpost run` over HTTP: /metrics against `outpost metrics`, /readyz, tokens."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from runtime.maintain.textfile import metrics_textfile
from runtime.telemetry import HELP
from tests.http.client import TOKEN, request, start_with_console, token_file
from tests.runtime_proc import (
    FIXTURE_AGENTS,
    ROOT,
    RuntimeProc,
    agent_block,
    wait_for,
    write_config,
)

CONTROLLED = f"{FIXTURE_AGENTS / 'controlled.py'}:run"
AGENTS = agent_block("ctl", CONTROLLED) + agent_block("proc", CONTROLLED, kind="process")
HTTP = '[http]\nlisten = "127.0.0.1:0"\n'


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    """Every sample of a text exposition, by name and labels, through the reference parser."""
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def started(start_runtime, tmp_path: Path, agents: str = AGENTS, http: str = HTTP,
            wait: tuple[str, ...] = ("ctl", "proc")) -> tuple[RuntimeProc, str]:
    return start_with_console(start_runtime, tmp_path, agents, wait, http)


def test_metrics_parse_and_match_outpost_metrics(tmp_path: Path, start_runtime) -> None:
    rt, url = started(start_runtime, tmp_path)

    def cli_metrics() -> str:
        done = rt.cli("metrics")
        assert done.returncode == 0, done.stderr
        return done.stdout

    # Every slot exists once the supervisor sampled the process agent and the disk guard
    # measured; after that the set of series is fixed.
    wait_for(lambda: "outpost_memory_rss_bytes{agent=\"proc\"}" in cli_metrics()
             and "outpost_disk_used_bytes" in cli_metrics(), what="every slot")
    # Heartbeat ages move all the time; CPU, memory and loop lag are resampled. Take a
    # /metrics read that falls between two identical CLI reads of everything else.
    def moving(key: tuple[str, frozenset]) -> bool:
        return key[0] == "outpost_heartbeat_age_seconds"

    for _ in range(50):
        before = samples(cli_metrics())
        reply = request(url, "/metrics")
        after = samples(cli_metrics())
        if all(before[k] == after.get(k) for k in before if not moving(k)):
            break
    else:
        raise AssertionError("the metrics never held still across two CLI reads")
    assert reply.status == 200
    assert reply.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    served = samples(reply.text)
    assert served.keys() == before.keys() == after.keys()
    for key, value in served.items():
        if moving(key):
            assert 0 <= value < 30, (key, value)  # the agents beat every 50 ms
        else:
            assert value == before[key], (key, before[key], value)

    names = {name for name, _ in served}
    for runtime_metric in ("outpost_agents_up", "outpost_agents", "outpost_restarts_total",
                           "outpost_store_commit_seconds_bucket",
                           "outpost_store_commit_seconds_count",
                           "outpost_store_commit_errors_total", "outpost_store_writable",
                           "outpost_disk_used_bytes", "outpost_disk_budget_bytes",
                           "outpost_events_dropped_total", "outpost_loop_lag_seconds",
                           "outpost_heartbeat_age_seconds", "outpost_cpu_percent"):
        assert runtime_metric in names, runtime_metric
    assert served[("outpost_agents_up", frozenset())] == 2
    assert served[("outpost_restarts_total", frozenset({("agent", "ctl")}))] == 0
    lines = reply.text.splitlines()
    assert sum(line.startswith("# HELP ") for line in lines) == \
        sum(line.startswith("# TYPE ") for line in lines)
    assert f"# HELP outpost_agents_up {HELP['agents_up']}" in lines

    openmetrics = request(url, "/metrics", headers={"Accept": "application/openmetrics-text"})
    assert openmetrics.text.endswith("# EOF\n")

    textfile = tmp_path / "outpost.prom"
    metrics_textfile(rt.segment, textfile, HELP)
    assert samples(textfile.read_text()).keys() == served.keys()


def test_readyz_flips_when_an_agent_is_down(tmp_path: Path, start_runtime) -> None:
    agents = AGENTS + agent_block("fragile", CONTROLLED, max_restarts=0)
    rt, url = started(start_runtime, tmp_path, agents, wait=("ctl", "proc", "fragile"))
    assert request(url, "/healthz").status == 200
    wait_for(lambda: request(url, "/readyz").status == 200, what="ready")

    with rt.client() as client:
        client.call("send", agent="fragile", message="crash")
    down = wait_for(lambda: (r := request(url, "/readyz")).status == 503 and r,
                    what="/readyz 503")
    assert json.loads(down.body)["agents_down"] == [{"agent": "fragile", "state": "failed"}]
    assert request(url, "/healthz").status == 200  # alive, only not ready

    restarted = rt.cli("agent", "restart", "fragile")
    assert restarted.returncode == 0, restarted.stderr
    wait_for(lambda: request(url, "/readyz").status == 200, what="/readyz 200 again")


def test_a_listen_beyond_loopback_without_a_token_refuses_to_start(tmp_path: Path) -> None:
    config = write_config(tmp_path, AGENTS, '[http]\nlisten = "0.0.0.0:0"\n')
    done = subprocess.run([sys.executable, "-m", "runtime", "run", "--config", str(config)],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 2, done.stderr
    assert "http.auth_token_file: required" in done.stderr
    assert not (tmp_path / "data").exists()  # refused before touching anything


def test_a_token_file_others_can_read_refuses_to_start(tmp_path: Path) -> None:
    token_file(tmp_path).chmod(0o644)
    config = write_config(tmp_path, AGENTS, '[http]\nlisten = "0.0.0.0:0"\n'
                          'auth_token_file = "http.token"\n')
    done = subprocess.run([sys.executable, "-m", "runtime", "run", "--config", str(config)],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 1, done.stderr
    assert "cannot start" in done.stderr and "chmod 600" in done.stderr


def test_a_wrong_token_gets_401(tmp_path: Path, start_runtime) -> None:
    token_file(tmp_path)
    rt, url = started(start_runtime, tmp_path, http='[http]\nlisten = "0.0.0.0:0"\n'
                      'auth_token_file = "http.token"\n')
    for path in ("/metrics", "/", "/readyz", "/events", "/api/status"):
        assert request(url, path).status == 401, path
        assert request(url, path, token=TOKEN[:-1] + "x").status == 401, path
    assert request(url, "/metrics", token=TOKEN).status == 200
    assert request(url, "/", basic=f"admin:{TOKEN}").status == 200
    assert "without a valid token" in rt.log()
