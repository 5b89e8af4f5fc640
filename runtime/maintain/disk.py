"""The disk budget: one byte budget across state, event archives and logs.

Disks that fill up are the most common failure of edge runtimes, so the
budget is enforced before ENOSPC: over budget, maintenance archives and prunes
early; past `budget x critical_factor` (or with the filesystem itself nearly
full) the runtime stops taking non-essential writes (the event log) with a
clear message, while agent state — what users were promised is saved — keeps
being written.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import trio

if TYPE_CHECKING:
    from runtime.config import Config
    from runtime.events import EventLog

log = logging.getLogger("outpost.disk")

OK, OVER, CRITICAL = "ok", "over", "critical"
_FS_CRITICAL_FREE = 0.02  # below 2% free on the filesystem, stop non-essential writes


def tree_bytes(path: Path) -> int:
    """Bytes allocated on disk under `path` (st_blocks, so sparse files count as used)."""
    if not path.exists():
        return 0
    if path.is_file():
        return path.stat().st_blocks * 512
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
            except FileNotFoundError:
                continue
    return total


@dataclass(frozen=True)
class DiskUsage:
    """What the budget covers, and where it stands."""

    data_bytes: int
    archive_bytes: int
    logs_bytes: int
    budget: int
    critical_at: int
    fs_free_fraction: float

    @property
    def total(self) -> int:
        return self.data_bytes + self.archive_bytes + self.logs_bytes

    @property
    def level(self) -> str:
        if self.total >= self.critical_at or self.fs_free_fraction < _FS_CRITICAL_FREE:
            return CRITICAL
        if self.total >= self.budget:
            return OVER
        return OK

    def to_dict(self) -> dict:
        return {"data_bytes": self.data_bytes, "archive_bytes": self.archive_bytes,
                "logs_bytes": self.logs_bytes, "total_bytes": self.total,
                "budget_bytes": self.budget, "critical_bytes": self.critical_at,
                "fs_free_fraction": round(self.fs_free_fraction, 4), "level": self.level}


def measure(data_dir: Path, archive_dir: Path, logs_dir: Path, budget: int,
            critical_factor: float) -> DiskUsage:
    st = os.statvfs(data_dir if data_dir.exists() else data_dir.parent)
    free = st.f_bavail / st.f_blocks if st.f_blocks else 1.0
    # The data dir also holds archives/logs when configured inside it: count them once.
    data = tree_bytes(data_dir)
    for inner in (archive_dir, logs_dir):
        if inner.is_relative_to(data_dir):
            data -= tree_bytes(inner)
    return DiskUsage(data, tree_bytes(archive_dir), tree_bytes(logs_dir), budget,
                     int(budget * critical_factor), free)


class DiskGuard:
    """Watches the budget inside a live runtime and gates non-essential writes.

    At `critical` the event log refuses new events (after recording one that
    says why); agent state, mailboxes and checkpoints keep being written.
    """

    def __init__(self, config: Config, events: EventLog, interval_s: float = 30.0) -> None:
        self.config = config
        self.events = events
        self.interval_s = interval_s
        self.level = OK
        self.usage: DiskUsage | None = None

    def check(self) -> DiskUsage:
        """Measure now and apply the gate; returns the usage."""
        m = self.config.maintain
        usage = measure(self.config.data_dir, Path(m.archive_dir), Path(m.logs_dir),
                        m.disk_budget, m.disk_critical_factor)
        level, was = usage.level, self.level
        self.usage, self.level = usage, level
        if level == CRITICAL and was != CRITICAL:
            self.events.emit("disk-critical", None, **usage.to_dict())
            self.events.suspend(
                f"disk use {usage.total} bytes is past the critical mark {usage.critical_at} "
                f"(budget {usage.budget}) or the filesystem is nearly full: event log writes "
                "are refused until `outpost maintain disk` or an operator frees space")
        elif level != CRITICAL and was == CRITICAL:
            self.events.resume()
            self.events.emit("disk-ok", None, **usage.to_dict())
        if level == OVER and was == OK:
            log.warning("disk use %d bytes is over the budget of %d: run `outpost maintain "
                        "disk` (cron does) to archive and prune early", usage.total, usage.budget)
        return usage

    def allows_nonessential(self) -> bool:
        """False at `critical`: log files and other non-essential writers should skip."""
        return self.level != CRITICAL

    async def run(self) -> None:
        """Check every `interval_s` until cancelled (the tree walk runs in a thread)."""
        while True:
            await trio.to_thread.run_sync(self.check)
            await trio.sleep(self.interval_s)
