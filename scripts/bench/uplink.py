#!/usr/bin/env python3
"""Uplink benchmark: outbox -> JetStream against a bare nats-py publish loop, and the
cost of a durable outbox put against a kvstate set, side by side in ONE run.

    .venv/bin/python scripts/bench/uplink.py [--quick] [--json] [--messages N]

a. Drain: N messages already in the outbox (put while the uplink is off), then the
   uplink starts; messages/s from its start until every one is acknowledged by
   JetStream (Nats-Msg-Id, headers, the durable cursor, all of it). Against it, on the
   same server and payload: a bare nats-py asyncio loop, `js.publish_async` with the
   same headers and the same window of acks in flight, then waiting for all acks.
   Target: outbox >= 0.8x the bare loop. Rounds alternate (A, B, A, B, ...); the
   median of each is taken.
b. Put: one writer awaiting each `outbox.put` (durable, fsynced) vs one awaiting each
   `state.set` of the same payload on the same store, interleaved in rounds. Reported:
   microseconds per op of each and the added cost of the put.

A private nats-server -js runs on 127.0.0.1 with its store in a temporary dir
(Debian's nats-server, apt-get installed if missing). --json prints one object with
every figure; nothing is rounded before ratios are taken.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import trio  # noqa: E402

from runtime.store import StateBook, open_store  # noqa: E402
from runtime.uplink.connect import connect, connect_options  # noqa: E402
from runtime.uplink.outbox import OUTBOX, encode  # noqa: E402
from runtime.uplink.uplink import Uplink  # noqa: E402
from tests.uplink.helpers import uplink_cfg  # noqa: E402
from tests.uplink.natsserver import NatsServer, ensure_nats_server  # noqa: E402

PAYLOAD = {"sensor": "temp", "value": 21.5, "unit": "C", "pad": "x" * 32}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- a. drain ----------------------------------------------------------------------------


async def outbox_drain(url: str, data_dir: Path, n: int, window: int, host: str) -> float:
    """Messages/s of the uplink draining `n` pre-filled messages into JetStream, timed
    from its connection (as the bare loop is) to the last acknowledgement."""
    cfg = uplink_cfg(url, host, window=window, outbox={"max_bytes": 1 << 30})
    async with open_store(data_dir) as store:
        record = [time.time(), "publish", "pub.bench.reading", "bench", encode(PAYLOAD), None]
        for first in range(0, n, 5000):
            await store.append_many(OUTBOX, [record] * min(5000, n - first))
        up = Uplink(cfg, store)
        async with trio.open_nursery() as nursery:
            await nursery.start(up.run)
            while not up.link.connected:
                await trio.sleep(0.0005)
            started, left = time.perf_counter(), up.outbox.backlog_msgs
            while up.outbox.backlog_msgs:
                await trio.sleep(0.001)
            took = time.perf_counter() - started
            nursery.cancel_scope.cancel()
    return left / took


async def bare_loop(url: str, n: int, window: int, host: str) -> float:
    """Seconds for a bare nats-py loop to publish `n` messages and get every ack."""
    nc = await connect(connect_options(servers=[url], name="bench-bare"))
    try:
        js = nc.jetstream(publish_async_max_pending=window)
        payload = encode(PAYLOAD)
        subject = f"outpost.{host}.up.pub.bench.reading"
        started = time.perf_counter()
        futures = []
        for i in range(n):
            futures.append(await js.publish_async(subject, payload, headers={
                "Nats-Msg-Id": f"{host}/bare/{i}", "Outpost-Host": host,
                "Outpost-Kind": "publish", "Outpost-Time": repr(time.time()),
                "Outpost-Agent": "bench"}))
        await asyncio.gather(*futures)
        return time.perf_counter() - started
    finally:
        await nc.close()


# -- b. put vs set -------------------------------------------------------------------------


async def put_vs_set(data_dir: Path, n: int, rounds: int) -> dict[str, Any]:
    cfg = uplink_cfg("nats://127.0.0.1:1", "bench", outbox={"max_bytes": 1 << 30})
    puts, sets = [], []
    async with open_store(data_dir) as store:
        up = Uplink(cfg, store)
        await up.outbox.open()
        state = await StateBook(store, every_ops=10**9).open("agent/bench/state")
        for _ in range(rounds):
            started = time.perf_counter()
            for _ in range(n):
                await up.outbox.put("pub.bench.reading", PAYLOAD, agent="bench")
            puts.append((time.perf_counter() - started) / n)
            started = time.perf_counter()
            for i in range(n):
                await state.set(f"k{i % 64}", PAYLOAD)
            sets.append((time.perf_counter() - started) / n)
    put_us, set_us = statistics.median(puts) * 1e6, statistics.median(sets) * 1e6
    return {"outbox_put_us": put_us, "state_set_us": set_us,
            "put_added_us": put_us - set_us, "put_over_set": put_us / set_us,
            "put_rounds_us": [p * 1e6 for p in puts], "set_rounds_us": [s * 1e6 for s in sets]}


# -- main ----------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "python": platform.python_version(),
            "platform": platform.platform(), "load_avg_1m": os.getloadavg()[0],
            "date": datetime.now(UTC).isoformat(timespec="seconds")}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small counts: proves it runs")
    p.add_argument("--json", action="store_true")
    p.add_argument("--messages", type=int, default=None)
    p.add_argument("--window", type=int, default=512)
    p.add_argument("--rounds", type=int, default=None)
    args = p.parse_args()
    n = args.messages or (5_000 if args.quick else 100_000)
    rounds = args.rounds or (2 if args.quick else 5)
    puts = 300 if args.quick else 3000
    binary, why = ensure_nats_server()
    if binary is None:
        log(f"cannot run: {why}")
        return 1
    with tempfile.TemporaryDirectory(prefix="outpost-bench-uplink-") as tmp:
        work = Path(tmp)
        server = NatsServer(binary, work / "jetstream").start()
        try:
            drains, bares = [], []
            for r in range(rounds):
                host = f"bench{r}"
                log(f"round {r + 1}/{rounds}: outbox drain of {n} ...")
                drains.append(trio.run(outbox_drain, server.url, work / f"d{r}", n,
                                       args.window, host))
                log(f"round {r + 1}/{rounds}: bare nats-py loop of {n} ...")
                bares.append(n / asyncio.run(bare_loop(server.url, n, args.window, host)))
            log(f"outbox put vs state.set, {puts} each x {rounds} rounds ...")
            costs = trio.run(put_vs_set, work / "puts", puts, rounds)
        finally:
            server.kill9()
    outbox_rate, bare_rate = statistics.median(drains), statistics.median(bares)
    out = {
        "machine": machine(), "messages": n, "window": args.window, "rounds": rounds,
        "payload_bytes": len(encode(PAYLOAD)),
        "outbox_to_jetstream_msgs_per_s": outbox_rate,
        "bare_nats_py_msgs_per_s": bare_rate,
        "outbox_over_bare": outbox_rate / bare_rate, "target_outbox_over_bare": 0.8,
        "outbox_rounds_msgs_per_s": drains, "bare_rounds_msgs_per_s": bares,
        **costs,
    }
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(f"outbox -> JetStream  {outbox_rate:10.0f} msg/s   bare nats-py loop "
              f"{bare_rate:10.0f} msg/s   ratio {out['outbox_over_bare']:.2f} (target >= 0.8)")
        print(f"outbox.put {costs['outbox_put_us']:8.1f} us   state.set "
              f"{costs['state_set_us']:8.1f} us   added {costs['put_added_us']:+.1f} us")
    return 0


if __name__ == "__main__":
    sys.exit(main())
