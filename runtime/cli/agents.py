"""The agents: `status` (one row each) and `agent start|stop|restart NAME`."""

from __future__ import annotations

import argparse

from runtime.cli.common import CliError, Subcommands, attach_segment, call, client_parser, emit
from runtime.cli.format import status_table, table
from runtime.exitcodes import EXIT_OK
from shm import read_slots
from shm.segment import COUNTER, HEARTBEAT


def add_parsers(sub: Subcommands) -> None:
    """Add status and agent start|stop|restart."""
    status = client_parser(sub, "status", "one row per agent")
    status.add_argument("agent", nargs="?", help="only this agent")
    status.set_defaults(func=cmd_status)

    agent = sub.add_parser("agent", help="start, stop, restart or degrade one agent")
    agent_sub = agent.add_subparsers(dest="agent_command", required=True, metavar="ACTION")
    for action, what in (("start", "start a stopped (or failed, or degraded) agent"),
                         ("stop", "stop an agent (it stays stopped until started)"),
                         ("restart", "stop then start an agent; clears `failed`")):
        p = client_parser(agent_sub, action, what, mutating=True)
        p.add_argument("agent")
        p.set_defaults(func=cmd_agent, action=action)
    degrade = client_parser(agent_sub, "degrade", "stop an agent and mark it degraded (state "
                            "kept) until it is started or restarted")
    degrade.add_argument("agent")
    degrade.add_argument("--reason", default=None, help="why (in the event and the status)")
    degrade.add_argument("--request-id", default=None, metavar="ID",
                         help="apply once (see agent start --help)")
    degrade.set_defaults(func=cmd_degrade)


def overlay_segment(args: argparse.Namespace, agents: list[dict]) -> bool:
    """Fill heartbeat ages and counters of `agents` straight from the segment.

    The RPC gave the supervisor's view; the segment is fresher and is what the
    agents write. If it cannot be attached the RPC values stay (returns False).
    """
    try:
        with attach_segment(args) as segment:
            readings = {r.name: r for r in read_slots(segment)}
    except CliError:
        return False
    for row in agents:
        beat = readings.get(f"{row['name']}:heartbeat")
        if beat is not None and beat.kind == HEARTBEAT:
            row["heartbeat_age_s"] = None if beat.value is None else round(beat.value, 3)
        prefix = f"{row['name']}:"
        row["counters"] = {name[len(prefix):]: r.value for name, r in sorted(readings.items())
                           if name.startswith(prefix) and r.kind == COUNTER}
    return True


def cmd_status(args: argparse.Namespace) -> int:
    """`outpost status [AGENT]`: the supervisor's rows, with the segment's fresher values."""
    params = {"agent": args.agent} if args.agent else {}
    result = call(args, "status", **params)
    overlay_segment(args, result["agents"])
    human = status_table(result["agents"])
    counters = [(a["name"], metric, value) for a in result["agents"]
                for metric, value in a.get("counters", {}).items()]
    if counters:
        human += "\n\n" + table(["AGENT", "COUNTER", "VALUE"], counters)
    emit(args, result, human)
    return EXIT_OK


def cmd_degrade(args: argparse.Namespace) -> int:
    """`outpost agent degrade NAME [--reason TEXT]`: the brake rules pull, by hand."""
    params = {"agent": args.agent}
    if args.reason:
        params["reason"] = args.reason
    result = call(args, "agent.degrade", **params)
    emit(args, result, f"{args.agent}: degraded ({result['reason']}); `outpost agent start "
         f"{args.agent}` runs it again")
    return EXIT_OK


def cmd_agent(args: argparse.Namespace) -> int:
    """`outpost agent start|stop|restart NAME`: one supervisor action, then the new row."""
    result = call(args, f"agent.{args.action}", agent=args.agent)
    row = result.get("status") or {}
    done = {"start": "started", "stop": "stopped", "restart": "restarted"}[args.action]
    human = f"{args.agent}: {done}"
    if row:
        human += f" (now {row.get('state')}" + (f", pid {row['pid']}" if row.get("pid") else "") \
            + ")"
    emit(args, result, human)
    return EXIT_OK
