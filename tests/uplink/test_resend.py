"""A resend after an outage longer than the duplicate window stores nothing twice: the
uplink asks the stream what it holds before sending again. And a restored store draws
a new message-id epoch, so its repeated seqs never make JetStream drop new messages."""

from __future__ import annotations

import asyncio

import trio

from runtime.store import open_store
from runtime.uplink import subjects
from runtime.uplink.connect import connect, connect_options
from runtime.uplink.outbox import OUTBOX, mark_restored
from runtime.uplink.uplink import Uplink
from tests.uplink.helpers import read_stream, uplink_cfg
from tests.uplink.test_publish import wait_until


async def js_do(url: str, fn) -> object:
    async def go():
        nc = await connect(connect_options(servers=[url], name="t", reconnect=True))
        try:
            return await fn(nc.jetstream())
        finally:
            await nc.close()
    return await trio.to_thread.run_sync(lambda: asyncio.run(go()))


async def test_stored_but_unacked_messages_are_not_sent_twice(nats_server, tmp_path):
    url = nats_server.url

    async def short_window(js):  # dedup by the server lasts half a second only
        await js.add_stream(name="OUTPOST", subjects=["outpost.*.up.>"], duplicate_window=0.5)
        probe = {"Nats-Msg-Id": "probe"}
        await js.publish("outpost.probe.up.x", b"", headers=probe)
        while not (await js.publish("outpost.probe.up.x", b"", headers=probe)).duplicate:
            pass  # the first repeat may land before the window even started: try again
        while (await js.publish("outpost.probe.up.x", b"", headers=probe)).duplicate:
            await asyncio.sleep(0.05)  # the condition itself: the window has passed

    cfg = uplink_cfg(url, "gw1")
    async with open_store(tmp_path / "data") as store:
        uplink = Uplink(cfg, store)
        await uplink.outbox.open()
        for i in range(20):
            await uplink.publish("a", "x", {"i": i})
        records = store.read(OUTBOX, 1)
        epoch = uplink.outbox.epoch

        async def lost_acks(js):  # what the last connection got stored before it broke
            await js.add_stream(name="OUTPOST", subjects=["outpost.*.up.>"],
                                duplicate_window=0.5)
            for seq, rec in records[:12]:
                await js.publish(subjects.up_subject("outpost", "gw1", rec[2]), rec[4],
                                 headers={"Nats-Msg-Id": subjects.msg_id("gw1", epoch, OUTBOX,
                                                                         seq)})
        await js_do(url, lost_acks)
        await js_do(url, short_window)
        async with trio.open_nursery() as nursery:
            uplink = await nursery.start(Uplink(cfg, store).run)
            await wait_until(lambda: uplink.outbox.backlog_msgs == 0)
            nursery.cancel_scope.cancel()
    msgs = await trio.to_thread.run_sync(
        lambda: read_stream(url, subject="outpost.gw1.up.>", expect=20))
    ids = [m["headers"]["Nats-Msg-Id"] for m in msgs]
    assert ids == [subjects.msg_id("gw1", epoch, OUTBOX, s) for s in range(1, 21)]
    assert uplink.link.skipped_stored == 12 and uplink.link.published == 8


async def test_a_restored_store_draws_a_new_epoch(tmp_path):
    async with open_store(tmp_path) as store:
        first = Uplink(uplink_cfg("nats://127.0.0.1:1", "gw1"), store).outbox
        await first.open()
    async with open_store(tmp_path) as store:
        again = Uplink(uplink_cfg("nats://127.0.0.1:1", "gw1"), store).outbox
        await again.open()
        assert again.epoch == first.epoch  # kept across restarts
    mark_restored(tmp_path)
    async with open_store(tmp_path) as store:
        restored = Uplink(uplink_cfg("nats://127.0.0.1:1", "gw1"), store).outbox
        await restored.open()
        assert restored.epoch != first.epoch
    async with open_store(tmp_path) as store:
        later = Uplink(uplink_cfg("nats://127.0.0.1:1", "gw1"), store).outbox
        await later.open()
        assert later.epoch == restored.epoch
