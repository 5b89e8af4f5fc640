"""Store crash harness, shared by tests/store/test_crash.py and scripts/chaos/store_crash.py.

Child (`python -m tests.store.crash_harness child DIR GENERATION WRITERS`): opens the
store and appends from many concurrent trio writers (single appends and small
append_many batches to a plain log stream, plus incr ops on a key-value state that a
StateBook checkpoints every few dozen ops). After each ack it writes a fixed-size
report to stdout (an unbuffered pipe): an ack is reported only after the store
returned it, so every reported record must survive anything that happens next.

Parent (`run_cycles`): starts a child, reads its reports, kill -9s it at a random
moment (sometimes before it even opened the store), then opens the store itself and
checks: recovery succeeded (open + state load, nothing quarantined), every acked
record is present with its exact content, the log is a gap-free prefix 1..last, each
writer's records are contiguous, and the counter state equals its own op count.
"""

from __future__ import annotations

import os
import random
import select
import signal
import struct
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import trio

from runtime.store import KeyValueState, StateBook, StoreOptions, open_store

ROOT = Path(__file__).resolve().parents[2]
LOG_STREAM = "crash/log"
KV_STREAM = "crash/kv"
READY = b"R"
# kind (1 = log record, 2 = counter value), seq or value, generation, writer, n
REPORT = struct.Struct(">BQIII")
KIND_LOG, KIND_KV = 1, 2
KV_WRITERS = 4


def child_options() -> StoreOptions:
    # A small initial map so the crashes also land in map growth.
    return StoreOptions(map_size=256 << 10, map_size_max=1 << 30)


async def child_main(data_dir: str, generation: int, writers: int) -> None:
    out = sys.stdout.fileno()
    rng = random.Random(os.getpid())

    def report(kind: int, value: int, writer: int, n: int) -> None:
        os.write(out, REPORT.pack(kind, value, generation, writer, n))

    async with open_store(data_dir, child_options()) as store:
        book = StateBook(store, every_ops=40, every_s=0.05, keep_tail=3)
        counter = await book.open(KV_STREAM)
        os.write(out, READY)

        async def log_writer(w: int) -> None:
            n = 0
            while True:
                size = rng.choice((1, 1, 1, 2, 5))
                recs = [{"g": generation, "w": w, "n": n + i, "pad": b"p" * rng.randrange(0, 3000)}
                        for i in range(size)]
                if size == 1:
                    seqs = [await store.append(LOG_STREAM, recs[0])]
                else:
                    seqs = await store.append_many(LOG_STREAM, recs)
                for i, seq in enumerate(seqs):
                    report(KIND_LOG, seq, w, n + i)
                n += size

        async def kv_writer(w: int) -> None:
            n = 0
            while True:
                value = await counter.incr("n")
                report(KIND_KV, int(value), w, n)
                n += 1

        async with trio.open_nursery() as nursery:
            nursery.start_soon(book.run)
            for w in range(writers):
                nursery.start_soon(log_writer, w)
            for w in range(KV_WRITERS):
                nursery.start_soon(kv_writer, w)


@dataclass
class Acked:
    """Everything any child reported as acknowledged, across all generations."""

    log: dict[int, tuple[int, int, int]] = field(default_factory=dict)  # seq -> (g, w, n)
    kv_max: int = 0


@dataclass
class CycleStats:
    cycles: int = 0
    killed_before_ready: int = 0
    acked_log: int = 0
    acked_kv: int = 0
    log_len: int = 0
    checkpoints_seen: int = 0
    seconds: float = 0.0


def _parse(buf: bytes, generation: int, acked: Acked) -> tuple[bytes, int]:
    """Consume whole reports from `buf`; returns the rest and how many were acks."""
    pos, count = 0, 0
    if buf.startswith(READY):
        pos = 1
    while len(buf) - pos >= REPORT.size:
        kind, value, g, w, n = REPORT.unpack_from(buf, pos)
        pos += REPORT.size
        assert g == generation, f"report from generation {g} during {generation}"
        if kind == KIND_LOG:
            assert value not in acked.log, f"seq {value} acked twice"
            acked.log[value] = (g, w, n)
        else:
            acked.kv_max = max(acked.kv_max, value)
        count += 1
    return buf[pos:], count


def run_child_once(data_dir: Path, generation: int, acked: Acked, rng: random.Random,
                   writers: int, log_dir: Path, max_acks: int = 300) -> bool:
    """Start a child, kill -9 it at a random moment; True if it had become ready."""
    err = open(log_dir / f"child-{generation}.err", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.store.crash_harness", "child", str(data_dir),
         str(generation), str(writers)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=err, bufsize=0)
    try:
        fd = proc.stdout.fileno()
        buf = b""
        ready = False
        before_ready = rng.random() < 0.08
        target = rng.randrange(0, max_acks)
        seen = 0
        deadline = time.monotonic() + 30
        if before_ready:
            # Kill somewhere in start-up: interpreter, imports, env open, state load.
            _wait_random(rng.uniform(0.0, 0.25), fd)
        else:
            while seen < target or not ready:
                left = deadline - time.monotonic()
                assert left > 0, f"child {generation} produced no progress in 30 s (see {err.name})"
                readable, _, _ = select.select([fd], [], [], left)
                if not readable:
                    continue
                chunk = os.read(fd, 65536)
                assert chunk, f"child {generation} exited on its own (see {err.name}): " \
                    f"{(log_dir / f'child-{generation}.err').read_text()[-2000:]}"
                if not ready and chunk.startswith(READY):
                    ready = True
                buf += chunk
                buf, n = _parse(buf, generation, acked)
                seen += n
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        rest = proc.stdout.read()
        if rest:
            ready = ready or (not buf and rest.startswith(READY))
            buf, _ = _parse(buf + rest, generation, acked)
        return ready
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        err.close()


def _wait_random(seconds: float, fd: int) -> None:
    # Not synchronisation: a random kill moment during the child's start-up.
    select.select([fd], [], [], seconds)


async def verify(data_dir: Path, acked: Acked) -> tuple[int, int]:
    """Open the store as recovery would and check every invariant; (log length, checkpoints)."""
    async with open_store(data_dir, child_options()) as store:
        records = store.read(LOG_STREAM)
        seqs = [seq for seq, _ in records]
        assert seqs == list(range(1, len(seqs) + 1)), "log is not a gap-free prefix 1..last"
        assert store.last_seq(LOG_STREAM) == len(seqs), "last_seq disagrees with the log"
        by_seq = dict(records)
        for seq, (g, w, n) in acked.log.items():
            rec = by_seq.get(seq)
            assert rec is not None, f"acked record seq {seq} (gen {g} writer {w} n {n}) is lost"
            assert (rec["g"], rec["w"], rec["n"]) == (g, w, n), \
                f"seq {seq} holds {rec['g'], rec['w'], rec['n']}, acked as {g, w, n}"
        per_writer: dict[tuple[int, int], list[int]] = {}
        for _, rec in records:
            per_writer.setdefault((rec["g"], rec["w"]), []).append(rec["n"])
        for key, ns in per_writer.items():
            assert ns == list(range(len(ns))), f"writer {key} has non-contiguous records"
        # Recovery of the checkpointed state: loads, verifies, matches its own op count.
        state = await KeyValueState.load(store, KV_STREAM)
        value = state.get("n", 0)
        assert value == state.applied_seq, \
            f"counter {value} != its op count {state.applied_seq}: replay is wrong"
        assert value >= acked.kv_max, f"counter {value} < acked value {acked.kv_max}"
        assert store.quarantined() == [], "a kill -9 must never leave a bad checkpoint"
        return len(seqs), len(store.checkpoints(KV_STREAM))


def run_cycles(data_dir: Path, cycles: int, *, seed: int | None = None, writers: int = 24,
               log_dir: Path | None = None, progress: bool = False,
               max_acks: int = 300) -> CycleStats:
    """Run `cycles` start/kill -9/verify rounds on one data dir; raises on any violation."""
    seed = random.randrange(1 << 30) if seed is None else seed
    rng = random.Random(seed)
    log_dir = log_dir or data_dir.parent
    acked = Acked()
    stats = CycleStats()
    started = time.monotonic()
    for generation in range(1, cycles + 1):
        try:
            ready = run_child_once(data_dir, generation, acked, rng, writers, log_dir, max_acks)
            if not ready:
                stats.killed_before_ready += 1
            if data_dir.exists():
                stats.log_len, ckpts = trio.run(verify, data_dir, acked)
                stats.checkpoints_seen = max(stats.checkpoints_seen, ckpts)
        except AssertionError as exc:
            raise AssertionError(f"cycle {generation} (seed {seed}): {exc}") from exc
        stats.cycles = generation
        if progress and generation % 50 == 0:
            print(f"{generation}/{cycles} cycles, {len(acked.log)} acked log records, "
                  f"log length {stats.log_len}, {time.monotonic() - started:.1f}s", flush=True)
    stats.acked_log = len(acked.log)
    stats.acked_kv = acked.kv_max
    stats.seconds = time.monotonic() - started
    return stats


def main(argv: list[str]) -> None:
    if len(argv) == 4 and argv[0] == "child":
        trio.run(child_main, argv[1], int(argv[2]), int(argv[3]))
        return
    raise SystemExit("usage: python -m tests.store.crash_harness child DIR GENERATION WRITERS")


if __name__ == "__main__":
    main(sys.argv[1:])
