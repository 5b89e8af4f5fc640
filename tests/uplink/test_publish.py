"""The outbox drains into JetStream in order, once, with the ids the issue names."""

from __future__ import annotations

import json

import trio

from runtime.store import open_store
from runtime.uplink.outbox import OUTBOX
from runtime.uplink.uplink import Uplink
from tests.uplink.helpers import read_stream, uplink_cfg


async def wait_until(predicate, timeout: float = 60.0) -> None:
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.01)


async def test_puts_reach_jetstream_in_order_with_msg_ids(nats_server, tmp_path):
    cfg = uplink_cfg(nats_server.url, "gw1")
    async with open_store(tmp_path / "data") as store, trio.open_nursery() as nursery:
        uplink = await nursery.start(Uplink(cfg, store).run)
        seqs = [await uplink.publish("sensor", "temp.room1", {"n": i}) for i in range(500)]
        assert seqs == list(range(1, 501))
        await wait_until(lambda: uplink.outbox.backlog_msgs == 0)
        msgs = await trio.to_thread.run_sync(lambda: read_stream(nats_server.url, expect=500))
        nursery.cancel_scope.cancel()
    assert [json.loads(m["data"])["n"] for m in msgs] == list(range(500))
    assert {m["subject"] for m in msgs} == {"outpost.gw1.up.pub.sensor.temp.room1"}
    assert [m["headers"]["Nats-Msg-Id"] for m in msgs] == \
        [f"gw1/{OUTBOX}/{s}" for s in range(1, 501)]
    assert msgs[0]["headers"]["Outpost-Agent"] == "sensor"
