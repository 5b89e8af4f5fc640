"""`outpost top`: a live view of the agents, drawn from shared memory.

Every frame reads the runtime's segment through a read-only mapping (one batch
load of all one-word slots), so drawing costs the runtime nothing: no RPC per
frame. Rates are computed here between frames from the agents' counters
(`<agent>:messages_in`, `:messages_out`, `:state_writes`); cpu, memory and
restarts come from their gauges/counters when the supervisor publishes them.
A status RPC every few seconds adds what shared memory does not hold (state,
pid, uptime), and the view keeps working if that RPC fails.

On a terminal: full screen with ANSI escapes (alternate screen, no curses, so
it works over any SSH session), `q` quits. Otherwise (a pipe, a file, cron):
plain tables one after another, or one JSON object per frame with --json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TextIO

from runtime import __version__
from runtime.cli.common import CliError, attach_segment, connect
from runtime.cli.format import duration, percent, rate, size, table
from runtime.control.client import ControlClient, NotRunningError, RemoteError
from runtime.exitcodes import EXIT_NOT_RUNNING, EXIT_OK
from shm import Segment, SegmentError, read_slots
from shm.segment import COUNTER, GAUGE, HEARTBEAT

RPC_EVERY_S = 5.0
RATE_COUNTERS = ("messages_in", "messages_out", "state_writes")
HEADERS = ["NAME", "STATE", "PID", "UPTIME", "RESTARTS", "HEARTBEAT", "CPU", "MEM",
           "MSG IN/s", "MSG OUT/s", "WRITES/s"]
_KNOWN = {*RATE_COUNTERS, "restarts", "cpu_percent", "memory_rss_bytes", "heartbeat"}


@dataclass
class TopModel:
    """Turns successive segment readings into rows with per-second rates."""

    prev: dict[str, tuple[float, int]] = field(default_factory=dict)  # slot -> (t, value)
    rpc_rows: dict[str, dict] = field(default_factory=dict)
    rpc_at: float | None = None

    def frame(self, readings: dict[str, Any], now: float) -> list[dict[str, Any]]:
        """One row per agent from `readings` ({slot name: SlotReading})."""
        agents: dict[str, dict[str, Any]] = {name: {} for name in self.rpc_rows}
        for slot in readings:
            agent, sep, metric = slot.partition(":")
            if sep and metric in _KNOWN:
                agents.setdefault(agent, {})
        rows = []
        for name in agents:
            rpc = self.rpc_rows.get(name, {})
            row: dict[str, Any] = {"name": name, "state": rpc.get("state"),
                                   "pid": rpc.get("pid"), "uptime_s": None,
                                   "restarts": rpc.get("restarts"),
                                   "heartbeat_age_s": rpc.get("heartbeat_age_s"),
                                   "cpu_percent": rpc.get("cpu_percent"),
                                   "memory_rss_bytes": rpc.get("memory_rss_bytes")}
            if rpc.get("uptime_s") is not None and self.rpc_at is not None:
                row["uptime_s"] = rpc["uptime_s"] + (now - self.rpc_at)
            beat = readings.get(f"{name}:heartbeat")
            if beat is not None and beat.kind == HEARTBEAT:
                row["heartbeat_age_s"] = beat.value
            for gauge in ("cpu_percent", "memory_rss_bytes"):
                r = readings.get(f"{name}:{gauge}")
                if r is not None and r.kind == GAUGE and r.value is not None:
                    row[gauge] = r.value
            restarts = readings.get(f"{name}:restarts")
            if restarts is not None and restarts.kind == COUNTER:
                row["restarts"] = restarts.value
            for counter in RATE_COUNTERS:
                slot = f"{name}:{counter}"
                r = readings.get(slot)
                row[counter] = None
                row[f"{counter}_per_s"] = None
                if r is None or r.kind != COUNTER:
                    continue
                row[counter] = r.value
                before = self.prev.get(slot)
                if before is not None and now > before[0] and r.value >= before[1]:
                    row[f"{counter}_per_s"] = (r.value - before[1]) / (now - before[0])
                self.prev[slot] = (now, r.value)
            rows.append(row)
        return rows


def cells(row: dict[str, Any]) -> list[object]:
    """A row's cells under HEADERS."""
    age = row.get("heartbeat_age_s")
    return [row["name"], row.get("state") or "-", row.get("pid"), duration(row.get("uptime_s")),
            row.get("restarts"), "-" if age is None else duration(age) + " ago",
            percent(row.get("cpu_percent")), size(row.get("memory_rss_bytes")),
            *(rate(row.get(f"{c}_per_s")) for c in RATE_COUNTERS)]


class _Rpc:
    """The occasional status call, on one kept-open connection; failures are tolerated."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.client: ControlClient | None = None
        self.info: dict[str, Any] = {}

    def refresh(self, model: TopModel, now: float) -> None:
        try:
            if self.client is None:
                self.client = connect(self.args)
                self.info = self.client.call("info")
            rows = self.client.call("status")["agents"]
        except (CliError, NotRunningError, RemoteError, OSError):
            self.close()
            return
        model.rpc_rows = {r["name"]: r for r in rows}
        model.rpc_at = now

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None


def _frames(args: argparse.Namespace, live: bool) -> Iterator[tuple[list[dict], str | None]]:
    """(rows, problem) per frame; reattaches when the runtime restarts. With `live`
    False, a runtime that goes away ends the view (exit 3)."""
    segment: Segment | None = attach_segment(args)  # exit 3 if nothing runs now
    model = TopModel()
    rpc = _Rpc(args)
    next_rpc = 0.0
    try:
        while True:
            now = time.monotonic()
            if segment is not None and not segment.is_current():
                segment.close()
                segment = None
            if segment is None:
                try:
                    segment = attach_segment(args)
                    model = TopModel()  # a new runtime: old counters mean nothing
                    rpc.close()
                    next_rpc = 0.0
                except CliError as exc:
                    if not live:
                        raise CliError(f"outpost: the runtime went away ({exc})",
                                       EXIT_NOT_RUNNING) from None
                    yield [], "runtime not running; waiting for it to start"
                    continue
            if now >= next_rpc:
                rpc.refresh(model, now)
                next_rpc = now + RPC_EVERY_S
            try:
                readings = {r.name: r for r in read_slots(segment)}
            except SegmentError as exc:
                yield [], f"cannot read the segment: {exc}"
                continue
            yield model.frame(readings, time.monotonic()), None
    finally:
        rpc.close()
        if segment is not None:
            segment.close()


def _header(rows: list[dict], problem: str | None) -> str:
    clock = datetime.now().strftime("%H:%M:%S")
    running = sum(1 for r in rows if r.get("state") == "running")
    line = f"outpost {__version__} top - {clock} - {len(rows)} agent(s), {running} running"
    if problem:
        line += f" - {problem}"
    return line


def _plain(args: argparse.Namespace, out: TextIO) -> int:
    for shown, (rows, problem) in enumerate(_frames(args, live=False), 1):
        if args.json:
            out.write(json.dumps({"ts": time.time(), "agents": rows, "problem": problem},
                                 sort_keys=True) + "\n")
        else:
            out.write(_header(rows, problem) + "\n"
                      + table(HEADERS, [cells(r) for r in rows]) + "\n\n")
        out.flush()
        if args.iterations is not None and shown >= args.iterations:
            return EXIT_OK
        time.sleep(args.interval)  # the refresh interval itself, not a synchronisation
    return EXIT_OK


@contextlib.contextmanager
def _screen(out: TextIO, keys_fd: int | None) -> Iterator[None]:
    """Alternate screen, hidden cursor, and (if stdin is a terminal) cbreak input."""
    saved = None
    if keys_fd is not None:
        import termios
        import tty

        saved = termios.tcgetattr(keys_fd)
        tty.setcbreak(keys_fd)
    out.write("\x1b[?1049h\x1b[?25l")
    out.flush()
    try:
        yield
    finally:
        out.write("\x1b[?25h\x1b[?1049l")
        out.flush()
        if saved is not None:
            import termios

            termios.tcsetattr(keys_fd, termios.TCSADRAIN, saved)


def _wait_for_key(keys_fd: int | None, timeout: float) -> bool:
    """Wait up to `timeout` for input; True if the user pressed q."""
    if keys_fd is None:
        time.sleep(timeout)
        return False
    ready, _, _ = select.select([keys_fd], [], [], timeout)
    if not ready:
        return False
    data = os.read(keys_fd, 64)
    return not data or b"q" in data.lower()


def _full_screen(args: argparse.Namespace, out: TextIO) -> int:
    keys_fd = sys.stdin.fileno() if sys.stdin.isatty() else None
    shown = 0
    with _screen(out, keys_fd):
        for rows, problem in _frames(args, live=True):
            width, height = shutil.get_terminal_size((100, 30))
            lines = [_header(rows, problem), ""]
            lines += table(HEADERS, [cells(r) for r in rows]).splitlines()
            lines += ["", "q quits"]
            lines = [line[:width] for line in lines[:height]]
            out.write("\x1b[H" + "".join(f"{line}\x1b[K\r\n" for line in lines[:-1])
                      + lines[-1] + "\x1b[K\x1b[J")
            out.flush()
            shown += 1
            if args.iterations is not None and shown >= args.iterations:
                break
            if _wait_for_key(keys_fd, args.interval):
                break
    return EXIT_OK


def run_top(args: argparse.Namespace) -> int:
    """Full screen on a terminal, plain repeated output otherwise."""
    out = sys.stdout
    try:
        if out.isatty() and not args.json and not args.plain:
            return _full_screen(args, out)
        return _plain(args, out)
    except KeyboardInterrupt:
        return EXIT_OK  # Ctrl-C is a normal way to leave top
    except BrokenPipeError:  # `outpost top | head`
        with contextlib.suppress(OSError):
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - silence the exit flush
        return EXIT_OK
