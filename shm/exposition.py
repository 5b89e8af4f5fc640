"""Views of a whole segment: a snapshot dict and Prometheus text exposition."""

from __future__ import annotations

import math
import re

from shm.metrics import slot_value
from shm.segment import COUNTER, GAUGE, HEARTBEAT, HISTOGRAM, KIND_NAMES, Segment

_PROM_BAD = re.compile(r"[^a-zA-Z0-9_]")


def snapshot(segment: Segment) -> dict[str, dict]:
    """{slot name: {"kind", "value"}} for every ready slot.

    Heartbeats are given as their age in seconds, records as hex, so the result
    is plain data that JSON and msgpack can carry.
    """
    out = {}
    for index, name, kind in segment.slots():
        value = slot_value(segment, index, kind)
        if isinstance(value, bytes):
            value = value.hex()
        out[name] = {"kind": KIND_NAMES[kind], "value": value}
    return out


def split_name(slot_name: str) -> tuple[str, dict[str, str]]:
    """'agent:metric' slot names become metric 'metric' with label agent="agent"."""
    owner, sep, metric = slot_name.partition(":")
    if not sep:
        return slot_name, {}
    return metric, {"agent": owner}


def _fmt(v: float) -> str:
    if isinstance(v, float) and math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return repr(v) if isinstance(v, float) else str(v)


def _labels(labels: dict[str, str], extra: dict[str, str] | None = None) -> str:
    merged = {**labels, **(extra or {})}
    if not merged:
        return ""
    body = ",".join(
        f'{k}="{v.replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"'
        for k, v in merged.items())
    return "{" + body + "}"


def prometheus_text(segment: Segment, prefix: str = "outpost_") -> str:
    """Prometheus text format 0.0.4 for counters, gauges, heartbeat ages and histograms."""
    families: dict[str, tuple[str, list[str]]] = {}
    for index, slot_name, kind in segment.slots():
        metric, labels = split_name(slot_name)
        base = prefix + _PROM_BAD.sub("_", metric)
        value = slot_value(segment, index, kind)
        if kind == COUNTER:
            name = base if base.endswith("_total") else base + "_total"
            families.setdefault(name, ("counter", []))[1].append(
                f"{name}{_labels(labels)} {value}")
        elif kind == GAUGE:
            families.setdefault(base, ("gauge", []))[1].append(
                f"{base}{_labels(labels)} {_fmt(value)}")
        elif kind == HEARTBEAT:
            name = base + "_age_seconds"
            if value is not None:
                families.setdefault(name, ("gauge", []))[1].append(
                    f"{name}{_labels(labels)} {_fmt(value)}")
        elif kind == HISTOGRAM:
            lines = families.setdefault(base, ("histogram", []))[1]
            cumulative = 0
            for bound, count in zip([*value["bounds"], math.inf], value["buckets"],
                                    strict=True):
                cumulative += count
                le = {"le": _fmt(float(bound))}
                lines.append(f"{base}_bucket{_labels(labels, le)} {cumulative}")
            lines.append(f"{base}_sum{_labels(labels)} {_fmt(value['sum'])}")
            lines.append(f"{base}_count{_labels(labels)} {value['count']}")
    out = []
    for name, (kind, lines) in families.items():
        out.append(f"# TYPE {name} {kind}")
        out.extend(lines)
    return "\n".join(out) + ("\n" if out else "")
