"""The disk budget: one byte budget across state, event archives and logs.

Disks that fill up are the most common failure of edge runtimes, so the
budget is enforced before ENOSPC: over budget, maintenance archives and prunes
early; past `budget x critical_factor` (or with the filesystem itself nearly
full) the runtime stops taking non-essential writes (the event log) with a
clear message, while agent state — what users were promised is saved — keeps
being written.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

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
