"""`outpost rules`: each rule's firings, last outcome and suspension; `rules test FILE`
(which rules these events would fire); `rules resume NAME`.

`rules test` asks the running runtime; with none running it reads the config and
decides offline, with the same code (runtime.rules.dryrun, imported only then).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from runtime.cli.common import (
    DEFAULT_CONFIG,
    CliError,
    Subcommands,
    call,
    client_parser,
    emit,
)
from runtime.cli.format import duration, table
from runtime.exitcodes import EXIT_NOT_RUNNING, EXIT_OK, EXIT_USAGE


def add_parsers(sub: Subcommands) -> None:
    """Add `rules`, `rules test FILE` and `rules resume NAME`."""
    rules = client_parser(sub, "rules", "rules: firings, last outcome, suspended "
                          "(test, resume)")
    rules.set_defaults(func=cmd_rules)
    actions = rules.add_subparsers(dest="rules_command", metavar="ACTION")
    test = client_parser(actions, "test", "which rules the events in FILE would fire "
                         "(acts on nothing)")
    test.add_argument("file", help="events as JSON: a list, {\"events\": [...]} (what "
                      "`outpost events --json` prints) or one event per line; - for stdin")
    test.set_defaults(func=cmd_rules_test)
    resume = client_parser(actions, "resume", "lift a rule's suspension")
    resume.add_argument("rule")
    resume.set_defaults(func=cmd_rules_resume)


def when(ts: float | None, now: float) -> str:
    """'in 3m12s' or '45s ago' ('-' for None)."""
    if ts is None:
        return "-"
    return f"in {duration(ts - now)}" if ts > now else f"{duration(now - ts)} ago"


def rules_table(rows: list[dict[str, Any]], now: float | None = None) -> str:
    """The human form of the `rules` method's answer."""
    now = time.time() if now is None else now
    out = []
    for r in rows:
        last = r.get("last_outcome") or {}
        outcome = last.get("result", "-")
        if last.get("error"):
            outcome += f": {last['error']}"
        out.append([r["name"], ",".join(r["on"]), r.get("metric") or r.get("agent") or "*",
                    r["do"], r["firings"], when(r.get("last_fired"), now), outcome,
                    "SUSPENDED: " + r["suspended"] if r.get("suspended") else "no"])
    return table(["RULE", "ON", "AGENT", "DO", "FIRINGS", "LAST FIRED", "LAST OUTCOME",
                  "SUSPENDED"], out)


def cmd_rules(args: argparse.Namespace) -> int:
    result = call(args, "rules")
    emit(args, result, rules_table(result["rules"]) if result["rules"]
         else "no rules configured")
    return EXIT_OK


def read_events(path: str) -> list[Any]:
    """Events from FILE: a JSON list, {"events": [...]}, or JSON lines."""
    text = sys.stdin.read() if path == "-" else Path(path).read_text()
    try:
        data = json.loads(text)
    except ValueError:
        data = [json.loads(line) for line in text.splitlines() if line.strip()]
    if isinstance(data, dict):
        data = data.get("events", [data] if "type" in data else [])
    if not isinstance(data, list):
        raise ValueError("expected a list of events")
    return data


def test_lines(result: dict[str, Any]) -> str:
    """The human form of a dry run: one line per event that matched a rule."""
    lines = []
    for e in result["events"]:
        if e["rules"]:
            decided = ", ".join(f"{d['rule']}: {d['decision']}"
                                + (f" ({d['action']})" if "action" in d else "")
                                for d in e["rules"])
            lines.append(f"#{e['seq']} {e['type']} {e.get('agent') or '-'} -> {decided}")
    fired = ", ".join(f"{k} x{v}" for k, v in result["fired"].items()) or "none"
    return "\n".join([*lines, f"would fire: {fired}"])


def cmd_rules_test(args: argparse.Namespace) -> int:
    try:
        events = read_events(args.file)
    except (OSError, ValueError) as exc:
        raise CliError(f"outpost: cannot read events from {args.file}: {exc}",
                       EXIT_USAGE) from None
    try:
        result = call(args, "rules.test", events=events)
    except CliError as exc:
        if exc.code != EXIT_NOT_RUNNING or args.socket:
            raise
        result = offline_test(args.config or DEFAULT_CONFIG, events)
    emit(args, result, test_lines(result))
    return EXIT_OK


def offline_test(config_path: str, events: list[Any]) -> dict[str, Any]:
    """The dry run without a runtime: the config's rules, decided here."""
    from runtime.config import load_config
    from runtime.rules.dryrun import EventFormatError, check_event, simulate

    config = load_config(config_path)
    try:
        checked = [check_event(e, f"events[{i}]") for i, e in enumerate(events)]
    except EventFormatError as exc:
        raise CliError(f"outpost: {exc}", EXIT_USAGE) from None
    print("outpost: no runtime running; deciding with the rules in " + str(config.path),
          file=sys.stderr)
    agents = [a.name for a in config.agents] + [g.name for g in config.groups]
    return simulate(config.autonomy.rules, agents, checked)


def cmd_rules_resume(args: argparse.Namespace) -> int:
    result = call(args, "rules.resume", rule=args.rule)
    emit(args, result, f"rule {args.rule}: " + ("resumed" if result["was_suspended"]
                                                else "was not suspended"))
    return EXIT_OK
