#!/usr/bin/env python3
"""Long-form control-socket fuzz: 100k (or --frames N) malformed frames and abrupt
disconnects against a live runtime, then the same checks as the suite's short
form (tests/control/test_fuzz.py, which shares this code): the agent is the
same instance, still counting, never restarted; no connection leaked; no
handler crashed.

    .venv/bin/python scripts/chaos/control_fuzz.py [--frames 100000] [--seed N] [--json]

Starts its own runtime (from source) in a temporary directory, so it never
touches a real one. Exit 0 if everything held, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.control.fuzzing import run_fuzz  # noqa: E402
from tests.control.test_fuzz import COUNTER, check_undisturbed, count  # noqa: E402
from tests.runtime_proc import RuntimeProc, wait_for, write_config  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=int(time.time()))
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="outpost-fuzz-") as tmp:
        rt = RuntimeProc(write_config(Path(tmp), COUNTER)).start()
        try:
            before = rt.wait_running("counter")
            wait_for(lambda: count(rt) >= 2, what="count >= 2")
            count_before = count(rt)
            stats = run_fuzz(rt.socket, frames=args.frames, seed=args.seed, agents=["counter"])
            problems = []
            if stats.internal:
                problems.append(f"{len(stats.internal)} internal error(s), first: "
                                f"{stats.internal[0]}")
            try:
                check_undisturbed(rt, before, count_before)
            except AssertionError as exc:
                problems.append(f"agents disturbed: {exc}")
            report = {"seed": args.seed, **stats.to_dict(), "ok": not problems,
                      "problems": problems, "count_before": count_before,
                      "count_after": count(rt) if rt.proc.poll() is None else None}
        finally:
            rt.cleanup()
    if args.json:
        print(json.dumps(report, sort_keys=True))
    else:
        print(f"seed {report['seed']}: {report['frames']} frames over "
              f"{report['connections']} connections ({report['abrupt_disconnects']} abrupt "
              f"disconnects) in {report['seconds']}s")
        print(f"answers: {report['answers']}")
        print(f"connections closed with: {report['closed_with']}")
        print("OK: the agent was not disturbed" if report["ok"] else
              "FAILED:\n  " + "\n  ".join(report["problems"]))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
