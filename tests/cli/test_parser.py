"""The command line's shape: every command, one dispatch style, one failure mapping."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Iterator

import pytest

from runtime import __version__
from runtime.cli.common import CliError, run_command
from runtime.cli.main import build_parser
from runtime.config import ConfigError
from runtime.control.client import NotRunningError, RemoteError
from runtime.control.protocol import LocalProtocolError, ProtocolError, RemoteProtocolError
from runtime.exitcodes import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_NOT_RUNNING,
    EXIT_TEMPFAIL,
    EXIT_USAGE,
)
from tests.runtime_proc import ROOT

COMMANDS = {"run", "status", "state get", "state set", "state delete", "send", "events",
            "metrics", "top", "info", "stop", "shutdown", "checkpoint", "reload",
            "agent start", "agent stop", "agent restart", "agent degrade", "maintain",
            "deploy", "rollout status", "rollback", "releases"}
LOCAL = {"run", "maintain"}  # they read the config themselves; no --socket, no --json flag


def commands(parser: argparse.ArgumentParser, prefix: str = "") -> Iterator[
        tuple[str, argparse.ArgumentParser]]:
    """Every runnable command (a parser without subcommands), by its words."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield prefix.strip(), parser
    for action in subs:
        for word, child in action.choices.items():
            yield from commands(child, f"{prefix} {word}")


def test_every_command_is_there_and_dispatches_through_func() -> None:
    found = dict(commands(build_parser()))
    assert set(found) == COMMANDS
    for words, parser in found.items():
        assert callable(parser.get_default("func")), words
        flags = {opt for a in parser._actions for opt in a.option_strings}
        assert "--config" in flags, words
        if words not in LOCAL:
            assert {"--socket", "--json"} <= flags, words


def test_version_is_printed_by_the_binary_entry() -> None:
    out = subprocess.run([sys.executable, "-m", "runtime", "--version"], capture_output=True,
                         text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 0 and out.stdout.strip() == f"outpost {__version__}"


def failing(exc: BaseException, *, json_out: bool = True) -> argparse.Namespace:
    def command(args: argparse.Namespace) -> int:
        raise exc
    return argparse.Namespace(func=command, json=json_out)


@pytest.mark.parametrize(("exc", "code", "error"), [
    (ConfigError("bad key"), EXIT_USAGE, "config"),
    (CliError("outpost: nope", EXIT_USAGE), EXIT_USAGE, "usage"),
    (CliError("outpost: not running", EXIT_NOT_RUNNING), EXIT_NOT_RUNNING, "not_running"),
    (CliError("outpost: held", EXIT_TEMPFAIL), EXIT_TEMPFAIL, "failed"),
    (RemoteError("bad_params", "agent must be a string"), EXIT_USAGE, "bad_params"),
    (RemoteError("unknown_method", "no such method"), EXIT_USAGE, "unknown_method"),
    (RemoteError("no_agent", "no agent named 'x'"), EXIT_FAILED, "no_agent"),
    (NotRunningError("the runtime went away"), EXIT_NOT_RUNNING, "not_running"),
    (ProtocolError("short frame", "bad_frame"), EXIT_FAILED, "bad_frame"),
    (RemoteProtocolError("short frame", "bad_frame"), EXIT_FAILED, "bad_frame"),
    (LocalProtocolError("a value of 5 MiB exceeds the frame", "too_large"), EXIT_USAGE,
     "too_large"),
    (LocalProtocolError("hello was already sent", "state"), EXIT_FAILED, "state"),
    (TimeoutError(), EXIT_FAILED, "timeout"),
], ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else str(v))
def test_each_failure_has_its_exit_code_and_json_error(exc: BaseException, code: int,
                                                       error: str, capsys) -> None:
    assert run_command(failing(exc)) == code
    out, err = capsys.readouterr()
    assert err.startswith("outpost")
    body = json.loads(out)
    assert body["error"]["code"] == error and body["exit"] == code and body["error"]["message"]
    assert run_command(failing(exc, json_out=False)) == code
    assert capsys.readouterr().out == ""  # without --json, stdout stays clean


def test_ctrl_c_exits_130_quietly(capsys) -> None:
    assert run_command(failing(KeyboardInterrupt())) == EXIT_INTERRUPTED == 130
    assert capsys.readouterr() == ("", "")


def test_an_unexpected_error_is_not_swallowed() -> None:
    with pytest.raises(ZeroDivisionError):
        run_command(failing(ZeroDivisionError()))
