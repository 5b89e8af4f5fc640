"""Loss and duplicates at the room level: a real process putting into a real outbox,
killed -9, while the NATS server is killed -9 and restarted (issue 18, must hold 2)."""

from __future__ import annotations

import pytest

from tests.uplink.harness import run_chaos


def test_kill9_server_and_process_short(nats_server, tmp_path):
    result = run_chaos(tmp_path / "data", nats_server, total=4000, agents=4,
                       server_kills=5, harness_kills=3)
    assert result.server_kills == 5 and result.harness_kills == 3
    assert len(result.acked) >= 4000 - 4  # every acked one checked present, once, in order
    assert result.drained["backlog_msgs"] == 0


@pytest.mark.soak
def test_kill9_server_and_process_100k(nats_server, tmp_path):
    result = run_chaos(tmp_path / "data", nats_server, total=100_000, agents=8,
                       server_kills=5, harness_kills=3)
    assert result.server_kills == 5 and result.harness_kills == 3
    assert len(result.acked) >= 100_000 - 8
