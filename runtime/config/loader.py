"""Reading a TOML config file into a validated `Config`."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

from runtime.config.schema import (
    AGENT_KEYS,
    CONTROL_KEYS,
    MAINTAIN_KEYS,
    RUNTIME_KEYS,
    SHM_KEYS,
    STORE_KEYS,
    TOP_SECTIONS,
    AgentSpec,
    Config,
    ConfigError,
    Key,
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
        if key not in TOP_SECTIONS:
            raise fail(key, "unknown section; expected one of " + ", ".join(TOP_SECTIONS))
    rt = _section(raw, "runtime", RUNTIME_KEYS, fail)
    store = _section(raw, "store", STORE_KEYS, fail)
    shm = _section(raw, "shm", SHM_KEYS, fail)
    control = _section(raw, "control", CONTROL_KEYS, fail)
    maintain = _section(raw, "maintain", MAINTAIN_KEYS, fail)
    if store["map_size_max"] < store["map_size"]:
        raise fail("store.map_size_max", f"must be >= store.map_size ({store['map_size']})")

    agents_raw = raw.get("agents", [])
    if not isinstance(agents_raw, list):
        raise fail("agents", "expected an array of tables: [[agents]]")
    agents: list[AgentSpec] = []
    seen: set[str] = set()
    for i, table in enumerate(agents_raw):
        where = f"agents[{i}]"
        if not isinstance(table, dict):
            raise fail(where, "expected a table ([[agents]])")
        values = _check(table, AGENT_KEYS, where, fail)
        if values["name"] in seen:
            raise fail(f"{where}.name", f"duplicate agent name {values['name']!r}")
        seen.add(values["name"])
        entry = values["entry"]
        file_part, _, func = entry.rpartition(":")
        if file_part.endswith(".py"):
            values["entry"] = f"{(path.parent / file_part).resolve()}:{func}"
        if values["backoff_max_s"] < values["backoff_initial_s"]:
            raise fail(f"{where}.backoff_max_s", "must be >= backoff_initial_s")
        agents.append(AgentSpec(**values))

    base = path.parent
    run_dir = (base / rt["run_dir"]).resolve()
    socket = run_dir / "outpost.sock"
    if len(os.fsencode(socket)) > _SOCKET_PATH_MAX:
        raise fail("runtime.run_dir", f"too long for a Unix socket path ({socket}); "
                   f"use a path of at most {_SOCKET_PATH_MAX - len('/outpost.sock')} bytes")
    return Config(
        path=path,
        data_dir=(base / rt["data_dir"]).resolve(),
        run_dir=run_dir,
        log_level=rt["log_level"],
        shutdown_timeout_s=float(rt["shutdown_timeout_s"]),
        store=store,
        shm_slots=shm["slots"],
        allowed_uids=tuple(control["allowed_uids"]),
        allowed_gids=tuple(control["allowed_gids"]),
        agents=tuple(agents),
        maintain={**maintain,
                  "archive_dir": (base / maintain["archive_dir"]).resolve(),
                  "logs_dir": (base / maintain["logs_dir"]).resolve()},
    )


def _section(raw: dict, name: str, keys: dict[str, Key], fail) -> dict[str, Any]:
    table = raw.get(name, {})
    if not isinstance(table, dict):
        raise fail(name, f"expected a table [{name}]")
    return _check(table, keys, name, fail)


def _check(table: dict, keys: dict[str, Key], where: str, fail) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in table.items():
        spec = keys.get(key)
        if spec is None:
            raise fail(f"{where}.{key}", "unknown key; expected one of " + ", ".join(keys))
        try:
            out[key] = spec.convert(value)
        except (ValueError, TypeError):
            raise fail(f"{where}.{key}", f"expected {spec.expected}, got {value!r}") from None
    for key, spec in keys.items():
        if key not in out:
            if spec.required:
                raise fail(f"{where}.{key}", f"missing; expected {spec.expected}")
            out[key] = spec.default
    return out
