"""The one-file binary serves the console with its vendored assets (no network needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from runtime.http.app import STATIC_DIR
from tests.http.client import request, start_with_console
from tests.runtime_proc import FIXTURE_AGENTS, agent_block

pytestmark = pytest.mark.binary


def test_the_binary_serves_the_console_and_its_assets(binary: Path, tmp_path: Path,
                                                      start_runtime) -> None:
    agents = agent_block("ctl", f"{FIXTURE_AGENTS / 'controlled.py'}:run", kind="process")
    _, url = start_with_console(start_runtime, tmp_path, agents, ["ctl"],
                                command=[str(binary)], timeout=60)
    assert '<tr data-agent="ctl"' in request(url, "/").text
    for name in ("uplot.min.js", "uplot.min.css", "uplot.LICENSE", "console.js", "console.css"):
        served = request(url, f"/static/{name}")
        assert served.status == 200, name
        assert served.body == (STATIC_DIR / name).read_bytes(), name
    assert "outpost_agents_up 1.0" in request(url, "/metrics").text
