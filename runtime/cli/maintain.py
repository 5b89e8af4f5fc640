"""`outpost maintain [TASK [ARG]] ...`: what cron runs. Silent on success unless --verbose.

A client of the runtime when one answers; otherwise `run_offline` imports trio
and the store and does the work here, under the data-dir lock.
"""

from __future__ import annotations

import argparse
import json
import sys

from runtime.cli.common import DEFAULT_CONFIG, CliError, Subcommands
from runtime.config import Config, load_config
from runtime.control.client import RemoteError
from runtime.exitcodes import EXIT_FAILED, EXIT_OK, EXIT_TEMPFAIL, EXIT_USAGE
from runtime.maintain.catalog import ALL_TASKS, ROUTINE
from runtime.maintain.progress import Progress
from runtime.maintain.report import MaintainError
from runtime.maintain.runner import parse_tasks, run_offline, run_online

HELP = f"""tasks: {', '.join(ALL_TASKS)}
(backup and restore take a folder, metrics-textfile a .prom file).
With no task: {" ".join(ROUTINE)}.
Exit codes: 0 ok, 1 a task found or hit a problem, 2 usage/config error,
75 the data dir is locked by another run (never waits)."""


def add_parsers(sub: Subcommands) -> None:
    """Add maintain (its own --config default: cron names the file)."""
    p = sub.add_parser("maintain", help="maintenance for cron: checkpoint, prune, compact, "
                       "archive, verify, backup, restore, disk, metrics-textfile", epilog=HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("tasks", nargs="*", metavar="TASK", help="tasks to run, in order")
    p.add_argument("--config", default=DEFAULT_CONFIG, help="config file (TOML)")
    p.add_argument("--json", action="store_true", help="print a JSON report")
    p.add_argument("--verbose", action="store_true", help="report success too")
    p.set_defaults(func=cmd_maintain)


class _TtyProgress:
    """A one-line progress display on stderr, only when it is a terminal."""

    def __init__(self) -> None:
        self.shown = False

    def __call__(self, done: int, total: int, label: str) -> None:
        if total == 0:  # no measure of progress: show that time passes
            sys.stderr.write(f"\r{label[:30]:<30} {'.' * (done % 20 + 1):<20} {done:4d}s")
            sys.stderr.flush()
            self.shown = True
            return
        pct = 100 * done // total
        bar = "#" * (pct // 5)
        sys.stderr.write(f"\r{label[:30]:<30} [{bar:<20}] {pct:3d}%")
        sys.stderr.flush()
        self.shown = True

    def end(self) -> None:
        if self.shown:
            sys.stderr.write("\n")


def _offline(config: Config, tasks: list[tuple[str, str | None]],
             progress: Progress | None) -> list[dict]:
    from runtime.store.errors import DataDirLockedError  # the store only comes in offline

    try:
        return [r.to_dict() for r in run_offline(config, tasks, progress)]
    except DataDirLockedError as exc:
        raise CliError(f"outpost maintain: {exc}; not waiting (exit 75, try again later)",
                       EXIT_TEMPFAIL) from None


def cmd_maintain(args: argparse.Namespace) -> int:
    """`outpost maintain`: inside the runtime if one answers, else offline; exit 75 if
    another run holds the data dir (never waits)."""
    config = load_config(args.config)
    try:
        tasks = parse_tasks(args.tasks)
    except MaintainError as exc:
        print(f"outpost maintain: {exc}", file=sys.stderr)
        return EXIT_USAGE
    progress = _TtyProgress() if sys.stderr.isatty() and not args.json else None
    try:
        results = run_online(config, tasks, progress)
        where = "runtime"
        if results is None:
            where = "offline"
            results = _offline(config, tasks, progress)
    except CliError as exc:
        print(exc, file=sys.stderr)
        return exc.code
    except RemoteError as exc:
        if exc.code == "busy":
            print(f"outpost maintain: {exc} (exit 75, try again later)", file=sys.stderr)
            return EXIT_TEMPFAIL
        print(f"outpost maintain: {exc.code}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except MaintainError as exc:
        print(f"outpost maintain: {exc}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        if progress:
            progress.end()
    ok = all(r["ok"] for r in results)
    if args.json:
        print(json.dumps({"ok": ok, "where": where, "tasks": results}, indent=2,
                         sort_keys=True, default=str))
    for r in results:
        for problem in r["problems"]:
            print(f"outpost maintain: {r['task']}: {problem}", file=sys.stderr)
        if args.verbose and not args.json:
            print(f"{r['task']}: {r['summary']} ({r['seconds']:.3f}s)")
    return EXIT_OK if ok else EXIT_FAILED
