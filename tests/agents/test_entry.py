"""Loading agent entry points from files and modules."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from runtime.agents.entry import EntryError, load_entry


def test_each_load_gets_fresh_globals_and_picks_up_edits(tmp_path: Path) -> None:
    agent = tmp_path / "agent.py"
    agent.write_text("CALLS = []\ndef run(ctx):\n    CALLS.append(ctx)\n    return 'v1'\n")
    first = load_entry(f"{agent}:run")
    first("a")
    second = load_entry(f"{agent}:run")
    assert second.__globals__["CALLS"] == []  # a restart does not inherit module state
    assert first.__globals__["CALLS"] == ["a"]

    agent.write_text("def run(ctx):\n    return 'v2, a longer body'\n")
    st = agent.stat()
    os.utime(agent, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert load_entry(f"{agent}:run")(None) == "v2, a longer body"


def test_missing_file_function_and_broken_code_are_named(tmp_path: Path) -> None:
    with pytest.raises(EntryError, match="no such file"):
        load_entry(f"{tmp_path / 'nope.py'}:run")
    (tmp_path / "a.py").write_text("x = 1\n")
    with pytest.raises(EntryError, match="has no function 'run'"):
        load_entry(f"{tmp_path / 'a.py'}:run")
    (tmp_path / "b.py").write_text("def run(:\n")
    with pytest.raises(EntryError, match="failed to import"):
        load_entry(f"{tmp_path / 'b.py'}:run")
