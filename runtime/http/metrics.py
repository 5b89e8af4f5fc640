"""/metrics and the node_exporter textfile: the segment's exposition, negotiated and written.

Both read the shared-memory segment only (no control call), so a scrape costs
the runtime one pass over its slots and a textfile write needs no runtime
socket at all: the same values `outpost metrics` prints.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from shm import Segment, SegmentNotLiveError
from shm.exposition import OPENMETRICS_CONTENT_TYPE, TEXT_CONTENT_TYPE, prometheus_text

if TYPE_CHECKING:
    from runtime.maintain.report import TaskResult
    from runtime.maintain.tasks import Maintenance


def wants_openmetrics(accept: str) -> bool:
    """Does an Accept header ask for OpenMetrics (as Prometheus sends when it may)?"""
    for part in accept.split(","):
        media, *params = (p.strip() for p in part.split(";"))
        if media == "application/openmetrics-text" and "q=0" not in params:
            return True
    return False


def metrics_response(segment: Segment, accept: str,
                     help: Mapping[str, str] | None = None) -> tuple[bytes, str]:
    """(body, content type) for a scrape with this Accept header."""
    openmetrics = wants_openmetrics(accept)
    body = prometheus_text(segment, help=help, openmetrics=openmetrics).encode()
    return body, OPENMETRICS_CONTENT_TYPE if openmetrics else TEXT_CONTENT_TYPE


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


async def task_metrics_textfile(m: Maintenance, arg: str | None = None) -> TaskResult:
    """Write the metrics for node_exporter's textfile collector (atomic write + rename)."""
    # Imported here: runtime.maintain.tasks may register this task (no import cycle).
    from runtime.maintain.report import MaintainError, TaskResult
    from runtime.telemetry import HELP

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
