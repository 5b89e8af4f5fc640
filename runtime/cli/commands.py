"""The control commands beyond status/state get/metrics/info/stop: agents, state writes,
send, events (query and follow), checkpoint, reload, shutdown, top.

Each is a thin client of one control method; `--json` prints the method's
result as is (follow and top print one JSON object per line).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from runtime.cli.main import (
    EXIT_NOT_RUNNING,
    EXIT_OK,
    EXIT_USAGE,
    CliError,
    _call,
    _connect,
    _emit,
    cmd_stop,
)
from runtime.control import NotRunningError

Client = Callable[..., argparse.ArgumentParser]


def add_parsers(sub: argparse._SubParsersAction, client: Client,
                state_sub: argparse._SubParsersAction) -> None:
    """Add this module's commands; `client` makes a parser with --config/--socket/--json."""
    agent = sub.add_parser("agent", help="start, stop or restart one agent")
    agent_sub = agent.add_subparsers(dest="agent_command", required=True, metavar="ACTION")
    for action, what in (("start", "start a stopped (or failed) agent"),
                         ("stop", "stop an agent (it stays stopped until started)"),
                         ("restart", "stop then start an agent; clears `failed`")):
        p = client(action, what, agent_sub)
        p.add_argument("agent")
        p.set_defaults(func=cmd_agent, action=action)

    value_help = "a JSON value (42, true, \"text\", {\"a\": 1}); not JSON = a plain string"
    st = client("set", "set one key of an agent's state (durably)", state_sub)
    st.add_argument("agent")
    st.add_argument("key")
    st.add_argument("value", help=value_help)
    st.add_argument("--string", action="store_true", help="take VALUE literally as a string")
    st.set_defaults(func=cmd_state_set)
    de = client("delete", "delete one key of an agent's state (durably)", state_sub)
    de.add_argument("agent")
    de.add_argument("key")
    de.set_defaults(func=cmd_state_delete)

    send = client("send", "send a message to an agent's mailbox")
    send.add_argument("agent")
    send.add_argument("message", help=value_help)
    send.add_argument("--key", help="message key (e.g. for per-key ordering)")
    send.add_argument("--string", action="store_true", help="take MESSAGE literally")
    send.set_defaults(func=cmd_send)

    ev = client("events", "lifecycle events: query, or follow live with -f")
    ev.add_argument("-f", "--follow", action="store_true", help="follow new events live")
    ev.add_argument("--since", help="from this time: 10m, 2h, 3d ago, an ISO time or epoch s")
    ev.add_argument("--until", help="up to this time (same forms as --since)")
    ev.add_argument("--agent", help="only this agent's events")
    ev.add_argument("--type", help="only events of this type (start, exit, restart, ...)")
    ev.add_argument("-n", "--limit", type=int, default=None,
                    help="the newest N events (default 100; with -f: 10 before following)")
    ev.set_defaults(func=cmd_events)

    client("checkpoint", "checkpoint every agent's state now").set_defaults(func=cmd_checkpoint)
    client("reload", "re-read the config: add, remove, change agents; others keep running") \
        .set_defaults(func=cmd_reload)
    client("shutdown", "same as stop").set_defaults(func=cmd_stop)

    top = client("top", "live view of agents from shared memory (q quits)")
    top.add_argument("-d", "--interval", type=float, default=1.0,
                     help="seconds between frames (default 1)")
    top.add_argument("-n", "--iterations", type=int, default=None,
                     help="stop after N frames (default: until q / Ctrl-C)")
    top.add_argument("--plain", action="store_true",
                     help="repeated plain tables even on a terminal")
    top.set_defaults(func=cmd_top)


# -- helpers -----------------------------------------------------------------------


def parse_value(text: str, literal: bool) -> Any:
    """A CLI value: JSON if it parses (numbers, true, objects...), else the text itself."""
    if literal:
        return text
    try:
        return json.loads(text)
    except ValueError:
        return text


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


# -- commands ----------------------------------------------------------------------


def cmd_agent(args: argparse.Namespace) -> int:
    """`outpost agent start|stop|restart NAME`: one supervisor action, then the new row."""
    result = _call(args, f"agent.{args.action}", agent=args.agent)
    row = result.get("status") or {}
    done = {"start": "started", "stop": "stopped", "restart": "restarted"}[args.action]
    human = f"{args.agent}: {done}"
    if row:
        human += f" (now {row.get('state')}" + (f", pid {row['pid']}" if row.get("pid") else "") \
            + ")"
    _emit(args, result, human)
    return EXIT_OK


def cmd_state_set(args: argparse.Namespace) -> int:
    """`outpost state set AGENT KEY VALUE`: answered once the write is durable."""
    value = parse_value(args.value, args.string)
    result = _call(args, "state.set", agent=args.agent, key=args.key, value=value)
    _emit(args, result, f"{args.agent}: {args.key} = {json.dumps(result['value'])}")
    return EXIT_OK


def cmd_state_delete(args: argparse.Namespace) -> int:
    """`outpost state delete AGENT KEY`: durable, like set."""
    result = _call(args, "state.delete", agent=args.agent, key=args.key)
    _emit(args, result, f"{args.agent}: {args.key} deleted" if result["deleted"]
          else f"{args.agent}: {args.key} was not set")
    return EXIT_OK


def cmd_send(args: argparse.Namespace) -> int:
    """`outpost send AGENT MESSAGE [--key K]`: into the durable mailbox; prints the seq."""
    params: dict[str, Any] = {"agent": args.agent,
                              "message": parse_value(args.message, args.string)}
    if args.key is not None:
        params["key"] = args.key
    result = _call(args, "send", **params)
    _emit(args, result, f"sent to {args.agent} (seq {result['seq']})")
    return EXIT_OK


def _event_params(args: argparse.Namespace) -> dict[str, Any]:
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
    params = _event_params(args)
    if args.limit is not None and args.limit < (0 if args.follow else 1):
        raise CliError("outpost: --limit must be at least 1", EXIT_USAGE)
    if not args.follow:
        if args.limit is not None:
            params["limit"] = args.limit
        result = _call(args, "events.query", **params)
        _emit(args, result, "\n".join(event_line(e) for e in result["events"]))
        return EXIT_OK
    if args.until:
        raise CliError("outpost: --until makes no sense with --follow", EXIT_USAGE)
    if args.limit is not None or "since" not in params:
        params["backlog"] = 10 if args.limit is None else min(args.limit, 1000)
    with _connect(args) as client:
        try:
            for event in client.stream("events.follow", **params):
                print(json.dumps(event, sort_keys=True) if args.json else event_line(event),
                      flush=True)
        except NotRunningError:
            raise CliError("outpost: the runtime went away while following events",
                           EXIT_NOT_RUNNING) from None
    print("outpost: the runtime stopped; no more events", file=sys.stderr)
    return EXIT_OK


def cmd_checkpoint(args: argparse.Namespace) -> int:
    """`outpost checkpoint`: checkpoint every changed state now (e.g. before a backup)."""
    result = _call(args, "checkpoint")
    _emit(args, result, f"checkpointed {result['checkpoints_written']} state stream(s)")
    return EXIT_OK


def cmd_reload(args: argparse.Namespace) -> int:
    """`outpost reload`: the runtime re-reads its config file and says what changed."""
    result = _call(args, "reload")
    parts = [f"{what} {', '.join(result.get(what) or []) or '-'}"
             for what in ("added", "removed", "changed", "unchanged")]
    _emit(args, result, f"reloaded {result['config']}: " + "; ".join(parts))
    return EXIT_OK


def cmd_top(args: argparse.Namespace) -> int:
    """`outpost top`: see runtime.cli.top."""
    from runtime.cli.top import run_top

    if args.interval <= 0 or (args.iterations is not None and args.iterations < 1):
        raise CliError("outpost: --interval must be > 0 and --iterations >= 1", EXIT_USAGE)
    return run_top(args)

