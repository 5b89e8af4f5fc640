"""Hot-path state in shared memory: counters, gauges, histograms, heartbeats, records.

The runtime creates one Segment; agent processes attach read-write and the CLI
read-only. Readers need no IPC and never see torn values.
"""

from shm.exposition import prometheus_text, snapshot
from shm.metrics import Counter, Gauge, Heartbeat, Histogram, Record
from shm.segment import Segment, SegmentError, SegmentFullError

__all__ = [
    "Counter",
    "Gauge",
    "Heartbeat",
    "Histogram",
    "Record",
    "Segment",
    "SegmentError",
    "SegmentFullError",
    "prometheus_text",
    "snapshot",
]
