"""The outbox drains into JetStream in order, once, with the ids the issue names."""

from __future__ import annotations

import json
import uuid

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
        [f"gw1/{uplink.outbox.epoch}/{OUTBOX}/{s}" for s in range(1, 501)]
    assert msgs[0]["headers"]["Outpost-Agent"] == "sensor"


async def test_stops_promptly_while_the_server_is_unreachable(tmp_path):
    from tests.uplink.natsserver import free_port

    cfg = uplink_cfg(f"nats://127.0.0.1:{free_port()}", "gw1")
    async with open_store(tmp_path / "data") as store:
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                uplink = await nursery.start(Uplink(cfg, store).run)
                assert await uplink.publish("a", "x", 1) == 1  # durable while offline
                await wait_until(lambda: uplink.link.errors >= 2)  # it keeps trying
                nursery.cancel_scope.cancel()
        assert not uplink.link.connected and "connect" in uplink.link.last_error
        assert uplink.outbox.backlog_msgs == 1


async def test_credentials_are_used(nats_binary, tmp_path):
    import dataclasses

    from tests.uplink.natsserver import NatsServer

    secret = uuid.uuid4().hex  # a throwaway test server's login
    server = NatsServer(nats_binary, tmp_path / "js", extra=["--user", "edge",
                                                             "--pass", secret]).start()
    try:
        good = uplink_cfg(server.url, "gw1", user="edge", password=secret)
        bad = dataclasses.replace(good, host_id="gw2", password=secret[::-1])
        error = await one_in_one_refused(tmp_path, good, bad)
        assert "uthoriz" in error  # nats: 'Authorization Violation'
    finally:
        server.kill9()


async def one_in_one_refused(tmp_path, good, bad) -> str:
    """Run two uplinks: `good` gets a message through, `bad` is refused at connect;
    returns the refused one's last error."""
    async with open_store(tmp_path / "a") as s1, open_store(tmp_path / "b") as s2, \
            trio.open_nursery() as nursery:
        ok = await nursery.start(Uplink(good, s1).run)
        refused = await nursery.start(Uplink(bad, s2).run)
        await ok.publish("a", "x", 1)
        await wait_until(lambda: ok.outbox.backlog_msgs == 0)
        await wait_until(lambda: refused.link.errors >= 1)
        assert not refused.link.connected
        nursery.cancel_scope.cancel()
    return refused.link.last_error


async def test_a_full_store_fails_the_put_not_the_room(tmp_path):
    import pytest

    from runtime.store import StoreFullError, StoreOptions
    from tests.uplink.natsserver import free_port

    cfg = uplink_cfg(f"nats://127.0.0.1:{free_port()}", "gw1",
                     outbox={"max_bytes": 1 << 30}, send={"metrics_every_s": 0.05})
    options = StoreOptions(map_size=1 << 20, map_size_max=2 << 20)
    async with open_store(tmp_path / "data", options) as store, trio.open_nursery() as nursery:
        uplink = await nursery.start(Uplink(cfg, store).run)
        with pytest.raises(StoreFullError, match="map_size_max"):
            for i in range(100_000):
                await uplink.publish("a", "x", {"i": i, "pad": "z" * 500})
        stored = uplink.outbox.backlog_msgs
        assert stored > 100
        with pytest.raises(StoreFullError):  # still full, still a clear error
            await uplink.publish("a", "x", {"i": -1, "pad": "z" * 5000})
        assert uplink.link._thread.is_alive()
        nursery.cancel_scope.cancel()
    async with open_store(tmp_path / "data", options) as store:
        assert store.last_seq(OUTBOX) == stored  # what was acknowledged is all there
