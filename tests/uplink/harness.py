"""Loss harness: a real process puts into the outbox (real store, real uplink) and is
killed -9 while the NATS server is killed -9 and restarted. Shared by
tests/uplink/test_loss.py (short form in CI, long form marked soak).

Child (`python -m tests.uplink.harness DATA_DIR URL RUN AGENTS START_JSON COUNT
[--max-bytes N --when-full W]`): opens the store, runs the uplink, and has AGENTS
concurrent tasks each putting {"a", "i", "r"} messages for its own agent, i from its
start. After each put returned (durable) it prints `ack a i r`. With COUNT 0 it puts
nothing and prints `drained` once the outbox is empty. Offline mode (`--offline N`)
offers N events while the server is down and prints RSS and outbox figures as JSON.

Parent (`run_chaos`): starts children, kills them -9 at chosen moments, kills -9 and
restarts the server at others, and at the end checks what JetStream holds: every
acknowledged message exactly once, each agent's messages in put order, no Nats-Msg-Id
twice.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


# -- child ---------------------------------------------------------------------------


async def child_main(args: argparse.Namespace) -> None:
    import trio

    from runtime.store import StoreOptions, open_store
    from runtime.uplink.uplink import Uplink
    from tests.uplink.helpers import uplink_cfg

    outbox = {"max_bytes": args.max_bytes, "when_full": args.when_full}
    cfg = uplink_cfg(args.url, "chaos", outbox=outbox, window=args.window)
    starts = json.loads(args.starts)
    out = sys.stdout

    def say(line: str) -> None:
        out.write(line + "\n")
        out.flush()

    async with open_store(args.data_dir, StoreOptions(map_size=1 << 20,
                                                      map_size_max=4 << 30)) as store, \
            trio.open_nursery() as nursery:
        uplink = await nursery.start(Uplink(cfg, store).run)
        say("ready")
        if args.offline:
            await offline(uplink, args.offline, say)
            nursery.cancel_scope.cancel()
            return
        if args.count == 0:
            with trio.fail_after(300):
                while uplink.outbox.backlog_msgs or not uplink.link.connected:
                    await trio.sleep(0.02)
            say("drained " + json.dumps(uplink.stats()))
            nursery.cancel_scope.cancel()
            return

        async def agent(a: int) -> None:
            for i in range(starts[a], starts[a] + args.count):
                await uplink.publish(f"agent{a}", "seq", {"a": a, "i": i, "r": args.run})
                say(f"ack {a} {i} {args.run}")

        async with trio.open_nursery() as agents:
            for a in range(args.agents):
                agents.start_soon(agent, a)
        say("done")
        await trio.sleep_forever()


async def offline(uplink, n: int, say) -> None:
    """Offer `n` events while the server is down, in batches as the event copier does;
    report peak RSS, the outbox's bytes against max_bytes, and the drops."""
    import psutil

    proc = psutil.Process()
    ob = uplink.outbox
    rss_at_start = peak_rss = proc.memory_info().rss
    peak_backlog = 0
    batch = 500
    started = time.monotonic()
    for first in range(0, n, batch):
        items = [ob.item("event.test", {"seq": first + k, "type": "test", "pad": "x" * 40},
                         kind="event", origin=("events", first + k + 1))
                 for k in range(min(batch, n - first))]
        await ob.offer(items)
        peak_backlog = max(peak_backlog, ob.backlog_bytes)
        if first % (batch * 40) == 0:
            peak_rss = max(peak_rss, proc.memory_info().rss)
    produced_s = time.monotonic() - started
    peak_rss = max(peak_rss, proc.memory_info().rss)
    say("offline " + json.dumps({"produced": n, "produce_s": produced_s, "peak_rss": peak_rss,
                                 "rss_at_start": rss_at_start,
                                 "peak_backlog_bytes": peak_backlog,
                                 "max_bytes": ob.max_bytes, **ob.stats()}))
    import trio

    kept = ob.backlog_msgs
    while not uplink.link.connected:  # the parent starts the server now
        await trio.sleep(0.01)
    started = time.monotonic()
    while ob.backlog_msgs:
        await trio.sleep(0.005)
    took = time.monotonic() - started
    say("drained " + json.dumps({"drained": kept, "drain_s": took,
                                 "drain_per_s": kept / took if took else None,
                                 "peak_rss": max(peak_rss, proc.memory_info().rss)}))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("data_dir")
    p.add_argument("url")
    p.add_argument("run", type=int)
    p.add_argument("agents", type=int)
    p.add_argument("starts")
    p.add_argument("count", type=int)
    p.add_argument("--max-bytes", type=int, default=256 << 20)
    p.add_argument("--when-full", default="drop_oldest")
    p.add_argument("--window", type=int, default=512)
    p.add_argument("--offline", type=int, default=0)
    import trio

    trio.run(child_main, p.parse_args())


# -- parent --------------------------------------------------------------------------


class Child:
    """One harness process; its stdout lines are collected by a reader thread."""

    def __init__(self, *argv: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.uplink.harness", *argv],
                                     cwd=ROOT, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True,
                                     start_new_session=True)
        self.lines: list[str] = []
        self.cond = threading.Condition()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self.cond:
                self.lines.append(line.rstrip("\n"))
                self.cond.notify_all()
        with self.cond:
            self.lines.append("<eof>")
            self.cond.notify_all()

    def wait_for(self, predicate, timeout: float = 300.0, what: str = "") -> list[str]:
        deadline = time.monotonic() + timeout
        with self.cond:
            while not predicate(self.lines):
                if self.lines and self.lines[-1] == "<eof>":
                    raise AssertionError(f"harness exited ({self.proc.wait()}) before {what}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"timed out waiting for {what}")
                self.cond.wait(left)
            return list(self.lines)

    def acks(self) -> int:
        with self.cond:
            return sum(1 for line in self.lines if line.startswith("ack "))

    def kill9(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)
        self.reader.join(30)


@dataclass
class ChaosResult:
    acked: set = field(default_factory=set)
    messages: int = 0
    server_kills: int = 0
    harness_kills: int = 0
    drained: dict = field(default_factory=dict)


def run_chaos(data_dir: Path, server, total: int, agents: int = 4, server_kills: int = 5,
              harness_kills: int = 3) -> ChaosResult:
    """`total` messages from `agents` agents across harness_kills + 1 runs of the child;
    the server is killed -9 and restarted `server_kills` times in between."""
    from tests.uplink.helpers import read_stream

    result = ChaosResult()
    per_run = total // (harness_kills + 1)
    # Moments, as a count of acks within a run, at which the server is killed; it is
    # restarted once a few more acks came in while it was down.
    kills_per_run = [server_kills // (harness_kills + 1) +
                     (1 if r < server_kills % (harness_kills + 1) else 0)
                     for r in range(harness_kills + 1)]
    next_i = [0] * agents
    for run in range(harness_kills + 1):
        last = run == harness_kills
        count = (total - per_run * harness_kills) // agents if last else per_run
        child = Child(str(data_dir), server.url, str(run), str(agents),
                      json.dumps(next_i), str(count))
        child.wait_for(lambda lines: "ready" in lines, what="ready")
        goal = count * agents if last else per_run  # a killed run stops partway
        marks = [goal * (k + 1) // (kills_per_run[run] + 2) for k in range(kills_per_run[run])]
        for mark in marks:
            child.wait_for(lambda lines, m=mark: sum(x.startswith("ack ") for x in lines) >= m,
                           what=f"{mark} acks")
            server.kill9()
            result.server_kills += 1
            down_at = child.acks()
            more = down_at + max(1, goal // 50)
            child.wait_for(lambda lines, m=more: sum(x.startswith("ack ") for x in lines) >= m,
                           what="acks while the server is down")
            server.start()
        if last:
            child.wait_for(lambda lines: "done" in lines, what="done")
        else:
            child.wait_for(lambda lines, g=goal: sum(x.startswith("ack ") for x in lines) >= g,
                           what=f"{goal} acks")
            child.kill9()
            result.harness_kills += 1
        for line in child.wait_for(lambda lines: True):
            if line.startswith("ack "):
                _, a, i, r = line.split()
                result.acked.add((int(a), int(i), int(r)))
                next_i[int(a)] = max(next_i[int(a)], int(i) + 1)
        if last:
            child.kill9()
    drain = Child(str(data_dir), server.url, str(harness_kills + 1), str(agents),
                  json.dumps(next_i), "0")
    lines = drain.wait_for(lambda lines: any(x.startswith("drained") for x in lines),
                           what="drained")
    drain.kill9()
    result.drained = json.loads(next(x for x in lines if x.startswith("drained"))[8:])
    msgs = read_stream(server.url, expect=len(result.acked), timeout=120)
    result.messages = len(msgs)
    check(msgs, result.acked)
    return result


def check(msgs: list[dict], acked: set) -> None:
    """Every acked message exactly once; per agent in put order; no id twice."""
    ids = [m["headers"]["Nats-Msg-Id"] for m in msgs]
    assert len(ids) == len(set(ids)), "a Nats-Msg-Id is stored twice"
    seen: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for m in msgs:
        d = json.loads(m["data"])
        seen[d["a"]].append((d["r"], d["i"]))
    for a, order in seen.items():
        assert all(x < y for x, y in itertools.pairwise(order)), \
            f"agent {a}: messages out of put order or twice"
    present = {(a, i, r) for a, order in seen.items() for r, i in order}
    missing = acked - present
    assert not missing, f"{len(missing)} acknowledged message(s) missing, e.g. " \
        f"{sorted(missing)[:5]}"


if __name__ == "__main__":
    main()
