"""The configuration's shape: typed sections, with every key's type, default and meaning.

Validation is strict: an unknown or mistyped key is an error naming the file,
the key and what was expected, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class ConfigError(Exception):
    """The config cannot be used. str() is one line: file, key, what is expected."""


AGENT_KINDS = ("task", "process", "exec")
STRATEGIES = ("one_for_one", "one_for_all", "rest_for_one")
ON_GIVE_UP = ("stop", "keep_running")
RESTART_TYPES = ("permanent", "transient", "temporary")
DURABILITY = ("sync", "interval")
LOG_LEVELS = ("debug", "info", "warning", "error")
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,47}$")
_ENTRY = re.compile(r"^[^:]+:[A-Za-z_][A-Za-z0-9_]*$")
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 1 << 10, "MIB": 1 << 20, "GIB": 1 << 30, "TIB": 1 << 40}


@dataclass(frozen=True)
class Key:
    """One allowed key: how to check and convert its value, its default, what it means."""

    convert: Callable[[Any], Any]
    expected: str
    default: Any = None
    required: bool = False


def _typed(*types: type, expected: str, check: Callable[[Any], bool] = lambda v: True) \
        -> tuple[Callable[[Any], Any], str]:
    def convert(value: Any) -> Any:
        if isinstance(value, bool) and bool not in types:
            raise ValueError
        if not isinstance(value, types) or not check(value):
            raise ValueError
        return value
    return convert, expected


def _choice(options: tuple[str, ...]) -> tuple[Callable[[Any], Any], str]:
    return _typed(str, expected="one of " + ", ".join(repr(o) for o in options),
                  check=lambda v: v in options)


def _size(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError
    if isinstance(value, int) and value > 0:
        return value
    if isinstance(value, str) and (m := _SIZE.match(value)):
        n = float(m.group(1)) * _UNITS[(m.group(2) or "").upper()]
        if n >= 1:
            return int(n)
    raise ValueError


def _positive(expected: str = "a positive number") -> tuple[Callable[[Any], Any], str]:
    return _typed(int, float, expected=expected, check=lambda v: v > 0)


def _non_negative(expected: str = "a number >= 0") -> tuple[Callable[[Any], Any], str]:
    return _typed(int, float, expected=expected, check=lambda v: v >= 0)


def _int_range(lo: int, hi: int) -> tuple[Callable[[Any], Any], str]:
    return _typed(int, expected=f"an integer from {lo} to {hi}", check=lambda v: lo <= v <= hi)


SIZE = (_size, 'a size in bytes, e.g. 67108864 or "64MiB"')
PATH = _typed(str, expected="a path (relative paths start at the config file's folder)",
              check=lambda v: bool(v.strip()))
UID_LIST = _typed(list, expected="a list of integers",
                  check=lambda v: all(isinstance(i, int) and not isinstance(i, bool) for i in v))


def K(spec: tuple[Callable[[Any], Any], str], default: Any = None, required: bool = False) -> Key:
    return Key(spec[0], spec[1], default, required)


RUNTIME_KEYS = {
    "data_dir": K(PATH, "var/data"),
    "run_dir": K(PATH, "var/run"),
    "log_level": K(_choice(LOG_LEVELS), "info"),
    "shutdown_timeout_s": K(_positive(), 10.0),
}
STORE_KEYS = {
    "map_size": K(SIZE, 64 << 20),
    "map_size_max": K(SIZE, 1 << 30),
    "durability": K(_choice(DURABILITY), "sync"),
    "fsync_interval_ms": K(_int_range(1, 60_000), 100),
    "batch_window_ms": K(_typed(int, float, expected="a number of ms from 0 to 100",
                                check=lambda v: 0 <= v <= 100), 0),
    "max_batch": K(_int_range(1, 1_000_000), 4096),
    "zstd_level": K(_int_range(1, 22), 3),
    "checkpoint_every_ops": K(_int_range(1, 10**9), 1000),
    "checkpoint_every_s": K(_positive(), 60.0),
    "checkpoint_keep_tail": K(_int_range(0, 10**9), 0),
}
SHM_KEYS = {
    "slots": K(_int_range(16, 1 << 20), 1024),
}
CONTROL_KEYS = {
    "allowed_uids": K(UID_LIST, []),
    "allowed_gids": K(UID_LIST, []),
}
_NAME_CHECK = _typed(str, expected="a name of letters, digits, '_', '.', '-' "
                     "(starting with a letter, at most 48)",
                     check=lambda v: bool(_NAME.match(v)))
NAME_LIST = _typed(list, expected="a list of agent names",
                   check=lambda v: all(isinstance(n, str) and _NAME.match(n) for n in v))
COMMAND = _typed(str, list, expected="a command: a string (split like a shell would) "
                 "or a list of strings",
                 check=lambda v: bool(v) and ((isinstance(v, str) and bool(v.strip())) or
                                              all(isinstance(a, str) for a in v)))
ENV = _typed(dict, expected="a table of string values",
             check=lambda v: all(isinstance(x, str) for x in v.values()))
AGENT_KEYS = {
    "name": K(_NAME_CHECK, required=True),
    "kind": K(_choice(AGENT_KINDS), "task"),
    # task/process: the Python function; exec: `command`.
    "entry": K(_typed(str, expected="'module:function' or 'path/to/file.py:function'",
                      check=lambda v: bool(_ENTRY.match(v))), None),
    "command": K(COMMAND, None),
    "env": K(ENV, {}),
    "cwd": K(PATH, None),
    "group": K(_NAME_CHECK, None),
    "order": K(_int_range(-10**6, 10**6), 0),
    "depends_on": K(NAME_LIST, []),
    "notify": K(_typed(bool, expected="true or false"), False),
    "restart": K(_choice(RESTART_TYPES), "permanent"),
    "backoff_initial_s": K(_non_negative(), 0.0),
    "backoff_max_s": K(_non_negative(), 5.0),
    "backoff_multiplier": K(_typed(int, float, expected="a number >= 1",
                                   check=lambda v: v >= 1), 2.0),
    "backoff_jitter": K(_typed(int, float, expected="a fraction from 0 to 1",
                               check=lambda v: 0 <= v <= 1), 0.0),
    "backoff_reset_s": K(_non_negative(), 10.0),
    "shutdown_timeout_s": K(_positive(), 5.0),
    "max_restarts": K(_int_range(0, 10**6), 10),
    "restart_window_s": K(_positive(), 60.0),
    "heartbeat_timeout_s": K(_non_negative("a number of seconds >= 0 (0 = off)"), 0.0),
    "memory_max": K((lambda v: 0 if v == 0 else _size(v), SIZE[1] + " (0 = off)"), 0),
    "cpu_max": K(_non_negative("a CPU percentage >= 0 (100 = one core; 0 = off)"), 0.0),
    "max_runtime_s": K(_non_negative("a number of seconds >= 0 (0 = off)"), 0.0),
    "log_max_bytes": K(SIZE, 1 << 20),
    "log_keep": K(_int_range(0, 100), 3),
}
GROUP_KEYS = {
    "name": K(_NAME_CHECK, required=True),
    "parent": K(_NAME_CHECK, None),
    "order": K(_int_range(-10**6, 10**6), 0),
    "strategy": K(_choice(STRATEGIES), "one_for_one"),
    "max_restarts": K(_int_range(0, 10**6), 100),
    "restart_window_s": K(_positive(), 60.0),
}
SUPERVISOR_KEYS = {
    "strategy": K(_choice(STRATEGIES), "one_for_one"),
    "max_restarts": K(_int_range(0, 10**6), 100),
    "restart_window_s": K(_positive(), 60.0),
    # What the runtime does when the root supervisor's intensity is exceeded.
    "on_give_up": K(_choice(ON_GIVE_UP), "stop"),
}
MAINTAIN_KEYS = {
    "prune_keep_tail": K(_int_range(0, 10**9), 0),
    "archive_dir": K(PATH, "var/archive"),
    "archive_after_days": K(_positive(), 7.0),
    "archive_keep_days": K(_positive(), 90.0),
    "logs_dir": K(PATH, "var/log"),
    "disk_budget": K(SIZE, 1 << 30),
    "disk_critical_factor": K(_typed(int, float, expected="a number >= 1",
                                     check=lambda v: v >= 1), 1.25),
    "disk_check_interval_s": K(_positive(), 30.0),
}
TOP_SECTIONS = ("runtime", "store", "shm", "control", "maintain", "supervisor", "groups",
                "agents")


@dataclass(frozen=True)
class AgentSpec:
    """One agent of the config, validated. Durations in seconds, sizes in bytes, 0 = off."""

    name: str
    entry: str | None = None
    kind: str = "task"
    command: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    cwd: str | None = None
    group: str | None = None  # None: the root supervisor
    order: int = 0
    depends_on: tuple[str, ...] = ()
    notify: bool = False  # exec: ready only after sd_notify READY=1
    restart: str = "permanent"
    backoff_initial_s: float = 0.0
    backoff_max_s: float = 5.0
    backoff_multiplier: float = 2.0
    backoff_jitter: float = 0.0
    backoff_reset_s: float = 10.0
    shutdown_timeout_s: float = 5.0
    max_restarts: int = 10
    restart_window_s: float = 60.0
    heartbeat_timeout_s: float = 0.0
    memory_max: int = 0
    cpu_max: float = 0.0
    max_runtime_s: float = 0.0
    log_max_bytes: int = 1 << 20
    log_keep: int = 3


@dataclass(frozen=True)
class GroupSpec:
    """A supervisor node of the tree: its children are agents and groups naming it."""

    name: str
    parent: str | None = None
    order: int = 0
    strategy: str = "one_for_one"
    max_restarts: int = 100
    restart_window_s: float = 60.0


@dataclass(frozen=True)
class Config:
    """The whole validated config. Paths are absolute."""

    path: Path
    data_dir: Path
    run_dir: Path
    log_level: str = "info"
    shutdown_timeout_s: float = 10.0
    store: dict[str, Any] = field(default_factory=dict)
    shm_slots: int = 1024
    allowed_uids: tuple[int, ...] = ()
    allowed_gids: tuple[int, ...] = ()
    agents: tuple[AgentSpec, ...] = ()
    groups: tuple[GroupSpec, ...] = ()
    supervisor: dict[str, Any] = field(default_factory=lambda: {
        "strategy": "one_for_one", "max_restarts": 100, "restart_window_s": 60.0,
        "on_give_up": "stop"})
    maintain: dict[str, Any] = field(default_factory=dict)

    @property
    def socket_path(self) -> Path:
        return self.run_dir / "outpost.sock"

    @property
    def segment_path(self) -> Path:
        return self.run_dir / "outpost.shm"
