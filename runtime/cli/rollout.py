"""Agents' code: `deploy`, `rollout status`, `rollback`, `releases`.

`outpost deploy AGENT PATH` hands a file or folder to the runtime, which
copies it into its release store and rolls it out behind a health gate; the
command then follows the rollout to its end (exit 0 committed, 1 rolled
back) unless --detach.
"""

from __future__ import annotations

import argparse
import datetime
import os
import time
from typing import Any

from runtime.cli.common import Subcommands, call, client_parser, connect, emit
from runtime.cli.format import duration, table
from runtime.exitcodes import EXIT_FAILED, EXIT_OK

POLL_S = 0.2


def add_parsers(sub: Subcommands) -> None:
    """Add deploy, rollout status, rollback and releases."""
    d = client_parser(sub, "deploy", "roll out a new version of an agent's code "
                      "(health-gated, rolled back on failure)", mutating=True)
    d.add_argument("agent")
    d.add_argument("path", help="a file or folder holding the agent's code (for an exec "
                   "agent: its program)")
    d.add_argument("--version", default=None, help="a label for this release")
    d.add_argument("--entry", default=None, help="what to run inside the release: "
                   "FILE.py[:FUNCTION], or an exec agent's program path (default: the file "
                   "name the config names)")
    d.add_argument("--gate", type=float, default=None, metavar="SECONDS",
                   help="how long the new version must stay healthy (default: the config's)")
    d.add_argument("--force", action="store_true",
                   help="deploy a release that was rolled back before")
    d.add_argument("--detach", action="store_true",
                   help="return once the new version runs; do not follow the gate")
    d.set_defaults(func=cmd_deploy)

    rollout = sub.add_parser("rollout", help="rollouts of agents' releases")
    rsub = rollout.add_subparsers(dest="rollout_command", required=True, metavar="ACTION")
    st = client_parser(rsub, "status", "each agent's current release and latest rollout")
    st.add_argument("agent", nargs="?")
    st.set_defaults(func=cmd_status)

    rb = client_parser(sub, "rollback", "roll an agent back: stop its rollout now, or go back "
                       "to its previous release", mutating=True)
    rb.add_argument("agent")
    rb.set_defaults(func=cmd_rollback)

    rel = client_parser(sub, "releases", "the kept releases of an agent")
    rel.add_argument("agent")
    rel.set_defaults(func=cmd_releases)


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def _phase_line(ro: dict[str, Any]) -> str:
    line = f"rollout {ro['id']}: {ro['phase']}"
    if ro["phase"] in ("switching", "gating") and len(ro["instances"]) > 1:
        line += f" (step {ro['step']} of {len(ro['steps'])}: {', '.join(ro['switched'])})"
    if ro["phase"] == "gating":
        line += f", gate {duration(ro['gate_s'])}"
    if ro.get("reason"):
        line += f": {ro['reason']}"
    return line


def cmd_deploy(args: argparse.Namespace) -> int:
    """`outpost deploy AGENT PATH`: stage, roll out, follow to commit or rollback."""
    params: dict[str, Any] = {"agent": args.agent, "path": os.path.abspath(args.path)}
    for key in ("version", "entry", "gate"):
        if getattr(args, key) is not None:
            params[key] = getattr(args, key)
    if args.force:
        params["force"] = True
    result = call(args, "deploy", **params)
    ro = result.get("rollout")
    if result.get("already") or ro is None:
        current = result.get("current") or {}
        emit(args, result, f"{args.agent}: already runs release {current.get('release')} "
             f"({current.get('version')}); nothing to do")
        return EXIT_OK
    if not args.json:
        print(f"{args.agent}: release {ro['release']} ({ro['version']}), {_phase_line(ro)}",
              flush=True)
    if not args.detach and not ro["done"]:
        result = _follow(args, ro["id"], ro["phase"])
        ro = result["rollout"]
    if args.json:
        emit(args, result, "")
    elif ro["done"] or args.detach:
        print(f"{args.agent}: {_outcome(ro)}")
    return EXIT_FAILED if ro["phase"] == "rolled_back" else EXIT_OK


def _outcome(ro: dict[str, Any]) -> str:
    if ro["phase"] == "committed":
        return f"release {ro['release']} ({ro['version']}) committed"
    if ro["phase"] == "rolled_back":
        back = ro["previous_version"] or ro["previous"] or "the config's own code"
        return f"rolled back to {back}: {ro['reason']}"
    return _phase_line(ro)


def _follow(args: argparse.Namespace, rollout_id: int, phase: str) -> dict[str, Any]:
    """Poll the rollout until it ends, printing each phase it enters."""
    with connect(args) as client:
        while True:
            time.sleep(POLL_S)
            found = client.call("rollout.status", agent=args.agent)["rollouts"][0]
            ro = found["rollout"]
            if ro is None or ro["id"] != rollout_id:
                return found
            if ro["phase"] != phase and not args.json and not ro["done"]:
                print(f"{args.agent}: {_phase_line(ro)}", flush=True)
            phase = ro["phase"]
            if ro["done"]:
                return found


def cmd_status(args: argparse.Namespace) -> int:
    """`outpost rollout status [AGENT]`: current release and latest rollout per agent."""
    params = {"agent": args.agent} if args.agent else {}
    result = call(args, "rollout.status", **params)
    rows = []
    for r in result["rollouts"]:
        ro = r["rollout"] or {}
        current = r["current"] or {}
        rows.append((r["agent"], current.get("version") or "(config)", ro.get("phase"),
                     ro.get("version"), f"{ro['step']}/{len(ro['steps'])}" if ro else None,
                     _when(ro.get("updated")), ro.get("reason")))
    human = table(["AGENT", "CURRENT", "PHASE", "ROLLOUT", "STEP", "UPDATED", "REASON"], rows) \
        if rows else "no agent has a deployed release"
    emit(args, result, human)
    return EXIT_OK


def cmd_rollback(args: argparse.Namespace) -> int:
    """`outpost rollback AGENT`: answers once every instance runs the older release."""
    result = call(args, "rollback", agent=args.agent)
    ro = result["rollout"] or {}
    emit(args, result, f"{args.agent}: {_outcome(ro)}" if ro else f"{args.agent}: nothing done")
    return EXIT_OK


def cmd_releases(args: argparse.Namespace) -> int:
    """`outpost releases AGENT`: the kept releases, oldest first."""
    result = call(args, "releases", agent=args.agent)
    rows = [("*" if r["current"] else "", r["release"], r["version"], r["status"],
             _when(r["added"]), r["reason"]) for r in result["releases"]]
    emit(args, result, table(["", "RELEASE", "VERSION", "STATUS", "ADDED", "REASON"], rows)
         if rows else f"{args.agent} has no deployed release (it runs its config's code)")
    return EXIT_OK

