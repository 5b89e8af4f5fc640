"""`outpost` command line. `run` starts a runtime; every other command is only a client.

Exit codes: 0 ok, 1 the operation failed, 2 usage or config error,
3 no runtime running (the message says how to start one).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from runtime import __version__
from runtime.cli.format import status_table, table
from runtime.cli.maintain import add_parser as add_maintain_parser
from runtime.cli.maintain import cmd_maintain
from runtime.config import ConfigError, load_config
from runtime.control import ControlClient, NotRunningError, ProtocolError, RemoteError
from runtime.frozen import bind_to_bootloader
from runtime.store import StoreError
from shm import Segment, SegmentError, SegmentNotLiveError, prometheus_text, read_slots, snapshot
from shm.segment import COUNTER, HEARTBEAT

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_NOT_RUNNING = 0, 1, 2, 3
DEFAULT_CONFIG = "outpost.toml"


class CliError(Exception):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="outpost", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"outpost {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def client(name: str, help: str, parent: Any = sub) -> argparse.ArgumentParser:
        c = parent.add_parser(name, help=help)
        c.add_argument("--config", default=None,
                       help=f"config file that names the runtime (default ./{DEFAULT_CONFIG})")
        c.add_argument("--socket", default=None, help="control socket path (overrides --config)")
        c.add_argument("--json", action="store_true", help="machine-readable output")
        return c

    run = sub.add_parser("run", help="run the runtime in the foreground")
    run.add_argument("--config", default=DEFAULT_CONFIG, help="config file (TOML)")

    status = client("status", "one row per agent")
    status.add_argument("agent", nargs="?", help="only this agent")

    state = sub.add_parser("state", help="agents' durable state")
    state_sub = state.add_subparsers(dest="state_command", required=True, metavar="ACTION")
    get = client("get", "print an agent's state (or one key)", state_sub)
    get.add_argument("agent")
    get.add_argument("key", nargs="?")

    add_maintain_parser(sub)
    client("metrics", "shared-memory metrics (Prometheus text; --json for a snapshot)")
    client("info", "version, pid, uptime and paths of the runtime")
    client("stop", "shut the runtime down cleanly and wait until it has exited")

    from runtime.cli.commands import add_parsers  # it imports this module's helpers

    add_parsers(sub, client, state_sub)
    return p


def _socket_path(args: argparse.Namespace) -> Path:
    if args.socket:
        return Path(args.socket)
    return load_config(args.config or DEFAULT_CONFIG).socket_path


def _connect(args: argparse.Namespace) -> ControlClient:
    path = _socket_path(args)
    try:
        return ControlClient(path)
    except NotRunningError as exc:
        hint = f"outpost run --config {args.config}" if args.config else "outpost run"
        raise CliError(f"outpost: {exc}; start it with `{hint}`", EXIT_NOT_RUNNING) from None


def _call(args: argparse.Namespace, method: str, **params: Any) -> Any:
    with _connect(args) as client:
        return client.call(method, **params)


def _emit(args: argparse.Namespace, result: Any, human: str) -> None:
    print(json.dumps(result, indent=2, sort_keys=True) if args.json else human)


def cmd_run(args: argparse.Namespace) -> int:
    import trio

    from runtime.app import run_runtime
    from runtime.supervisor import RootGaveUp
    from runtime.supervisor.template import Template

    config = load_config(args.config)
    logging.basicConfig(
        level=config.log_level.upper(), stream=sys.stderr,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    # The agent template is forked here: before trio runs and before the store is
    # opened, so no event loop, thread or LMDB environment is ever forked.
    sys.stdout.flush()
    sys.stderr.flush()
    template = Template.start()
    try:
        trio.run(run_runtime, config, template)
    except RootGaveUp as exc:
        raise CliError(f"outpost: stopped: the root supervisor gave up: {exc}",
                       EXIT_FAILED) from None
    except BaseException as exc:
        gave_up = _start_failure(exc, RootGaveUp)
        if isinstance(gave_up, RootGaveUp):
            raise CliError(f"outpost: stopped: the root supervisor gave up: {gave_up}",
                           EXIT_FAILED) from None
        cause = _start_failure(exc)
        if cause is None:
            raise
        raise CliError(f"outpost: cannot start: {cause}", EXIT_FAILED) from None
    finally:
        template.close()
    return EXIT_OK


def _start_failure(exc: BaseException, kinds: Any = StoreError | SegmentError | OSError) \
        -> BaseException | None:
    """The one expected start-up error inside `exc` (nurseries wrap it in groups), if any."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc if isinstance(exc, kinds) else None


def _segment_path(args: argparse.Namespace) -> Path:
    """The runtime's shared-memory segment: next to its control socket, in the run dir."""
    if args.socket:
        return Path(args.socket).parent / "outpost.shm"
    return load_config(args.config or DEFAULT_CONFIG).segment_path


def _attach_segment(args: argparse.Namespace) -> Segment:
    """Read-only attach of the runtime's segment; exit 3 if no live runtime owns it."""
    try:
        return Segment.attach(_segment_path(args))
    except SegmentNotLiveError as exc:
        hint = f"outpost run --config {args.config}" if args.config else "outpost run"
        raise CliError(f"outpost: {exc}; start it with `{hint}`", EXIT_NOT_RUNNING) from None
    except SegmentError as exc:
        raise CliError(f"outpost: {exc}", EXIT_FAILED) from None


def _overlay_segment(args: argparse.Namespace, agents: list[dict]) -> bool:
    """Fill heartbeat ages and counters of `agents` straight from the segment.

    The RPC gave the supervisor's view; the segment is fresher and is what the
    agents write. If it cannot be attached the RPC values stay (returns False).
    """
    try:
        with _attach_segment(args) as segment:
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
    params = {"agent": args.agent} if args.agent else {}
    result = _call(args, "status", **params)
    _overlay_segment(args, result["agents"])
    human = status_table(result["agents"])
    counters = [(a["name"], metric, value) for a in result["agents"]
                for metric, value in a.get("counters", {}).items()]
    if counters:
        human += "\n\n" + table(["AGENT", "COUNTER", "VALUE"], counters)
    _emit(args, result, human)
    return EXIT_OK


def cmd_state(args: argparse.Namespace) -> int:
    params: dict[str, Any] = {"agent": args.agent}
    if args.key is not None:
        params["key"] = args.key
    result = _call(args, "state.get", **params)
    if args.key is not None:
        human = json.dumps(result["value"])
    else:
        human = "\n".join(f"{k} = {json.dumps(v)}" for k, v in sorted(result["state"].items()))
    _emit(args, result, human)
    return EXIT_OK


def cmd_metrics(args: argparse.Namespace) -> int:
    """Prometheus text (or a --json snapshot) read from the segment itself, no RPC.

    Only a read-only mapping of the file, so it is cheap and safe from cron,
    e.g. `outpost metrics > dir/outpost.prom.tmp && mv dir/outpost.prom.tmp
    dir/outpost.prom` for node_exporter's textfile collector.
    """
    with _attach_segment(args) as segment:
        if args.json:
            _emit(args, {"metrics": snapshot(segment), "segment": str(segment.path),
                         "runtime_pid": segment.creator_pid}, "")
        else:
            sys.stdout.write(prometheus_text(segment))
    return EXIT_OK


def cmd_info(args: argparse.Namespace) -> int:
    result = _call(args, "info")
    _emit(args, result, "\n".join(f"{k}: {v}" for k, v in result.items()))
    return EXIT_OK


def cmd_stop(args: argparse.Namespace) -> int:
    path = _socket_path(args)
    result = _call(args, "shutdown")
    deadline = time.monotonic() + 60
    while path.exists() and time.monotonic() < deadline:
        time.sleep(0.05)  # the CLI polls the runtime's exit, a user-facing wait
    if path.exists():
        raise CliError(f"outpost: runtime pid {result['pid']} did not exit within 60s",
                       EXIT_FAILED)
    _emit(args, {"stopped": True, "pid": result["pid"]},
          f"outpost runtime pid {result['pid']} stopped")
    return EXIT_OK


COMMANDS = {
    "maintain": cmd_maintain,
    "run": cmd_run,
    "status": cmd_status,
    "state": cmd_state,
    "metrics": cmd_metrics,
    "info": cmd_info,
    "stop": cmd_stop,
}


# Remote error codes that mean the command line (or config) was wrong: exit 2, not 1.
_USAGE_CODES = {"bad_params", "bad_config", "unknown_method"}


def _fail(args: argparse.Namespace, code: int, message: str, error: str,
          detail: str | None = None) -> int:
    """Report a failure on stderr, and (with --json) as {"error": ...} on stdout."""
    print(message, file=sys.stderr)
    if getattr(args, "json", False):
        print(json.dumps({"error": {"code": error, "message": detail or message},
                          "exit": code}))
    return code


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `outpost` console script and of the binary."""
    bind_to_bootloader()
    args = _parser().parse_args(argv)
    command = getattr(args, "func", None) or COMMANDS[args.command]
    try:
        return command(args)
    except ConfigError as exc:
        return _fail(args, EXIT_USAGE, f"outpost: {exc}", "config")
    except CliError as exc:
        name = {EXIT_USAGE: "usage", EXIT_NOT_RUNNING: "not_running"}.get(exc.code, "failed")
        return _fail(args, exc.code, str(exc), name)
    except RemoteError as exc:
        return _fail(args, EXIT_USAGE if exc.code in _USAGE_CODES else EXIT_FAILED,
                     f"outpost: {exc.code}: {exc}", exc.code, str(exc))
    except NotRunningError as exc:  # the runtime went away in the middle of a call
        return _fail(args, EXIT_NOT_RUNNING, f"outpost: {exc}", "not_running")
    except ProtocolError as exc:
        return _fail(args, EXIT_FAILED, f"outpost: protocol error: {exc} (is this outpost "
                     "the same version as the runtime?)", exc.code)
    except TimeoutError:
        return _fail(args, EXIT_FAILED, "outpost: the runtime did not answer in time",
                     "timeout")
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
