"""Issue 3 item 8: kill -9 a writing child at random moments; nothing acked is lost.

The harness (tests/store/crash_harness.py, shared with scripts/chaos/store_crash.py)
starts a child that appends from many concurrent writers and reports each ack over
a pipe, SIGKILLs it at a random moment, and verifies recovery after every kill.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from .crash_harness import run_cycles


def test_kill_9_at_random_moments_loses_no_acked_record(tmp_path: Path) -> None:
    seed = int(os.environ.get("OUTPOST_CRASH_SEED", "0")) or None
    stats = run_cycles(tmp_path / "data", cycles=50, seed=seed, log_dir=tmp_path)
    assert stats.cycles == 50
    assert stats.acked_log > 1000  # the children really were writing when killed
    assert stats.acked_kv > 100
    assert stats.log_len >= stats.acked_log
    assert stats.checkpoints_seen >= 1  # kills also landed around checkpoints


@pytest.mark.soak
def test_kill_9_soak(tmp_path: Path) -> None:
    stats = run_cycles(tmp_path / "data", cycles=300, log_dir=tmp_path, max_acks=1500)
    assert stats.cycles == 300
