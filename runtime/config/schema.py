"""The configuration's shape: typed sections, with every key's type, default and meaning.

Validation is strict: an unknown or mistyped key is an error naming the file,
the key and what was expected, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any, NamedTuple


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
_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h|d)")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_METRIC = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_.-]{0,63})\s+(below|above|<|>)\s+"
                     r"(-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)\s*$")
_PERCENT = re.compile(r"^(\d{1,3})%$")
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 1 << 10, "MIB": 1 << 20, "GIB": 1 << 30, "TIB": 1 << 40}


@dataclass(frozen=True)
class Key:
    """How to check and convert one key's TOML value, and what it expects (for messages).

    A key's default lives in one place: the dataclass field it belongs to (see `key`).
    """

    convert: Callable[[Any], Any]
    expected: str
    section: type | None = None  # a nested table: the section dataclass it holds


def key(spec: tuple[Callable[[Any], Any], str], default: Any = MISSING) -> Any:
    """A dataclass field that is also a config key: its converter, its message, its default.

    Without a default the key is required. The section dataclasses below are the schema:
    the loader validates a TOML table against their fields.
    """
    return field(default=default, metadata={"key": Key(spec[0], spec[1])})


def derived(meaning: str, default: Any = None) -> Any:
    """A field that is not a config key: the loader sets it (e.g. on an agent's instances)."""
    return field(default=default, metadata={"derived": meaning})


def table(cls: type) -> Any:
    """A dataclass field that is a nested table (e.g. [uplink.tls]) of section `cls`;
    absent, it takes `cls`'s defaults."""
    return field(default_factory=cls,
                 metadata={"key": Key(lambda v: v, f"a table of {cls.__name__} keys", cls)})


def keys_of(cls: type) -> dict[str, Key]:
    """The config keys of a section dataclass, in declaration order."""
    return {f.name: f.metadata["key"] for f in fields(cls) if "key" in f.metadata}


def required_keys(cls: type) -> set[str]:
    """The keys of `cls` that have no default."""
    return {f.name for f in fields(cls)
            if "key" in f.metadata and f.default is MISSING and f.default_factory is MISSING}


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


def parse_duration(value: Any) -> float:
    """Seconds from a number (seconds) or a string like "10m", "1h30m", "250ms"."""
    if isinstance(value, bool):
        raise ValueError
    if isinstance(value, int | float):
        if value < 0 or value != value or value == float("inf"):
            raise ValueError
        return float(value)
    if not isinstance(value, str):
        raise ValueError
    text = value.strip().lower().replace(" ", "")
    pos, total = 0, 0.0
    for m in _DURATION.finditer(text):
        if m.start() != pos:
            raise ValueError
        total += float(m.group(1)) * _UNIT_S[m.group(2)]
        pos = m.end()
    if not text or pos != len(text):
        raise ValueError
    return total


def _steps(value: Any) -> tuple[int | str, ...]:
    """Rollout steps: a non-empty list of instance counts (>= 1) and percentages ("50%")."""
    if not isinstance(value, list) or not value:
        raise ValueError
    out: list[int | str] = []
    for step in value:
        if isinstance(step, int) and not isinstance(step, bool) and step >= 1:
            out.append(step)
        elif isinstance(step, str) and (m := _PERCENT.match(step.strip())) \
                and 1 <= int(m.group(1)) <= 100:
            out.append(f"{int(m.group(1))}%")
        else:
            raise ValueError
    return tuple(out)


def _gate_metric(value: Any) -> tuple[str, str, float]:
    """`"errors below 1"` -> ("errors", "below", 1.0); `<` and `>` work too."""
    if not isinstance(value, str) or not (m := _METRIC.match(value)):
        raise ValueError
    bound = {"<": "below", ">": "above"}.get(m.group(2), m.group(2))
    return m.group(1), bound, float(m.group(3))


SIZE = (_size, 'a size in bytes, e.g. 67108864 or "64MiB"')
DURATION = (parse_duration, 'a duration: seconds, or a string such as "500ms", "60s", "5m", '
            '"24h"')
STEPS = (_steps, 'a list of instance counts and percentages, e.g. [1, "50%", "100%"]')
GATE_METRIC = (_gate_metric, 'a bound on one of the agent\'s metrics, e.g. "errors below 1" '
               'or "queue_depth < 100" (counters: their increase during the gate)')
PATH = _typed(str, expected="a path (relative paths start at the config file's folder)",
              check=lambda v: bool(v.strip()))
UID_LIST = _typed(list, expected="a list of integers",
                  check=lambda v: all(isinstance(i, int) and not isinstance(i, bool) for i in v))


_NAME_CHECK = _typed(str, expected="a name of letters, digits, '_', '.', '-' "
                     "(starting with a letter, at most 48)",
                     check=lambda v: bool(_NAME.match(v)))
# The same checks, public, for sections typed in other modules (runtime.config.autonomy).
NAME, NAME_CHECK, typed, choice, int_range = _NAME, _NAME_CHECK, _typed, _choice, _int_range
NAME_LIST = _typed(list, expected="a list of agent names",
                   check=lambda v: all(isinstance(n, str) and _NAME.match(n) for n in v))
COMMAND = _typed(str, list, expected="a command: a string (split like a shell would) "
                 "or a list of strings",
                 check=lambda v: bool(v) and ((isinstance(v, str) and bool(v.strip())) or
                                              all(isinstance(a, str) for a in v)))
ENV = _typed(dict, expected="a table of string values",
             check=lambda v: all(isinstance(x, str) for x in v.values()))
ENTRY = _typed(str, expected="'module:function' or 'path/to/file.py:function'",
               check=lambda v: bool(_ENTRY.match(v)))
ORDER = _int_range(-10**6, 10**6)
FRACTION = _typed(int, float, expected="a fraction from 0 to 1", check=lambda v: 0 <= v <= 1)
AT_LEAST_ONE = _typed(int, float, expected="a number >= 1", check=lambda v: v >= 1)
OPTIONAL_SIZE = (lambda v: 0 if v == 0 else _size(v), SIZE[1] + " (0 = off)")


BOOL = _typed(bool, expected="true or false")


class Listen(NamedTuple):
    """Where the HTTP face listens: a TCP host and port, or a Unix socket path."""

    host: str | None = None
    port: int | None = None
    path: str | None = None

    @property
    def local(self) -> bool:
        """Reachable only from this host (loopback or a Unix socket): no token required."""
        if self.path is not None:
            return True
        return self.host == "localhost" or ipaddress.ip_address(self.host).is_loopback

    def __str__(self) -> str:
        if self.path is not None:
            return f"unix:{self.path}"
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_listen(value: str) -> Listen:
    """'127.0.0.1:9477', '[::1]:9477', 'localhost:9477', or a Unix socket path
    ('unix:/run/outpost/http.sock' or any value with a '/'). ValueError if neither."""
    if value.startswith("unix:") or "/" in value:
        path = value.removeprefix("unix:")
        if not path.strip():
            raise ValueError
        return Listen(path=path)
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        if ipaddress.ip_address(host).version != 6:
            raise ValueError
    elif host != "localhost":
        ipaddress.IPv4Address(host)
    return Listen(host, int(port))


def _listen(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError
    parse_listen(value)
    return value


LISTEN = (_listen, "an address to listen on: 'IP:port' (e.g. '127.0.0.1:9477', '[::1]:9477', "
          "'0.0.0.0:9477'; port 0 picks a free one) or a Unix socket path "
          "('unix:/run/outpost/http.sock')")


# -- sections -------------------------------------------------------------------------
# Each section is a frozen dataclass whose fields are its keys (see `key`): type check,
# message and default in one place. Sizes are bytes, durations seconds, 0 = off.


@dataclass(frozen=True)
class RuntimeSection:
    """[runtime]: where the runtime keeps its data and its socket, and how it logs."""

    data_dir: str = key(PATH, "var/data")
    run_dir: str = key(PATH, "var/run")
    log_level: str = key(_choice(LOG_LEVELS), "info")
    shutdown_timeout_s: float = key(_positive(), 10.0)


@dataclass(frozen=True)
class StoreSection:
    """[store]: the LMDB environment, the group-commit writer and automatic checkpoints."""

    map_size: int = key(SIZE, 64 << 20)
    map_size_max: int = key(SIZE, 1 << 30)
    durability: str = key(_choice(DURABILITY), "sync")
    fsync_interval_ms: int = key(_int_range(1, 60_000), 100)
    batch_window_ms: float = key(_typed(int, float, expected="a number of ms from 0 to 100",
                                        check=lambda v: 0 <= v <= 100), 0)
    max_batch: int = key(_int_range(1, 1_000_000), 4096)
    zstd_level: int = key(_int_range(1, 22), 3)
    checkpoint_every_ops: int = key(_int_range(1, 10**9), 1000)
    checkpoint_every_s: float = key(_positive(), 60.0)
    checkpoint_keep_tail: int = key(_int_range(0, 10**9), 0)


@dataclass(frozen=True)
class ShmSection:
    """[shm]: the shared-memory segment."""

    slots: int = key(_int_range(16, 1 << 20), 1024)


@dataclass(frozen=True)
class ControlSection:
    """[control]: who besides the runtime's own user and root may use the socket."""

    allowed_uids: tuple[int, ...] = key(UID_LIST, ())
    allowed_gids: tuple[int, ...] = key(UID_LIST, ())
    # How long a mutating request's id is remembered (a repeat gets the first answer).
    request_id_ttl: float = key(DURATION, 24 * 3600.0)


@dataclass(frozen=True)
class RolloutsSection:
    """[rollouts]: defaults of `outpost deploy` (an agent may set its own gate and steps)."""

    gate: float = key(DURATION, 60.0)  # how long a new version must stay healthy
    steps: tuple[int | str, ...] = key(STEPS, (1, "50%", "100%"))  # for instances > 1
    keep_releases: int = key(_int_range(1, 100), 3)  # per agent, the current one included


@dataclass(frozen=True)
class SupervisorSection:
    """[supervisor]: the root of the supervision tree."""

    strategy: str = key(_choice(STRATEGIES), "one_for_one")
    max_restarts: int = key(_int_range(0, 10**6), 100)
    restart_window_s: float = key(_positive(), 60.0)
    # What the runtime does when the root supervisor's intensity is exceeded.
    on_give_up: str = key(_choice(ON_GIVE_UP), "stop")


@dataclass(frozen=True)
class MaintainSection:
    """[maintain]: pruning, archives, log files and the disk budget. Paths are absolute
    once loaded (relative ones start at the config file's folder)."""

    prune_keep_tail: int = key(_int_range(0, 10**9), 0)
    archive_dir: Path = key(PATH, "var/archive")
    archive_after_days: float = key(_positive(), 7.0)
    archive_keep_days: float = key(_positive(), 90.0)
    logs_dir: Path = key(PATH, "var/log")
    disk_budget: int = key(SIZE, 1 << 30)
    disk_critical_factor: float = key(AT_LEAST_ONE, 1.25)
    disk_check_interval_s: float = key(_positive(), 30.0)


@dataclass(frozen=True)
class HttpSection:
    """[http]: the local web console, health probes and the Prometheus endpoint.

    Anywhere but loopback or a Unix socket, `auth_token_file` is required (the loader
    refuses the config otherwise). Paths are absolute once loaded.
    """

    enabled: bool = key(BOOL, True)
    listen: str = key(LISTEN, "127.0.0.1:9477")
    auth_token_file: Path | None = key(PATH, None)
    read_only: bool = key(BOOL, True)  # false: the console may start/stop/restart agents

    @property
    def address(self) -> Listen:
        return parse_listen(self.listen)


@dataclass(frozen=True)
class AgentSpec:
    """One agent of the config, validated ([[agents]])."""

    name: str = key(_NAME_CHECK)
    kind: str = key(_choice(AGENT_KINDS), "task")
    # task/process: the Python function; exec: `command`.
    entry: str | None = key(ENTRY, None)
    command: tuple[str, ...] = key(COMMAND, ())
    env: tuple[tuple[str, str], ...] = key(ENV, ())
    cwd: str | None = key(PATH, None)
    group: str | None = key(_NAME_CHECK, None)  # None: the root supervisor
    order: int = key(ORDER, 0)
    depends_on: tuple[str, ...] = key(NAME_LIST, ())
    notify: bool = key(_typed(bool, expected="true or false"), False)  # exec: ready on READY=1
    restart: str = key(_choice(RESTART_TYPES), "permanent")
    backoff_initial_s: float = key(_non_negative(), 0.0)
    backoff_max_s: float = key(_non_negative(), 5.0)
    backoff_multiplier: float = key(AT_LEAST_ONE, 2.0)
    backoff_jitter: float = key(FRACTION, 0.0)
    backoff_reset_s: float = key(_non_negative(), 10.0)
    shutdown_timeout_s: float = key(_positive(), 5.0)
    max_restarts: int = key(_int_range(0, 10**6), 10)
    restart_window_s: float = key(_positive(), 60.0)
    heartbeat_timeout_s: float = key(_non_negative("a number of seconds >= 0 (0 = off)"), 0.0)
    memory_max: int = key(OPTIONAL_SIZE, 0)
    cpu_max: float = key(_non_negative("a CPU percentage >= 0 (100 = one core; 0 = off)"), 0.0)
    max_runtime_s: float = key(_non_negative("a number of seconds >= 0 (0 = off)"), 0.0)
    log_max_bytes: int = key(SIZE, 1 << 20)
    log_keep: int = key(_int_range(0, 100), 3)
    # Run N instances of this spec, named <name>@1 .. <name>@N under a group <name>.
    instances: int = key(_int_range(1, 1000), 1)
    gate: float | None = key(DURATION, None)  # rollouts: None = [rollouts] gate
    gate_metric: tuple[str, str, float] | None = key(GATE_METRIC, None)
    steps: tuple[int | str, ...] | None = key(STEPS, None)  # None = [rollouts] steps
    instance_of: str | None = derived("the agent this is an instance of (name@i)")


@dataclass(frozen=True)
class GroupSpec:
    """A supervisor node of the tree ([[groups]]): its children are the agents and groups
    naming it."""

    name: str = key(_NAME_CHECK)
    parent: str | None = key(_NAME_CHECK, None)
    order: int = key(ORDER, 0)
    strategy: str = key(_choice(STRATEGIES), "one_for_one")
    max_restarts: int = key(_int_range(0, 10**6), 100)
    restart_window_s: float = key(_positive(), 60.0)
    instances_of: str | None = derived("the agent whose instances this group holds")


WHEN_FULL = ("drop_oldest", "refuse_new")
# A NATS subject token that is also a valid stream, consumer, bucket and object name.
_TOKEN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_SUBJECT_PREFIX = re.compile(r"^[A-Za-z0-9_-]{1,64}(\.[A-Za-z0-9_-]{1,64}){0,7}$")
_SERVER = re.compile(r"^(nats|tls)://[^\s/]+$")
TOKEN = _typed(str, expected="letters, digits, '_' or '-' (1 to 64; a NATS subject token)",
               check=lambda v: bool(_TOKEN.match(v)))
SUBJECT_PREFIX = _typed(str, expected="NATS subject tokens of letters, digits, '_', '-' "
                        "joined by '.' (no wildcards), e.g. \"outpost\" or \"acme.edge\"",
                        check=lambda v: bool(_SUBJECT_PREFIX.match(v)))
def _as_tuple(spec: tuple[Callable[[Any], Any], str]) -> tuple[Callable[[Any], Any], str]:
    convert, expected = spec
    return (lambda v: tuple(convert(v))), expected


def _message_size(value: Any) -> int:
    n = _size(value)
    if n > 900 << 10:  # the record, with its subject, must fit the store's 1 MiB limit
        raise ValueError
    return n


MESSAGE_SIZE = (_message_size, 'a size from 1 byte to 900KiB, e.g. "256KiB"')
SERVERS = _typed(list, expected='a non-empty list of server URLs, e.g. ["nats://hub:4222"]',
                 check=lambda v: bool(v) and all(isinstance(s, str) and _SERVER.match(s)
                                                 for s in v))
STRINGS = _typed(list, expected="a list of strings",
                 check=lambda v: all(isinstance(s, str) and s for s in v))
OPTIONAL_STR = _typed(str, expected="a non-empty string", check=lambda v: bool(v))
BOOL = _typed(bool, expected="true or false")
# What a fleet may ask of a host by default: reading, and starting/stopping agents.
COMMANDS_ALLOWED = ("status", "info", "ping", "metrics", "events.query", "state.get",
                    "uplink", "agent.start", "agent.stop", "agent.restart")


@dataclass(frozen=True)
class UplinkTlsSection:
    """[uplink.tls]: verify the server against `ca_file` (default: the system's CAs);
    `cert_file` + `key_file` for mutual TLS. Any of them turns TLS on."""

    ca_file: Path | None = key(PATH, None)
    cert_file: Path | None = key(PATH, None)
    key_file: Path | None = key(PATH, None)
    handshake_first: bool = key(BOOL, False)


@dataclass(frozen=True)
class UplinkOutboxSection:
    """[uplink.outbox]: the durable queue in the store, bounded. Full means `max_bytes`
    of unsent messages; then `when_full` decides: drop_oldest (like Greengrass's
    OverwriteOldestData) or refuse_new (ctx.publish raises; events are dropped).
    Messages older than `max_age_s` are dropped unsent (0 = never). Every drop is counted."""

    max_bytes: int = key(SIZE, 64 << 20)
    max_age_s: float = key(_non_negative("a number of seconds >= 0 (0 = no limit)"),
                           7 * 86400.0)
    when_full: str = key(_choice(WHEN_FULL), "drop_oldest")
    max_message_bytes: int = key(MESSAGE_SIZE, 256 << 10)


@dataclass(frozen=True)
class UplinkSendSection:
    """[uplink.send]: what goes up besides what agents publish: events by type ("*" =
    all), state changes of the named agents, and the metrics every N seconds (0 = off)."""

    events: tuple[str, ...] = key(_as_tuple(STRINGS), ())
    state_of: tuple[str, ...] = key(_as_tuple(NAME_LIST), ())
    metrics_every_s: float = key(_non_negative("a number of seconds >= 0 (0 = off)"), 0.0)
    snapshot_every_s: float = key(_positive(), 30.0)


@dataclass(frozen=True)
class UplinkCommandsSection:
    """[uplink.commands]: control methods a fleet may call on this host through NATS."""

    enabled: bool = key(BOOL, True)
    allow: tuple[str, ...] = key(_as_tuple(STRINGS), COMMANDS_ALLOWED)
    ack_wait_s: float = key(_positive(), 60.0)
    max_deliver: int = key(_int_range(1, 100), 5)


@dataclass(frozen=True)
class UplinkBackupSection:
    """[uplink.backup]: `maintain backup nats` keeps the newest `keep` backups per host."""

    keep: int = key(_int_range(1, 1000), 7)


@dataclass(frozen=True)
class UplinkSection:
    """[uplink]: store-and-forward to NATS JetStream. Absent: no uplink. `host_id`
    defaults to the short hostname. One way to authenticate at most: `creds_file`,
    `nkey_file`, `user` + `password`, or `token`. Times are seconds."""

    servers: tuple[str, ...] = key(_as_tuple(SERVERS))
    host_id: str | None = key(TOKEN, None)
    prefix: str = key(SUBJECT_PREFIX, "outpost")
    stream: str = key(TOKEN, "OUTPOST")
    create_streams: bool = key(BOOL, True)
    # The stream's dedup window for resends (Nats-Msg-Id); past it the uplink still
    # checks what the stream holds before resending. Longer costs server memory.
    duplicate_window_s: float = key(_positive(), 7200.0)
    creds_file: Path | None = key(PATH, None)
    nkey_file: Path | None = key(PATH, None)
    user: str | None = key(OPTIONAL_STR, None)
    password: str | None = key(OPTIONAL_STR, None)
    token: str | None = key(OPTIONAL_STR, None)
    window: int = key(_int_range(1, 65536), 512)
    ack_timeout_s: float = key(_positive(), 10.0)
    connect_timeout_s: float = key(_positive(), 5.0)
    reconnect_initial_s: float = key(_positive(), 0.2)
    reconnect_max_s: float = key(_positive(), 30.0)
    tls: UplinkTlsSection = table(UplinkTlsSection)
    outbox: UplinkOutboxSection = table(UplinkOutboxSection)
    send: UplinkSendSection = table(UplinkSendSection)
    commands: UplinkCommandsSection = table(UplinkCommandsSection)
    backup: UplinkBackupSection = table(UplinkBackupSection)


SECTIONS: dict[str, type] = {
    "runtime": RuntimeSection, "store": StoreSection, "shm": ShmSection,
    "control": ControlSection, "maintain": MaintainSection, "supervisor": SupervisorSection,
    "http": HttpSection, "rollouts": RolloutsSection,
}
ARRAYS: dict[str, type] = {"groups": GroupSpec, "agents": AgentSpec}
OPTIONAL_SECTIONS: dict[str, type] = {"uplink": UplinkSection}  # absent = feature off
TOP_SECTIONS = (*SECTIONS, *OPTIONAL_SECTIONS, *ARRAYS)


@dataclass(frozen=True)
class Config:
    """The whole validated config. Paths are absolute."""

    path: Path
    data_dir: Path
    run_dir: Path
    log_level: str = RuntimeSection.log_level
    shutdown_timeout_s: float = RuntimeSection.shutdown_timeout_s
    store: StoreSection = field(default_factory=StoreSection)
    shm_slots: int = ShmSection.slots
    allowed_uids: tuple[int, ...] = ControlSection.allowed_uids
    allowed_gids: tuple[int, ...] = ControlSection.allowed_gids
    request_id_ttl_s: float = ControlSection.request_id_ttl
    rollouts: RolloutsSection = field(default_factory=RolloutsSection)
    agents: tuple[AgentSpec, ...] = ()
    groups: tuple[GroupSpec, ...] = ()
    supervisor: SupervisorSection = field(default_factory=SupervisorSection)
    maintain: MaintainSection = field(default_factory=MaintainSection)
    uplink: UplinkSection | None = None
    http: HttpSection = field(default_factory=HttpSection)
    # [[rules]], [[jobs]], [scheduler], [actions]: a runtime.config.autonomy.Autonomy (typed
    # there: that module builds on this one). The loader always sets it; None = none given.
    autonomy: Any = None

    @property
    def socket_path(self) -> Path:
        return self.run_dir / "outpost.sock"

    @property
    def segment_path(self) -> Path:
        return self.run_dir / "outpost.shm"
