#!/usr/bin/env python3
"""The HTTP face: /metrics scrapes vs prometheus_client's own HTTP exposition, and
what the console costs a runtime at idle. Side by side in one run.

Scrapes: a real `outpost run` whose task agents publish SERIES series in the
shared-memory segment (10 agents x SERIES/10 metrics, half counters, half
gauges: SERIES/10 families labelled by agent) is scraped at /metrics; the same
series, as prometheus_client Counters and Gauges with an `agent` label
(`_created` samples off), are served by prometheus_client.start_http_server in
a process of their own. One scraper, a fresh connection per scrape (as
prometheus_client's server closes each one), closed loop for --seconds each,
alternating the two systems in rounds. Figures: scrapes/s and p50/p99 latency,
and the ratios (target: outpost >= 2x the scrapes/s).

Idle: a runtime with 3 task agents, [http] enabled = false, then enabled =
true, each left idle for --idle-seconds; the runtime process's CPU time over
the window and its RSS/USS at the end (target: <= 0.1 % CPU and <= 5 MB RSS
added by the console).

    .venv/bin/python scripts/bench/http.py [--series 1000] [--seconds 5]
        [--rounds 3] [--idle-seconds 30] [--quick] [--json]

--json prints ONE JSON object holding every figure and ratio.
"""

from __future__ import annotations

import sys

# This file is scripts/bench/http.py: its folder must not shadow the stdlib's http.
sys.path[:] = [p for p in sys.path if p != __file__.rpartition("/")[0]]

import argparse  # noqa: E402
import http.client  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from datetime import UTC, datetime  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402

from scripts.bench.control import machine  # noqa: E402
from tests.http.client import console_url  # noqa: E402
from tests.runtime_proc import RuntimeProc, wait_for, write_config  # noqa: E402

AGENTS = 10
TARGET_SCRAPE_RATIO = 2.0
TARGET_IDLE_CPU_ADDED_PERCENT = 0.1
TARGET_IDLE_RSS_ADDED_BYTES = 5_000_000

AGENT_SOURCE = '''
import trio


async def run(ctx):
    per_agent = {per_agent}
    for i in range(per_agent // 2):
        ctx.metrics.counter(f"bench_c{{i:04d}}").add(i)
    for i in range(per_agent - per_agent // 2):
        ctx.metrics.gauge(f"bench_g{{i:04d}}").set(i * 0.5)
    ctx.ready()
    await trio.sleep_forever()
'''

IDLE_SOURCE = '''
import trio


async def run(ctx):
    ctx.ready()
    await trio.sleep_forever()
'''


def agents_toml(directory: Path, names: list[str], source: str) -> str:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "bench_agent.py"
    path.write_text(source)
    return "".join(f'[[agents]]\nname = "{n}"\nentry = "{path}:run"\n' for n in names)


def start_runtime(directory: Path, agents: str, extra: str) -> tuple[RuntimeProc, str | None]:
    directory.mkdir(parents=True, exist_ok=True)
    rt = RuntimeProc(write_config(directory, agents, extra)).start()

    def running() -> bool:
        if rt.proc.poll() is not None:
            raise RuntimeError(f"runtime exited {rt.proc.returncode}:\n{rt.log()}")
        st = rt.try_status()
        return bool(st) and all(a["state"] == "running" for a in st["agents"])
    wait_for(running, timeout=60, what="agents running")
    url = None
    if "enabled = false" not in extra:
        url = wait_for(lambda: console_url(rt.log()), timeout=60, what="console address")
    return rt, url


def prometheus_client_server(port_file: str, series: int) -> None:
    """The peer, in its own process: the same series through prometheus_client."""
    import prometheus_client as pc

    pc.disable_created_metrics()
    registry = pc.CollectorRegistry()
    per_agent = series // AGENTS
    agents = [f"bench{a:02d}" for a in range(AGENTS)]
    for i in range(per_agent // 2):
        counter = pc.Counter(f"outpost_bench_c{i:04d}", "bench", ["agent"], registry=registry)
        for agent in agents:
            counter.labels(agent).inc(i)
    for i in range(per_agent - per_agent // 2):
        gauge = pc.Gauge(f"outpost_bench_g{i:04d}", "bench", ["agent"], registry=registry)
        for agent in agents:
            gauge.labels(agent).set(i * 0.5)
    server, thread = pc.start_http_server(0, addr="127.0.0.1", registry=registry)
    Path(port_file).write_text(str(server.server_port))
    thread.join()


def scrape(host: str, port: int, headers: dict[str, str] | None = None) -> tuple[float, bytes]:
    started = time.perf_counter()
    conn = http.client.HTTPConnection(host, port, timeout=30)
    try:
        conn.request("GET", "/metrics", headers=headers or {})
        response = conn.getresponse()
        body = response.read()
        assert response.status == 200, response.status
    finally:
        conn.close()
    return time.perf_counter() - started, body


def closed_loop(host: str, port: int, seconds: float) -> list[float]:
    latencies = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        latencies.append(scrape(host, port)[0])
    return latencies


def series_in(body: bytes) -> int:
    return sum(1 for line in body.decode().splitlines()
               if line.startswith("outpost_bench_") and not line.startswith("#"))


def summary(latencies: list[float], seconds: float) -> dict[str, float]:
    ordered = sorted(latencies)
    return {"scrapes_per_s": len(ordered) / seconds,
            "p50_ms": statistics.median(ordered) * 1e3,
            "p99_ms": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1e3,
            "scrapes": len(ordered)}


def bench_scrapes(tmp: Path, series: int, seconds: float, rounds: int) -> dict[str, Any]:
    per_agent = series // AGENTS
    names = [f"bench{a:02d}" for a in range(AGENTS)]
    agents = agents_toml(tmp, names, AGENT_SOURCE.format(per_agent=per_agent))
    rt, url = start_runtime(tmp / "outpost", agents, f'[shm]\nslots = {series + 256}\n'
                            '[http]\nlisten = "127.0.0.1:0"\n')
    port_file = tmp / "peer.port"
    peer = subprocess.Popen([sys.executable, __file__, "--serve-peer", str(port_file),
                             "--series", str(series)])
    try:
        peer_port = int(wait_for(lambda: port_file.exists() and port_file.read_text(),
                                 timeout=60, what="prometheus_client server"))
        ours_host, ours_port = url.removeprefix("http://").rsplit(":", 1)
        ours = ("outpost", ours_host, int(ours_port))
        theirs = ("prometheus_client", "127.0.0.1", peer_port)
        bodies = {name: scrape(host, port)[1] for name, host, port in (ours, theirs)}
        counts = {name: series_in(body) for name, body in bodies.items()}
        assert counts["outpost"] == counts["prometheus_client"] == per_agent * AGENTS, counts
        latencies: dict[str, list[float]] = {"outpost": [], "prometheus_client": []}
        for _ in range(rounds):  # alternate, so a burst of load hits both alike
            for name, host, port in (ours, theirs):
                closed_loop(host, port, min(0.5, seconds / 4))  # warm
                latencies[name] += closed_loop(host, port, seconds)
        out = {f"{name}_{k}": v for name, lat in latencies.items()
               for k, v in summary(lat, seconds * rounds).items()}
        out["series"] = counts["outpost"]
        out["outpost_body_bytes"] = len(bodies["outpost"])
        out["prometheus_client_body_bytes"] = len(bodies["prometheus_client"])
        out["scrape_rate_ratio"] = out["outpost_scrapes_per_s"] / \
            out["prometheus_client_scrapes_per_s"]
        out["scrape_p50_ratio"] = out["prometheus_client_p50_ms"] / out["outpost_p50_ms"]
        return out
    finally:
        peer.kill()
        peer.wait(timeout=10)
        rt.terminate()


def idle_cost(tmp: Path, enabled: bool, seconds: float) -> dict[str, float]:
    agents = agents_toml(tmp, ["idle_a", "idle_b", "idle_c"], IDLE_SOURCE)
    extra = '[http]\nlisten = "127.0.0.1:0"\n' + ("" if enabled else "enabled = false\n")
    rt, _ = start_runtime(tmp / ("on" if enabled else "off"), agents, extra)
    try:
        proc = psutil.Process(rt.proc.pid)
        time.sleep(min(3.0, seconds))  # start-up work (first samples, checkpoints) settles
        before, started = proc.cpu_times(), time.monotonic()
        time.sleep(seconds)
        after, elapsed = proc.cpu_times(), time.monotonic() - started
        memory = proc.memory_full_info()
        cpu = (after.user + after.system) - (before.user + before.system)
        return {"cpu_percent": cpu / elapsed * 100, "rss_bytes": memory.rss,
                "uss_bytes": memory.uss}
    finally:
        rt.terminate()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=5.0, help="per system per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--idle-seconds", type=float, default=30.0)
    parser.add_argument("--quick", action="store_true", help="a short run that proves it works")
    parser.add_argument("--json", action="store_true", help="ONE JSON object on stdout")
    parser.add_argument("--serve-peer", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_peer:
        prometheus_client_server(args.serve_peer, args.series)
        return 0
    if args.quick:
        args.seconds, args.rounds, args.idle_seconds = 1.0, 1, 2.0

    from importlib.metadata import version

    results: dict[str, Any] = {
        "benchmark": "http: /metrics vs prometheus_client's exposition; console idle cost",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(), "quick": args.quick,
        "prometheus_client_version": version("prometheus_client"),
        "hypercorn_version": version("hypercorn"),
        "seconds_per_measurement": args.seconds, "rounds": args.rounds,
        "idle_seconds": args.idle_seconds,
        "load_average_1m_before": os.getloadavg()[0],
    }
    with tempfile.TemporaryDirectory(prefix="outpost-bench-http-") as tmp_name:
        tmp = Path(tmp_name)
        results.update(bench_scrapes(tmp / "scrape", args.series, args.seconds, args.rounds))
        off = idle_cost(tmp / "idle", False, args.idle_seconds)
        on = idle_cost(tmp / "idle", True, args.idle_seconds)
    for key, value in off.items():
        results[f"idle_{key}_http_off"] = value
        results[f"idle_{key}_http_on"] = on[key]
        results[f"idle_{key}_added"] = on[key] - value
    results["targets"] = {
        "scrape_rate_ratio_min": TARGET_SCRAPE_RATIO,
        "idle_cpu_percent_added_max": TARGET_IDLE_CPU_ADDED_PERCENT,
        "idle_rss_bytes_added_max": TARGET_IDLE_RSS_ADDED_BYTES}
    results["load_average_1m_after"] = os.getloadavg()[0]

    if args.json:
        print(json.dumps(results, sort_keys=True))
        return 0
    r = results
    print(f"/metrics, {r['series']} series, one scraper, a connection per scrape:")
    for name in ("outpost", "prometheus_client"):
        print(f"  {name:18} {r[f'{name}_scrapes_per_s']:8.0f} scrapes/s   "
              f"p50 {r[f'{name}_p50_ms']:.2f} ms   p99 {r[f'{name}_p99_ms']:.2f} ms   "
              f"{r[f'{name}_body_bytes']} bytes")
    print(f"  ratio: {r['scrape_rate_ratio']:.2f}x scrapes/s (target >= "
          f"{TARGET_SCRAPE_RATIO}x), {r['scrape_p50_ratio']:.2f}x p50")
    print(f"idle over {args.idle_seconds:g}s, console off -> on:")
    print(f"  CPU {r['idle_cpu_percent_http_off']:.3f}% -> {r['idle_cpu_percent_http_on']:.3f}% "
          f"(added {r['idle_cpu_percent_added']:+.3f}%, target <= "
          f"{TARGET_IDLE_CPU_ADDED_PERCENT}%)")
    print(f"  RSS {r['idle_rss_bytes_http_off'] / 1e6:.1f} MB -> "
          f"{r['idle_rss_bytes_http_on'] / 1e6:.1f} MB (added "
          f"{r['idle_rss_bytes_added'] / 1e6:+.2f} MB, target <= "
          f"{TARGET_IDLE_RSS_ADDED_BYTES / 1e6:g} MB); USS added "
          f"{r['idle_uss_bytes_added'] / 1e6:+.2f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
