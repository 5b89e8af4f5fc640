#!/usr/bin/env python3
"""Restart latency: outpost `process` and `task` agents vs supervisord 4, in one run.

The same Python program logic everywhere: at start it appends "start <ns>"
(CLOCK_MONOTONIC, one O_APPEND write) to a file, sleeps 0.2 s, appends
"exit <ns>" and fails. The figure is the gap from an "exit" stamp to the next
"start" stamp: everything the supervisor does to notice the exit and bring the
next instance to its first line of code (for supervisord that includes a fresh
interpreter; for outpost's process kind a fork of the template; for the task
kind a new task in the runtime's own loop).

    .venv/bin/python scripts/bench/restart.py            # table
    .venv/bin/python scripts/bench/restart.py --json     # one JSON object

supervisord is installed into this Python's environment (`pip install
"supervisor>=4,<5"`) if it is missing; it runs with autorestart=true and
startsecs=0. Percentiles are nearest-rank over every measured gap; nothing is
rounded before the ratios are computed.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CRASHER = ROOT / "tests" / "fixtures" / "agents" / "bench_crasher.py"
CRASH_AFTER_S = 0.2

PROGRAM = '''
import os, sys, time


def stamp(kind):
    fd = os.open(os.environ["OUTPOST_BENCH_FILE"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, f"{kind} {time.monotonic_ns()}\\n".encode())
    finally:
        os.close(fd)


stamp("start")
time.sleep(0.2)
stamp("exit")
sys.exit(1)
'''


def gaps_ms(path: Path) -> list[float]:
    """Exit -> next start gaps in ms, from the stamp file."""
    gaps = []
    last_exit = None
    for line in path.read_text().splitlines():
        kind, _, ns = line.partition(" ")
        if kind == "exit":
            last_exit = int(ns)
        elif kind == "start" and last_exit is not None:
            gaps.append((int(ns) - last_exit) / 1e6)
            last_exit = None
    return gaps


def starts(path: Path) -> int:
    if not path.exists():
        return 0
    return sum(1 for line in path.read_text().splitlines() if line.startswith("start"))


def wait_starts(path: Path, n: int, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while starts(path) < n:
        if proc.poll() is not None:
            raise SystemExit(f"bench: supervisor exited early ({proc.returncode})")
        if time.monotonic() > deadline:
            raise SystemExit(f"bench: only {starts(path)} of {n} starts within {timeout}s")
        time.sleep(0.05)  # a benchmark driver polling a file, not part of what is measured


def summary(gaps: list[float]) -> dict:
    """n, mean, p50, p90, p99 (nearest rank) and max, in ms, unrounded."""
    ordered = sorted(gaps)

    def rank(q: float) -> float:
        return ordered[max(0, math.ceil(q * len(ordered)) - 1)]
    return {"n": len(ordered), "mean": statistics.fmean(ordered), "p50": rank(0.50),
            "p90": rank(0.90), "p99": rank(0.99), "max": ordered[-1], "min": ordered[0]}


def run_outpost(kind: str, cycles: int, work: Path) -> list[float]:
    work.mkdir(parents=True)
    stamps = work / "stamps"
    config = work / "outpost.toml"
    config.write_text(f'''
[runtime]
data_dir = "data"
run_dir = "run"
log_level = "warning"

[supervisor]
max_restarts = 1000000

[[agents]]
name = "crasher"
kind = "{kind}"
entry = "{CRASHER}:run"
max_restarts = 1000000
backoff_initial_s = 0
env = {{ OUTPOST_BENCH_FILE = "{stamps}" }}
''')
    env = {**os.environ, "OUTPOST_BENCH_FILE": str(stamps)}  # the task kind reads it here
    proc = subprocess.Popen([sys.executable, "-m", "runtime", "run", "--config", str(config)],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=open(work / "runtime.log", "wb"))  # noqa: SIM115
    try:
        wait_starts(stamps, cycles + 1, proc, timeout=30 + cycles * (CRASH_AFTER_S + 0.5))
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    return gaps_ms(stamps)[:cycles]


def ensure_supervisor() -> str:
    try:
        import supervisor  # noqa: F401
    except ImportError:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "supervisor>=4,<5"],
                       check=True)
    from importlib.metadata import version
    return version("supervisor")


def run_supervisord(cycles: int, work: Path) -> list[float]:
    work.mkdir(parents=True)
    stamps = work / "stamps"
    program = work / "program.py"
    program.write_text(PROGRAM)
    conf = work / "supervisord.conf"
    conf.write_text(f"""
[supervisord]
nodaemon=true
logfile={work}/supervisord.log
pidfile={work}/supervisord.pid
childlogdir={work}

[unix_http_server]
file={work}/supervisor.sock

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[program:crasher]
command={sys.executable} {program}
autorestart=true
startsecs=0
startretries=1000000
environment=OUTPOST_BENCH_FILE="{stamps}"
stdout_logfile={work}/crasher.out
stderr_logfile={work}/crasher.err
""")
    proc = subprocess.Popen([sys.executable, "-m", "supervisor.supervisord", "-c", str(conf)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_starts(stamps, cycles + 1, proc, timeout=60 + cycles * 3)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    return gaps_ms(stamps)[:cycles]


def machine() -> dict:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpus": os.cpu_count(), "cpu": cpu, "kernel": platform.release(),
            "python": platform.python_version(),
            "load_avg_1m_at_start": os.getloadavg()[0]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--cycles", type=int, default=100, help="restarts measured per outpost kind")
    p.add_argument("--supervisord-cycles", type=int, default=15,
                   help="restarts measured for supervisord (about 1.2 s each)")
    args = p.parse_args()

    sv_version = ensure_supervisor()
    started = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    host = machine()
    with tempfile.TemporaryDirectory(prefix="outpost-bench-restart-") as tmp:
        base = Path(tmp)
        process = summary(run_outpost("process", args.cycles, base / "process"))
        task = summary(run_outpost("task", args.cycles, base / "task"))
        sv = summary(run_supervisord(args.supervisord_cycles, base / "supervisord"))

    result = {
        "benchmark": "restart gap: exit of a Python agent crashing 0.2 s after start -> "
                     "first stamp (heartbeat) of the next instance",
        "date": started,
        "machine": {**host, "load_avg_1m_at_end": os.getloadavg()[0]},
        "crash_after_s": CRASH_AFTER_S,
        "percentile_method": "nearest rank",
        "supervisord_version": sv_version,
        "process_restart_gap_ms": process,
        "task_restart_gap_ms": task,
        "supervisord_restart_gap_ms": sv,
        "ratio_supervisord_to_process_p50": sv["p50"] / process["p50"],
        "ratio_supervisord_to_process_p99": sv["p99"] / process["p99"],
        "ratio_supervisord_to_task_p50": sv["p50"] / task["p50"],
        "ratio_supervisord_to_task_p99": sv["p99"] / task["p99"],
        "target_process_p50_le_10ms": process["p50"] <= 10,
        "target_process_p99_le_50ms": process["p99"] <= 50,
        "target_task_p50_le_0_5ms": task["p50"] <= 0.5,
        "target_task_p99_le_0_5ms": task["p99"] <= 0.5,
        "goal_ratio_to_supervisord_ge_100_process_p50": sv["p50"] / process["p50"] >= 100,
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"restart gap (ms), crash {CRASH_AFTER_S}s after start; "
          f"{result['machine']['cpus']} CPUs, Python {result['machine']['python']}")
    print(f"{'':18}{'n':>5}{'p50':>10}{'p90':>10}{'p99':>10}{'max':>10}{'mean':>10}")
    for name, s in (("process", process), ("task", task), (f"supervisord {sv_version}", sv)):
        print(f"{name:18}{s['n']:>5}{s['p50']:>10.3f}{s['p90']:>10.3f}{s['p99']:>10.3f}"
              f"{s['max']:>10.3f}{s['mean']:>10.3f}")
    print(f"supervisord / process: p50 {result['ratio_supervisord_to_process_p50']:.0f}x, "
          f"p99 {result['ratio_supervisord_to_process_p99']:.0f}x")
    print(f"supervisord / task:    p50 {result['ratio_supervisord_to_task_p50']:.0f}x, "
          f"p99 {result['ratio_supervisord_to_task_p99']:.0f}x")
    for key, value in result.items():
        if key.startswith(("target_", "goal_")):
            print(f"{key}: {'met' if value else 'MISSED'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
