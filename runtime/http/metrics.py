"""/metrics: the segment's exposition, negotiated between text 0.0.4 and OpenMetrics.

It reads the shared-memory segment only (no control call), so a scrape costs the
runtime one pass over its slots: the same values `outpost metrics` prints (the
node_exporter textfile is runtime/maintain/textfile.py).
"""

from __future__ import annotations

from collections.abc import Mapping

from shm import Segment
from shm.exposition import OPENMETRICS_CONTENT_TYPE, TEXT_CONTENT_TYPE, prometheus_text


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
