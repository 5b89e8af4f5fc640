#!/usr/bin/env python3
"""Store benchmark: outpost vs Redis 7 vs SQLite vs raw fsync, side by side in ONE run.

    .venv/bin/python scripts/bench/store.py [--quick] [--json] [--dir DIR]

a. 50 concurrent writers, each awaiting an ack after fsync: outpost (50 trio tasks
   doing `await ctx.state.set(...)`, the object task agents get, on one stream)
   vs Redis (appendonly yes, appendfsync always, Unix socket, redis-benchmark
   -c 50, no pipelining) vs SQLite (WAL, synchronous=FULL, 50 threads with their
   own connections, one INSERT per commit). Beside them, the same loop as 50
   agents of a real `outpost run` (default store settings, so each agent has its
   own stream and checkpoints every 1000 ops): as `process` agents, whose writes
   travel as frames over their socketpairs, and as `task` agents.
   Targets: >= 1.0x Redis ops/s and p99 ack <= 5 ms (trio writers); process
   agents >= 0.7x Redis.
b. One writer awaiting each write vs a raw append + fsync of the same bytes and
   vs a bare py-lmdb put + durable commit (also into a file with zeroed space
   ahead, as the store keeps it). Target: outpost mean <= 1.3x the bare py-lmdb
   commit (the raw-fsync ratio is reported too).
c. Batches of 1000 records (append_many). Target: >= 500k records/s.
d. Recovery of 1M WAL records (+ checkpoints) vs Redis loading an AOF of 1M SETs.
   Target: <= 1.0 s and <= Redis.

Every figure is measured in this run on the same filesystem (`--dir`, default a
temporary dir under /tmp). Nothing is rounded before the ratios are taken; --json
prints one object with every figure. Redis is installed with apt-get if missing
(needs root); without it the Redis figures are null and say why.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import os
import platform
import random
import re
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import lmdb  # noqa: E402
import psutil  # noqa: E402
import trio  # noqa: E402

from runtime.agents import AgentContext  # noqa: E402
from runtime.store import KeyValueState, StoreOptions, codec, open_store  # noqa: E402
from runtime.store.kvstate import SET, apply_op  # noqa: E402
from shm import Segment  # noqa: E402

VALUE = "v" * 40  # the same 40-byte value everywhere (redis-benchmark -d 40)
KEYSPACE = 1_000_000  # keys key:000000xxxxxx, as redis-benchmark -r 1000000
KEY = "key:%012d"  # KEY % (random() * KEYSPACE): a random key, cheaply (the load generator)


def key_of(n: int) -> str:
    return KEY % n


def pct(sorted_values: list[float], p: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_values:
        return float("nan")
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def load_avg() -> list[float]:
    return list(os.getloadavg())


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- machine -------------------------------------------------------------------------


def machine(work: Path) -> dict[str, Any]:
    def run(cmd: list[str]) -> str:
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=10,
                                  check=False).stdout.strip()
        except OSError:
            return ""
    lscpu = run(["lscpu"])
    model = re.search(r"Model name:\s*(.+)", lscpu)
    mem = re.search(r"Mem:\s+(\S+)", run(["free", "-h"]))
    df = run(["df", "-hT", str(work)]).splitlines()
    redis_version = run(["redis-server", "--version"])
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model.group(1) if model else None,
        "mem_total": mem.group(1) if mem else None,
        "bench_fs": df[-1] if df else None,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "lmdb": ".".join(map(str, lmdb.version())),
        "py_lmdb": lmdb.__version__,
        "sqlite": sqlite3.sqlite_version,
        "redis": redis_version or None,
    }


# -- Redis -----------------------------------------------------------------------------


def ensure_redis() -> str | None:
    """None if redis-server and redis-benchmark are usable, else why not."""
    if shutil.which("redis-server") and shutil.which("redis-benchmark"):
        return None
    if os.geteuid() != 0:
        return "redis-server missing and not root to apt-get install it"
    log("installing redis-server (apt-get) ...")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", "redis-server"]):
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
        if done.returncode != 0:
            return f"{' '.join(cmd)} failed: {done.stderr.strip()[-300:]}"
    if shutil.which("redis-server") and shutil.which("redis-benchmark"):
        return None
    return "redis-server still missing after apt-get install"


class Redis:
    """A private redis-server on a Unix socket in `path`, AOF with the given fsync policy."""

    def __init__(self, path: Path, fsync: str) -> None:
        self.path = path
        self.sock = path / "redis.sock"
        self.logfile = path / "redis.log"
        self.fsync = fsync
        self.proc: subprocess.Popen | None = None

    def start(self) -> float:
        """Start and wait until PING answers; returns seconds from exec to ready."""
        self.path.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        self.proc = subprocess.Popen(
            ["redis-server", "--port", "0", "--unixsocket", str(self.sock),
             "--unixsocketperm", "700", "--dir", str(self.path), "--appendonly", "yes",
             "--appendfsync", self.fsync, "--save", "", "--auto-aof-rewrite-percentage", "0",
             "--logfile", str(self.logfile), "--daemonize", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited: {self.logfile.read_text()[-1000:]}")
            with contextlib.suppress(OSError):
                if self.command("PING") == b"+PONG\r\n":
                    return time.perf_counter() - started
            time.sleep(0.001)  # polling for readiness with a deadline
        raise RuntimeError("redis-server did not become ready in 120 s")

    def command(self, *args: str) -> bytes:
        """One RESP command over the Unix socket; the raw reply."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(30)
            s.connect(str(self.sock))
            s.sendall(b"".join([f"*{len(args)}\r\n".encode()] +
                               [f"${len(a.encode())}\r\n{a}\r\n".encode() for a in args]))
            return s.recv(65536)

    def aof_load_seconds(self) -> float | None:
        found = re.findall(r"DB loaded from (?:append only file|disk): ([0-9.]+) seconds",
                           self.logfile.read_text())
        return float(found[-1]) if found else None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(OSError):
                self.command("SHUTDOWN", "NOSAVE")
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def redis_benchmark(sock: Path, clients: int, requests: int, pipeline: int = 1) -> dict:
    done = subprocess.run(
        ["redis-benchmark", "-s", str(sock), "-c", str(clients), "-n", str(requests),
         "-t", "set", "-d", "40", "-r", str(KEYSPACE), "-P", str(pipeline), "--csv"],
        capture_output=True, text=True, check=True, timeout=900)
    lines = [line for line in done.stdout.splitlines() if line.startswith('"')]
    header = [h.strip('"') for h in lines[0].split(",")]
    values = [v.strip('"') for v in lines[1].split(",")]
    row = dict(zip(header, values, strict=True))
    return {"ops_per_s": float(row["rps"]), "p50_ms": float(row["p50_latency_ms"]),
            "p99_ms": float(row["p99_latency_ms"]), "avg_ms": float(row["avg_latency_ms"])}


# -- a. 50 concurrent writers ------------------------------------------------------------


async def outpost_concurrent(path: Path, writers: int, seconds: float) -> dict:
    path.mkdir(parents=True, exist_ok=True)
    segment = Segment.create(path / "bench.shm", 64)
    async with open_store(path / "data") as store:
        # ctx.state of a task agent: the object and the ack path every agent write takes.
        ctx = AgentContext("bench", await KeyValueState.load(store, "bench/a"), segment)
        state = ctx.state
        lat: list[float] = []
        stop = time.perf_counter() + seconds
        rnd = random.Random(1).random

        async def writer() -> None:
            perf = time.perf_counter
            while perf() < stop:
                t0 = perf()
                await state.set(KEY % (rnd() * KEYSPACE), VALUE)
                lat.append(perf() - t0)

        # Profile of the group-commit cycle: how long commit() itself takes (the
        # fsyncs) vs the rest of a cycle (acks, task switches, resubmits, wake-ups).
        spans: list[float] = []
        began = [0.0]
        store.set_commit_hooks(before=lambda n, ops: began.__setitem__(0, time.perf_counter()),
                               after=lambda n, ops: spans.append(time.perf_counter() - began[0]))
        commits0 = store.commits
        c0 = os.times()
        t0 = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for _ in range(writers):
                nursery.start_soon(writer)
        elapsed = time.perf_counter() - t0
        c1 = os.times()
        commits = store.commits - commits0
        store.set_commit_hooks()
    segment.unlink()
    segment.close()
    lat.sort()
    cycle = elapsed / max(1, commits)
    return {"ops_per_s": len(lat) / elapsed, "p50_ms": pct(lat, 50) * 1e3,
            "p99_ms": pct(lat, 99) * 1e3, "ops": len(lat), "commits": commits,
            "ops_per_commit": len(lat) / max(1, commits),
            "cycle_mean_ms": cycle * 1e3,
            "commit_call_mean_ms": statistics.fmean(spans) * 1e3 if spans else None,
            "cpu_us_per_op": ((c1.user - c0.user) + (c1.system - c0.system)) / len(lat) * 1e6}


# The agent of the runtime variants: the loop of outpost_concurrent, in an agent.
AGENT_PROGRAM = '''
"""Agent for scripts/bench/store.py (written there): awaited ctx.state.set in a loop."""
import json
import os
import random
import time

import trio

KEYSPACE = 1_000_000
KEY = "key:%012d"
VALUE = "v" * 40


async def run(ctx):
    out = os.environ["OUTPOST_BENCH_DIR"]
    with open(os.path.join(out, ctx.name + ".ready"), "w"):
        pass
    go = os.path.join(out, "go")
    while not os.path.exists(go):  # the bench starts every agent at once
        await trio.sleep(0.005)
    with open(go) as f:
        start, stop = (int(x) / 1e9 for x in f.read().split())
    await trio.sleep(max(0.0, start - time.monotonic()))
    rnd = random.Random(ctx.name).random
    state, perf, lat = ctx.state, time.perf_counter, []
    while time.monotonic() < stop:
        t0 = perf()
        await state.set(KEY % (rnd() * KEYSPACE), VALUE)
        lat.append(perf() - t0)
    tmp = os.path.join(out, ctx.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump({"ops": len(lat), "lat": lat}, f)
    os.replace(tmp, os.path.join(out, ctx.name + ".json"))
    await trio.sleep_forever()
'''


def runtime_concurrent(work: Path, kind: str, agents: int, seconds: float) -> dict:
    """`agents` agents of `kind` in a real `outpost run`, each awaiting ctx.state.set.

    Every agent waits for a common start time, writes until a common stop time
    and reports its latencies in a file. ops/s counts the writes between them;
    CPU is the runtime process's (and, for process agents, its children's).
    """
    shutil.rmtree(work, ignore_errors=True)
    out = work / "out"
    out.mkdir(parents=True)
    program = work / "bench_state_agent.py"
    program.write_text(AGENT_PROGRAM)
    config = work / "outpost.toml"
    lines = ['[runtime]', 'data_dir = "data"', 'run_dir = "run"', 'log_level = "warning"', '']
    for i in range(agents):
        lines += ['[[agents]]', f'name = "w{i:02d}"', f'kind = "{kind}"',
                  f'entry = "{program}:run"', 'restart = "temporary"',
                  f'env = {{ OUTPOST_BENCH_DIR = "{out}" }}', '']
    config.write_text("\n".join(lines))
    env = {**os.environ, "OUTPOST_BENCH_DIR": str(out)}  # task agents read it here
    with open(work / "runtime.log", "wb") as runtime_log:
        proc = subprocess.Popen([sys.executable, "-m", "runtime", "run", "--config", str(config)],
                                cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=runtime_log)
    try:
        deadline = time.monotonic() + 120
        while len(list(out.glob("*.ready"))) < agents:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{kind} agents did not start: "
                                   f"{(work / 'runtime.log').read_text()[-2000:]}")
            time.sleep(0.01)  # polling for the agents' ready files, with a deadline
        start = time.monotonic_ns() + 300_000_000
        stop = start + int(seconds * 1e9)
        (out / "go.tmp").write_text(f"{start} {stop}")
        os.replace(out / "go.tmp", out / "go")
        runtime = psutil.Process(proc.pid)

        def cpu() -> tuple[float, float]:
            own = runtime.cpu_times()
            kids = 0.0
            for child in runtime.children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    t = child.cpu_times()
                    kids += t.user + t.system
            return own.user + own.system, kids

        time.sleep(max(0.0, (start - time.monotonic_ns()) / 1e9))
        cpu0 = cpu()
        time.sleep(max(0.0, (stop - time.monotonic_ns()) / 1e9))
        cpu1 = cpu()
        while len(list(out.glob("*.json"))) < agents:
            if proc.poll() is not None or time.monotonic() > deadline + seconds:
                raise RuntimeError(f"{kind} agents did not report: "
                                   f"{(work / 'runtime.log').read_text()[-2000:]}")
            time.sleep(0.01)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    lat: list[float] = []
    for report in out.glob("*.json"):
        lat += json.loads(report.read_text())["lat"]
    lat.sort()
    ops = len(lat)
    return {"ops_per_s": ops / seconds, "p50_ms": pct(lat, 50) * 1e3,
            "p99_ms": pct(lat, 99) * 1e3, "ops": ops,
            "runtime_cpu_us_per_op": (cpu1[0] - cpu0[0]) / max(1, ops) * 1e6,
            "agents_cpu_us_per_op": (cpu1[1] - cpu0[1]) / max(1, ops) * 1e6}


def sqlite_concurrent(path: Path, writers: int, seconds: float) -> dict:
    db = path / "bench.sqlite"
    path.mkdir(parents=True, exist_ok=True)
    setup = sqlite3.connect(db, isolation_level=None)
    setup.execute("PRAGMA journal_mode=WAL")
    setup.execute("CREATE TABLE IF NOT EXISTS kv (k TEXT PRIMARY KEY, v TEXT)")
    setup.close()
    lat: list[float] = []
    stop = time.perf_counter() + seconds
    start = threading.Barrier(writers + 1)

    def writer(w: int) -> None:
        conn = sqlite3.connect(db, isolation_level=None, timeout=60, check_same_thread=False)
        conn.execute("PRAGMA synchronous=FULL")
        rng = random.Random(w)
        mine = []
        start.wait()
        perf = time.perf_counter
        while perf() < stop:
            t0 = perf()
            conn.execute("INSERT OR REPLACE INTO kv VALUES (?, ?)",
                         (key_of(rng.randrange(KEYSPACE)), VALUE))
            mine.append(perf() - t0)
        conn.close()
        lat.extend(mine)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(writers)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    lat.sort()
    return {"ops_per_s": len(lat) / elapsed, "p50_ms": pct(lat, 50) * 1e3,
            "p99_ms": pct(lat, 99) * 1e3, "ops": len(lat)}


# -- b. one writer -------------------------------------------------------------------


async def single_writer_rounds(work: Path, n: int, rounds: int) -> dict[str, list]:
    """Interleave, round by round, the single-writer variants so that other load on
    the machine hits them alike: outpost (ctx.state.set awaited), raw append +
    fsync, raw append + fdatasync, bare py-lmdb put + durable commit, and the same
    into a file with zeroed space ahead (what the store's Headroom keeps)."""
    record = codec.pack([SET, key_of(1), VALUE])
    lat: dict[str, list[float]] = {k: [] for k in ("outpost", "raw_append_fsync",
                                                    "raw_append_fdatasync",
                                                    "bare_lmdb_sync_commit",
                                                    "bare_lmdb_zeroed_sync_commit")}
    parts: list[tuple[float, float, float]] = []
    perf = time.perf_counter
    fds = {name: os.open(work / f"b-{name}.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
           for name in ("fsync", "fdatasync")}
    bares = {}
    for name in ("bare_lmdb_sync_commit", "bare_lmdb_zeroed_sync_commit"):
        env = lmdb.open(str(work / f"b-{name}"), map_size=64 << 20, max_dbs=2)
        bares[name] = (env, env.open_db(b"wal"))
    with open(work / "b-bare_lmdb_zeroed_sync_commit" / "data.mdb", "r+b") as f:
        f.seek(0, os.SEEK_END)
        f.write(bytes(16 << 20))  # more than the run will use
        f.flush()
        os.fdatasync(f.fileno())
    seq = 0
    segment = Segment.create(work / "b.shm", 16)
    try:
        async with open_store(work / "b-outpost") as store:
            state = AgentContext("bench", await KeyValueState.load(store, "bench/b"),
                                 segment).state
            marks: dict[str, float] = {}
            store.set_commit_hooks(before=lambda b, ops: marks.__setitem__("before", perf()),
                                   after=lambda b, ops: marks.__setitem__("after", perf()))
            for r in range(rounds + 1):  # round 0 warms every variant up, not counted
                k = 20 if r == 0 else n // rounds
                keep = r > 0
                for i in range(k):
                    t0 = perf()
                    await state.set(key_of(i), VALUE)
                    t1 = perf()
                    if keep:
                        lat["outpost"].append(t1 - t0)
                        # submit -> applied in the writer, commit() itself, -> task resumed
                        parts.append((marks["before"] - t0, marks["after"] - marks["before"],
                                      t1 - marks["after"]))
                for name, sync in (("fsync", os.fsync), ("fdatasync", os.fdatasync)):
                    fd = fds[name]
                    for _ in range(k):
                        t0 = perf()
                        os.write(fd, record)
                        sync(fd)
                        if keep:
                            lat[f"raw_append_{name}"].append(perf() - t0)
                for name, (bare, bare_db) in bares.items():
                    for _ in range(k):
                        seq += 1
                        t0 = perf()
                        with bare.begin(write=True, db=bare_db) as txn:
                            txn.put(seq.to_bytes(8, "big"), record)
                        if keep:
                            lat[name].append(perf() - t0)
            store.set_commit_hooks()
    finally:
        for bare, _ in bares.values():
            bare.close()
        for fd in fds.values():
            os.close(fd)
        segment.unlink()
        segment.close()
    return {**lat, "outpost_parts": parts}


def _lat_stats(lat: list[float]) -> dict:
    s = sorted(lat)
    return {"mean_us": statistics.fmean(s) * 1e6, "p50_us": pct(s, 50) * 1e6,
            "p99_us": pct(s, 99) * 1e6, "n": len(s)}


# -- c. batches ----------------------------------------------------------------------


async def outpost_batches_built_in_loop(path: Path, batches: int) -> dict:
    """One writer that also builds each batch's Python lists inside the timed loop."""
    async with open_store(path, StoreOptions(map_size=256 << 20, map_size_max=8 << 30)) as store:
        await store.append_many("bench/c", [[SET, key_of(i), VALUE] for i in range(1000)])
        t0 = time.perf_counter()
        for b in range(batches):
            await store.append_many("bench/c", [[SET, key_of(b * 1000 + i), VALUE]
                                                for i in range(1000)])
        elapsed = time.perf_counter() - t0
    return {"records_per_s": batches * 1000 / elapsed}


async def outpost_batches(path: Path, batches: int, writers: int) -> dict:
    async with open_store(path, StoreOptions(map_size=256 << 20, map_size_max=8 << 30)) as store:
        await store.append_many("bench/c0", [[SET, key_of(i), VALUE] for i in range(1000)])

        # The records exist before the clock starts: timed is append_many itself
        # (encode, write, commit with fsync), not the benchmark building lists.
        work = [[[SET, key_of(b * 1000 + i), VALUE] for i in range(1000)]
                for b in range(batches // writers)]

        async def writer(w: int) -> None:
            for batch in work:
                await store.append_many(f"bench/c{w}", batch)

        t0 = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for w in range(writers):
                nursery.start_soon(writer, w)
        elapsed = time.perf_counter() - t0
    records = (batches // writers) * writers * 1000
    return {"records_per_s": records / elapsed, "records": records, "seconds": elapsed}


# -- d. recovery ---------------------------------------------------------------------

STREAM_D = "bench/d"


async def build_recovery_store(path: Path, records: int, checkpoint_every: int | None) -> dict:
    """`records` SET ops in the WAL of one state stream; optionally checkpoints (the exact
    payload KeyValueState writes) every `checkpoint_every` ops, keeping the whole WAL."""
    rng = random.Random(42)
    data: dict = {}
    opts = StoreOptions(map_size=1 << 30, map_size_max=16 << 30)
    async with open_store(path, opts) as store:
        done = 0
        while done < records:
            ops = [[SET, key_of(rng.randrange(KEYSPACE)), VALUE]
                   for _ in range(min(10_000, records - done))]
            await store.append_many(STREAM_D, ops)
            if checkpoint_every:
                for op in ops:
                    apply_op(data, op)
            done += len(ops)
            if checkpoint_every and done % checkpoint_every == 0 and done < records:
                await store.write_checkpoint(STREAM_D, done, codec.pack(
                    data, codec.MAX_CHECKPOINT_BYTES), keep_tail=records)
        ckpts = [seq for seq, _ in store.checkpoints(STREAM_D)]
        wal = store.last_seq(STREAM_D) - store.first_seq(STREAM_D) + 1
    return {"wal_records": wal, "checkpoints": ckpts,
            "file_bytes": (path / "data.mdb").stat().st_size}


def recover_in_child(path: Path) -> dict:
    """Recovery in a fresh process: open + load the state. Times from the child's
    own clock (open+load) and the parent's (exec until the child says it is ready,
    interpreter start and imports included; the digest check comes after)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, __file__, "--recover-only", str(path)],
                            stdout=subprocess.PIPE, text=True)
    ready = proc.stdout.readline()
    wall = time.perf_counter() - t0
    rest = proc.stdout.read()
    if proc.wait(600) != 0 or not ready:
        raise RuntimeError(f"recovery child failed: {ready}{rest}")
    out = {**json.loads(ready), **json.loads(rest)}
    out["process_wall_s"] = wall
    return out


async def recover_only(path: Path) -> None:
    t0 = time.perf_counter()
    opts = StoreOptions(map_size=1 << 30, map_size_max=16 << 30)
    async with open_store(path, opts) as store:
        t_open = time.perf_counter() - t0
        state = await KeyValueState.load(store, STREAM_D)
        t_load = time.perf_counter() - t0
        print(json.dumps({"open_s": t_open, "open_and_load_s": t_load}), flush=True)
        print(json.dumps({"keys": len(state), "applied_seq": state.applied_seq,
                          "checkpoint_seq": state.checkpoint_seq,
                          "replayed": state.applied_seq - state.checkpoint_seq,
                          "digest": state.digest()}), flush=True)


def redis_make_aof(path: Path, records: int) -> dict:
    """An AOF of `records` SETs (random keys over 1M, 40-byte values), no rewrite."""
    r = Redis(path, fsync="no")
    r.start()
    try:
        redis_benchmark(r.sock, clients=10, requests=records, pipeline=1000)
    finally:
        r.stop()  # SHUTDOWN NOSAVE flushes the AOF; no rewrite (percentage 0)
    return {"aof_bytes": sum(f.stat().st_size for f in (path / "appendonlydir").iterdir())}


def redis_load_aof(path: Path) -> dict:
    r = Redis(path, fsync="no")
    try:
        wall = r.start()
        keys = int(r.command("DBSIZE").decode().strip().lstrip(":"))
        return {"aof_load_s": r.aof_load_seconds(), "process_ready_s": wall, "keys": keys}
    finally:
        r.stop()


# -- the run ---------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--dir", type=Path, default=None, help="where to put the data")
    parser.add_argument("--only", default="abcd", help="sections to run, e.g. 'ab'")
    parser.add_argument("--recover-only", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.recover_only:
        trio.run(recover_only, args.recover_only)
        return 0

    q = args.quick
    sizes = {"a_seconds": 1.0 if q else 4.0, "b_writes": 300 if q else 3000,
             "c_batches": 40 if q else 400, "d_records": 100_000 if q else 1_000_000,
             "d_repeats": 1 if q else 3, "rounds": 1 if q else 3}
    work = args.dir or Path(tempfile.mkdtemp(prefix="outpost-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "date_utc": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "quick": q, "sizes": sizes, "dir": str(work), "machine": machine(work),
        "load_avg_start": load_avg(),
    }
    redis_missing = ensure_redis() if set(args.only) & set("ad") else None
    result["redis_unavailable"] = redis_missing
    result["machine"]["redis"] = result["machine"]["redis"] or shutil.which("redis-server")
    try:
        if "a" in args.only:
            result["a_concurrent_50_writers"] = section_a(work, sizes, redis_missing)
        if "b" in args.only:
            result["b_single_writer"] = section_b(work, sizes)
        if "c" in args.only:
            result["c_batches_of_1000"] = section_c(work, sizes)
        if "d" in args.only:
            result["d_recovery"] = section_d(work, sizes, redis_missing)
    finally:
        result["load_avg_end"] = load_avg()
        if args.dir is None:
            shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print_report(result)
    return 0


def section_a(work: Path, sizes: dict, redis_missing: str | None) -> dict:
    secs, rounds = sizes["a_seconds"], sizes["rounds"]
    out: dict[str, Any] = {"writers": 50, "rounds": rounds, "seconds_per_round": secs,
                           "load_avg_before": load_avg(),
                           "how": "median over interleaved rounds (outpost trio writers, "
                                  "runtime process agents, runtime task agents, redis, sqlite)"}
    per: dict[str, list[dict]] = {"outpost": [], "runtime_process": [], "runtime_task": [],
                                  "redis": [], "sqlite": []}
    redis = None
    if redis_missing is None:
        redis = Redis(work / "a-redis", fsync="always")
        redis.start()
    try:
        for r in range(rounds):
            log(f"a: round {r + 1}/{rounds}: outpost (50 trio writers, {secs}s) ...")
            o = trio.run(outpost_concurrent, work / "a-outpost", 50, secs)
            per["outpost"].append(o)
            for kind in ("process", "task"):
                log(f"a: outpost run with 50 {kind} agents ({secs}s) ...")
                per[f"runtime_{kind}"].append(
                    runtime_concurrent(work / f"a-runtime-{kind}", kind, 50, secs))
            if redis is not None:
                log("a: redis (appendfsync always, unix socket, 50 clients, no pipelining) ...")
                # as many requests as outpost acked in its round (comparable durations)
                per["redis"].append(redis_benchmark(redis.sock, 50, max(20_000, o["ops"])))
            log(f"a: sqlite (WAL, synchronous=FULL, 50 threads, {secs}s) ...")
            per["sqlite"].append(sqlite_concurrent(work / "a-sqlite", 50, secs))
    finally:
        if redis is not None:
            redis.stop()
    for name, runs in per.items():
        if runs:
            for key in runs[0]:
                values = [run[key] for run in runs if run[key] is not None]
                out[f"{name}_{key}"] = statistics.median(values) if values else None
            out[f"{name}_ops_per_s_rounds"] = [run["ops_per_s"] for run in runs]
    for name in ("outpost", "runtime_process", "runtime_task"):
        ops = out[f"{name}_ops_per_s"]
        out[f"ratio_{name}_over_redis_ops_per_s"] = (
            ops / out["redis_ops_per_s"] if per["redis"] else None)
    out["ratio_outpost_over_sqlite_ops_per_s"] = out["outpost_ops_per_s"] / out["sqlite_ops_per_s"]
    out["ratio_runtime_process_over_outpost_ops_per_s"] = (
        out["runtime_process_ops_per_s"] / out["outpost_ops_per_s"])
    out["target_ratio_vs_redis_min"] = 1.0
    out["target_runtime_process_ratio_vs_redis_min"] = 0.7
    out["target_outpost_p99_ms_max"] = 5.0
    out["met_ratio_vs_redis"] = (out["ratio_outpost_over_redis_ops_per_s"] or 0) >= 1.0
    out["met_runtime_process_ratio_vs_redis"] = (
        out["ratio_runtime_process_over_redis_ops_per_s"] or 0) >= 0.7
    out["met_p99"] = out["outpost_p99_ms"] <= 5.0
    out["load_avg_after"] = load_avg()
    return out


def section_b(work: Path, sizes: dict) -> dict:
    n, rounds = sizes["b_writes"], sizes["rounds"]
    log(f"b: one writer, {n} awaited writes per variant in {rounds} interleaved rounds ...")
    out: dict[str, Any] = {"writes_per_variant": n, "rounds": rounds,
                           "load_avg_before": load_avg()}
    lat = trio.run(single_writer_rounds, work, n, rounds)
    parts = lat.pop("outpost_parts")
    stats = {name: _lat_stats(values) for name, values in lat.items()}
    for name, st in stats.items():
        out.update({f"{name}_{k}": v for k, v in st.items() if k != "n"})
    for i, name in enumerate(("to_writer", "commit_call", "back_to_task")):
        out[f"outpost_{name}_mean_us"] = statistics.fmean(p[i] for p in parts) * 1e6
    raw, rawd, bare, zeroed, o = (stats[k] for k in (
        "raw_append_fsync", "raw_append_fdatasync", "bare_lmdb_sync_commit",
        "bare_lmdb_zeroed_sync_commit", "outpost"))
    out["ratio_outpost_over_raw_fsync_mean"] = o["mean_us"] / raw["mean_us"]
    out["ratio_outpost_over_raw_fsync_p50"] = o["p50_us"] / raw["p50_us"]
    out["ratio_outpost_over_raw_fdatasync_mean"] = o["mean_us"] / rawd["mean_us"]
    out["ratio_bare_lmdb_commit_over_raw_fsync_mean"] = bare["mean_us"] / raw["mean_us"]
    out["ratio_bare_lmdb_commit_over_raw_fsync_p50"] = bare["p50_us"] / raw["p50_us"]
    out["ratio_outpost_over_bare_lmdb_commit_mean"] = o["mean_us"] / bare["mean_us"]
    out["ratio_outpost_over_bare_lmdb_commit_p50"] = o["p50_us"] / bare["p50_us"]
    out["ratio_outpost_over_bare_lmdb_zeroed_commit_mean"] = o["mean_us"] / zeroed["mean_us"]
    out["ratio_bare_lmdb_zeroed_over_bare_lmdb_commit_mean"] = zeroed["mean_us"] / bare["mean_us"]
    out["target_ratio_vs_bare_lmdb_commit_max"] = 1.3
    # met only if both the mean and the median ratio are within the target
    out["met"] = max(out["ratio_outpost_over_bare_lmdb_commit_mean"],
                     out["ratio_outpost_over_bare_lmdb_commit_p50"]) <= 1.3
    out["load_avg_after"] = load_avg()
    return out


def section_c(work: Path, sizes: dict) -> dict:
    batches = sizes["c_batches"]
    log(f"c: {batches} batches of 1000 records, 1 writer and 4 writers ...")
    out: dict[str, Any] = {"batches": batches, "load_avg_before": load_avg()}
    one = trio.run(outpost_batches, work / "c-1", batches, 1)
    four = trio.run(outpost_batches, work / "c-4", batches, 4)
    built = trio.run(outpost_batches_built_in_loop, work / "c-built", batches)
    out["one_writer_records_per_s"] = one["records_per_s"]
    out["one_writer_building_records_in_loop_records_per_s"] = built["records_per_s"]
    out["four_writers_records_per_s"] = four["records_per_s"]
    out["target_records_per_s_min"] = 500_000
    out["met_one_writer"] = one["records_per_s"] >= 500_000
    out["met_four_writers"] = four["records_per_s"] >= 500_000
    out["load_avg_after"] = load_avg()
    return out


def section_d(work: Path, sizes: dict, redis_missing: str | None) -> dict:
    records, repeats = sizes["d_records"], sizes["d_repeats"]
    every = records // 10
    out: dict[str, Any] = {"records": records, "repeats_median_of": repeats,
                           "checkpoint_every": every, "load_avg_before": load_avg()}
    log(f"d: building a WAL of {records} SET ops (no checkpoint) ...")
    out["full_replay_store"] = trio.run(build_recovery_store, work / "d-full", records, None)
    log(f"d: building a WAL of {records} SET ops + a checkpoint every {every} ...")
    out["checkpointed_store"] = trio.run(build_recovery_store, work / "d-ckpt", records, every)
    if redis_missing is None:
        log(f"d: redis AOF of {records} SETs ...")
        out.update({f"redis_{k}": v for k, v in redis_make_aof(work / "d-redis",
                                                               records).items()})
    full, ckpt, red = [], [], []
    for r in range(repeats):
        log(f"d: recovery round {r + 1}/{repeats} (outpost full, outpost checkpoint, redis) ...")
        full.append(recover_in_child(work / "d-full"))
        ckpt.append(recover_in_child(work / "d-ckpt"))
        if redis_missing is None:
            red.append(redis_load_aof(work / "d-redis"))
    assert full[0]["digest"] == ckpt[0]["digest"], "checkpoint + replay != full replay"
    out["digests_equal_full_vs_checkpoint"] = True
    med = statistics.median
    out["outpost_full_replay_open_and_load_s"] = med(x["open_and_load_s"] for x in full)
    out["outpost_full_replay_process_ready_s"] = med(x["process_wall_s"] for x in full)
    out["outpost_checkpoint_plus_tail_open_and_load_s"] = med(
        x["open_and_load_s"] for x in ckpt)
    out["outpost_checkpoint_plus_tail_process_ready_s"] = med(x["process_wall_s"] for x in ckpt)
    out["outpost_checkpoint_plus_tail_replayed_records"] = ckpt[0]["replayed"]
    out["outpost_keys"] = full[0]["keys"]
    if red:
        out["redis_aof_load_s"] = med(x["aof_load_s"] for x in red)
        out["redis_process_ready_s"] = med(x["process_ready_s"] for x in red)
        out["redis_keys"] = red[0]["keys"]
        base, proc = out["redis_aof_load_s"], out["redis_process_ready_s"]
        for name in ("full_replay", "checkpoint_plus_tail"):
            out[f"ratio_{name}_over_redis_aof_load"] = (
                out[f"outpost_{name}_open_and_load_s"] / base)
            out[f"ratio_{name}_process_over_redis_process"] = (
                out[f"outpost_{name}_process_ready_s"] / proc)
    out["target_seconds_max"] = 1.0
    for name in ("full_replay", "checkpoint_plus_tail"):
        secs = out[f"outpost_{name}_open_and_load_s"]
        ratio = out.get(f"ratio_{name}_over_redis_aof_load")
        out[f"met_{name}"] = secs <= 1.0 and ratio is not None and ratio <= 1.0
    out["load_avg_after"] = load_avg()
    return out


def print_report(r: dict) -> None:
    m = r["machine"]
    print(f"outpost store benchmark  {r['date_utc']}  quick={r['quick']}")
    print(f"machine: {m['nproc']} cpu ({m['cpu_model']}), {m['mem_total']} RAM, "
          f"fs: {m['bench_fs']}")
    print(f"python {m['python']}, LMDB {m['lmdb']} (py-lmdb {m['py_lmdb']}), "
          f"SQLite {m['sqlite']}, {m['redis']}")
    print(f"load average at start {r['load_avg_start']}, at end {r['load_avg_end']}")
    if r.get("redis_unavailable"):
        print(f"Redis figures missing: {r['redis_unavailable']}")

    def f(v: Any, spec: str = ".3g") -> str:
        return "n/a" if v is None else format(v, spec)

    if a := r.get("a_concurrent_50_writers"):
        print(f"\na. 50 concurrent writers, ack after fsync (median of {a['rounds']} "
              "interleaved rounds)")
        print(f"  outpost  {f(a['outpost_ops_per_s'], '.0f'):>8} ops/s  p50 "
              f"{f(a['outpost_p50_ms'])} ms  p99 {f(a['outpost_p99_ms'])} ms  "
              f"({f(a['outpost_ops_per_commit'], '.1f')} ops/commit)")
        print(f"           cycle {f(a['outpost_cycle_mean_ms'])} ms of which commit() "
              f"{f(a['outpost_commit_call_mean_ms'])} ms; "
              f"{f(a['outpost_cpu_us_per_op'])} us CPU per op")
        for name, label in (("runtime_process", "process agents"),
                            ("runtime_task", "task agents")):
            print(f"  outpost run, 50 {label:<15} {f(a[name + '_ops_per_s'], '.0f'):>8} ops/s  "
                  f"p50 {f(a[name + '_p50_ms'])} ms  p99 {f(a[name + '_p99_ms'])} ms  "
                  f"(runtime {f(a[name + '_runtime_cpu_us_per_op'])} us CPU per op, agents "
                  f"{f(a[name + '_agents_cpu_us_per_op'])})")
        print(f"  redis    {f(a.get('redis_ops_per_s'), '.0f'):>8} ops/s  p50 "
              f"{f(a.get('redis_p50_ms'))} ms  p99 {f(a.get('redis_p99_ms'))} ms")
        print(f"  sqlite   {f(a['sqlite_ops_per_s'], '.0f'):>8} ops/s  p50 "
              f"{f(a['sqlite_p50_ms'])} ms  p99 {f(a['sqlite_p99_ms'])} ms")
        print(f"  outpost/redis {f(a['ratio_outpost_over_redis_ops_per_s'])}x (target >= 1.0: "
              f"{'met' if a['met_ratio_vs_redis'] else 'MISSED'}), outpost/sqlite "
              f"{f(a['ratio_outpost_over_sqlite_ops_per_s'])}x, p99 target <= 5 ms: "
              f"{'met' if a['met_p99'] else 'MISSED'}")
        print(f"  process agents/redis {f(a['ratio_runtime_process_over_redis_ops_per_s'])}x "
              f"(target >= 0.7: {'met' if a['met_runtime_process_ratio_vs_redis'] else 'MISSED'})"
              f", task agents/redis {f(a['ratio_runtime_task_over_redis_ops_per_s'])}x")
    if b := r.get("b_single_writer"):
        print(f"\nb. one writer awaiting each write, {b['rounds']} interleaved rounds "
              "(mean / p50 / p99 us)")
        for name, key in (("outpost", "outpost"), ("raw append+fsync", "raw_append_fsync"),
                          ("raw append+fdatasync", "raw_append_fdatasync"),
                          ("bare LMDB sync commit", "bare_lmdb_sync_commit"),
                          ("bare LMDB, zeroed file", "bare_lmdb_zeroed_sync_commit")):
            print(f"  {name:<22} {f(b[key + '_mean_us'], '.0f'):>6} / "
                  f"{f(b[key + '_p50_us'], '.0f')} / {f(b[key + '_p99_us'], '.0f')}")
        print(f"  outpost breakdown: to writer {f(b['outpost_to_writer_mean_us'], '.0f')} us, "
              f"commit() {f(b['outpost_commit_call_mean_us'], '.0f')} us, back to the task "
              f"{f(b['outpost_back_to_task_mean_us'], '.0f')} us")
        print(f"  outpost/bare LMDB {f(b['ratio_outpost_over_bare_lmdb_commit_mean'])}x mean, "
              f"{f(b['ratio_outpost_over_bare_lmdb_commit_p50'])}x p50 (target <= 1.3: "
              f"{'met' if b['met'] else 'MISSED'}); outpost/bare LMDB into a zeroed file "
              f"{f(b['ratio_outpost_over_bare_lmdb_zeroed_commit_mean'])}x")
        print(f"  outpost/raw fsync {f(b['ratio_outpost_over_raw_fsync_mean'])}x mean, "
              f"{f(b['ratio_outpost_over_raw_fsync_p50'])}x p50; bare LMDB/raw fsync "
              f"{f(b['ratio_bare_lmdb_commit_over_raw_fsync_mean'])}x")
    if c := r.get("c_batches_of_1000"):
        print("\nc. batches of 1000 records")
        print(f"  one writer   {f(c['one_writer_records_per_s'], '.0f')} records/s "
              "(records built before the clock starts)")
        print(f"  one writer   {f(c['one_writer_building_records_in_loop_records_per_s'], '.0f')}"
              " records/s (building each batch's lists inside the timed loop)")
        print(f"  four writers {f(c['four_writers_records_per_s'], '.0f')} records/s  "
              f"(target >= 500000: one {'met' if c['met_one_writer'] else 'MISSED'}, "
              f"four {'met' if c['met_four_writers'] else 'MISSED'})")
    if d := r.get("d_recovery"):
        print(f"\nd. recovery of {d['records']} WAL records ({d['outpost_keys']} keys), "
              f"median of {d['repeats_median_of']}")
        print(f"  outpost full replay          {f(d['outpost_full_replay_open_and_load_s'])} s "
              f"(process start to ready {f(d['outpost_full_replay_process_ready_s'])} s)")
        print(f"  outpost checkpoint + {d['outpost_checkpoint_plus_tail_replayed_records']} tail "
              f"{f(d['outpost_checkpoint_plus_tail_open_and_load_s'])} s (process "
              f"{f(d['outpost_checkpoint_plus_tail_process_ready_s'])} s)")
        print(f"  redis AOF load               {f(d.get('redis_aof_load_s'))} s (process "
              f"{f(d.get('redis_process_ready_s'))} s)")
        print(f"  full/redis {f(d.get('ratio_full_replay_over_redis_aof_load'))}x "
              f"({'met' if d['met_full_replay'] else 'MISSED'}), checkpoint/redis "
              f"{f(d.get('ratio_checkpoint_plus_tail_over_redis_aof_load'))}x "
              f"({'met' if d['met_checkpoint_plus_tail'] else 'MISSED'}); target <= 1.0 s "
              "and <= redis")


if __name__ == "__main__":
    sys.exit(main())
