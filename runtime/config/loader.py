"""Reading a TOML config file into a validated `Config`."""

from __future__ import annotations

import dataclasses
import os
import shlex
import socket as _socket
import tomllib
from pathlib import Path
from typing import Any

from runtime.config.autonomy import AUTONOMY_SECTIONS, parse_autonomy
from runtime.config.schema import (
    SECTIONS,
    TOP_SECTIONS,
    AgentSpec,
    Config,
    ConfigError,
    GroupSpec,
    HttpSection,
    MaintainSection,
    UplinkSection,
    keys_of,
    required_keys,
)

# sun_path is 108 bytes on Linux, including the terminating NUL.
_SOCKET_PATH_MAX = 107


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and validate the config at `path`; ConfigError says exactly what to fix."""
    path = Path(path).absolute()
    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, expected a TOML config file") from None
    except PermissionError:
        raise ConfigError(f"{path}: cannot read the config file (permission denied)") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: TOML syntax error: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text: {exc}") from None
    return parse_config(raw, path)


def parse_config(raw: dict[str, Any], path: Path) -> Config:
    """Validate an already parsed TOML document (`path` is used for messages and paths)."""
    def fail(key: str, message: str) -> ConfigError:
        return ConfigError(f"{path}: {key}: {message}")

    for key in raw:
        if key not in TOP_SECTIONS and key not in AUTONOMY_SECTIONS:
            raise fail(key, "unknown section; expected one of "
                       + ", ".join((*TOP_SECTIONS, *AUTONOMY_SECTIONS)))
    rt, store, shm, control, maintain, supervisor, http, rollouts = (
        _section(raw, name, cls, fail) for name, cls in SECTIONS.items())
    if store.map_size_max < store.map_size:
        raise fail("store.map_size_max", f"must be >= store.map_size ({store.map_size})")
    agents, groups = _agents_and_groups(raw, path, fail)
    autonomy = parse_autonomy(raw, path, fail, _check, _tables,
                              [a.name for a in agents] + [g.name for g in groups])

    base = path.parent
    uplink = _uplink(raw, base, fail) if "uplink" in raw else None
    run_dir = (base / rt.run_dir).resolve()
    socket = run_dir / "outpost.sock"
    if len(os.fsencode(socket)) > _SOCKET_PATH_MAX:
        raise fail("runtime.run_dir", f"too long for a Unix socket path ({socket}); "
                   f"use a path of at most {_SOCKET_PATH_MAX - len('/outpost.sock')} bytes")
    return Config(
        path=path,
        data_dir=(base / rt.data_dir).resolve(),
        run_dir=run_dir,
        log_level=rt.log_level,
        shutdown_timeout_s=float(rt.shutdown_timeout_s),
        store=store,
        shm_slots=shm.slots,
        allowed_uids=tuple(control.allowed_uids),
        allowed_gids=tuple(control.allowed_gids),
        request_id_ttl_s=control.request_id_ttl,
        rollouts=rollouts,
        agents=agents,
        groups=groups,
        supervisor=supervisor,
        maintain=_absolute_paths(maintain, base),
        uplink=uplink,
        http=_http(http, base, fail),
        autonomy=autonomy,
    )


def _absolute_paths(maintain: MaintainSection, base: Path) -> MaintainSection:
    return dataclasses.replace(maintain, archive_dir=(base / maintain.archive_dir).resolve(),
                               logs_dir=(base / maintain.logs_dir).resolve())


def _uplink(raw: dict, base: Path, fail) -> UplinkSection:
    """[uplink], with host_id resolved (default: the short hostname), file paths made
    absolute and the credentials checked for exactly one way to log in."""
    up = _section(raw, "uplink", UplinkSection, fail)
    host_id = up.host_id
    if host_id is None:
        host_id = _socket.gethostname().split(".", 1)[0]
        try:
            keys_of(UplinkSection)["host_id"].convert(host_id)
        except ValueError:
            raise fail("uplink.host_id", f"the hostname {host_id!r} is not a NATS subject "
                       "token; set host_id (letters, digits, '_', '-')") from None
    ways = [name for name, given in (("creds_file", up.creds_file), ("nkey_file", up.nkey_file),
                                     ("user", up.user), ("token", up.token)) if given]
    if len(ways) > 1:
        raise fail(f"uplink.{ways[1]}", f"give one way to log in, not {' and '.join(ways)}")
    if (up.user is None) != (up.password is None):
        raise fail("uplink.password" if up.user else "uplink.user",
                   "user and password go together")

    def absolute(value: Any) -> Path | None:
        return None if value is None else (base / value).resolve()

    tls = dataclasses.replace(up.tls, ca_file=absolute(up.tls.ca_file),
                              cert_file=absolute(up.tls.cert_file),
                              key_file=absolute(up.tls.key_file))
    if (tls.cert_file is None) != (tls.key_file is None):
        raise fail("uplink.tls.key_file" if tls.cert_file else "uplink.tls.cert_file",
                   "cert_file and key_file go together (mutual TLS)")
    for name in up.send.state_of:
        if not any(a.get("name") == name for a in raw.get("agents", [])
                   if isinstance(a, dict)):
            raise fail("uplink.send.state_of", f"no agent named {name!r}")
    return dataclasses.replace(up, host_id=host_id, tls=tls, creds_file=absolute(up.creds_file),
                               nkey_file=absolute(up.nkey_file))
def _http(http: HttpSection, base: Path, fail) -> HttpSection:
    """[http] with absolute paths; a listen reachable from other hosts needs a token."""
    token = None if http.auth_token_file is None else (base / http.auth_token_file).resolve()
    address = http.address
    if address.path is not None:
        path = (base / address.path).resolve()
        if len(os.fsencode(path)) > _SOCKET_PATH_MAX:
            raise fail("http.listen", f"too long for a Unix socket path ({path}); use a path "
                       f"of at most {_SOCKET_PATH_MAX} bytes")
        http = dataclasses.replace(http, listen=f"unix:{path}")
    elif http.enabled and token is None and not address.local:
        raise fail("http.auth_token_file", f"required: listen = {http.listen!r} is reachable "
                   "from other hosts, so the console needs a token; put a random one in a "
                   "file only outpost's user can read (e.g. `head -c 32 /dev/urandom | "
                   "base64 > http.token && chmod 600 http.token`) and set auth_token_file, or "
                   "listen on loopback ('127.0.0.1:9477') or a Unix socket")
    return dataclasses.replace(http, auth_token_file=token)


def _tables(raw: dict, name: str, fail) -> list[tuple[str, dict]]:
    found = raw.get(name, [])
    if not isinstance(found, list):
        raise fail(name, f"expected an array of tables: [[{name}]]")
    for i, table in enumerate(found):
        if not isinstance(table, dict):
            raise fail(f"{name}[{i}]", f"expected a table ([[{name}]])")
    return [(f"{name}[{i}]", table) for i, table in enumerate(found)]


def _agents_and_groups(raw: dict, path: Path, fail) \
        -> tuple[tuple[AgentSpec, ...], tuple[GroupSpec, ...]]:
    """[[groups]] (the supervision tree) and [[agents]], cross-checked."""
    groups: list[GroupSpec] = []
    group_names: dict[str, str] = {}
    for where, table in _tables(raw, "groups", fail):
        values = _check(table, GroupSpec, where, fail)
        if values["name"] in group_names:
            raise fail(f"{where}.name", f"duplicate group name {values['name']!r}")
        group_names[values["name"]] = where
        groups.append(GroupSpec(**values))
    for group in groups:
        where = group_names[group.name]
        if group.parent is not None and group.parent not in group_names:
            raise fail(f"{where}.parent", f"no group named {group.parent!r}; expected one of "
                       + (", ".join(group_names) or "(no [[groups]] defined)"))
        seen, up = {group.name}, group.parent
        while up is not None:  # the tree must not loop back on itself
            if up in seen:
                raise fail(f"{where}.parent", f"groups form a cycle through {up!r}")
            seen.add(up)
            up = next(g.parent for g in groups if g.name == up)

    agents: list[AgentSpec] = []
    wheres: dict[str, str] = {}
    for where, table in _tables(raw, "agents", fail):
        values = _check(table, AgentSpec, where, fail)
        name = values["name"]
        if name in wheres:
            raise fail(f"{where}.name", f"duplicate agent name {name!r}")
        if name in group_names:
            raise fail(f"{where}.name", f"{name!r} is already a group name")
        if name == "outpost":  # shm.exposition.RUNTIME_OWNER: the runtime's own slots
            raise fail(f"{where}.name", "'outpost' is reserved for the runtime's own metrics; "
                       "choose another agent name")
        wheres[name] = where
        kind = values.get("kind", AgentSpec.kind)
        if kind == "exec":
            if "command" not in values:
                raise fail(f"{where}.command", "missing; an exec agent needs a command")
            if "entry" in values:
                raise fail(f"{where}.entry", "not used by an exec agent (give `command`)")
            command = values["command"]
            try:
                argv = shlex.split(command) if isinstance(command, str) else list(command)
            except ValueError as exc:
                raise fail(f"{where}.command", f"cannot split the command line: {exc}") from None
            if not argv:
                raise fail(f"{where}.command", "expected a non-empty command")
            values["command"] = tuple(argv)
        else:
            if "entry" not in values:
                raise fail(f"{where}.entry", "missing; expected 'module:function' or "
                           "'path/to/file.py:function'")
            if "command" in values:
                raise fail(f"{where}.command", f"only exec agents take a command, not {kind}")
            file_part, _, func = values["entry"].rpartition(":")
            if file_part.endswith(".py"):
                values["entry"] = f"{(path.parent / file_part).resolve()}:{func}"
        if values.get("cwd") is not None:
            values["cwd"] = str((path.parent / values["cwd"]).resolve())
        group = values.get("group")
        if group is not None and group not in group_names:
            raise fail(f"{where}.group", f"no group named {group!r}; expected one of "
                       + (", ".join(group_names) or "(no [[groups]] defined)"))
        if values.get("backoff_max_s", AgentSpec.backoff_max_s) < \
                values.get("backoff_initial_s", AgentSpec.backoff_initial_s):
            raise fail(f"{where}.backoff_max_s", "must be >= backoff_initial_s")
        if "env" in values:
            values["env"] = tuple(sorted(values["env"].items()))
        if "depends_on" in values:
            values["depends_on"] = tuple(values["depends_on"])
        agents.append(AgentSpec(**values))
    for agent in agents:
        for dep in agent.depends_on:
            if dep not in wheres:
                raise fail(f"{wheres[agent.name]}.depends_on",
                           f"no agent named {dep!r} to depend on")
            if dep == agent.name:
                raise fail(f"{wheres[agent.name]}.depends_on", "an agent cannot depend on itself")
    agents, groups = _expand_instances(agents, groups, wheres, fail)
    try:
        start_order(tuple(agents), tuple(groups))
    except ValueError as exc:
        name = str(exc).split(":", 1)[0].split(INSTANCE_SEP)[0]
        raise fail(f"{wheres.get(name, 'agents')}.depends_on", str(exc)) from None
    return tuple(agents), tuple(groups)


INSTANCE_SEP = "@"


def instance_names(name: str, count: int) -> list[str]:
    """The names of an agent's instances: `name` alone, or name@1 .. name@N (1-based, like
    systemd's template instances; '@' is not allowed in a configured name, so they never
    collide with one)."""
    return [name] if count == 1 else [f"{name}{INSTANCE_SEP}{i}" for i in range(1, count + 1)]


def _expand_instances(agents: list[AgentSpec], groups: list[GroupSpec], wheres: dict[str, str],
                      fail) -> tuple[list[AgentSpec], list[GroupSpec]]:
    """Each agent with `instances = N > 1` becomes a group of its name holding N agents
    name@1..name@N with its spec (env OUTPOST_INSTANCE = 1..N), and a dependency on it
    becomes a dependency on every instance."""
    many = {a.name: instance_names(a.name, a.instances) for a in agents if a.instances > 1}
    if not many:
        return agents, groups
    out_agents: list[AgentSpec] = []
    out_groups = list(groups)
    for agent in agents:
        deps = tuple(n for d in agent.depends_on for n in many.get(d, [d]))
        if agent.name not in many:
            out_agents.append(dataclasses.replace(agent, depends_on=deps))
            continue
        if agent.restart_window_s <= 0:  # pragma: no cover - the schema refuses it
            raise fail(f"{wheres[agent.name]}.restart_window_s", "must be positive")
        out_groups.append(GroupSpec(
            agent.name, agent.group, agent.order, "one_for_one",
            # The group's intensity: every instance's own budget, so it fails to its
            # parent only after all of them spent theirs.
            max(1, agent.max_restarts) * agent.instances, agent.restart_window_s,
            instances_of=agent.name))
        for i, name in enumerate(many[agent.name], 1):
            env = tuple(sorted({**dict(agent.env), "OUTPOST_INSTANCE": str(i)}.items()))
            out_agents.append(dataclasses.replace(
                agent, name=name, group=agent.name, order=i, depends_on=deps, env=env,
                instances=1, instance_of=agent.name))
    return out_agents, out_groups


def start_order(agents: tuple[AgentSpec, ...], groups: tuple[GroupSpec, ...]) \
        -> dict[str | None, list[tuple[str, str]]]:
    """Each group's children in start order: {group or None (root): [("agent"|"group", name)]}.

    Children sort by `order` (then agents before groups, then file order); an
    agent moves after the siblings it depends on. A dependency must start
    earlier in the whole tree's depth-first order, else ValueError("name: why").
    """
    children: dict[str | None, list[tuple[int, int, str, str]]] = {None: []}
    for g in groups:
        children.setdefault(g.name, [])
    first_instance: dict[str, int] = {}
    for i, a in enumerate(agents):
        children[a.group].append((a.order, i, "agent", a.name))
        if a.instance_of is not None:
            first_instance.setdefault(a.instance_of, i)
    for i, g in enumerate(groups):
        # An agent's instances start where the agent would have: in its file position.
        at = first_instance.get(g.instances_of, len(agents) + i) \
            if g.instances_of is not None else len(agents) + i
        children.setdefault(g.parent, []).append((g.order, at, "group", g.name))
    deps = {a.name: set(a.depends_on) for a in agents}
    plan: dict[str | None, list[tuple[str, str]]] = {}
    for group, items in children.items():
        pending = [(kind, name) for _, _, kind, name in sorted(items)]
        ordered: list[tuple[str, str]] = []
        names_here = {name for _, name in pending}
        while pending:
            for i, (kind, name) in enumerate(pending):
                local = deps.get(name, set()) & names_here if kind == "agent" else set()
                if local <= {n for _, n in ordered}:
                    ordered.append(pending.pop(i))
                    break
            else:
                raise ValueError(f"{pending[0][1]}: depends_on forms a cycle")
        plan[group] = ordered
    position: dict[str, int] = {}

    def walk(group: str | None) -> None:
        for kind, name in plan[group]:
            if kind == "agent":
                position[name] = len(position)
            else:
                walk(name)
    walk(None)
    for a in agents:
        for dep in a.depends_on:
            if position[dep] > position[a.name]:
                raise ValueError(f"{a.name}: depends on {dep!r}, which starts later in the "
                                 "supervision tree (move it to an earlier group or order)")
    return plan


def _section(raw: dict, name: str, cls: type, fail) -> Any:
    """Table `[name]` of `raw` as an instance of the section dataclass `cls`."""
    table = raw.get(name, {})
    if not isinstance(table, dict):
        raise fail(name, f"expected a table [{name}]")
    return cls(**_check(table, cls, name, fail))


def _check(table: dict, cls: type, where: str, fail) -> dict[str, Any]:
    """The keys given in `table`, checked and converted against the fields of `cls`
    (missing ones are left to the dataclass defaults; required ones must be there)."""
    keys = keys_of(cls)
    out: dict[str, Any] = {}
    for name, value in table.items():
        spec = keys.get(name)
        if spec is None:
            raise fail(f"{where}.{name}", "unknown key; expected one of " + ", ".join(keys))
        if spec.section is not None:  # a nested table, e.g. [uplink.tls]
            if not isinstance(value, dict):
                raise fail(f"{where}.{name}", f"expected a table [{where}.{name}]")
            out[name] = spec.section(**_check(value, spec.section, f"{where}.{name}", fail))
            continue
        try:
            out[name] = spec.convert(value)
        except (ValueError, TypeError):
            raise fail(f"{where}.{name}", f"expected {spec.expected}, got {value!r}") from None
    for name in required_keys(cls):
        if name not in out:
            raise fail(f"{where}.{name}", f"missing; expected {keys[name].expected}")
    return out
