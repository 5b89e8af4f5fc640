"""What every `outpost` command shares: finding the runtime, calling it, printing, failing.

Client commands must start fast, so this module (and every command module at its
top level) imports only the config loader, the control client and shm: never
trio, lmdb or the runtime itself. `run` and offline maintenance import those
inside the command.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from runtime.config import ConfigError, load_config
from runtime.control.client import ControlClient, NotRunningError, RemoteError
from runtime.control.protocol import LocalProtocolError, ProtocolError
from runtime.exitcodes import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_NOT_RUNNING, EXIT_USAGE
from runtime.wire.errors import VALUE_REFUSALS
from shm import Segment, SegmentError, SegmentNotLiveError

DEFAULT_CONFIG = "outpost.toml"

# What `add_subparsers()` returns; each command module adds its parsers to it.
Subcommands = argparse._SubParsersAction
# A command: the parsed arguments in, the exit code out.
Command = Callable[[argparse.Namespace], int]

# Remote error codes that mean the command line (or config) was wrong: exit 2, not 1.
USAGE_CODES = frozenset({"bad_params", "bad_config", "unknown_method"})


class CliError(Exception):
    """A failure the command explains itself: `str()` is the message, `code` the exit code."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def client_parser(sub: Subcommands, name: str, help: str,
                  mutating: bool = False) -> argparse.ArgumentParser:
    """A command that talks to a runtime: --config, --socket and --json, the same on all;
    a `mutating` one also takes --request-id and --wait (see `call`)."""
    c = sub.add_parser(name, help=help)
    c.add_argument("--config", default=None,
                   help=f"config file that names the runtime (default ./{DEFAULT_CONFIG})")
    c.add_argument("--socket", default=None, help="control socket path (overrides --config)")
    c.add_argument("--json", action="store_true", help="machine-readable output")
    if mutating:
        c.add_argument("--request-id", default=None, metavar="ID",
                       help="apply once: the same command again with this id changes nothing "
                            "and prints the first answer (for retries; kept 24 h by default)")
        c.add_argument("--wait", action="store_true",
                       help="if the agent is being changed (another command, a rollout), "
                            "wait for that to end instead of failing with busy")
    return c


def socket_path(args: argparse.Namespace) -> Path:
    """The runtime's control socket: --socket, else the run dir of --config."""
    if args.socket:
        return Path(args.socket)
    return load_config(args.config or DEFAULT_CONFIG).socket_path


def segment_path(args: argparse.Namespace) -> Path:
    """The runtime's shared-memory segment: next to its control socket, in the run dir."""
    if args.socket:
        return Path(args.socket).parent / "outpost.shm"
    return load_config(args.config or DEFAULT_CONFIG).segment_path


def _not_running(args: argparse.Namespace, exc: Exception) -> CliError:
    hint = f"outpost run --config {args.config}" if args.config else "outpost run"
    return CliError(f"outpost: {exc}; start it with `{hint}`", EXIT_NOT_RUNNING)


def connect(args: argparse.Namespace, timeout: float | None = 10.0) -> ControlClient:
    """A connection to the runtime; exit 3 (saying how to start one) if none answers.
    `timeout` bounds each wait for the runtime (None: no bound, for --wait)."""
    try:
        return ControlClient(socket_path(args), timeout=timeout)
    except NotRunningError as exc:
        raise _not_running(args, exc) from None


def call(args: argparse.Namespace, method: str, **params: Any) -> Any:
    """One control call on its own connection: the method's result. A mutating
    command's --request-id and --wait go with it (a --wait call waits as long as it takes)."""
    request_id = getattr(args, "request_id", None)
    if request_id is not None:
        params["request_id"] = request_id
    wait = bool(getattr(args, "wait", False))
    if wait:
        params["wait"] = True
    with connect(args, None if wait else 10.0) as client:
        return client.call(method, **params)


def attach_segment(args: argparse.Namespace) -> Segment:
    """Read-only attach of the runtime's segment; exit 3 if no live runtime owns it."""
    try:
        return Segment.attach(segment_path(args))
    except SegmentNotLiveError as exc:
        raise _not_running(args, exc) from None
    except SegmentError as exc:
        raise CliError(f"outpost: {exc}", EXIT_FAILED) from None


def emit(args: argparse.Namespace, result: Any, human: str) -> None:
    """Print the result: as JSON with --json, else the human form."""
    print(json.dumps(result, indent=2, sort_keys=True) if args.json else human)


def remote_exit_code(code: str) -> int:
    """The exit code for a runtime's error code: 2 if the request was wrong, else 1."""
    return EXIT_USAGE if code in USAGE_CODES else EXIT_FAILED


def fail(args: argparse.Namespace, code: int, message: str, error: str,
         detail: str | None = None) -> int:
    """Report a failure on stderr, and (with --json) as {"error": ...} on stdout."""
    print(message, file=sys.stderr)
    if getattr(args, "json", False):
        print(json.dumps({"error": {"code": error, "message": detail or message},
                          "exit": code}))
    return code


def run_command(args: argparse.Namespace) -> int:
    """Run the command the parser chose (`args.func`); each expected failure becomes
    its exit code and a message that says what to do."""
    command: Command = args.func
    try:
        return command(args)
    except ConfigError as exc:
        return fail(args, EXIT_USAGE, f"outpost: {exc}", "config")
    except CliError as exc:
        name = {EXIT_USAGE: "usage", EXIT_NOT_RUNNING: "not_running"}.get(exc.code, "failed")
        return fail(args, exc.code, str(exc), name)
    except RemoteError as exc:
        return fail(args, remote_exit_code(exc.code), f"outpost: {exc.code}: {exc}", exc.code,
                    str(exc))
    except NotRunningError as exc:  # the runtime went away in the middle of a call
        return fail(args, EXIT_NOT_RUNNING, f"outpost: {exc}", "not_running")
    except LocalProtocolError as exc:  # what we were asked to send cannot travel
        usage = exc.code in VALUE_REFUSALS  # e.g. a value larger than a frame: fix the input
        return fail(args, EXIT_USAGE if usage else EXIT_FAILED, f"outpost: {exc}", exc.code)
    except ProtocolError as exc:  # the runtime's answer broke the protocol
        return fail(args, EXIT_FAILED, f"outpost: protocol error: {exc} (is this outpost "
                    "the same version as the runtime?)", exc.code)
    except TimeoutError:
        return fail(args, EXIT_FAILED, "outpost: the runtime did not answer in time",
                    "timeout")
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
