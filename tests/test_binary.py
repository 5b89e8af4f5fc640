"""The one-file binary runs the example end to end, survives kill -9, and stops cleanly."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.runtime_proc import ROOT, RuntimeProc, wait_for

pytestmark = pytest.mark.binary



def count_of(rt: RuntimeProc) -> int:
    result = rt.cli("state", "get", "counter", "count", "--json")
    return json.loads(result.stdout)["value"] if result.returncode == 0 else -1


def test_binary_runs_the_example_and_resumes_after_kill9(binary: Path, tmp_path: Path,
                                                         runtimes: list) -> None:
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    config = tmp_path / "examples" / "outpost.toml"

    rt = RuntimeProc(config, [str(binary)]).start()
    runtimes.append(rt)
    status = rt.wait_running("counter", timeout=60)
    assert status["agents"][0]["state"] == "running"
    from_cli = json.loads(rt.cli("status", "--json").stdout)
    assert from_cli["agents"][0]["name"] == "counter"
    last_read = wait_for(lambda: (c := count_of(rt)) >= 3 and c, what="count >= 3")

    rt.kill9()
    rt2 = RuntimeProc(config, [str(binary)]).start()
    runtimes.append(rt2)
    rt2.wait_running("counter", timeout=60)
    assert count_of(rt2) >= last_read

    stop = rt2.cli("stop")
    assert stop.returncode == 0, stop.stderr
    assert rt2.proc.wait(timeout=30) == 0
    assert not rt2.socket.exists()
    assert not rt2.segment.exists()
