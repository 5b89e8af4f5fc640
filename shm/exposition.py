"""Views of a whole segment: a snapshot dict and Prometheus text exposition.

Both read the segment directly (no IPC), so the CLI can serve them from a
read-only attach, e.g. `outpost metrics > metrics.prom` from cron for
node_exporter's textfile collector.
"""

from __future__ import annotations

import math
import re
import struct
from collections.abc import Mapping
from typing import Any, NamedTuple

from shm._native import ffi, lib
from shm.metrics import slot_value
from shm.segment import COUNTER, GAUGE, HEARTBEAT, HISTOGRAM, KIND_NAMES, Segment, SegmentError

_PROM_BAD = re.compile(r"[^a-zA-Z0-9_]")
_ONE_WORD = (COUNTER, GAUGE, HEARTBEAT)
_BITS = struct.Struct("<q")
_DOUBLE = struct.Struct("<d")


class SlotReading(NamedTuple):
    """One slot as read: `value` is None and `error` says why when it could not be read."""

    name: str
    kind: int
    value: Any
    error: str | None = None


def read_slots(segment: Segment) -> list[SlotReading]:
    """Every ready slot's name, kind and value; one-word slots are read in one batch call.

    A slot that cannot be read (a record whose writer died mid-write, a
    corrupt slot) comes back with an error instead of failing the whole read.
    """
    slots = list(segment.slots())
    one_word = [(i, name, kind) for i, name, kind in slots if kind in _ONE_WORD]
    words: dict[int, int] = {}
    if one_word:
        ptrs = ffi.new("int64_t *[]", [segment.slot_words(i) for i, _, _ in one_word])
        out = ffi.new("int64_t[]", len(one_word))
        lib.op_load_i64_batch(ptrs, out, len(one_word))
        now = lib.op_now_ns()
        words = {i: out[n] for n, (i, _, _) in enumerate(one_word)}
    readings = []
    for index, name, kind in slots:
        if index in words:
            raw = words[index]
            if kind == COUNTER:
                value: Any = raw
            elif kind == GAUGE:
                value = _DOUBLE.unpack(_BITS.pack(raw))[0]
            else:  # heartbeat: age of the stamp, None if it never beat
                value = None if raw == 0 else max(0.0, (now - raw) / 1e9)
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
    without its `_total` and ends with `# EOF`.
    """
    help = help or {}
    families: dict[str, tuple[str, str, list[str]]] = {}
    skipped: list[str] = []

    def family(name: str, kind: str, slot: str, metric: str, slot_kind: int) -> list[str] | None:
        text = help.get(metric) or _DEFAULT_HELP[slot_kind].format(metric=metric)
        have = families.setdefault(name, (kind, text, []))
        if have[0] != kind:
            skipped.append(f"# outpost: skipped {slot!r}: {name} is already a {have[0]}")
            return None
        return have[2]

    for r in read_slots(segment):
        if r.value is None or r.kind not in (COUNTER, GAUGE, HEARTBEAT, HISTOGRAM):
            continue
        metric, labels = split_name(r.name)
        base = prefix + _PROM_BAD.sub("_", metric)
        if r.kind == COUNTER:
            name = base if base.endswith("_total") else base + "_total"
            if (lines := family(name, "counter", r.name, metric, r.kind)) is not None:
                lines.append(f"{name}{_labels(labels)} {r.value}")
        elif r.kind == GAUGE:
            if (lines := family(base, "gauge", r.name, metric, r.kind)) is not None:
                lines.append(f"{base}{_labels(labels)} {_fmt(r.value)}")
        elif r.kind == HEARTBEAT:
            name = base + "_age_seconds"
            if (lines := family(name, "gauge", r.name, metric, r.kind)) is not None:
                lines.append(f"{name}{_labels(labels)} {_fmt(r.value)}")
        else:
            if (lines := family(base, "histogram", r.name, metric, r.kind)) is None:
                continue
            cumulative = 0
            for bound, count in zip([*r.value["bounds"], math.inf], r.value["buckets"],
                                    strict=True):
                cumulative += count
                le = {"le": _fmt(float(bound))}
                lines.append(f"{base}_bucket{_labels(labels, le)} {cumulative}")
            lines.append(f"{base}_sum{_labels(labels)} {_fmt(r.value['sum'])}")
            lines.append(f"{base}_count{_labels(labels)} {r.value['count']}")
    out = []
    for name, (kind, text, lines) in families.items():
        if openmetrics and kind == "counter":
            name = name.removesuffix("_total")
        out.append(f"# HELP {name} {_help_text(text)}")
        out.append(f"# TYPE {name} {kind}")
        out.extend(lines)
    if openmetrics:  # OpenMetrics allows no other comments
        out.append("# EOF")
    else:
        out.extend(skipped)
    return "\n".join(out) + ("\n" if out else "")
