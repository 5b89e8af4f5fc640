"""[[rules]], [[jobs]], [scheduler] and [actions]: what the runtime does on its own.

Typed like runtime/config/schema.py (frozen dataclasses whose fields are the keys).
Durations ("10m", "30s", "1h30m", "250ms" or a number of seconds) are parsed once,
here, into seconds. Cross-checks run at load and at reload: a rule naming an agent,
job or exec command that does not exist, an unknown action or a bad window is an
error naming the file, the rule or job and the key.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import fnmatch
import functools
import os
import re
import shlex
import zoneinfo
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cronsim import CronSim, CronSimError

from runtime.config.schema import (
    COMMAND,
    ENTRY,
    ENV,
    NAME,
    NAME_CHECK,
    PATH,
    SIZE,
    ConfigError,
    choice,
    int_range,
    key,
    parse_duration,
    typed,
)

AUTONOMY_SECTIONS = ("rules", "jobs", "scheduler", "actions")

# Maintenance tasks a rule or job may run online (runtime.maintain.tasks.TASKS, without
# backup, which needs a destination); tests/config/test_autonomy.py keeps them in step.
MAINTAIN_TASKS = ("checkpoint", "prune", "compact", "archive", "verify", "disk",
                  "metrics-textfile")
SEVERITIES = ("info", "warning", "error", "critical")
CONCURRENCY = ("forbid", "replace", "allow")
MISSED = ("skip", "run_once")
JOB_EVENTS = ("failures", "all")
METRIC_EVENT = "metric"

_EVENT_TYPE = re.compile(r"^[A-Za-z][A-Za-z0-9_.:-]{0,63}$")
_GLOB = re.compile(r"^[A-Za-z0-9_.*?\[\]!-]{1,48}$")


def _duration(expected: str = "a duration, e.g. \"30s\", \"10m\", \"1h\" (or seconds)",
              positive: bool = False) -> tuple[Callable[[Any], Any], str]:
    def convert(value: Any) -> float:
        seconds = parse_duration(value)
        if positive and seconds <= 0:
            raise ValueError
        return seconds
    return convert, expected + (" > 0" if positive else "")


DURATION = _duration()
POSITIVE_DURATION = _duration(positive=True)


@dataclass(frozen=True)
class Condition:
    """One field condition of a rule: `event[field] <op> value`."""

    field: str
    op: str
    value: Any

    def holds(self, event: dict[str, Any]) -> bool:
        """True if the event's field satisfies the condition (a missing field never does,
        except for `ne` and `not_in`)."""
        if self.field not in event:
            return self.op in ("ne", "not_in")
        got = event[self.field]
        try:
            return _OPS[self.op](got, self.value)
        except TypeError:  # e.g. a string compared with a number: not a match
            return False


def _same(got: Any, want: Any) -> bool:
    # true == 1 in Python; in a condition a boolean only matches a boolean.
    return got == want and (type(got) is bool) == (type(want) is bool)


def _in(got: Any, values: Any) -> bool:
    return any(_same(got, v) for v in values)


_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "eq": _same,
    "ne": lambda got, v: not _same(got, v),
    "gt": lambda got, v: not isinstance(got, bool) and got > v,
    "ge": lambda got, v: not isinstance(got, bool) and got >= v,
    "lt": lambda got, v: not isinstance(got, bool) and got < v,
    "le": lambda got, v: not isinstance(got, bool) and got <= v,
    "in": _in,
    "not_in": lambda got, v: not _in(got, v),
    "glob": lambda got, v: isinstance(got, str) and fnmatch.fnmatchcase(got, v),
}
_SCALAR = (str, int, float, bool)


def _operand_ok(op: str, v: Any) -> bool:
    if op in ("in", "not_in"):
        return True
    if op == "glob":
        return isinstance(v, str)
    if op in ("gt", "ge", "lt", "le"):
        return not isinstance(v, bool) and isinstance(v, int | float | str)
    return isinstance(v, _SCALAR)


def _conditions(value: Any) -> tuple[Condition, ...]:
    """`where = {outcome = "raised", code = {ne = 0}, signal = [9, 15]}`."""
    if not isinstance(value, dict):
        raise ValueError
    out = []
    for name, want in value.items():
        if isinstance(want, _SCALAR):
            out.append(Condition(name, "eq", want))
        elif isinstance(want, list) and want and all(isinstance(w, _SCALAR) for w in want):
            out.append(Condition(name, "in", tuple(want)))
        elif isinstance(want, dict) and want:
            for op, v in want.items():
                if op in ("in", "not_in"):
                    if not (isinstance(v, list) and all(isinstance(w, _SCALAR) for w in v)):
                        raise ValueError
                    v = tuple(v)
                if op not in _OPS or not _operand_ok(op, v):
                    raise ValueError
                out.append(Condition(name, op, v))
        else:
            raise ValueError
    return tuple(out)


CONDITIONS = (_conditions, "a table of field conditions, e.g. {failed = true, code = "
              "{ne = 0}, signal = [9, 15]} (ops: " + ", ".join(_OPS) + ")")


@dataclass(frozen=True)
class Action:
    """What a rule does when it fires (its `do`), parsed once.

    `target` is the agent, task, job or exec command the verb acts on; None for an
    agent verb means the agent of the event that triggered the rule.
    """

    verb: str
    target: str | None = None
    message: Any = None  # send: the message (the rest of `do`, or the rule's `message`)

    def text(self) -> str:
        """The action as written in the config, e.g. "restart worker"."""
        parts = [self.verb] + ([self.target] if self.target else [])
        if self.verb == "send" and isinstance(self.message, str):
            parts.append(shlex.quote(self.message))
        return " ".join(parts)


# verb -> what its argument is: "agent?" optional agent, "agent" required, "task", "job",
# "exec" (a declared command), "severity?" (escalate), None (none).
ACTION_ARGS: dict[str, str | None] = {
    "restart": "agent?", "stop": "agent?", "start": "agent?", "degrade": "agent?",
    "checkpoint": None, "maintain": "task", "run": "job", "send": "agent",
    "exec": "exec", "escalate": None,
}
AGENT_VERBS = frozenset(v for v, a in ACTION_ARGS.items() if a and a.startswith("agent"))


def _action(value: Any) -> Action:
    if not isinstance(value, str):
        raise ValueError
    try:
        words = shlex.split(value)
    except ValueError:
        raise ValueError from None
    if not words or words[0] not in ACTION_ARGS:
        raise ValueError
    verb, args = words[0], words[1:]
    kind = ACTION_ARGS[verb]
    if verb == "send":
        if not args:
            raise ValueError
        return Action(verb, args[0], " ".join(args[1:]) if len(args) > 1 else None)
    if kind is None:
        if args:
            raise ValueError
        return Action(verb)
    if len(args) > 1 or (not args and not kind.endswith("?")):
        raise ValueError
    return Action(verb, args[0] if args else None)


ACTION = (_action, "an action: restart [AGENT], stop [AGENT], start [AGENT], degrade [AGENT] "
          "(no AGENT: the event's agent), checkpoint, maintain TASK, run JOB, "
          "send AGENT [MESSAGE], exec NAME (declared in [actions.exec]) or escalate")
def _event_types(value: Any) -> tuple[str, ...]:
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, list) or not values or not all(
            isinstance(v, str) and _EVENT_TYPE.match(v) for v in values):
        raise ValueError
    return tuple(values)


EVENT_TYPES = (_event_types, "an event type (e.g. \"exit\") or a list of them")
AGENT_GLOB = typed(str, expected="an agent name or a glob of names (e.g. \"worker-*\")",
                    check=lambda v: bool(_GLOB.match(v)))
METRIC = typed(str, expected="a shared-memory slot name \"agent:metric\"",
                check=lambda v: v.count(":") >= 1 and bool(NAME.match(v.split(":")[0]))
                and len(v) <= 100)
NUMBER = typed(int, float, expected="a number")
ANY = (lambda v: v, "any value")


@dataclass(frozen=True)
class RuleSpec:
    """One [[rules]] entry: when (`on`, `agent`, `where`, count window) and what (`do`)."""

    name: str = key(NAME_CHECK)
    on: tuple[str, ...] = key(EVENT_TYPES)
    do: Action = key(ACTION)
    agent: str | None = key(AGENT_GLOB, None)  # a name or a glob; None: any agent (or none)
    where: tuple[Condition, ...] = key(CONDITIONS, ())
    count: int = key(int_range(1, 1_000_000), 1)  # matching events needed...
    within: float = key(DURATION, 0.0)  # ...inside this window (needed when count > 1)
    message: Any = key(ANY, None)  # for `send AGENT`: the message (any TOML value)
    cooldown: float = key(DURATION, 0.0)  # at least this long between firings
    max_firings: int = key(int_range(1, 1_000_000), 10)  # at most this many firings...
    max_firings_window: float = key(POSITIVE_DURATION, 3600.0)  # ...per this window
    timeout: float = key(POSITIVE_DURATION, 30.0)  # per attempt of the action
    retries: int = key(int_range(0, 100), 2)  # attempts after the first that failed
    backoff: float = key(DURATION, 1.0)  # before the first retry; doubles per retry...
    backoff_max: float = key(DURATION, 30.0)  # ...up to this
    suspend_after: int = key(int_range(1, 1_000_000), 3)  # failed firings in a row
    severity: str = key(choice(SEVERITIES), "error")  # escalate: the event's severity
    escalate: str = key(choice(("event", "exit")), "event")  # exit: the runtime exits
    # on = "metric": a threshold on a shared-memory slot, held for `for` seconds.
    metric: str | None = key(METRIC, None)
    above: float | None = key(NUMBER, None)
    below: float | None = key(NUMBER, None)
    for_: float = key(DURATION, 0.0)  # TOML key `for`

    @property
    def is_metric(self) -> bool:
        return self.on == (METRIC_EVENT,) and self.metric is not None


@dataclass(frozen=True)
class ExecSpec:
    """One [actions.exec.NAME] command a rule may run with `exec NAME`.

    The argv is fixed here: nothing from an event is ever put into it (the event
    reaches the command only as environment variables: OUTPOST_EVENT, as JSON).
    """

    name: str = key(NAME_CHECK)
    command: tuple[str, ...] = key(COMMAND)
    env: tuple[tuple[str, str], ...] = key(ENV, ())
    cwd: str | None = key(PATH, None)
    output_max: int = key(SIZE, 4096)  # the tail of its output kept in the action's event
    kill_grace: float = key(DURATION, 2.0)  # SIGTERM to SIGKILL at the timeout


@dataclass(frozen=True)
class ActionsSection:
    """[actions]: the commands rules may exec, and the exit code of `escalate = "exit"`."""

    # 70 (EX_SOFTWARE): a code systemd can be told about (RestartForceExitStatus=70).
    exit_code: int = key(int_range(1, 255), 70)
    exec: tuple[ExecSpec, ...] = ()

    def command(self, name: str) -> ExecSpec | None:
        return next((e for e in self.exec if e.name == name), None)


@dataclass(frozen=True)
class SchedulerSection:
    """[scheduler]: the cap on jobs running at once (higher `priority` starts first)."""

    max_concurrent: int = key(int_range(1, 100_000), 8)


@dataclass(frozen=True)
class JobSpec:
    """One [[jobs]] entry: when (`schedule` or `every`), what (`entry`, `command` or
    `maintain`), and how (timeout, retries, concurrency, missed runs)."""

    name: str = key(NAME_CHECK)
    schedule: str | None = key(typed(str, expected="a cron expression (5 fields, or 6 "
                                      "with seconds first)"), None)
    every: float | None = key(POSITIVE_DURATION, None)
    jitter: float = key(DURATION, 0.0)  # a random delay up to this, per run
    timezone: str | None = key(typed(str, expected="an IANA zone name, e.g. "
                                      "\"Europe/Berlin\" or \"UTC\""), None)  # None: host's
    entry: str | None = key(ENTRY, None)  # async def run(ctx), like a task agent
    command: tuple[str, ...] = key(COMMAND, ())  # output goes to <logs_dir>/jobs/<name>.log
    maintain: tuple[str, ...] = key(typed(list, expected="a list of maintenance tasks: "
                                           + ", ".join(MAINTAIN_TASKS),
                                           check=lambda v: bool(v) and all(
                                               t in MAINTAIN_TASKS for t in v)), ())
    env: tuple[tuple[str, str], ...] = key(ENV, ())
    cwd: str | None = key(PATH, None)
    timeout: float = key(DURATION, 3600.0)  # per attempt; 0 = none
    retries: int = key(int_range(0, 100), 0)
    backoff: float = key(DURATION, 10.0)  # before the first retry; doubles per retry...
    backoff_max: float = key(DURATION, 300.0)  # ...up to this
    concurrency: str = key(choice(CONCURRENCY), "forbid")
    missed: str = key(choice(MISSED), "skip")  # after downtime: skip, or catch up once
    priority: int = key(int_range(-1000, 1000), 0)
    # Events: "failures" (job_failed, job_skipped, job_interrupted) or "all" (also
    # job_started and job_ok per run). Every run is in the history either way.
    events: str = key(choice(JOB_EVENTS), "failures")
    history_keep: int = key(int_range(1, 100_000), 100)  # runs kept in the store
    log_max_bytes: int = key(SIZE, 1 << 20)
    log_keep: int = key(int_range(0, 100), 1)

    @property
    def kind(self) -> str:
        return "entry" if self.entry else "command" if self.command else "maintain"

    @property
    def schedule_text(self) -> str:
        return self.schedule if self.schedule is not None else f"every {self.every:g}s"


@dataclass(frozen=True)
class Autonomy:
    """Everything runtime/rules and runtime/jobs run from, validated and cross-checked."""

    rules: tuple[RuleSpec, ...] = ()
    jobs: tuple[JobSpec, ...] = ()
    scheduler: SchedulerSection = field(default_factory=SchedulerSection)
    actions: ActionsSection = field(default_factory=ActionsSection)


NO_AUTONOMY = Autonomy()


def host_timezone() -> dt.tzinfo:
    """The host's zone with its DST rules: $TZ, else /etc/localtime, else UTC."""
    return _host_timezone(os.environ.get("TZ", ""))


@functools.lru_cache(maxsize=4)
def _host_timezone(tz_env: str) -> dt.tzinfo:
    name = tz_env.lstrip(":")
    if name:
        try:
            return zoneinfo.ZoneInfo(name)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            pass
    try:
        with open("/etc/localtime", "rb") as f:
            return zoneinfo.ZoneInfo.from_file(f, key="localtime")
    except (OSError, ValueError):
        return dt.UTC


def job_timezone(job: JobSpec) -> dt.tzinfo:
    """The zone a job's cron expression is read in."""
    return host_timezone() if job.timezone is None else zoneinfo.ZoneInfo(job.timezone)


def is_glob(pattern: str) -> bool:
    return any(c in pattern for c in "*?[")


def matching_names(pattern: str, names: Iterable[str]) -> list[str]:
    """The names a rule's `agent` stands for: itself, or what its glob matches."""
    if not is_glob(pattern):
        return [pattern] if pattern in names else []
    return [n for n in names if fnmatch.fnmatchcase(n, pattern)]


# -- parsing ----------------------------------------------------------------------------

Fail = Callable[[str, str], ConfigError]
Check = Callable[[dict, type, str, Fail], dict[str, Any]]
Tables = Callable[[dict, str, Fail], list[tuple[str, dict]]]


def parse_autonomy(raw: dict[str, Any], path: Path, fail: Fail, check: Check,
                   tables: Tables, agents: Iterable[str]) -> Autonomy:
    """The autonomy sections of a parsed TOML document, cross-checked against `agents`
    (names of agents and groups). `check` and `tables` are the loader's key checkers."""
    names = list(agents)
    actions = _actions(raw, fail, check, path)
    jobs = _jobs(raw, path, fail, check, tables)
    table = raw.get("scheduler", {})
    if not isinstance(table, dict):
        raise fail("scheduler", "expected a table [scheduler]")
    scheduler = SchedulerSection(**check(table, SchedulerSection, "scheduler", fail))
    rules = _rules(raw, fail, check, tables, names, {j.name for j in jobs}, actions)
    return Autonomy(rules=rules, jobs=jobs, scheduler=scheduler, actions=actions)


def _named(tables_found: list[tuple[str, dict]], section: str) -> list[tuple[str, dict]]:
    """Label each table by its name when it has a usable one: rules["flaky"], else rules[2]."""
    out = []
    for where, table in tables_found:
        name = table.get("name")
        out.append((f'{section}["{name}"]' if isinstance(name, str) and NAME.match(name)
                    else where, table))
    return out


def _actions(raw: dict, fail: Fail, check: Check, path: Path) -> ActionsSection:
    table = raw.get("actions", {})
    if not isinstance(table, dict):
        raise fail("actions", "expected a table [actions]")
    table = dict(table)
    commands = table.pop("exec", {})
    if not isinstance(commands, dict):
        raise fail("actions.exec", "expected a table of commands: [actions.exec.NAME]")
    specs = []
    for name, spec in commands.items():
        where = f"actions.exec.{name}"
        if not NAME.match(name):
            raise fail(where, f"expected a command name: {NAME_CHECK[1]}")
        spec = spec if isinstance(spec, dict) else {"command": spec}  # the short form
        if "name" in spec:
            raise fail(f"{where}.name", "the table's name is the command's name; remove it")
        values = {**check({"name": name, **spec}, ExecSpec, where, fail)}
        values["command"] = _argv(values["command"], f"{where}.command", fail)
        if "env" in values:
            values["env"] = tuple(sorted(values["env"].items()))
        if values.get("cwd") is not None:
            values["cwd"] = str((path.parent / values["cwd"]).resolve())
        specs.append(ExecSpec(**values))
    values = check(table, ActionsSection, "actions", fail)
    return ActionsSection(**values, exec=tuple(specs))


def _argv(command: str | list[str], where: str, fail: Fail) -> tuple[str, ...]:
    try:
        argv = shlex.split(command) if isinstance(command, str) else list(command)
    except ValueError as exc:
        raise fail(where, f"cannot split the command line: {exc}") from None
    if not argv or not all(argv):
        raise fail(where, "expected a non-empty command")
    return tuple(argv)


def _rename_for(table: dict, where: str, fail: Fail) -> tuple[dict, Fail]:
    """TOML's `for` is the field `for_` (a Python keyword cannot be a field name)."""
    if "for_" in table:
        raise fail(f"{where}.for_", "unknown key; did you mean `for`?")
    table = {("for_" if k == "for" else k): v for k, v in table.items()}

    def renamed(k: str, message: str) -> ConfigError:
        return fail(k.replace(".for_", ".for"), message.replace("for_", "for"))
    return table, renamed


def _rules(raw: dict, fail: Fail, check: Check, tables: Tables, agents: list[str],
           jobs: set[str], actions: ActionsSection) -> tuple[RuleSpec, ...]:
    rules: list[RuleSpec] = []
    seen: set[str] = set()
    for where, table in _named(tables(raw, "rules", fail), "rules"):
        table, fail_here = _rename_for(table, where, fail)
        values = check(table, RuleSpec, where, fail_here)
        rule = RuleSpec(**values)
        if rule.name in seen:
            raise fail(f"{where}.name", f"duplicate rule name {rule.name!r}")
        seen.add(rule.name)
        _check_rule(rule, values, where, fail_here, agents, jobs, actions)
        if rule.do.verb == "send" and rule.message is not None:
            if rule.do.message is not None:
                raise fail(f"{where}.message", "the message is given twice: in `do` and here")
            rule = _with_message(rule)
        rules.append(rule)
    return tuple(rules)


def _with_message(rule: RuleSpec) -> RuleSpec:
    return dataclasses.replace(rule, do=Action("send", rule.do.target, rule.message))


def _known(names: list[str]) -> str:
    return ", ".join(names) if names else "(none defined)"


def _check_rule(rule: RuleSpec, given: dict, where: str, fail: Fail, agents: list[str],
                jobs: set[str], actions: ActionsSection) -> None:
    if rule.agent is not None and not matching_names(rule.agent, agents):
        what = "matches no agent" if is_glob(rule.agent) else "is not an agent or group"
        raise fail(f"{where}.agent", f"{rule.agent!r} {what}; agents: {_known(agents)}")
    if rule.count > 1 and rule.within <= 0:
        raise fail(f"{where}.within", f"missing; count = {rule.count} needs a window, "
                   "e.g. within = \"10m\"")
    if "within" in given and rule.count == 1:
        raise fail(f"{where}.within", "only used with count > 1 (how many events within it)")
    if rule.backoff_max < rule.backoff:
        raise fail(f"{where}.backoff_max", "must be >= backoff")
    metric_keys = [k for k in ("metric", "above", "below", "for_") if k in given]
    if rule.on == (METRIC_EVENT,) or (METRIC_EVENT in rule.on and metric_keys):
        if rule.on != (METRIC_EVENT,):
            raise fail(f"{where}.on", "a metric rule has on = \"metric\" alone")
        if rule.metric is None:
            raise fail(f"{where}.metric", "missing; a metric rule reads one slot, e.g. "
                       "metric = \"worker:queue_depth\"")
        if rule.above is None and rule.below is None:
            raise fail(f"{where}.above", "missing; a metric rule needs above and/or below")
        if rule.above is not None and rule.below is not None and rule.below >= rule.above:
            raise fail(f"{where}.below", "with both, the rule fires when the value leaves "
                       "the band from below to above: below must be < above")
        owner = rule.metric.split(":", 1)[0]
        if owner not in agents:
            raise fail(f"{where}.metric", f"{owner!r} is not an agent; agents: "
                       f"{_known(agents)}")
        if rule.agent is not None:
            raise fail(f"{where}.agent", "a metric rule's agent is the metric's owner; "
                       "remove `agent`")
    elif metric_keys:
        raise fail(f"{where}.{metric_keys[0]}".replace(".for_", ".for"),
                   "only for metric rules (on = \"metric\")")
    _check_action(rule, where, fail, agents, jobs, actions)


def _check_action(rule: RuleSpec, where: str, fail: Fail, agents: list[str],
                  jobs: set[str], actions: ActionsSection) -> None:
    action, at = rule.do, f"{where}.do"
    kind = ACTION_ARGS[action.verb]
    if action.verb in AGENT_VERBS:
        if action.target is None:
            if rule.agent is None and not rule.is_metric:
                raise fail(at, f"{action.verb!r} needs an agent: name it ({action.verb} "
                           "AGENT) or give the rule an `agent` to act on the event's agent")
        elif action.target not in agents:
            raise fail(at, f"{action.target!r} is not an agent or group; agents: "
                       f"{_known(agents)}")
    elif kind == "job" and action.target not in jobs:
        raise fail(at, f"no job named {action.target!r}; jobs: {_known(sorted(jobs))}")
    elif kind == "exec" and actions.command(action.target or "") is None:
        raise fail(at, f"no command {action.target!r} in [actions.exec]; declared: "
                   f"{_known([e.name for e in actions.exec])} (a rule may only exec a "
                   "declared command)")
    elif kind == "task" and action.target not in MAINTAIN_TASKS:
        raise fail(at, f"no maintenance task {action.target!r}; expected one of "
                   + ", ".join(MAINTAIN_TASKS))


def _jobs(raw: dict, path: Path, fail: Fail, check: Check, tables: Tables) \
        -> tuple[JobSpec, ...]:
    jobs: list[JobSpec] = []
    seen: set[str] = set()
    for where, table in _named(tables(raw, "jobs", fail), "jobs"):
        values = check(table, JobSpec, where, fail)
        if values["name"] in seen:
            raise fail(f"{where}.name", f"duplicate job name {values['name']!r}")
        seen.add(values["name"])
        when = [k for k in ("schedule", "every") if k in values]
        if len(when) != 1:
            raise fail(f"{where}.schedule", "give exactly one of schedule (cron) or every"
                       + (" (got both)" if when else ""))
        what = [k for k in ("entry", "command", "maintain") if k in values]
        if len(what) != 1:
            raise fail(f"{where}.{what[1] if len(what) > 1 else 'entry'}",
                       "give exactly one of entry, command or maintain")
        if "timezone" in values:
            try:
                zoneinfo.ZoneInfo(values["timezone"])
            except (zoneinfo.ZoneInfoNotFoundError, ValueError):
                raise fail(f"{where}.timezone", f"unknown time zone {values['timezone']!r}; "
                           "expected an IANA name like \"Europe/Berlin\" or \"UTC\"") from None
        if "schedule" in values:
            try:
                CronSim(values["schedule"], dt.datetime(2000, 1, 1))
            except CronSimError as exc:
                raise fail(f"{where}.schedule", f"bad cron expression "
                           f"{values['schedule']!r}: {exc} (5 fields: minute hour day month "
                           "weekday; 6 with seconds first)") from None
        if "command" in values:
            values["command"] = _argv(values["command"], f"{where}.command", fail)
        if "maintain" in values:
            values["maintain"] = tuple(values["maintain"])
        if "entry" in values:
            file_part, _, func = values["entry"].rpartition(":")
            if file_part.endswith(".py"):
                values["entry"] = f"{(path.parent / file_part).resolve()}:{func}"
        if values.get("cwd") is not None:
            values["cwd"] = str((path.parent / values["cwd"]).resolve())
        if "env" in values:
            values["env"] = tuple(sorted(values["env"].items()))
        if values.get("backoff_max", JobSpec.backoff_max) < values.get("backoff",
                                                                        JobSpec.backoff):
            raise fail(f"{where}.backoff_max", "must be >= backoff")
        jobs.append(JobSpec(**values))
    return tuple(jobs)
