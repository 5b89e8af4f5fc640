"""The runtime as a whole: `run` it, ask for its `info`, `stop` it, `reload` its config,
`checkpoint` its state.

`run` is the one command that becomes a runtime; it imports trio, the store and
the supervisor inside the command, so the client commands never pay for them.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from runtime.cli.common import (
    DEFAULT_CONFIG,
    CliError,
    Subcommands,
    call,
    client_parser,
    emit,
    socket_path,
)
from runtime.config import load_config
from runtime.exitcodes import EXIT_FAILED, EXIT_OK


def add_parsers(sub: Subcommands) -> None:
    """Add run, info, stop (and its alias shutdown), checkpoint and reload."""
    run = sub.add_parser("run", help="run the runtime in the foreground")
    run.add_argument("--config", default=DEFAULT_CONFIG, help="config file (TOML)")
    run.set_defaults(func=cmd_run)
    client_parser(sub, "info", "version, pid, uptime and paths of the runtime") \
        .set_defaults(func=cmd_info)
    client_parser(sub, "stop", "shut the runtime down cleanly and wait until it has exited") \
        .set_defaults(func=cmd_stop)
    client_parser(sub, "checkpoint", "checkpoint every agent's state now") \
        .set_defaults(func=cmd_checkpoint)
    client_parser(sub, "reload",
                  "re-read the config: add, remove, change agents; others keep running",
                  mutating=True) \
        .set_defaults(func=cmd_reload)
    client_parser(sub, "shutdown", "same as stop").set_defaults(func=cmd_stop)


def cmd_run(args: argparse.Namespace) -> int:
    """`outpost run`: the runtime in the foreground, until a signal or `outpost stop`."""
    import logging

    import trio

    from runtime.app import run_runtime
    from runtime.store.errors import StoreError
    from runtime.supervisor import RootGaveUp
    from runtime.supervisor.template import Template
    from shm import SegmentError

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
        cause = _start_failure(exc, StoreError | SegmentError | OSError)
        if cause is None:
            raise
        raise CliError(f"outpost: cannot start: {cause}", EXIT_FAILED) from None
    finally:
        template.close()
    return EXIT_OK


def _start_failure(exc: BaseException, kinds: Any) -> BaseException | None:
    """The one expected start-up error of `kinds` inside `exc` (nurseries wrap it in
    groups), if that is what it is."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc if isinstance(exc, kinds) else None


def cmd_info(args: argparse.Namespace) -> int:
    """`outpost info`: the runtime's version, pid, uptime and paths."""
    result = call(args, "info")
    emit(args, result, "\n".join(f"{k}: {v}" for k, v in result.items()))
    return EXIT_OK


def cmd_stop(args: argparse.Namespace) -> int:
    """`outpost stop` / `shutdown`: ask for a clean stop, then wait until it has exited."""
    path = socket_path(args)
    result = call(args, "shutdown")
    deadline = time.monotonic() + 60
    while path.exists() and time.monotonic() < deadline:
        time.sleep(0.05)  # the CLI polls the runtime's exit, a user-facing wait
    if path.exists():
        raise CliError(f"outpost: runtime pid {result['pid']} did not exit within 60s",
                       EXIT_FAILED)
    emit(args, {"stopped": True, "pid": result["pid"]},
         f"outpost runtime pid {result['pid']} stopped")
    return EXIT_OK


def cmd_checkpoint(args: argparse.Namespace) -> int:
    """`outpost checkpoint`: checkpoint every changed state now (e.g. before a backup)."""
    result = call(args, "checkpoint")
    emit(args, result, f"checkpointed {result['checkpoints_written']} state stream(s)")
    return EXIT_OK


def cmd_reload(args: argparse.Namespace) -> int:
    """`outpost reload`: the runtime re-reads its config file and says what changed."""
    result = call(args, "reload")
    parts = [f"{what} {', '.join(result.get(what) or []) or '-'}"
             for what in ("added", "removed", "changed", "unchanged")]
    emit(args, result, f"reloaded {result['config']}: " + "; ".join(parts))
    return EXIT_OK
