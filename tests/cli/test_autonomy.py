"""`outpost rules` and `outpost jobs`: their modules import light, parse, and talk to the
rooms' handlers over a real control socket (not yet registered in the main CLI)."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from runtime.cli import jobs as jobs_cli
from runtime.cli import rules as rules_cli
from runtime.control.dispatch import Methods
from runtime.control.server import ControlServer
from runtime.jobs.methods import jobs_methods
from runtime.jobs.scheduler import Scheduler
from runtime.rules.engine import RuleEngine
from runtime.rules.methods import rules_methods
from tests.rules.helpers import HandlerTable, config_from, event_log

TOML = """
[[rules]]
name = "loop"
on = "exit"
agent = "a"
count = 2
within = "1m"
do = "degrade"

[[jobs]]
name = "hello"
every = "1h"
command = ["/bin/sh", "-c", "echo hi"]
"""


def test_the_modules_import_without_trio_or_lmdb() -> None:
    code = ("import sys, runtime.cli.rules, runtime.cli.jobs; "
            "print(sorted(m for m in ('trio', 'lmdb', 'runtime.app', 'runtime.rules.engine', "
            "'runtime.jobs.scheduler') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).resolve().parents[2])
    assert out.stdout.strip() == "[]"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="outpost")
    sub = parser.add_subparsers(dest="command", required=True)
    rules_cli.add_parsers(sub)
    jobs_cli.add_parsers(sub)
    return parser


def test_the_parsers() -> None:
    p = _parser()
    assert p.parse_args(["rules", "--json"]).func is rules_cli.cmd_rules
    args = p.parse_args(["rules", "test", "events.json", "--config", "x.toml"])
    assert args.func is rules_cli.cmd_rules_test and args.file == "events.json"
    assert p.parse_args(["rules", "resume", "loop"]).rule == "loop"
    assert p.parse_args(["jobs"]).func is jobs_cli.cmd_jobs
    args = p.parse_args(["jobs", "run", "hello", "--wait"])
    assert args.func is jobs_cli.cmd_jobs_run and args.wait
    assert p.parse_args(["jobs", "history", "hello", "-n", "5"]).limit == 5


def test_events_files_in_every_form(tmp_path: Path) -> None:
    events = [{"type": "exit", "agent": "a"}, {"type": "start", "agent": "b"}]
    forms = {"list.json": json.dumps(events), "query.json": json.dumps({"events": events}),
             "lines.jsonl": "\n".join(json.dumps(e) for e in events) + "\n"}
    for name, text in forms.items():
        (tmp_path / name).write_text(text)
        assert rules_cli.read_events(str(tmp_path / name)) == events


def _run(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str]:
    args = _parser().parse_args(argv)
    code = args.func(args)
    return code, capsys.readouterr().out


async def test_rules_and_jobs_over_a_real_socket(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture) -> None:
    config = config_from(tmp_path, TOML)
    events_file = tmp_path / "events.json"
    events_file.write_text(json.dumps([{"type": "exit", "agent": "a", "ts": t}
                                       for t in (0, 1, 2)]))
    async with event_log(tmp_path / "data") as (store, events):
        engine = RuleEngine(config.autonomy, ["a", "b"], events=events,
                            methods=HandlerTable())
        scheduler = Scheduler(config.autonomy, store=store, emit=events.emit,
                              methods=HandlerTable(), make_context=None,  # type: ignore
                              logs_dir=tmp_path / "logs")
        sock = tmp_path / "run" / "ctl.sock"
        async with trio.open_nursery() as nursery:
            await nursery.start(scheduler.run)
            methods = Methods()
            methods.add({**rules_methods(engine), **jobs_methods(scheduler)})
            server = ControlServer(sock, methods)
            await nursery.start(server.serve)

            def cli(*argv: str) -> tuple[int, str]:
                return _run([*argv, "--socket", str(sock)], capsys)

            code, out = await trio.to_thread.run_sync(cli, "rules")
            assert code == 0 and out.split("\n")[1].split()[:4] == ["loop", "exit", "a",
                                                                  "degrade"]
            code, out = await trio.to_thread.run_sync(cli, "rules", "test", str(events_file))
            assert code == 0
            assert "#2 exit a -> loop: fire (degrade)" in out and "would fire: loop x1" in out
            code, out = await trio.to_thread.run_sync(cli, "rules", "resume", "loop")
            assert out.strip() == "rule loop: was not suspended"
            code, out = await trio.to_thread.run_sync(cli, "jobs", "run", "hello", "--wait")
            assert code == 0 and out.strip() == "job hello: run 1 ok"
            code, out = await trio.to_thread.run_sync(cli, "jobs", "--json")
            row = json.loads(out)["jobs"][0]
            assert row["name"] == "hello" and row["last"]["result"] == "ok"
            code, out = await trio.to_thread.run_sync(cli, "jobs")
            assert out.split("\n")[1].split()[:3] == ["hello", "command", "every"]
            code, out = await trio.to_thread.run_sync(cli, "jobs", "history", "hello")
            assert code == 0 and " manual " in out.split("\n")[1] and " ok" in out
            nursery.cancel_scope.cancel()
    assert (tmp_path / "logs" / "jobs" / "hello.log").read_text().endswith("hi\n")


def test_rules_test_decides_offline_without_a_runtime(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture) -> None:
    config = config_from(tmp_path, TOML)
    events_file = tmp_path / "events.json"
    events_file.write_text(json.dumps([{"type": "exit", "agent": "a"}] * 3))
    code, out = _run(["rules", "test", str(events_file), "--config", str(config.path),
                      "--json"], capsys)
    result = json.loads(out)
    assert code == 0 and result["fired"] == {"loop": 1}
    assert [e["rules"][0]["decision"] for e in result["events"]] == ["counting", "fire",
                                                                    "counting"]
