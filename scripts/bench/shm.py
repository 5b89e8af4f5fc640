"""Shared-memory metrics benchmark: our metric types next to the alternatives, in ONE run.

    .venv/bin/python scripts/bench/shm.py [--json] [--quick] [--n 1000000] [--repeat 7]
                                          [--procs 4]

Every case runs the same loop shape, `for _ in range(n): <op>`, `repeat` times with
the GC off; figures are the median ns per iteration (the min is reported too).
Repetitions are interleaved (round r times every case once before round r + 1), and
a ratio is the median over rounds of the two cases' figures from the same round, so
a burst of load from other processes on the machine lands on both sides of a ratio
rather than on one case's block. `ratios_of_min` divides the minima (the least
disturbed figures) for comparison.
Cases: the bare loop; Counter.inc as agents write it (`c.inc()`: a method of
the native Counter type) and bound to a local (`inc()`); the same atomic add as a
cffi call, bare (`lib.op_inc_i64(p)`) and in the shape the other metric types
Counter, Gauge, Heartbeat and Histogram used before they were types
(`functools.partial` over the pointer on a __slots__ instance, called as `o.f()`);
Counter.add; C-level loops through the extension (one atomic add, or one beat,
per iteration, no Python: the floors); mp.Value with its lock; prometheus_client
Counter.inc in single-process mode and, in a child process with
PROMETHEUS_MULTIPROC_DIR set, multiprocess mode; Heartbeat.beat; Record read and
write; Gauge.set and Gauge.add; Histogram.observe. Then `--procs` processes each
do a million Counter.inc, Gauge.add(0.5) and Histogram.observe(0.25) on shared
slots and the totals are checked exactly (0.5 and 0.25 steps are exact in binary,
so any lost CAS shows). `--quick` is a smoke run (small n, 3 rounds, 100k per
process).

prometheus_client is not a project dependency: if it is missing, this script
installs it into the running venv with pip and says so on stderr.
Targets (issues 4 and 20): inc, Gauge.set, Gauge.add, Heartbeat.beat and
Histogram.observe each <= 2.5x the bare loop, inc >= 5x faster than mp.Value+lock
and >= 3x faster than prometheus_client (both modes), zero lost updates.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import multiprocessing
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from shm._native import ffi, lib  # noqa: E402

from shm import Counter, Gauge, Heartbeat, Histogram, Record, Segment  # noqa: E402
from shm.metrics import word_pointer  # noqa: E402

TARGETS = {  # ratio name -> (comparison, bound)
    "counter_inc_over_bare_loop": ("<=", 2.5),
    "gauge_set_over_bare_loop": ("<=", 2.5),
    "gauge_add_over_bare_loop": ("<=", 2.5),
    "heartbeat_beat_over_bare_loop": ("<=", 2.5),
    "histogram_observe_over_bare_loop": ("<=", 2.5),
    "mp_value_lock_over_counter_inc": (">=", 5.0),
    "prometheus_single_over_counter_inc": (">=", 3.0),
    "prometheus_multiprocess_over_counter_inc": (">=", 3.0),
}


def timed_once(case: Callable[[int], object], n: int) -> float:
    """ns per iteration of one run of `case(n)`, with the GC off."""
    gc.disable()
    try:
        t0 = time.perf_counter_ns()
        case(n)
        return (time.perf_counter_ns() - t0) / n
    finally:
        gc.enable()


def timed(case: Callable[[int], object], n: int, repeat: int) -> list[float]:
    """ns per iteration of `case(n)`, one figure per repetition."""
    return timed_rounds({"case": case}, n, repeat)["case"]


def timed_rounds(cases: dict[str, Callable[[int], object]], n: int,
                 repeat: int) -> dict[str, list[float]]:
    """Per case, ns per iteration in each of `repeat` rounds; every round runs every case."""
    for case in cases.values():
        case(min(n, 10_000))  # warm up caches and lazy imports
    out: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(repeat):
        for name, case in cases.items():
            out[name].append(timed_once(case, n))
    return out


def paired_ratio(samples: dict[str, list[float]], num: str, den: str) -> float:
    """Median over rounds of samples[num][r] / samples[den][r]."""
    return statistics.median(a / b for a, b in zip(samples[num], samples[den], strict=True))


def ensure_prometheus_client() -> str:
    """Import prometheus_client, installing it into this venv first if it is missing."""
    try:
        import prometheus_client
    except ImportError:
        print(f"bench: prometheus_client is not installed; installing it into {sys.prefix} "
              "for the comparison (it is not an outpost dependency)", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet",
                        "--disable-pip-version-check", "prometheus_client"], check=True)
        importlib.invalidate_caches()
        import prometheus_client
    return prometheus_client.__version__ if hasattr(prometheus_client, "__version__") \
        else _dist_version("prometheus_client")


def _dist_version(name: str) -> str:
    from importlib.metadata import version
    return version(name)


# -- cases ------------------------------------------------------------------------


class _Slots:
    """An object holding one callable in a slot, as Counter holds inc."""

    __slots__ = ("f",)

    def __init__(self, f: Callable[[], object]) -> None:
        self.f = f


def our_cases(seg: Segment) -> dict[str, Callable[[int], object]]:
    c = Counter(seg, "bench:counter")
    hb = Heartbeat(seg, "bench:heartbeat")
    g = Gauge(seg, "bench:gauge")
    h = Histogram(seg, "bench:hist", [0.001, 0.01, 0.1, 1.0, 10.0])
    rec = Record(seg, "bench:record", 64)
    rec.write(bytes(range(64)))
    payload = bytes(64)
    ptr = word_pointer(c)
    partial_inc = _Slots(partial(lib.op_inc_i64, ptr))

    def bare_loop(n: int) -> None:
        for _ in range(n):
            pass

    def counter_inc(n: int, c: Counter = c) -> None:
        for _ in range(n):
            c.inc()

    def counter_inc_bound(n: int, inc: Callable[[], None] = c.inc) -> None:
        for _ in range(n):
            inc()

    def cffi_inc_partial_attr(n: int, o: _Slots = partial_inc) -> None:
        for _ in range(n):
            o.f()

    def counter_add(n: int, c: Counter = c) -> None:
        for _ in range(n):
            c.add(1)

    def cffi_inc(n: int, f: Callable = lib.op_inc_i64, p: object = ptr) -> None:
        for _ in range(n):
            f(p)  # the bare cffi call of the same atomic add

    def c_loop_floor(n: int) -> None:
        lib.op_add_i64_repeat(ptr, 1, n)

    def c_beat_floor(n: int, p: object = ffi.from_buffer("int64_t[]", hb.word)) -> None:
        lib.op_beat_repeat(p, n)  # clock_gettime + store, no Python: what bounds a beat

    def heartbeat_beat(n: int, hb: Heartbeat = hb) -> None:
        for _ in range(n):
            hb.beat()

    def record_read(n: int, rec: Record = rec) -> None:
        for _ in range(n):
            rec.read()

    def record_write(n: int, rec: Record = rec, data: bytes = payload) -> None:
        for _ in range(n):
            rec.write(data)

    def gauge_set(n: int, g: Gauge = g) -> None:
        for _ in range(n):
            g.set(1.5)

    def gauge_add(n: int, g: Gauge = g) -> None:
        for _ in range(n):
            g.add(1.5)

    def histogram_observe(n: int, h: Histogram = h) -> None:
        for _ in range(n):
            h.observe(0.05)

    return {f.__name__: f for f in (
        bare_loop, counter_inc, counter_inc_bound, cffi_inc, cffi_inc_partial_attr,
        counter_add, c_loop_floor, c_beat_floor,
        heartbeat_beat, record_read, record_write, gauge_set, gauge_add, histogram_observe)}


def mp_value_case() -> Callable[[int], object]:
    v = multiprocessing.Value("q", 0)  # a lock-guarded shared int64

    def mp_value_lock(n: int, v: object = v) -> None:
        for _ in range(n):
            with v.get_lock():
                v.value += 1

    return mp_value_lock


def prometheus_case() -> Callable[[int], object]:
    from prometheus_client import CollectorRegistry
    from prometheus_client import Counter as PromCounter

    pc = PromCounter("bench_total", "bench", registry=CollectorRegistry())

    def prometheus_inc(n: int, pc: object = pc) -> None:
        for _ in range(n):
            pc.inc()

    return prometheus_inc


def prometheus_multiprocess_child(n: int, repeat: int) -> None:
    """Runs in a child with PROMETHEUS_MULTIPROC_DIR set (read when the library imports)."""
    assert os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    from prometheus_client import values
    samples = timed(prometheus_case(), n, repeat)
    print(json.dumps({"samples": samples, "value_class": values.ValueClass.__name__}))


def prometheus_multiprocess(n: int, repeat: int) -> tuple[list[float], str]:
    with tempfile.TemporaryDirectory(prefix="prom-mp-") as d:
        env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": d}
        out = subprocess.run(
            [sys.executable, __file__, "--child-prometheus-multiprocess", "--n", str(n),
             "--repeat", str(repeat)], env=env, capture_output=True, text=True, check=True)
    doc = json.loads(out.stdout)
    return doc["samples"], doc["value_class"]


# -- lost updates across processes --------------------------------------------------


def _worker(path: str, n: int, barrier: object) -> None:
    seg = Segment.attach(path, writable=True)
    inc = Counter(seg, "bench:shared").inc
    add = Gauge(seg, "bench:shared_gauge").add
    observe = Histogram(seg, "bench:shared_hist", SHARED_BOUNDS).observe
    barrier.wait()
    for _ in range(n):
        inc()
        add(0.5)  # exact in binary: a lost CAS shows in the total
        observe(0.25)


SHARED_BOUNDS = [0.1, 1.0]


def lost_updates(seg: Segment, procs: int, n: int) -> dict:
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(procs + 1)
    shared = Counter(seg, "bench:shared")
    gauge = Gauge(seg, "bench:shared_gauge")
    hist = Histogram(seg, "bench:shared_hist", SHARED_BOUNDS)
    before = (shared.value(), gauge.value(), hist.value())
    workers = [ctx.Process(target=_worker, args=(str(seg.path), n, barrier))
               for _ in range(procs)]
    for w in workers:
        w.start()
    barrier.wait()
    t0 = time.perf_counter_ns()
    for w in workers:
        w.join()
    wall = time.perf_counter_ns() - t0
    if any(w.exitcode != 0 for w in workers):
        raise SystemExit(f"bench: a worker failed: {[w.exitcode for w in workers]}")
    expected = procs * n
    counted = shared.value() - before[0]
    gauge_steps = (gauge.value() - before[1]) / 0.5
    after = hist.value()
    hist_count = after["count"] - before[2]["count"]
    hist_sum_steps = (after["sum"] - before[2]["sum"]) / 0.25
    return {"processes": procs, "iterations_per_process": n, "expected_total": expected,
            "counter_counted": counted, "gauge_add_counted": gauge_steps,
            "histogram_count": hist_count, "histogram_sum_counted": hist_sum_steps,
            "lost_updates": {"counter_inc": expected - counted,
                             "gauge_add": expected - gauge_steps,
                             "histogram_observe_count": expected - hist_count,
                             "histogram_observe_sum": expected - hist_sum_steps},
            "wall_ns_per_iteration_all_processes": wall / expected}


# -- report -----------------------------------------------------------------------


def machine() -> dict:
    model = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_kib = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    import cffi
    return {"nproc": len(os.sched_getaffinity(0)), "cpu_model": model,
            "mem_total_gib": round(mem_kib / 2**20, 1), "python": platform.python_version(),
            "cffi": cffi.__version__, "kernel": platform.release()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--n", type=int, default=1_000_000, help="iterations per repetition")
    ap.add_argument("--repeat", type=int, default=7, help="repetitions per case (median)")
    ap.add_argument("--procs", type=int, default=4, help="processes for the lost-update check")
    ap.add_argument("--quick", action="store_true",
                    help="a smoke run: n=100000, 3 rounds, 100000 iterations per process")
    ap.add_argument("--child-prometheus-multiprocess", action="store_true",
                    help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child_prometheus_multiprocess:
        prometheus_multiprocess_child(args.n, args.repeat)
        return 0

    per_process = 1_000_000
    if args.quick:
        args.n, args.repeat, per_process = 100_000, 3, 100_000
    os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)  # single-process mode in this process
    prom_version = ensure_prometheus_client()
    load_before = os.getloadavg()
    base = "/dev/shm" if os.path.isdir("/dev/shm") else None
    with tempfile.TemporaryDirectory(prefix="outpost-bench-", dir=base) as d:
        seg = Segment.create(Path(d) / "bench.shm", 64)
        cases = our_cases(seg)
        cases["mp_value_lock"] = mp_value_case()
        cases["prometheus_single"] = prometheus_case()
        samples = timed_rounds(cases, args.n, args.repeat)
        # What a Python loop of beats would cost if the method call were free.
        samples["c_beat_floor_plus_bare_loop"] = [
            a + b for a, b in zip(samples["c_beat_floor"], samples["bare_loop"], strict=True)]
        samples["prometheus_multiprocess"], prom_mp_class = \
            prometheus_multiprocess(args.n, args.repeat)
        lost = lost_updates(seg, args.procs, per_process)
        seg.close()
    load_after = os.getloadavg()

    med = {k: statistics.median(v) for k, v in samples.items()}
    pairs = {  # ratio name -> (numerator case, denominator case)
        "counter_inc_over_bare_loop": ("counter_inc", "bare_loop"),
        "counter_inc_bound_over_bare_loop": ("counter_inc_bound", "bare_loop"),
        "gauge_set_over_bare_loop": ("gauge_set", "bare_loop"),
        "gauge_add_over_bare_loop": ("gauge_add", "bare_loop"),
        "heartbeat_beat_over_bare_loop": ("heartbeat_beat", "bare_loop"),
        "c_beat_floor_plus_bare_loop_over_bare_loop": ("c_beat_floor_plus_bare_loop",
                                                       "bare_loop"),
        "histogram_observe_over_bare_loop": ("histogram_observe", "bare_loop"),
        "cffi_inc_over_bare_loop": ("cffi_inc", "bare_loop"),
        "cffi_inc_partial_attr_over_bare_loop": ("cffi_inc_partial_attr", "bare_loop"),
        "cffi_inc_partial_attr_over_counter_inc": ("cffi_inc_partial_attr", "counter_inc"),
        "mp_value_lock_over_counter_inc": ("mp_value_lock", "counter_inc"),
        "prometheus_single_over_counter_inc": ("prometheus_single", "counter_inc"),
        "prometheus_multiprocess_over_counter_inc": ("prometheus_multiprocess", "counter_inc"),
    }
    # prometheus_multiprocess ran in a child process, not in the rounds: ratio of medians.
    ratios = {name: paired_ratio(samples, a, b) if "prometheus_multiprocess" not in (a, b)
              else med[a] / med[b] for name, (a, b) in pairs.items()}
    ratios_of_min = {name: min(samples[a]) / min(samples[b]) for name, (a, b) in pairs.items()}
    targets = {}
    for name, (op, bound) in TARGETS.items():
        value = ratios[name]
        targets[name] = {"target": f"{op} {bound}", "value": value,
                         "met": value <= bound if op == "<=" else value >= bound}
    lost_total = sum(lost["lost_updates"].values())
    targets["lost_updates"] = {"target": "== 0", "value": lost_total, "met": lost_total == 0}
    result = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(),
        "load_average_1_5_15_before": [round(x, 2) for x in load_before],
        "load_average_1_5_15_after": [round(x, 2) for x in load_after],
        "iterations_per_repetition": args.n,
        "repetitions": args.repeat,
        "prometheus_client_version": prom_version,
        "prometheus_multiprocess_value_class": prom_mp_class,
        "median_ns_per_iteration": med,
        "min_ns_per_iteration": {k: min(v) for k, v in samples.items()},
        "net_ns_per_op_over_bare_loop": {k: v - med["bare_loop"] for k, v in med.items()
                                         if k not in ("bare_loop", "c_loop_floor",
                                                      "c_beat_floor",
                                                      "c_beat_floor_plus_bare_loop")},
        "ratios": ratios,
        "ratios_of_min": ratios_of_min,
        "targets": targets,
        "lost_update_check": lost,
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{result['command']}  ({result['date_utc']}, load {load_before} -> "
          f"{result['load_average_1_5_15_after']})")
    print(f"{'case':28} {'median ns/iter':>15} {'min ns/iter':>12}")
    for name in samples:
        print(f"{name:28} {med[name]:15.1f} {min(samples[name]):12.1f}")
    print()
    print(f"{'ratio':44} {'paired median':>14} {'of minima':>10}")
    for name, value in ratios.items():
        print(f"{name:44} {value:13.2f}x {ratios_of_min[name]:9.2f}x")
    print()
    for name, t in targets.items():
        print(f"target {name}: {t['target']}, got {t['value']:.2f}: "
              f"{'met' if t['met'] else 'MISSED'}")
    print(f"lost updates ({lost['processes']} processes x {lost['iterations_per_process']}): "
          + ", ".join(f"{k} {v:g}" for k, v in lost["lost_updates"].items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
