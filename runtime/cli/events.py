"""`outpost events`: query the runtime's lifecycle events, or follow them live with -f."""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import UTC, datetime
from typing import Any

from runtime.cli.common import CliError, Subcommands, call, client_parser, connect, emit
from runtime.control.client import NotRunningError
from runtime.exitcodes import EXIT_NOT_RUNNING, EXIT_OK, EXIT_USAGE


def add_parsers(sub: Subcommands) -> None:
    """Add events."""
    ev = client_parser(sub, "events", "lifecycle events: query, or follow live with -f")
    ev.add_argument("-f", "--follow", action="store_true", help="follow new events live")
    ev.add_argument("--since", help="from this time: 10m, 2h, 3d ago, an ISO time or epoch s")
    ev.add_argument("--until", help="up to this time (same forms as --since)")
    ev.add_argument("--agent", help="only this agent's events")
    ev.add_argument("--type", help="only events of this type (start, exit, restart, ...)")
    ev.add_argument("-n", "--limit", type=int, default=None,
                    help="the newest N events (default 100; with -f: 10 before following)")
    ev.set_defaults(func=cmd_events)


def parse_time(text: str | None, now: float | None = None) -> float | None:
    """'10m' / '2h' / '3d' / '45s' (ago), an ISO 8601 time (UTC if no zone) or epoch seconds."""
    if text is None:
        return None
    now = time.time() if now is None else now
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    t = text.strip()
    if t and t[-1] in units:
        try:
            return now - float(t[:-1]) * units[t[-1]]
        except ValueError:
            pass
    try:
        return float(t)
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(t)
    except ValueError:
        raise CliError(f"outpost: cannot read the time {text!r}: use 10m, 2h, 3d, an ISO "
                       "time like 2026-11-21T09:00 or epoch seconds", EXIT_USAGE) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def event_line(event: dict[str, Any]) -> str:
    """One event as a log-like line: time, type, agent, then the other fields."""
    ts = datetime.fromtimestamp(event["ts"], UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
    extra = " ".join(f"{k}={json.dumps(v) if not isinstance(v, str) or ' ' in v else v}"
                     for k, v in event.items() if k not in ("seq", "ts", "type", "agent"))
    return f"{ts}  {event['type']:<13} {event['agent'] or '-':<16} {extra}".rstrip()


def _filters(args: argparse.Namespace) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for key in ("agent", "type"):
        if getattr(args, key):
            params[key] = getattr(args, key)
    since, until = parse_time(args.since), parse_time(args.until)
    if since is not None:
        params["since"] = since
    if until is not None:
        params["until"] = until
    return params


def cmd_events(args: argparse.Namespace) -> int:
    """`outpost events`: a query; with -f, the newest few then every new one, live,
    until Ctrl-C or the runtime stops (JSON: one object per line)."""
    params = _filters(args)
    if args.limit is not None and args.limit < (0 if args.follow else 1):
        raise CliError("outpost: --limit must be at least 1", EXIT_USAGE)
    if not args.follow:
        if args.limit is not None:
            params["limit"] = args.limit
        result = call(args, "events.query", **params)
        emit(args, result, "\n".join(event_line(e) for e in result["events"]))
        return EXIT_OK
    if args.until:
        raise CliError("outpost: --until makes no sense with --follow", EXIT_USAGE)
    if args.limit is not None or "since" not in params:
        params["backlog"] = 10 if args.limit is None else min(args.limit, 1000)
    with connect(args) as client:
        try:
            for event in client.stream("events.follow", **params):
                print(json.dumps(event, sort_keys=True) if args.json else event_line(event),
                      flush=True)
        except NotRunningError:
            raise CliError("outpost: the runtime went away while following events",
                           EXIT_NOT_RUNNING) from None
    print("outpost: the runtime stopped; no more events", file=sys.stderr)
    return EXIT_OK
