#!/usr/bin/env python3
"""Rollout latency: outpost `deploy` and automatic rollback vs supervisord's update, in one run.

Two figures per outpost agent kind (task, process), each from the agent's own
first line of code (a CLOCK_MONOTONIC stamp, one O_APPEND write):

- deploy -> new version running: from just before the `deploy` control call
  (copying the file into the release store, the durable rollout record, the
  old version stopped, its state marked, the release verified) to the new
  version's first stamp. The gate comes after, and is not part of it.
- failed gate -> old version running: a version that crashes 50 ms after it
  starts is deployed; from its "crash" stamp (just before it raises) to the
  previous version's first stamp again (the gate noticing the crash, the
  rollback: stop, state restored to the mark, the old release started).

The peer, in the same run: supervisord 4 with the program's command changed
in its config, from `supervisorctl update` (which stops and restarts the
changed program) to the new program's first stamp. supervisord has no
automatic rollback: putting the old version back is the same operation, so
both outpost figures are compared with it.

    .venv/bin/python scripts/bench/rollout.py            # table
    .venv/bin/python scripts/bench/rollout.py --json     # one JSON object
    .venv/bin/python scripts/bench/rollout.py --quick    # a few cycles, to see it works

supervisord is installed into this Python's environment if missing (as
scripts/bench/restart.py does). Percentiles are nearest-rank; nothing is
rounded before the ratios are computed.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from restart import ensure_supervisor, machine, summary  # a sibling script

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
CRASH_AFTER_S = 0.05

AGENT = '''
import os, time
import trio

VERSION = {version!r}


def stamp(kind):
    fd = os.open({stamps!r}, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, f"{{kind}} {{VERSION}} {{time.monotonic_ns()}}\\n".encode())
    finally:
        os.close(fd)


async def run(ctx):
    stamp("start")
    await ctx.state.incr("starts")
    while True:
        ctx.heartbeat()
        if {crash!r}:
            await trio.sleep({crash_after})
            stamp("crash")
            raise RuntimeError("this version is broken")
        await trio.sleep(0.05)
'''

PROGRAM = '''
import os, sys, time
fd = os.open({stamps!r}, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
os.write(fd, f"start {version} {{time.monotonic_ns()}}\\n".encode())
os.close(fd)
while True:
    time.sleep(1)
'''


def stamp_of(path: Path, kind: str, version: str, after_ns: int = 0) -> int | None:
    """The first `kind` stamp of `version` at or after `after_ns`, or None."""
    if not path.exists():
        return None
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == kind and parts[1] == version \
                and int(parts[2]) >= after_ns:
            return int(parts[2])
    return None


def wait_stamp(path: Path, kind: str, version: str, after_ns: int, proc: subprocess.Popen,
               timeout: float = 60) -> int:
    deadline = time.monotonic() + timeout
    while (found := stamp_of(path, kind, version, after_ns)) is None:
        if proc.poll() is not None:
            raise SystemExit(f"bench: the runtime under test exited ({proc.returncode})")
        if time.monotonic() > deadline:
            raise SystemExit(f"bench: no {kind} stamp of {version} within {timeout}s")
        time.sleep(0.005)  # the driver polling a file: not part of what is measured
    return found


def run_outpost(kind: str, cycles: int, work: Path) -> tuple[list[float], list[float]]:
    """(deploy -> running ms, failed gate -> old running ms), `cycles` of each."""
    from runtime.control.client import ControlClient, NotRunningError

    work.mkdir(parents=True)
    stamps = work / "stamps"

    def version_file(version: str, crash: bool) -> Path:
        path = work / version / "agent.py"
        path.parent.mkdir()
        path.write_text(AGENT.format(version=version, stamps=str(stamps), crash=crash,
                                     crash_after=CRASH_AFTER_S))
        return path
    first = version_file("v0", False)
    config = work / "outpost.toml"
    config.write_text(f'''
[runtime]
data_dir = "data"
run_dir = "run"
log_level = "warning"

[rollouts]
keep_releases = 3

[[agents]]
name = "a"
kind = "{kind}"
entry = "{first}:run"
max_restarts = 1000000
''')
    proc = subprocess.Popen([sys.executable, "-m", "runtime", "run", "--config", str(config)],
                            cwd=work, stdout=subprocess.DEVNULL,
                            stderr=open(work / "runtime.log", "wb"))  # noqa: SIM115
    deploys: list[float] = []
    rollbacks: list[float] = []
    try:
        wait_stamp(stamps, "start", "v0", 0, proc)
        deadline = time.monotonic() + 30
        while True:
            try:
                client = ControlClient(work / "run" / "outpost.sock", timeout=60)
                break
            except NotRunningError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.01)

        def finished() -> dict:
            while True:
                ro = client.call("rollout.status", agent="a")["rollouts"][0]["rollout"]
                if ro["done"]:
                    return ro
                time.sleep(0.005)
        with client:
            for i in range(1, cycles + 1):
                good, bad = version_file(f"v{i}", False), version_file(f"bad{i}", True)
                t0 = time.monotonic_ns()
                client.call("deploy", agent="a", path=str(good), gate=0.05)
                deploys.append((wait_stamp(stamps, "start", f"v{i}", t0, proc) - t0) / 1e6)
                assert finished()["phase"] == "committed"
                t1 = time.monotonic_ns()
                client.call("deploy", agent="a", path=str(bad), gate=30)
                crash = wait_stamp(stamps, "crash", f"bad{i}", t1, proc)
                back = wait_stamp(stamps, "start", f"v{i}", crash, proc)
                rollbacks.append((back - crash) / 1e6)
                assert finished()["phase"] == "rolled_back"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    return deploys, rollbacks


def run_supervisord(cycles: int, work: Path) -> list[float]:
    """supervisorctl update of a changed program -> its new version's first stamp, ms."""
    work.mkdir(parents=True)
    stamps = work / "stamps"
    conf = work / "supervisord.conf"

    def write_conf(version: str) -> None:
        program = work / f"program-{version}.py"
        program.write_text(PROGRAM.format(stamps=str(stamps), version=version))
        conf.write_text(f"""
[supervisord]
nodaemon=true
logfile={work}/supervisord.log
pidfile={work}/supervisord.pid
childlogdir={work}

[unix_http_server]
file={work}/supervisor.sock

[supervisorctl]
serverurl=unix://{work}/supervisor.sock

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[program:agent]
command={sys.executable} {program}
autorestart=true
startsecs=0
stdout_logfile={work}/agent.out
stderr_logfile={work}/agent.err
""")
    write_conf("v0")
    proc = subprocess.Popen([sys.executable, "-m", "supervisor.supervisord", "-c", str(conf)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    gaps = []
    try:
        wait_stamp(stamps, "start", "v0", 0, proc)
        for i in range(1, cycles + 1):
            write_conf(f"v{i}")
            t0 = time.monotonic_ns()
            subprocess.run([sys.executable, "-m", "supervisor.supervisorctl", "-c", str(conf),
                            "update"], check=True, stdout=subprocess.DEVNULL)
            gaps.append((wait_stamp(stamps, "start", f"v{i}", t0, proc) - t0) / 1e6)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    return gaps


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--cycles", type=int, default=30,
                   help="deploys (and failed deploys) measured per outpost kind")
    p.add_argument("--supervisord-cycles", type=int, default=15,
                   help="updates measured for supervisord")
    p.add_argument("--quick", action="store_true", help="3 cycles each: does it work?")
    args = p.parse_args()
    if args.quick:
        args.cycles = args.supervisord_cycles = 3

    sv_version = ensure_supervisor()
    started = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    host = machine()
    with tempfile.TemporaryDirectory(prefix="outpost-bench-rollout-") as tmp:
        base = Path(tmp)
        figures = {}
        for kind in ("task", "process"):
            deploys, rollbacks = run_outpost(kind, args.cycles, base / kind)
            figures[kind] = (summary(deploys), summary(rollbacks))
        sv = summary(run_supervisord(args.supervisord_cycles, base / "supervisord"))

    (task_d, task_r), (proc_d, proc_r) = figures["task"], figures["process"]
    result = {
        "benchmark": "deploy -> new version's first line (gate excluded), and a new version's "
                     "crash during its gate -> the old version's first line again; vs "
                     "supervisorctl update of a changed program -> its first line",
        "date": started,
        "machine": {**host, "load_avg_1m_at_end": os.getloadavg()[0]},
        "quick": args.quick,
        "crash_after_s": CRASH_AFTER_S,
        "percentile_method": "nearest rank",
        "supervisord_version": sv_version,
        "task_deploy_to_running_ms": task_d,
        "task_failed_gate_to_old_running_ms": task_r,
        "process_deploy_to_running_ms": proc_d,
        "process_failed_gate_to_old_running_ms": proc_r,
        "supervisord_update_to_running_ms": sv,
        "ratio_supervisord_to_task_deploy_p50": sv["p50"] / task_d["p50"],
        "ratio_supervisord_to_task_rollback_p50": sv["p50"] / task_r["p50"],
        "ratio_supervisord_to_process_deploy_p50": sv["p50"] / proc_d["p50"],
        "ratio_supervisord_to_process_rollback_p50": sv["p50"] / proc_r["p50"],
        "target_task_deploy_p50_le_5ms": task_d["p50"] <= 5,
        "target_task_rollback_p50_le_5ms": task_r["p50"] <= 5,
        "target_process_deploy_p50_le_50ms": proc_d["p50"] <= 50,
        "target_process_rollback_p50_le_50ms": proc_r["p50"] <= 50,
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"rollout latency (ms); {host['cpus']} CPUs, Python {host['python']}"
          + (" (quick: not for the record)" if args.quick else ""))
    print(f"{'':34}{'n':>5}{'p50':>10}{'p90':>10}{'p99':>10}{'max':>10}")
    for name, s in (("task: deploy -> running", task_d),
                    ("task: failed gate -> old running", task_r),
                    ("process: deploy -> running", proc_d),
                    ("process: failed gate -> old", proc_r),
                    (f"supervisord {sv_version}: update", sv)):
        print(f"{name:34}{s['n']:>5}{s['p50']:>10.3f}{s['p90']:>10.3f}{s['p99']:>10.3f}"
              f"{s['max']:>10.3f}")
    ratios = ", ".join(f"{what} {result[f'ratio_supervisord_to_{key}_p50']:.1f}x" for what, key in (
        ("task deploy", "task_deploy"), ("task rollback", "task_rollback"),
        ("process deploy", "process_deploy"), ("process rollback", "process_rollback")))
    print(f"supervisord / outpost, p50: {ratios}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
