"""`outpost` command line. `run` starts a runtime; every other command is only a client.

Exit codes (runtime.exitcodes): 0 ok, 1 the operation failed, 2 usage or config
error, 3 no runtime running (the message says how to start one), 75 the data dir
is held by another run (maintain), 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import argparse
import sys

from runtime import __version__
from runtime.cli import agents, events, maintain, metrics, rollout, runtime_cmds, state
from runtime.cli.common import run_command
from runtime.frozen import bind_to_bootloader

# One module per topic, each with add_parsers(sub); `outpost --help` lists them in
# this order. A new topic is a new module and one entry here.
TOPICS = (
    runtime_cmds,
    agents,
    state,
    events,
    metrics,
    maintain,
    rollout,
)


def build_parser() -> argparse.ArgumentParser:
    """The whole command line; every command sets `func` (its cmd_* function)."""
    p = argparse.ArgumentParser(prog="outpost", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"outpost {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for topic in TOPICS:
        topic.add_parsers(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `outpost` console script and of the binary."""
    bind_to_bootloader()
    return run_command(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
