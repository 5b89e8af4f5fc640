"""Agents' durable data: `state get|set|delete` and `send` (into a mailbox).

Writes are answered only once durable, so a command that returned 0 lost nothing.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from runtime.cli.common import Subcommands, call, client_parser, emit
from runtime.exitcodes import EXIT_OK

VALUE_HELP = "a JSON value (42, true, \"text\", {\"a\": 1}); not JSON = a plain string"


def add_parsers(sub: Subcommands) -> None:
    """Add state get|set|delete and send."""
    state = sub.add_parser("state", help="agents' durable state")
    state_sub = state.add_subparsers(dest="state_command", required=True, metavar="ACTION")
    get = client_parser(state_sub, "get", "print an agent's state (or one key)")
    get.add_argument("agent")
    get.add_argument("key", nargs="?")
    get.set_defaults(func=cmd_state_get)
    st = client_parser(state_sub, "set", "set one key of an agent's state (durably)",
                       mutating=True)
    st.add_argument("agent")
    st.add_argument("key")
    st.add_argument("value", help=VALUE_HELP)
    st.add_argument("--string", action="store_true", help="take VALUE literally as a string")
    st.set_defaults(func=cmd_state_set)
    de = client_parser(state_sub, "delete", "delete one key of an agent's state (durably)",
                       mutating=True)
    de.add_argument("agent")
    de.add_argument("key")
    de.set_defaults(func=cmd_state_delete)

    send = client_parser(sub, "send", "send a message to an agent's mailbox", mutating=True)
    send.add_argument("agent")
    send.add_argument("message", help=VALUE_HELP)
    send.add_argument("--key", help="message key (e.g. for per-key ordering)")
    send.add_argument("--string", action="store_true", help="take MESSAGE literally")
    send.set_defaults(func=cmd_send)


def parse_value(text: str, literal: bool) -> Any:
    """A CLI value: JSON if it parses (numbers, true, objects...), else the text itself."""
    if literal:
        return text
    try:
        return json.loads(text)
    except ValueError:
        return text


def cmd_state_get(args: argparse.Namespace) -> int:
    """`outpost state get AGENT [KEY]`: the whole state as `key = value` lines, or one value."""
    params: dict[str, Any] = {"agent": args.agent}
    if args.key is not None:
        params["key"] = args.key
    result = call(args, "state.get", **params)
    if args.key is not None:
        human = json.dumps(result["value"])
    else:
        human = "\n".join(f"{k} = {json.dumps(v)}" for k, v in sorted(result["state"].items()))
    emit(args, result, human)
    return EXIT_OK


def cmd_state_set(args: argparse.Namespace) -> int:
    """`outpost state set AGENT KEY VALUE`: answered once the write is durable."""
    value = parse_value(args.value, args.string)
    result = call(args, "state.set", agent=args.agent, key=args.key, value=value)
    emit(args, result, f"{args.agent}: {args.key} = {json.dumps(result['value'])}")
    return EXIT_OK


def cmd_state_delete(args: argparse.Namespace) -> int:
    """`outpost state delete AGENT KEY`: durable, like set."""
    result = call(args, "state.delete", agent=args.agent, key=args.key)
    emit(args, result, f"{args.agent}: {args.key} deleted" if result["deleted"]
         else f"{args.agent}: {args.key} was not set")
    return EXIT_OK


def cmd_send(args: argparse.Namespace) -> int:
    """`outpost send AGENT MESSAGE [--key K]`: into the durable mailbox; prints the seq."""
    params: dict[str, Any] = {"agent": args.agent,
                              "message": parse_value(args.message, args.string)}
    if args.key is not None:
        params["key"] = args.key
    result = call(args, "send", **params)
    emit(args, result, f"sent to {args.agent} (seq {result['seq']})")
    return EXIT_OK
