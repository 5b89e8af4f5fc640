"""Views of a whole segment: a snapshot dict and Prometheus text exposition.

Both read the segment directly (no IPC), so the CLI can serve them from a
read-only attach, e.g. `outpost metrics > metrics.prom` from cron for
node_exporter's textfile collector.
"""

from __future__ import annotations

import math
import re
import weakref
from collections.abc import Mapping
from typing import Any, NamedTuple

from shm._native import ffi, lib
from shm.metrics import slot_value
from shm.segment import COUNTER, GAUGE, HEARTBEAT, HISTOGRAM, KIND_NAMES, Segment, SegmentError

_PROM_BAD = re.compile(r"[^a-zA-Z0-9_]")
_ONE_WORD = (COUNTER, GAUGE, HEARTBEAT)


class SlotReading(NamedTuple):
    """One slot as read: `value` is None and `error` says why when it could not be read."""

    name: str
    kind: int
    value: Any
    error: str | None = None


class _Batch:
    """A segment's one-word slots as one native batch load. Slots are never freed while a
    segment lives, so this is rebuilt only when slots were added."""

    def __init__(self, segment: Segment) -> None:
        self.slots = segment.ready_slots()
        self.count = len(self.slots)
        one_word = [index for index, _, kind in self.slots if kind in _ONE_WORD]
        self.position = {index: n for n, index in enumerate(one_word)}
        self.ptrs = ffi.new("int64_t *[]", [segment.slot_words(i) for i in self.position])

    def load(self) -> tuple[Any, int]:
        """(the words, in `position` order; the monotonic clock in ns when read)."""
        out = ffi.new("int64_t[]", max(1, len(self.position)))
        if self.position:
            lib.op_load_i64_batch(self.ptrs, out, len(self.position))
        return out, lib.op_now_ns()


_batches: weakref.WeakKeyDictionary[Segment, _Batch] = weakref.WeakKeyDictionary()


def _batch(segment: Segment) -> _Batch:
    batch = _batches.get(segment)
    if batch is None or len(segment.ready_slots()) != batch.count:
        batch = _batches[segment] = _Batch(segment)
    return batch


def read_slots(segment: Segment) -> list[SlotReading]:
    """Every ready slot's name, kind and value; one-word slots are read in one batch call.

    A slot that cannot be read (a record whose writer died mid-write, a
    corrupt slot) comes back with an error instead of failing the whole read.
    """
    batch = _batch(segment)
    out, now = batch.load()
    doubles = ffi.cast("double *", out)
    readings = []
    for index, name, kind in batch.slots:
        n = batch.position.get(index)
        if n is not None:
            if kind == COUNTER:
                value: Any = out[n]
            elif kind == GAUGE:
                value = doubles[n]
            else:  # heartbeat: age of the stamp, None if it never beat
                value = None if out[n] == 0 else max(0.0, (now - out[n]) / 1e9)
            readings.append(SlotReading(name, kind, value))
            continue
        try:
            readings.append(SlotReading(name, kind, slot_value(segment, index, kind)))
        except SegmentError as exc:
            readings.append(SlotReading(name, kind, None, str(exc)))
    return readings


def snapshot(segment: Segment) -> dict[str, dict]:
    """{slot name: {"kind", "value"[, "error"]}} for every ready slot.

    Heartbeats are given as their age in seconds (None if never beaten),
    records as hex, so the result is plain data that JSON and msgpack carry.
    """
    out: dict[str, dict] = {}
    for r in read_slots(segment):
        value = r.value.hex() if isinstance(r.value, bytes) else r.value
        entry = {"kind": KIND_NAMES.get(r.kind, str(r.kind)), "value": value}
        if r.error is not None:
            entry["error"] = r.error
        out[r.name] = entry
    return out


RUNTIME_OWNER = "outpost"
"""Slots named 'outpost:<metric>' are the runtime's own: exposed without an agent label
(the config refuses an agent called 'outpost')."""

TEXT_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS_CONTENT_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8"


def split_name(slot_name: str) -> tuple[str, dict[str, str]]:
    """'agent:metric' slot names become metric 'metric' with label agent="agent";
    the runtime's own 'outpost:metric' slots have no label."""
    owner, sep, metric = slot_name.partition(":")
    if not sep:
        return slot_name, {}
    return metric, {} if owner == RUNTIME_OWNER else {"agent": owner}


def _fmt(v: float) -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return "NaN"
        if math.isinf(v):
            return "+Inf" if v > 0 else "-Inf"
        return repr(v)
    return str(v)


def _escape(value: str) -> str:
    # Text format 0.0.4: backslash, double quote and line feed are escaped in label values.
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(labels: dict[str, str], extra: dict[str, str] | None = None) -> str:
    merged = {**labels, **(extra or {})}
    if not merged:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in merged.items()) + "}"


def _help_text(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


_DEFAULT_HELP = {COUNTER: "Counter {metric!r} from the shared-memory segment.",
                 GAUGE: "Gauge {metric!r} from the shared-memory segment.",
                 HEARTBEAT: "Seconds since the last beat of heartbeat {metric!r}.",
                 HISTOGRAM: "Histogram {metric!r} from the shared-memory segment."}
_TYPES = {COUNTER: "counter", GAUGE: "gauge", HEARTBEAT: "gauge", HISTOGRAM: "histogram"}


class _Family:
    """One metric family: its name, type, and each member slot's fixed text."""

    def __init__(self, name: str, kind: str, metric: str, slot_kind: int) -> None:
        self.name, self.kind, self.metric, self.slot_kind = name, kind, metric, slot_kind
        self.samples: list[tuple[int, int, str]] = []  # (batch position, kind, "name{..} ")
        self.histograms: list[tuple[int, str, dict[str, str]]] = []  # (index, base, labels)


class _Layout:
    """The text a segment's slots will always have around their values (names, labels,
    families), worked out once per batch of new slots rather than on every scrape."""

    def __init__(self, batch: _Batch, prefix: str) -> None:
        self.batch = batch
        self.families: dict[str, _Family] = {}
        self.skipped: list[str] = []
        for index, slot, kind in batch.slots:
            if kind not in _TYPES:
                continue  # records are not metrics
            metric, labels = split_name(slot)
            base = prefix + _PROM_BAD.sub("_", metric)
            if kind == COUNTER:
                name = base if base.endswith("_total") else base + "_total"
            else:
                name = base + "_age_seconds" if kind == HEARTBEAT else base
            family = self.families.setdefault(name, _Family(name, _TYPES[kind], metric, kind))
            if family.kind != _TYPES[kind]:
                self.skipped.append(f"# outpost: skipped {slot!r}: {name} is already a "
                                    f"{family.kind}")
            elif kind == HISTOGRAM:
                family.histograms.append((index, base, labels))
            else:
                family.samples.append((batch.position[index], kind, f"{name}{_labels(labels)} "))


_layouts: weakref.WeakKeyDictionary[Segment, dict[str, _Layout]] = weakref.WeakKeyDictionary()


def _layout(segment: Segment, prefix: str) -> _Layout:
    batch = _batch(segment)
    by_prefix = _layouts.setdefault(segment, {})
    layout = by_prefix.get(prefix)
    if layout is None or layout.batch is not batch:
        layout = by_prefix[prefix] = _Layout(batch, prefix)
    return layout


def _histogram_lines(value: dict, base: str, labels: dict[str, str]) -> list[str]:
    lines = []
    cumulative = 0
    for bound, count in zip([*value["bounds"], math.inf], value["buckets"], strict=True):
        cumulative += count
        lines.append(f"{base}_bucket{_labels(labels, {'le': _fmt(float(bound))})} {cumulative}")
    lines.append(f"{base}_sum{_labels(labels)} {_fmt(value['sum'])}")
    lines.append(f"{base}_count{_labels(labels)} {value['count']}")
    return lines


def prometheus_text(segment: Segment, prefix: str = "outpost_", *,
                    help: Mapping[str, str] | None = None, openmetrics: bool = False) -> str:
    """Prometheus text format 0.0.4 (or OpenMetrics 1.0) for counters, gauges, heartbeat
    ages and histograms, each family with `# HELP` and `# TYPE`.

    Slot 'agent:metric' becomes `<prefix>metric{agent="agent"}`; counters get
    `_total`, heartbeats `_age_seconds` (a gauge), histograms cumulative
    `_bucket{le=...}` lines ending in +Inf, then `_sum` and `_count`. Records
    are not metrics and are left out. Samples of one name are grouped under
    one family; a sample whose name another family already uses with
    another type is left out (with a comment in the text format), rather than
    emitted mistyped. `help` maps a slot's metric part ('restarts') to its HELP
    text; other families get a generic one. OpenMetrics names a counter family
    without its `_total` and ends with `# EOF`. The names and labels of each slot
    are worked out once (slots never change), so a scrape formats only values.
    """
    help = help or {}
    layout = _layout(segment, prefix)
    out_words, now = layout.batch.load()
    doubles = ffi.cast("double *", out_words)
    out: list[str] = []
    for family in layout.families.values():
        lines = []
        for n, kind, start in family.samples:
            raw = out_words[n]
            if kind == COUNTER:
                lines.append(start + str(raw))
            elif kind == GAUGE:
                lines.append(start + _fmt(doubles[n]))
            elif raw:  # a heartbeat that never beat has no age
                lines.append(start + _fmt(max(0.0, (now - raw) / 1e9)))
        for index, base, labels in family.histograms:
            try:
                value = slot_value(segment, index, HISTOGRAM)
            except SegmentError:
                continue
            lines.extend(_histogram_lines(value, base, labels))
        if not lines:
            continue
        name = family.name
        if openmetrics and family.kind == "counter":
            name = name.removesuffix("_total")
        text = help.get(family.metric) or _DEFAULT_HELP[family.slot_kind].format(
            metric=family.metric)
        out.append(f"# HELP {name} {_help_text(text)}")
        out.append(f"# TYPE {name} {family.kind}")
        out.extend(lines)
    if openmetrics:  # OpenMetrics allows no other comments
        out.append("# EOF")
    else:
        out.extend(layout.skipped)
    return "\n".join(out) + ("\n" if out else "")
