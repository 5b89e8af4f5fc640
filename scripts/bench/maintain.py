#!/usr/bin/env python3
"""Maintenance on a large environment: time and peak RSS of compact, backup, verify.

Side by side in one run: `outpost maintain compact` vs `mdb_copy -c` (Debian's
lmdb-utils, installed by this script if missing) on byte-identical copies of
the same environment, page cache warm for both. Each outpost task runs as its
own process (`outpost maintain ...`, offline), so its peak RSS is its own.
The environment is built at two sizes to show whether memory grows with data.

    .venv/bin/python scripts/bench/maintain.py            # 1 GiB (and 256 MiB)
    .venv/bin/python scripts/bench/maintain.py --quick    # 128 MiB (and 32 MiB)
    .venv/bin/python scripts/bench/maintain.py --json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import trio

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from runtime.agents import state_stream  # noqa: E402
from runtime.store import StateBook, StoreOptions, open_store  # noqa: E402

RECORD = 1024  # bytes of payload per WAL record


def ensure_mdb_copy() -> str:
    found = shutil.which("mdb_copy")
    if found:
        return found
    print("installing lmdb-utils (mdb_copy) from Debian's packages...", file=sys.stderr)
    subprocess.run(["apt-get", "update", "-qq"], check=False, capture_output=True)
    subprocess.run(["apt-get", "install", "-y", "-qq", "lmdb-utils"], check=True,
                   capture_output=True)
    return shutil.which("mdb_copy") or "mdb_copy"


async def build(data_dir: Path, size_mb: int) -> dict:
    """~size_mb of WAL in 20 streams, a checkpointed state per stream, then half pruned
    (so compaction has free pages to drop)."""
    options = StoreOptions(map_size=64 << 20, map_size_max=4 * size_mb << 20)
    records = size_mb * (1 << 20) // (RECORD + 64)
    streams = 20
    payload = os.urandom(RECORD)
    async with open_store(data_dir, options) as store:
        book = StateBook(store)
        per = records // streams
        for s in range(streams):
            name = f"bench/log{s}"
            for start in range(0, per, 1000):
                n = min(1000, per - start)
                await store.append_many(name, [[start + i, payload] for i in range(n)])
            state = await book.open(state_stream(f"agent{s}"))
            for i in range(200):
                await state.set(f"k{i}", i)
            await state.checkpoint()
        # Prune after all writes, so the freed pages stay free for compaction to drop.
        for s in range(streams):
            await store.prune(f"bench/log{s}", per // 2, uncovered=True)
        return {"records": records, "streams": streams}


_SAMPLER = r"""
import json, subprocess, sys, time
def rss(pid):
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(("VmRSS:", "RssAnon:")):
                    out[line.split(":")[0]] = int(line.split()[1])
    except OSError:
        pass
    return out
t = time.perf_counter()
p = subprocess.Popen(sys.argv[1:], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
peak = {"VmRSS": 0, "RssAnon": 0}
while p.poll() is None:
    for k, v in rss(p.pid).items():
        peak[k] = max(peak[k], v)
    time.sleep(0.002)
e = time.perf_counter() - t
print(json.dumps({"rc": p.returncode, "seconds": e, "err": p.stderr.read().decode()[-2000:],
                  "out": p.stdout.read().decode()[-20000:],
                  "rss_kib": peak["VmRSS"], "anon_kib": peak["RssAnon"]}))
"""


def measure(cmd: list[str]) -> dict:
    """Wall time, peak RSS and peak anonymous RSS (heap: not LMDB's mapped file) of `cmd`,
    sampled every 2 ms from /proc by a separate sampler process."""
    out = subprocess.run([sys.executable, "-c", _SAMPLER, *cmd], capture_output=True,
                         text=True, check=True)
    result = json.loads(out.stdout)
    if result["rc"] != 0:
        raise SystemExit(f"{cmd} failed ({result['rc']}): {result['err']}")
    return {"seconds": result["seconds"], "peak_rss_mib": result["rss_kib"] / 1024,
            "peak_anon_mib": result["anon_kib"] / 1024, "stdout": result["out"]}


def warm(path: Path) -> None:
    with open(path, "rb") as f:
        while f.read(8 << 20):
            pass


def bench_size(size_mb: int, work: Path, mdb_copy: str) -> dict:
    a = work / f"env{size_mb}"
    trio.run(build, a / "data", size_mb)
    config = a / "outpost.toml"
    config.write_text('[runtime]\ndata_dir = "data"\nrun_dir = "run"\n'
                      '[maintain]\narchive_dir = "archive"\n')
    b = work / f"env{size_mb}b"
    shutil.copytree(a, b)
    env_bytes = (a / "data" / "data.mdb").stat().st_size
    outpost = [sys.executable, "-m", "runtime"]
    warm(a / "data" / "data.mdb")
    warm(b / "data" / "data.mdb")

    dest = work / f"mdbcopy{size_mb}"
    dest.mkdir()
    startup = measure([*outpost, "--version"])
    mdb = measure([mdb_copy, "-c", str(a / "data"), str(dest)])
    # outpost fsyncs its copy before the atomic swap; mdb_copy leaves it in the page cache.
    # The same copy followed by an fsync is the durable like-for-like floor.
    dest2 = work / f"mdbcopysync{size_mb}"
    dest2.mkdir()
    mdb_sync = measure(["sh", "-c", '"$0" -c "$1" "$2" && sync "$2/data.mdb"', mdb_copy,
                        str(a / "data"), str(dest2)])
    compact = measure([*outpost, "maintain", "compact", "--json",
                       "--config", str(b / "outpost.toml")])
    compacted_bytes = (b / "data" / "data.mdb").stat().st_size
    phases = json.loads(compact["stdout"])["tasks"][0]["details"]
    mdb_bytes = (dest / "data.mdb").stat().st_size
    backup = measure([*outpost, "maintain", "backup", str(work / f"backups{size_mb}"),
                      "--config", str(b / "outpost.toml")])
    verify = measure([*outpost, "maintain", "verify", "--config", str(b / "outpost.toml")])
    shutil.rmtree(a)
    shutil.rmtree(dest)
    shutil.rmtree(dest2)
    return {
        "env_bytes": env_bytes,
        "compacted_bytes": compacted_bytes,
        "mdb_copy_compacted_bytes": mdb_bytes,
        "outpost_process_startup_s": startup["seconds"],
        "mdb_copy_compact_s": mdb["seconds"],
        "mdb_copy_compact_peak_anon_mib": mdb["peak_anon_mib"],
        "mdb_copy_compact_then_fsync_s": mdb_sync["seconds"],
        "compact_time_ratio_outpost_to_mdb_copy_then_fsync":
            compact["seconds"] / mdb_sync["seconds"],
        "mdb_copy_compact_peak_rss_mib": mdb["peak_rss_mib"],
        "outpost_compact_s": compact["seconds"],
        "outpost_compact_peak_rss_mib": compact["peak_rss_mib"],
        "outpost_compact_peak_anon_mib": compact["peak_anon_mib"],
        "compact_time_ratio_outpost_to_mdb_copy": compact["seconds"] / mdb["seconds"],
        "outpost_compact_copy_phase_s": phases["copy_s"],
        "outpost_compact_swap_phase_s": phases["swap_s"],
        "compact_copy_phase_ratio_outpost_to_mdb_copy": phases["copy_s"] / mdb["seconds"],
        "outpost_backup_s": backup["seconds"],
        "outpost_backup_peak_rss_mib": backup["peak_rss_mib"],
        "outpost_backup_peak_anon_mib": backup["peak_anon_mib"],
        "outpost_verify_s": verify["seconds"],
        "outpost_verify_peak_rss_mib": verify["peak_rss_mib"],
        "outpost_verify_peak_anon_mib": verify["peak_anon_mib"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (CI smoke)")
    parser.add_argument("--json", action="store_true", help="one JSON object of every figure")
    parser.add_argument("--dir", default=None, help="work dir (default: a temp dir on /tmp)")
    args = parser.parse_args()
    large, small = (128, 32) if args.quick else (1024, 256)
    mdb_copy = ensure_mdb_copy()
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="outpost-bench-maintain-") as tmp:
        work = Path(tmp)
        results = {"small": bench_size(small, work, mdb_copy),
                   "large": bench_size(large, work, mdb_copy)}
    out = {
        "machine": {"cpus": os.cpu_count(), "load_avg_1m": os.getloadavg()[0]},
        "small_env_mib": small, "large_env_mib": large,
        **{f"small_{k}": v for k, v in results["small"].items()},
        **{f"large_{k}": v for k, v in results["large"].items()},
    }
    for task in ("compact", "backup", "verify"):
        out[f"{task}_peak_anon_growth_large_over_small"] = (
            out[f"large_outpost_{task}_peak_anon_mib"]
            / out[f"small_outpost_{task}_peak_anon_mib"])
    if args.json:
        print(json.dumps(out, indent=2, sort_keys=True))
        return
    print(f"maintenance on {small} MiB and {large} MiB environments "
          f"({os.cpu_count()} cpus, load {out['machine']['load_avg_1m']:.2f})")
    for label in ("small", "large"):
        r = results[label]
        print(f"\n{label}: env {r['env_bytes'] / 2**20:.0f} MiB -> compacted "
              f"{r['compacted_bytes'] / 2**20:.0f} MiB (mdb_copy: "
              f"{r['mdb_copy_compacted_bytes'] / 2**20:.0f} MiB)")
        print(f"  {'':<18} {'seconds':>8}  {'peak RSS':>9}  {'peak heap (anon)':>16}")
        print(f"  {'mdb_copy -c':<18} {r['mdb_copy_compact_s']:8.3f}  "
              f"{r['mdb_copy_compact_peak_rss_mib']:6.1f} MiB  "
              f"{r['mdb_copy_compact_peak_anon_mib']:13.1f} MiB")
        for task in ("compact", "backup", "verify"):
            print(f"  {'outpost ' + task:<18} {r[f'outpost_{task}_s']:8.3f}  "
                  f"{r[f'outpost_{task}_peak_rss_mib']:6.1f} MiB  "
                  f"{r[f'outpost_{task}_peak_anon_mib']:13.1f} MiB")
        print(f"  {'mdb_copy -c + fsync':<18} {r['mdb_copy_compact_then_fsync_s']:8.3f}")
        print(f"  (outpost process start-up alone: {r['outpost_process_startup_s']:.3f} s; "
              f"compact phases: copy {r['outpost_compact_copy_phase_s']:.3f} s, swap "
              f"{r['outpost_compact_swap_phase_s']:.3f} s, the swap freeing the old file)")
        print(f"  compact time ratio outpost / mdb_copy: "
              f"{r['compact_time_ratio_outpost_to_mdb_copy']:.2f}x (goal <= 1.5x); "
              f"/ (mdb_copy + fsync): "
              f"{r['compact_time_ratio_outpost_to_mdb_copy_then_fsync']:.2f}x; "
              f"copy phase alone {r['compact_copy_phase_ratio_outpost_to_mdb_copy']:.2f}x")
    for task in ("compact", "backup", "verify"):
        print(f"peak heap growth {large}/{small} MiB env, {task}: "
              f"{out[f'{task}_peak_anon_growth_large_over_small']:.2f}x (goal: ~1, flat)")


if __name__ == "__main__":
    main()
