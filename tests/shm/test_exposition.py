"""Snapshot dict and Prometheus text exposition of a whole segment."""

from __future__ import annotations

import math
import re

import pytest

from shm import (
    Counter,
    Gauge,
    Heartbeat,
    Histogram,
    Record,
    Segment,
    prometheus_text,
    snapshot,
)

SAMPLE = re.compile(
    r'^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)'
    r'(?:\{(?P<labels>[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*"'
    r'(?:,[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*")*)\})?'
    r' (?P<value>-?[0-9.e+-]+|NaN|[+-]Inf)$')


def parse(text: str) -> dict[str, tuple[str, list[tuple[str, str, str]]]]:
    """A strict reader of text format 0.0.4: {family: (type, [(name, labels, value)])}."""
    assert text == "" or text.endswith("\n")
    families: dict[str, tuple[str, list]] = {}
    current = None
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert name not in families, f"second TYPE line for {name}"
            families[name] = (kind, [])
            current = name
            continue
        if line.startswith("#"):
            continue
        m = SAMPLE.match(line)
        assert m, f"not a valid sample line: {line!r}"
        name = m["name"]
        assert current is not None and name.startswith(current), f"{name} outside its family"
        families[current][1].append((name, m["labels"] or "", m["value"]))
    return families


def test_empty_segment_exposes_nothing(seg: Segment) -> None:
    assert snapshot(seg) == {}
    assert prometheus_text(seg) == ""


def test_snapshot_has_every_kind_as_plain_data(seg: Segment) -> None:
    Counter(seg, "a:hits").add(41)
    Counter(seg, "a:hits").inc()
    Gauge(seg, "a:temp").set(21.5)
    h = Histogram(seg, "a:lat", [0.1, 1.0])
    for v in (0.05, 0.5, 5.0):
        h.observe(v)
    hb = Heartbeat(seg, "a:heartbeat")
    never = Heartbeat(seg, "b:heartbeat")
    Record(seg, "a:status", 5).write(b"hello")
    hb.beat()
    snap = snapshot(seg)
    assert snap["a:hits"] == {"kind": "counter", "value": 42}
    assert snap["a:temp"] == {"kind": "gauge", "value": 21.5}
    assert snap["a:lat"] == {"kind": "histogram", "value": {
        "bounds": [0.1, 1.0], "buckets": [1, 1, 1], "count": 3, "sum": 5.55}}
    assert snap["a:heartbeat"]["kind"] == "heartbeat"
    assert 0 <= snap["a:heartbeat"]["value"] < 5
    assert snap["b:heartbeat"] == {"kind": "heartbeat", "value": None}
    assert never.age() is None
    assert snap["a:status"] == {"kind": "record", "value": b"hello".hex()}
    assert list(snap) == ["a:hits", "a:temp", "a:lat", "a:heartbeat", "b:heartbeat", "a:status"]


def test_prometheus_text_counters_gauges_heartbeats(seg: Segment) -> None:
    Counter(seg, "a:hits").add(3)
    Counter(seg, "b:hits").add(4)
    Counter(seg, "a:bytes_total").add(5)  # already ends in _total: not doubled
    Gauge(seg, "a:temp").set(-1.25)
    Counter(seg, "uptime_ticks").add(9)  # no agent part: no label
    Heartbeat(seg, "a:heartbeat").beat()
    Heartbeat(seg, "b:heartbeat")  # never beat: no sample
    Record(seg, "a:status", 4).write(b"abcd")  # records are not metrics
    text = prometheus_text(seg)
    families = parse(text)
    assert families["outpost_hits_total"] == ("counter", [
        ("outpost_hits_total", 'agent="a"', "3"), ("outpost_hits_total", 'agent="b"', "4")])
    assert families["outpost_bytes_total"] == ("counter", [
        ("outpost_bytes_total", 'agent="a"', "5")])
    assert families["outpost_temp"] == ("gauge", [("outpost_temp", 'agent="a"', "-1.25")])
    assert families["outpost_uptime_ticks_total"] == ("counter", [
        ("outpost_uptime_ticks_total", "", "9")])
    kind, samples = families["outpost_heartbeat_age_seconds"]
    assert kind == "gauge" and [s[1] for s in samples] == ['agent="a"']
    assert 0 <= float(samples[0][2]) < 5
    assert "status" not in text and "abcd" not in text


def test_prometheus_histogram_bucket_sum_count(seg: Segment) -> None:
    h = Histogram(seg, "api:latency_seconds", [0.005, 0.1, 1.0])
    for v in (0.001, 0.005, 0.05, 0.5, 0.5, 7.0):
        h.observe(v)
    families = parse(prometheus_text(seg))
    kind, samples = families["outpost_latency_seconds"]
    assert kind == "histogram"
    assert samples == [
        ("outpost_latency_seconds_bucket", 'agent="api",le="0.005"', "2"),
        ("outpost_latency_seconds_bucket", 'agent="api",le="0.1"', "3"),
        ("outpost_latency_seconds_bucket", 'agent="api",le="1.0"', "5"),
        ("outpost_latency_seconds_bucket", 'agent="api",le="+Inf"', "6"),
        ("outpost_latency_seconds_sum", 'agent="api"', repr(0.001 + 0.005 + 0.05 + 0.5 + 0.5
                                                             + 7.0)),
        ("outpost_latency_seconds_count", 'agent="api"', "6"),
    ]


def test_label_values_are_escaped_and_names_sanitised(seg: Segment) -> None:
    Counter(seg, 'we"ird\\na\nme:req-latency.ms').inc()
    text = prometheus_text(seg)
    # HELP, TYPE, one sample: the newline in the label value is escaped, not emitted
    assert text.count("\n") == 3
    families = parse(text)
    assert families["outpost_req_latency_ms_total"][1] == [
        ("outpost_req_latency_ms_total", 'agent="we\\"ird\\\\na\\nme"', "1")]


def test_special_float_values(seg: Segment) -> None:
    Gauge(seg, "a:nan").set(math.nan)
    Gauge(seg, "a:up").set(math.inf)
    Gauge(seg, "a:down").set(-math.inf)
    families = parse(prometheus_text(seg))
    assert families["outpost_nan"][1][0][2] == "NaN"
    assert families["outpost_up"][1][0][2] == "+Inf"
    assert families["outpost_down"][1][0][2] == "-Inf"


def test_a_name_used_with_two_types_is_not_emitted_mistyped(seg: Segment) -> None:
    Counter(seg, "a:jobs").inc()  # -> outpost_jobs_total, a counter
    Gauge(seg, "b:jobs_total").set(2)  # -> outpost_jobs_total, a gauge
    text = prometheus_text(seg)
    families = parse(text)
    assert families["outpost_jobs_total"] == ("counter", [
        ("outpost_jobs_total", 'agent="a"', "1")])
    assert "# outpost: skipped 'b:jobs_total'" in text


def test_text_is_accepted_by_the_reference_parser(seg: Segment) -> None:
    parser = pytest.importorskip("prometheus_client.parser")
    Counter(seg, 'x"y:hits').add(2)
    Gauge(seg, "x:temp").set(1.5)
    h = Histogram(seg, "x:lat", [1.0, 2.0])
    h.observe(1.5)
    Heartbeat(seg, "x:heartbeat").beat()
    fams = {f.name: f for f in parser.text_string_to_metric_families(prometheus_text(seg))}
    assert fams["outpost_hits"].type == "counter"
    assert fams["outpost_hits"].samples[0].labels == {"agent": 'x"y'}
    assert fams["outpost_hits"].samples[0].value == 2
    lat = {(s.name, s.labels.get("le")): s.value for s in fams["outpost_lat"].samples}
    assert lat[("outpost_lat_bucket", "+Inf")] == 1 and lat[("outpost_lat_count", None)] == 1


def test_every_family_has_help_given_or_generic(seg: Segment) -> None:
    Counter(seg, "a:hits").inc()
    Counter(seg, "b:hits").inc()
    Gauge(seg, "outpost:agents_up").set(2)
    text = prometheus_text(seg, help={"agents_up": "Agents running.\nNow \\ here."})
    lines = text.splitlines()
    assert lines[0] == "# HELP outpost_hits_total Counter 'hits' from the shared-memory segment."
    assert lines[1] == "# TYPE outpost_hits_total counter"
    # The runtime's own slots have no agent label; HELP escapes backslash and newline.
    assert "# HELP outpost_agents_up Agents running.\\nNow \\\\ here." in lines
    assert "outpost_agents_up 2.0" in lines
    assert sum(line.startswith("# HELP") for line in lines) == 2


def test_openmetrics_is_accepted_by_the_reference_parser(seg: Segment) -> None:
    parser = pytest.importorskip("prometheus_client.openmetrics.parser")
    Counter(seg, "x:hits").add(3)
    Counter(seg, "x:jobs_total").add(1)
    Gauge(seg, "x:jobs_total_gauge").set(1)
    Histogram(seg, "x:lat", [0.5]).observe(0.25)
    Heartbeat(seg, "x:heartbeat").beat()
    Gauge(seg, "y:jobs_total").set(2)  # mistyped: left out, and no stray comment in OM
    text = prometheus_text(seg, openmetrics=True)
    assert text.endswith("# EOF\n") and "# outpost:" not in text
    fams = {f.name: f for f in parser.text_string_to_metric_families(text)}
    assert fams["outpost_hits"].type == "counter"
    assert [(s.name, s.value) for s in fams["outpost_hits"].samples] == [
        ("outpost_hits_total", 3)]
    assert fams["outpost_jobs"].samples[0].labels == {"agent": "x"}
    assert fams["outpost_lat"].type == "histogram"
    assert fams["outpost_heartbeat_age_seconds"].type == "gauge"
