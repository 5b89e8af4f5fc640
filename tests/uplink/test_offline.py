"""Offline for long (issue 18, must hold 3), at the room level: the server is down
while events pour in; the outbox obeys max_bytes and when_full, RSS stays bounded,
and the drain after the server returns is measured."""

from __future__ import annotations

import json

import pytest

from tests.uplink.harness import Child
from tests.uplink.helpers import read_stream
from tests.uplink.natsserver import NatsServer

RSS_GROWTH_MAX = 150 << 20  # what a million offered events may add to the process


def offline_run(nats_binary, tmp_path, n: int, max_bytes: int, when_full: str) -> dict:
    server = NatsServer(nats_binary, tmp_path / "jetstream")  # not started: offline
    child = Child(str(tmp_path / "data"), server.url, "0", "1", "[0]", "0",
                  "--offline", str(n), "--max-bytes", str(max_bytes),
                  "--when-full", when_full)
    try:
        lines = child.wait_for(lambda ls: any(x.startswith("offline ") for x in ls),
                               timeout=1800, what="offline figures")
        offline = json.loads(next(x for x in lines if x.startswith("offline "))[8:])
        server.start()
        lines = child.wait_for(lambda ls: any(x.startswith("drained ") for x in ls),
                               timeout=1800, what="drained")
        drained = json.loads(next(x for x in lines if x.startswith("drained "))[8:])
        msgs = read_stream(server.url, expect=drained["drained"], timeout=300)
    finally:
        child.kill9()
        server.kill9()
    print(f"\noffline {when_full}: {json.dumps(offline)}\n  {json.dumps(drained)}")
    return {"offline": offline, "drained": drained, "msgs": msgs}


def check(result: dict, n: int, max_bytes: int, when_full: str) -> None:
    off, msgs = result["offline"], result["msgs"]
    assert off["peak_backlog_bytes"] <= max_bytes
    assert off["backlog_bytes"] <= max_bytes
    dropped = off["dropped"].get("event", 0)
    assert dropped > 0 and dropped + off["backlog_msgs"] == n  # every drop counted
    assert len(msgs) == off["backlog_msgs"] == result["drained"]["drained"]
    seqs = [json.loads(m["data"])["seq"] for m in msgs]
    assert seqs == sorted(seqs)
    if when_full == "drop_oldest":
        assert seqs[-1] == n - 1  # the newest are kept
    else:
        assert seqs[0] == 0 and seqs == list(range(len(seqs)))  # the oldest are kept
    assert off["peak_rss"] - off["rss_at_start"] < RSS_GROWTH_MAX


@pytest.mark.parametrize("when_full", ["drop_oldest", "refuse_new"])
def test_offline_short(nats_binary, tmp_path, when_full):
    n, max_bytes = 30_000, 1 << 20
    check(offline_run(nats_binary, tmp_path, n, max_bytes, when_full), n, max_bytes, when_full)


@pytest.mark.soak
@pytest.mark.parametrize("when_full", ["drop_oldest", "refuse_new"])
def test_offline_a_million_events(nats_binary, tmp_path, when_full):
    n, max_bytes = 1_000_000, 32 << 20
    result = offline_run(nats_binary, tmp_path, n, max_bytes, when_full)
    check(result, n, max_bytes, when_full)
