"""What the agents measure, read from shared memory: `metrics` (Prometheus text or a
JSON snapshot) and `top` (a live view; see runtime.cli.top)."""

from __future__ import annotations

import argparse
import sys

from runtime.cli.common import CliError, Subcommands, attach_segment, client_parser, emit
from runtime.exitcodes import EXIT_OK, EXIT_USAGE
from runtime.telemetry import HELP
from shm import prometheus_text, snapshot


def add_parsers(sub: Subcommands) -> None:
    """Add metrics and top."""
    client_parser(sub, "metrics",
                  "shared-memory metrics (Prometheus text; --json for a snapshot)") \
        .set_defaults(func=cmd_metrics)
    top = client_parser(sub, "top", "live view of agents from shared memory (q quits)")
    top.add_argument("-d", "--interval", type=float, default=1.0,
                     help="seconds between frames (default 1)")
    top.add_argument("-n", "--iterations", type=int, default=None,
                     help="stop after N frames (default: until q / Ctrl-C)")
    top.add_argument("--plain", action="store_true",
                     help="repeated plain tables even on a terminal")
    top.set_defaults(func=cmd_top)


def cmd_metrics(args: argparse.Namespace) -> int:
    """Prometheus text (or a --json snapshot) read from the segment itself, no RPC.

    Only a read-only mapping of the file, so it is cheap and safe from cron; for
    node_exporter's textfile collector `outpost maintain metrics-textfile PATH` writes
    the same text atomically. HELP lines are the ones /metrics serves.
    """
    with attach_segment(args) as segment:
        if args.json:
            emit(args, {"metrics": snapshot(segment), "segment": str(segment.path),
                        "runtime_pid": segment.creator_pid}, "")
        else:
            sys.stdout.write(prometheus_text(segment, help=HELP))
    return EXIT_OK


def cmd_top(args: argparse.Namespace) -> int:
    """`outpost top`: full screen on a terminal, repeated plain frames otherwise."""
    from runtime.cli.top import run_top  # terminal code only `top` needs

    if args.interval <= 0 or (args.iterations is not None and args.iterations < 1):
        raise CliError("outpost: --interval must be > 0 and --iterations >= 1", EXIT_USAGE)
    return run_top(args)
