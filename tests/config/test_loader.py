"""Config loading: good files load; every kind of bad file gives one precise line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from runtime.config import ConfigError, load_config
from tests.runtime_proc import ROOT

GOOD = """
[runtime]
data_dir = "d"
run_dir = "r"

[store]
map_size = "8MiB"

[[agents]]
name = "counter"
entry = "agents/counter.py:run"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "outpost.toml"
    path.write_text(text)
    return path


def error_of(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    message = str(info.value)
    assert "\n" not in message
    assert str(tmp_path / "outpost.toml") in message
    return message


def test_good_config_resolves_paths_relative_to_the_file(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, GOOD))
    assert config.data_dir == tmp_path / "d"
    assert config.socket_path == tmp_path / "r" / "outpost.sock"
    assert config.store.map_size == 8 << 20
    (agent,) = config.agents
    assert agent.entry == f"{tmp_path / 'agents' / 'counter.py'}:run"
    assert agent.restart == "permanent"


def test_example_config_loads() -> None:
    config = load_config(ROOT / "examples" / "outpost.toml")
    assert [a.name for a in config.agents] == ["counter"]


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.toml")


def test_syntax_error_names_the_position(tmp_path: Path) -> None:
    assert "TOML syntax error" in error_of(tmp_path, "[runtime\n")


@pytest.mark.parametrize(("text", "key", "expected"), [
    ("[runtime]\ndata_dri = 'x'\n", "runtime.data_dri", "unknown key"),
    ("[stor]\n", "stor", "unknown section"),
    ("[store]\nmap_size = 'lots'\n", "store.map_size", "a size in bytes"),
    ("[store]\ndurability = 'maybe'\n", "store.durability", "one of 'sync', 'interval'"),
    ("[store]\nbatch_window_ms = 500\n", "store.batch_window_ms", "from 0 to 100"),
    ("[store]\nmax_batch = true\n", "store.max_batch", "an integer"),
    ("[[agents]]\nname = 'a'\nentry = 'm:run'\nrestart = 'always'\n", "agents[0].restart",
     "one of 'permanent'"),
    ("[[agents]]\nname = 'a'\n", "agents[0].entry", "missing"),
    ("[[agents]]\nname = 'a'\nentry = 'nocolon'\n", "agents[0].entry", "module:function"),
    ("[[agents]]\nname = '1bad'\nentry = 'm:run'\n", "agents[0].name", "starting with a letter"),
    ("[[agents]]\nname = 'a'\nentry = 'm:run'\ncolour = 1\n", "agents[0].colour", "unknown key"),
    ("[[agents]]\nname = 'a'\nentry = 'm:run'\n[[agents]]\nname = 'a'\nentry = 'm:run'\n",
     "agents[1].name", "duplicate"),
    ("agents = 3\n", "agents", "array of tables"),
])
def test_bad_values_name_file_key_and_expectation(tmp_path: Path, text: str, key: str,
                                                  expected: str) -> None:
    message = error_of(tmp_path, text)
    assert f": {key}: " in message
    assert expected in message


def test_cli_reports_config_errors_in_one_line_with_exit_2(tmp_path: Path) -> None:
    path = write(tmp_path, "[runtime]\nlog_level = 'loud'\n")
    result = subprocess.run([sys.executable, "-m", "runtime", "run", "--config", str(path)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "runtime.log_level" in lines[0] and str(path) in lines[0]
