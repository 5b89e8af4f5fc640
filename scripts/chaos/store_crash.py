#!/usr/bin/env python3
"""Store crash chaos, long form: kill -9 a writing child N times (default 1000).

Same harness as the suite's short form (tests/store/crash_harness.py): a child
appends from many concurrent trio writers and reports every ack over a pipe; it
is SIGKILLed at a random moment; after each kill the store is opened and checked
(every acked record present with its content, the log a gap-free prefix, the
checkpointed counter state exact, nothing quarantined).

    .venv/bin/python scripts/chaos/store_crash.py [--cycles 1000] [--seed N] [--dir DIR]

Exits non-zero on the first violation, printing the cycle and the seed to replay it.
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.store.crash_harness import run_cycles  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cycles", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=None, help="replay a failing run")
    parser.add_argument("--writers", type=int, default=24, help="concurrent log writers")
    parser.add_argument("--max-acks", type=int, default=600,
                        help="kill after a random number of acks below this")
    parser.add_argument("--dir", type=Path, default=None,
                        help="work here (kept); default: a temporary dir, removed on success")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    work = args.dir or Path(tempfile.mkdtemp(prefix="outpost-store-crash-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"store crash chaos: {args.cycles} cycles, seed {seed}, in {work}", flush=True)
    try:
        stats = run_cycles(work / "data", args.cycles, seed=seed, writers=args.writers,
                           log_dir=work, progress=True, max_acks=args.max_acks)
    except AssertionError as exc:
        print(f"FAILED: {exc}\nchild stderr logs and the data dir are kept in {work}",
              file=sys.stderr)
        return 1
    print(f"OK: {stats.cycles} kill -9 cycles in {stats.seconds:.1f}s; "
          f"{stats.acked_log} acked log records and {stats.acked_kv} acked counter "
          f"increments all recovered; final log length {stats.log_len}; "
          f"{stats.killed_before_ready} kills landed during start-up")
    if args.dir is None:
        shutil.rmtree(work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
