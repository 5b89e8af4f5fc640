"""`outpost maintain metrics-textfile PATH`: the metrics for node_exporter's textfile collector.

It reads the live runtime's shared-memory segment only, so it runs the same inside
the runtime and from cron with no runtime socket: the values `outpost metrics` prints.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

from runtime.config import Config
from runtime.maintain.report import MaintainError, TaskResult
from runtime.telemetry import HELP
from shm import Segment, SegmentNotLiveError
from shm.exposition import prometheus_text


class Configured(Protocol):
    """What the task needs of its maintenance context: the config (the segment's path)."""

    config: Config


def write_textfile(path: Path, text: str) -> int:
    """Write `text` to `path` atomically for node_exporter's textfile collector.

    The collector reads every `*.prom` file in its directory whenever it is
    scraped: the text goes to a hidden temporary file in the same directory
    (not matching *.prom), is fsynced, and is renamed over `path`, so a scrape
    sees the old file or the new one, never half of one. Returns bytes written.
    """
    path = Path(path)
    if path.suffix != ".prom":
        raise ValueError(f"{path}: node_exporter's textfile collector reads only *.prom "
                         "files; name the file e.g. outpost.prom")
    data = text.encode()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # the collector usually runs as another user
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    return len(data)


def metrics_textfile(segment_path: Path, path: Path,
                     help: Mapping[str, str] | None = None) -> dict:
    """`outpost maintain metrics-textfile PATH`: the live runtime's metrics into PATH.

    Without a live runtime PATH is replaced by a file holding no samples, so
    stale values do not linger (an `absent()` alert fires instead), and
    SegmentNotLiveError says why.
    """
    try:
        with Segment.attach(segment_path) as segment:
            text = prometheus_text(segment, help=help)
    except SegmentNotLiveError:
        write_textfile(path, "# outpost: no live runtime\n")
        raise
    return {"path": str(path), "bytes": write_textfile(path, text),
            "samples": sum(1 for line in text.splitlines() if not line.startswith("#"))}


async def task_metrics_textfile(m: Configured, arg: str | None = None) -> TaskResult:
    """Write the metrics for node_exporter's textfile collector (atomic write + rename)."""
    if not arg:
        raise MaintainError("metrics-textfile needs a file: outpost maintain metrics-textfile "
                            "/var/lib/node_exporter/textfile_collector/outpost.prom")
    result = TaskResult("metrics-textfile")
    try:
        result.details = metrics_textfile(m.config.segment_path, Path(arg).absolute(), HELP)
    except (SegmentNotLiveError, ValueError, OSError) as exc:
        raise MaintainError(str(exc)) from None
    result.summary = f"wrote {result.details['samples']} sample(s) to {arg}"
    return result
