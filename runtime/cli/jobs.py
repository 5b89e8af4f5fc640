"""`outpost jobs`: each job's schedule, next run, last result, running runs;
`jobs run NAME` (now, honouring its concurrency) and `jobs history NAME`."""

from __future__ import annotations

import argparse
import time
from typing import Any

from runtime.cli.common import CliError, Subcommands, call, client_parser, emit
from runtime.cli.format import duration, table
from runtime.cli.rules import when
from runtime.exitcodes import EXIT_FAILED, EXIT_OK, EXIT_USAGE


def add_parsers(sub: Subcommands) -> None:
    """Add `jobs`, `jobs run NAME` and `jobs history NAME`."""
    jobs = client_parser(sub, "jobs", "scheduled jobs: next run, last result (run, history)")
    jobs.set_defaults(func=cmd_jobs)
    actions = jobs.add_subparsers(dest="jobs_command", metavar="ACTION")
    run = client_parser(actions, "run", "run a job now (refused while it runs if its "
                        "concurrency is forbid)")
    run.add_argument("job")
    run.add_argument("--wait", action="store_true", help="wait for the run to end; exit 1 "
                     "if it did not succeed")
    run.set_defaults(func=cmd_jobs_run)
    history = client_parser(actions, "history", "a job's recent runs from the durable history")
    history.add_argument("job")
    history.add_argument("-n", "--limit", type=int, default=20, help="runs (default 20)")
    history.set_defaults(func=cmd_jobs_history)


def jobs_table(rows: list[dict[str, Any]], now: float | None = None) -> str:
    """The human form of the `jobs` method's answer."""
    now = time.time() if now is None else now
    out = []
    for j in rows:
        last = j.get("last") or {}
        result = last.get("result", "-")
        if last.get("ended") is not None:
            result += f" ({when(last['ended'], now)})"
        out.append([j["name"], j["kind"], j["schedule"], when(j.get("next_due"), now),
                    result, ",".join(map(str, j["running"])) or "-", j["runs"],
                    "-" if j.get("lateness_last_s") is None
                    else f"{j['lateness_last_s'] * 1000:.1f}ms"])
    return table(["JOB", "KIND", "SCHEDULE", "NEXT", "LAST", "RUNNING", "RUNS", "LATE"], out)


def history_table(runs: list[dict[str, Any]], now: float | None = None) -> str:
    """The human form of the `jobs.history` method's answer."""
    now = time.time() if now is None else now
    return table(["RUN", "BY", "STARTED", "LATE", "TOOK", "RESULT", "ERROR"], [
        [r.get("run") or "-", r.get("by") or r.get("reason") or "-",
         when(r.get("started") or r.get("due"), now),
         "-" if r.get("lateness_s") is None else f"{r['lateness_s'] * 1000:.1f}ms",
         duration(r.get("seconds")), r.get("result"),
         (r.get("error") or "")[:80] or (f"missed {r['missed']}" if r.get("missed") else "")]
        for r in runs])


def cmd_jobs(args: argparse.Namespace) -> int:
    result = call(args, "jobs")
    emit(args, result, jobs_table(result["jobs"]) if result["jobs"] else "no jobs configured")
    return EXIT_OK


def cmd_jobs_run(args: argparse.Namespace) -> int:
    params: dict[str, Any] = {"job": args.job}
    if args.wait:
        params["wait"] = True
    result = call(args, "jobs.run", **params)
    human = f"job {args.job}: run {result['run']} started"
    if result.get("replaced"):
        human += f" (replacing run {', '.join(map(str, result['replaced']))})"
    end = result.get("end")
    if end is not None:
        human = f"job {args.job}: run {result['run']} {end['result']}" + \
            (f": {end['error']}" if end.get("error") else "")
    emit(args, result, human)
    return EXIT_FAILED if end is not None and end["result"] != "ok" else EXIT_OK


def cmd_jobs_history(args: argparse.Namespace) -> int:
    if args.limit < 1:
        raise CliError("outpost: --limit must be at least 1", EXIT_USAGE)
    result = call(args, "jobs.history", job=args.job, limit=min(args.limit, 1000))
    emit(args, result, history_table(result["runs"]) if result["runs"]
         else f"job {args.job} has not run yet")
    return EXIT_OK
