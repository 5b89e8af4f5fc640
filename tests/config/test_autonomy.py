"""[[rules]], [[jobs]], [scheduler], [actions]: typed, cross-checked, errors that name the
file, the rule or job, and the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from runtime.config import ConfigError, load_config
from runtime.config.autonomy import (
    MAINTAIN_TASKS,
    NO_AUTONOMY,
    Action,
    Condition,
    parse_duration,
)

AGENTS = """
[[agents]]
name = "flaky"
entry = "x.py:run"

[[agents]]
name = "worker-1"
entry = "x.py:run"

[[groups]]
name = "sensing"
"""

GOOD = AGENTS + """
[actions]
exit_code = 71

[actions.exec]
page = ["/usr/local/bin/page", "--urgent"]

[actions.exec.collect]
command = "collect-diagnostics --all"
env = { LEVEL = "2" }
kill_grace = "5s"

[scheduler]
max_concurrent = 3

[[rules]]
name = "crash-loop"
on = ["exit", "gave_up"]
agent = "flaky"
where = { failed = true, code = { ne = 0 }, signal = [9, 15] }
count = 3
within = "1m"
cooldown = "10m"
do = "degrade"

[[rules]]
name = "workers"
on = "health"
agent = "worker-*"
do = "exec collect"
timeout = "1m30s"

[[rules]]
name = "deep"
on = "metric"
metric = "worker-1:queue_depth"
above = 1000
for = "30s"
do = "restart worker-1"

[[rules]]
name = "tell"
on = "restart"
do = "send flaky"
message = { cmd = "flush" }

[[jobs]]
name = "tidy"
schedule = "0 3 * * *"
timezone = "Europe/Berlin"
maintain = ["checkpoint", "prune"]
missed = "run_once"

[[jobs]]
name = "tick"
every = "5s"
jitter = "250ms"
command = ["echo", "tick"]
concurrency = "replace"
priority = 5
events = "all"
"""


def _load(tmp_path: Path, text: str):
    path = tmp_path / "outpost.toml"
    path.write_text(text)
    return load_config(path)


def test_a_full_autonomy_config_loads_typed(tmp_path: Path) -> None:
    a = _load(tmp_path, GOOD).autonomy
    loop, workers, deep, tell = a.rules
    assert loop.on == ("exit", "gave_up") and loop.within == 60.0 and loop.cooldown == 600.0
    assert loop.do == Action("degrade")
    assert loop.where == (Condition("failed", "eq", True), Condition("code", "ne", 0),
                          Condition("signal", "in", (9, 15)))
    assert workers.timeout == 90.0 and workers.do == Action("exec", "collect")
    assert deep.is_metric and deep.for_ == 30.0 and deep.above == 1000
    assert tell.do == Action("send", "flaky", {"cmd": "flush"})
    assert a.actions.exit_code == 71
    assert a.actions.command("page").command == ("/usr/local/bin/page", "--urgent")
    collect = a.actions.command("collect")
    assert collect.command == ("collect-diagnostics", "--all")
    assert collect.env == (("LEVEL", "2"),) and collect.kill_grace == 5.0
    assert a.scheduler.max_concurrent == 3
    tidy, tick = a.jobs
    assert tidy.kind == "maintain" and tidy.maintain == ("checkpoint", "prune")
    assert tidy.missed == "run_once" and tidy.schedule == "0 3 * * *"
    assert tick.every == 5.0 and tick.jitter == 0.25 and tick.kind == "command"
    assert tick.concurrency == "replace" and tick.priority == 5
    assert tick.events == "all" and tidy.events == "failures"


def test_no_autonomy_sections_give_empty_defaults(tmp_path: Path) -> None:
    assert _load(tmp_path, AGENTS).autonomy == NO_AUTONOMY


@pytest.mark.parametrize(("text", "key", "message"), [
    ('[[rules]]\nname = "r"\non = "exit"\ndo = "reboot now"\n',
     'rules["r"].do', "expected an action"),
    ('[[rules]]\nname = "r"\non = "exit"\ndo = "restart nobody"\n',
     'rules["r"].do', "'nobody' is not an agent or group"),
    ('[[rules]]\nname = "r"\non = "exit"\ndo = "restart"\n',
     'rules["r"].do', "'restart' needs an agent"),
    ('[[rules]]\nname = "r"\non = "exit"\nagent = "db-*"\ndo = "restart"\n',
     'rules["r"].agent', "'db-*' matches no agent"),
    ('[[rules]]\nname = "r"\non = "exit"\nagent = "db"\ndo = "restart"\n',
     'rules["r"].agent', "'db' is not an agent or group"),
    ('[[rules]]\nname = "r"\non = "exit"\ndo = "run nightly"\n',
     'rules["r"].do', "no job named 'nightly'"),
    ('[[rules]]\nname = "r"\non = "exit"\ndo = "exec rm"\n',
     'rules["r"].do', "no command 'rm' in [actions.exec]"),
    ('[[rules]]\nname = "r"\non = "exit"\ndo = "maintain defrag"\n',
     'rules["r"].do', "no maintenance task 'defrag'"),
    ('[[rules]]\nname = "r"\non = "exit"\ncount = 3\ndo = "checkpoint"\n',
     'rules["r"].within', "count = 3 needs a window"),
    ('[[rules]]\nname = "r"\non = "exit"\ncount = 3\nwithin = "ten minutes"\n'
     'do = "checkpoint"\n', 'rules["r"].within', "expected a duration"),
    ('[[rules]]\nname = "r"\non = "exit"\nwithin = "1m"\ndo = "checkpoint"\n',
     'rules["r"].within', "only used with count > 1"),
    ('[[rules]]\nname = "r"\non = "metric"\nmetric = "flaky:q"\ndo = "checkpoint"\n',
     'rules["r"].above', "needs above and/or below"),
    ('[[rules]]\nname = "r"\non = "metric"\nmetric = "ghost:q"\nabove = 1\n'
     'do = "checkpoint"\n', 'rules["r"].metric', "'ghost' is not an agent"),
    ('[[rules]]\nname = "r"\non = "exit"\nfor = "30s"\ndo = "checkpoint"\n',
     'rules["r"].for', "only for metric rules"),
    ('[[rules]]\nname = "r"\non = "metric"\nmetric = "flaky:q"\nabove = 1\nfor = "soon"\n'
     'do = "checkpoint"\n', 'rules["r"].for', "expected a duration"),
    ('[[rules]]\nname = "r"\non = "exit"\ndo = "checkpoint"\ncooldwn = "1m"\n',
     'rules["r"].cooldwn', "unknown key"),
    ('[[rules]]\nname = "r"\non = "exit"\ndo = "checkpoint"\n'
     '[[rules]]\nname = "r"\non = "exit"\ndo = "checkpoint"\n',
     'rules["r"].name', "duplicate rule name"),
    ('[[rules]]\nname = "r"\non = "exit"\ndo = "checkpoint"\nwhere = { code = { over = 1 } }\n',
     'rules["r"].where', "field conditions"),
    ('[[rules]]\non = "exit"\ndo = "checkpoint"\n', "rules[0].name", "missing"),
    ('[[jobs]]\nname = "j"\nschedule = "61 * * * *"\ncommand = "true"\n',
     'jobs["j"].schedule', "bad cron expression '61 * * * *': Bad minute"),
    ('[[jobs]]\nname = "j"\nschedule = "* * * * *"\nevery = "1m"\ncommand = "true"\n',
     'jobs["j"].schedule', "exactly one of schedule (cron) or every (got both)"),
    ('[[jobs]]\nname = "j"\nevery = "1m"\n', 'jobs["j"].entry',
     "exactly one of entry, command or maintain"),
    ('[[jobs]]\nname = "j"\nevery = "1m"\ncommand = "true"\nmaintain = ["prune"]\n',
     'jobs["j"].maintain', "exactly one of entry, command or maintain"),
    ('[[jobs]]\nname = "j"\nevery = "1m"\nmaintain = ["defrag"]\n',
     'jobs["j"].maintain', "a list of maintenance tasks"),
    ('[[jobs]]\nname = "j"\nevery = "0s"\ncommand = "true"\n',
     'jobs["j"].every', "> 0"),
    ('[[jobs]]\nname = "j"\nevery = "1m"\ncommand = "true"\ntimezone = "Mars/Olympus"\n',
     'jobs["j"].timezone', "unknown time zone 'Mars/Olympus'"),
    ('[[jobs]]\nname = "j"\nevery = "1m"\ncommand = "true"\nconcurrency = "queue"\n',
     'jobs["j"].concurrency', "one of 'forbid', 'replace', 'allow'"),
    ('[actions.exec.x]\ncommand = ""\n', "actions.exec.x.command", "expected a command"),
    ('[actions.exec.x]\ncommand = "true"\nname = "y"\n', "actions.exec.x.name",
     "remove it"),
    ('[actions]\nexit_code = 0\n', "actions.exit_code", "from 1 to 255"),
    ('[scheduler]\nmax_concurent = 2\n', "scheduler.max_concurent", "unknown key"),
])
def test_errors_name_the_file_the_rule_or_job_and_the_key(tmp_path: Path, text: str,
                                                          key: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        _load(tmp_path, AGENTS + text)
    error = str(caught.value)
    assert error.startswith(f"{tmp_path / 'outpost.toml'}: {key}: "), error
    assert message in error, error


def test_durations() -> None:
    assert parse_duration("10m") == 600.0
    assert parse_duration("1h30m") == 5400.0
    assert parse_duration("250ms") == 0.25
    assert parse_duration("1.5s") == 1.5
    assert parse_duration(12) == 12.0
    for bad in ("", "10", "m", "1x", "-1s", True, "1m 30x", float("inf")):
        with pytest.raises(ValueError):
            parse_duration(bad)


def test_the_maintenance_tasks_rules_may_name_are_the_online_ones() -> None:
    from runtime.maintain.tasks import OFFLINE_ONLY, TASKS

    assert set(MAINTAIN_TASKS) == set(TASKS) - OFFLINE_ONLY - {"backup"}  # backup needs DIR


def test_the_example_config_loads() -> None:
    root = Path(__file__).resolve().parents[2]
    config = load_config(root / "examples" / "autonomy.toml")
    (rule,) = config.autonomy.rules
    (job,) = config.autonomy.jobs
    assert rule.name == "crash-loop" and rule.do == Action("degrade")
    assert job.maintain == ("checkpoint", "prune") and job.missed == "run_once"
    assert Path(config.agents[0].entry.rpartition(":")[0]).is_file()
