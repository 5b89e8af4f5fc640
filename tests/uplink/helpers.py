"""Test helpers: an [uplink] section for a test server, and reading what JetStream holds."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from typing import Any

from runtime.config.schema import (
    UplinkCommandsSection,
    UplinkOutboxSection,
    UplinkSection,
    UplinkSendSection,
)
from runtime.uplink.connect import connect, connect_options


def uplink_cfg(url: str, host: str = "h1", *, outbox: dict | None = None,
               send: dict | None = None, commands: dict | None = None,
               **fields: Any) -> UplinkSection:
    """What load_config would give for [uplink] servers = [url], host_id = host, ..."""
    fields.setdefault("reconnect_initial_s", 0.05)
    fields.setdefault("reconnect_max_s", 0.5)
    fields.setdefault("ack_timeout_s", 5.0)
    return dataclasses.replace(
        UplinkSection(servers=(url,)), host_id=host,
        outbox=UplinkOutboxSection(**(outbox or {})),
        send=UplinkSendSection(**(send or {})),
        commands=UplinkCommandsSection(**(commands or {})), **fields)


async def _read_stream(url: str, stream: str, subject: str, expect: int | None,
                       timeout: float) -> list[dict]:
    import nats.errors
    from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

    nc = await connect(connect_options(servers=[url], name="test-reader", reconnect=True))
    try:
        js = nc.jetstream()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        from nats.js.errors import NotFoundError

        async def count() -> int:
            try:
                return (await js.stream_info(stream)).state.messages
            except NotFoundError:  # the uplink has not created it yet
                return -1

        while loop.time() < deadline:  # the condition itself, polled: the stream's count
            held = await count()
            if held >= (expect or 0) and held >= 0:
                break
            await asyncio.sleep(0.05)
        durable = f"t{uuid.uuid4().hex[:10]}"
        psub = await js.pull_subscribe(subject, durable=durable, stream=stream,
                                       config=ConsumerConfig(
                                           ack_policy=AckPolicy.NONE,
                                           deliver_policy=DeliverPolicy.ALL,
                                           filter_subject=subject))
        out: list[dict] = []
        while (await psub.consumer_info()).num_pending > 0 or not out:
            try:
                msgs = await psub.fetch(2000, timeout=2)
            except nats.errors.TimeoutError:
                if (await psub.consumer_info()).num_pending == 0:
                    break
                continue
            out.extend({"subject": m.subject, "headers": dict(m.headers or {}),
                        "data": m.data, "seq": m.metadata.sequence.stream} for m in msgs)
        await js.delete_consumer(stream, durable)
        return out
    finally:
        await nc.close()


def read_stream(url: str, stream: str = "OUTPOST", subject: str = ">",
                expect: int | None = None, timeout: float = 60.0) -> list[dict]:
    """Every message the stream holds on `subject` (blocking; run it in a thread). With
    `expect`, keeps reading (up to `timeout`) until that many arrived."""
    return asyncio.run(_read_stream(url, stream, subject, expect, timeout))
