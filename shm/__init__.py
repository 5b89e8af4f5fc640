"""Hot-path state in shared memory: counters, gauges, histograms, heartbeats, records.

The runtime creates one Segment; agent processes attach read-write and the CLI
read-only. Readers need no IPC and never see torn values.
"""

from shm.exposition import prometheus_text, read_slots, snapshot
from shm.metrics import (
    Counter,
    CounterBatch,
    Gauge,
    Heartbeat,
    Histogram,
    Record,
    RecordBusyError,
    RecordWriterDiedError,
)
from shm.segment import Segment, SegmentError, SegmentFullError, SegmentNotLiveError

__all__ = [
    "Counter",
    "CounterBatch",
    "Gauge",
    "Heartbeat",
    "Histogram",
    "Record",
    "RecordBusyError",
    "RecordWriterDiedError",
    "Segment",
    "SegmentError",
    "SegmentFullError",
    "SegmentNotLiveError",
    "prometheus_text",
    "read_slots",
    "snapshot",
]
