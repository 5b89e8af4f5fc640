"""The console page, rendered on the server: it is whole with JavaScript off.

A plain HTML page (agents' table, recent events with a filter form, one section
per pane) that fits a phone. With JavaScript, static/console.js keeps it live:
events arrive over SSE, the panes are re-fetched from /partial/<name> after
lifecycle events, and per-agent sparklines (uPlot, vendored in static/) chart
a chosen metric.
"""

from __future__ import annotations

import datetime
import html
import json
from collections.abc import Mapping, Sequence
from typing import Any

from runtime.http.ports import Call, plain

COLUMNS = (  # (status key, heading)
    ("name", "Agent"), ("kind", "Kind"), ("state", "State"), ("pid", "PID"),
    ("uptime_s", "Uptime"), ("restarts", "Restarts"), ("heartbeat_age_s", "Heartbeat"),
    ("cpu_percent", "CPU"), ("memory_rss_bytes", "Memory"),
)


NONE = "\u2013"  # an en dash: no value


def esc(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def duration(seconds: float | None) -> str:
    if seconds is None:
        return NONE
    seconds = float(seconds)
    if seconds < 60:
        return f"{seconds:.1f} s" if seconds < 10 else f"{seconds:.0f} s"
    minutes, hours, days = int(seconds // 60), int(seconds // 3600), int(seconds // 86400)
    if hours < 1:
        return f"{minutes} min {int(seconds % 60)} s"
    if days < 1:
        return f"{hours} h {minutes % 60} min"
    return f"{days} d {hours % 24} h"


def size(n: float | None) -> str:
    if n is None:
        return NONE
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def _cell(key: str, row: Mapping[str, Any]) -> str:
    value = row.get(key)
    if key == "state":
        return f'<span class="state state-{esc(value)}">{esc(value)}</span>'
    if key in ("uptime_s", "heartbeat_age_s"):
        return esc(duration(value))
    if key == "cpu_percent":
        return NONE if value is None else f"{float(value):.1f} %"
    if key == "memory_rss_bytes":
        return esc(size(value))
    return NONE if value is None else esc(value)


def agents_table(rows: Sequence[Mapping[str, Any]], read_only: bool) -> str:
    """The agents' table; every row carries its agent's name for the script."""
    head = "".join(f'<th scope="col">{esc(h)}</th>' for _, h in COLUMNS)
    if not read_only:
        head += '<th scope="col"><span class="sr">Actions</span></th>'
    body = []
    for row in rows:
        cells = "".join(f'<td data-col="{k}" data-label="{esc(h)}">{_cell(k, row)}</td>'
                        for k, h in COLUMNS)
        if not read_only:
            name = esc(row["name"])
            cells += '<td class="actions" data-label="Actions">' + "".join(
                f'<button type="button" data-action="{a}" data-agent="{name}">{a}</button>'
                for a in ("restart", "stop", "start")) + "</td>"
        body.append(f'<tr data-agent="{esc(row["name"])}" '
                    f'data-state="{esc(row.get("state"))}">{cells}</tr>')
    if not body:
        body.append(f'<tr><td colspan="{len(COLUMNS)}">No agents configured.</td></tr>')
    return (f'<table class="agents"><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table>')


class AgentsPane:
    """The built-in pane: the agents' table from the `status` control method."""

    name = "agents"
    title = "Agents"

    def __init__(self, read_only: bool) -> None:
        self.read_only = read_only

    async def render(self, call: Call) -> str:
        return agents_table(plain((await call("status", {}))["agents"]), self.read_only)


def _started(info: Mapping[str, Any]) -> str:
    uptime = info.get("uptime_s")
    if uptime is None:
        return NONE
    started = datetime.datetime.now() - datetime.timedelta(seconds=float(uptime))
    return started.strftime("%Y-%m-%d %H:%M:%S")


def _when(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts).strftime("%H:%M:%S")


def _details(event: Mapping[str, Any]) -> str:
    return " ".join(f"{k}={json.dumps(v, default=str)}" for k, v in event.items()
                    if k not in ("seq", "ts", "type", "agent"))


def event_rows(events: Sequence[Mapping[str, Any]]) -> str:
    """Recent events, newest first."""
    rows = []
    for e in reversed(events):
        rows.append(f'<li data-seq="{esc(e["seq"])}" data-type="{esc(e["type"])}" '
                    f'data-agent="{esc(e.get("agent") or "")}">'
                    f'<time datetime="{esc(e["ts"])}">{esc(_when(e["ts"]))}</time> '
                    f'<b class="type">{esc(e["type"])}</b> '
                    f'<span class="agent">{esc(e.get("agent") or "runtime")}</span> '
                    f'<span class="details">{esc(_details(e))}</span></li>')
    return "".join(rows) or '<li class="empty">No events match.</li>'


def render(info: Mapping[str, Any], panes: Sequence[tuple[str, str, str]],
           events: Sequence[Mapping[str, Any]], filters: Mapping[str, str],
           read_only: bool) -> str:
    """The whole page. `panes` are (name, title, HTML fragment), the agents' first."""
    sections = "".join(
        f'<section class="pane" id="pane-{esc(name)}" aria-labelledby="h-{esc(name)}">'
        f'<h2 id="h-{esc(name)}">{esc(title)}</h2>'
        f'<div class="scroll" data-partial="{esc(name)}">{fragment}</div></section>'
        for name, title, fragment in panes)
    error = f'<p class="error">{esc(filters["error"])}</p>' if filters.get("error") else ""
    agent, type_ = esc(filters.get("agent", "")), esc(filters.get("type", ""))
    mode = "read-only" if read_only else "actions enabled"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="color-scheme" content="light dark">
<title>outpost · {esc(info.get("config", ""))}</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="/static/uplot.min.css">
<link rel="stylesheet" href="/static/console.css">
</head>
<body data-read-only="{'true' if read_only else 'false'}">
<header>
<h1>outpost <small>{esc(info.get("version", ""))}</small></h1>
<p class="meta">pid {esc(info.get("pid"))} · started {esc(_started(info))} ·
{esc(mode)} · <span id="live" class="live off">static page</span></p>
</header>
<main>
{sections}
<section class="pane" id="pane-charts" hidden aria-labelledby="h-charts">
<h2 id="h-charts">Charts</h2>
<label>Metric <select id="chart-metric"></select></label>
<div id="charts" class="charts"></div>
</section>
<section class="pane" id="pane-events" aria-labelledby="h-events">
<h2 id="h-events">Recent events</h2>
<form id="event-filter" method="get" action="/">
<label>Agent <input name="agent" value="{agent}" placeholder="all" autocomplete="off"></label>
<label>Type <input name="type" value="{type_}" placeholder="all" autocomplete="off"></label>
<button type="submit">Filter</button>
</form>
{error}<ol id="events" class="events">{event_rows(events)}</ol>
</section>
</main>
<footer><a href="/metrics">/metrics</a> · <a href="/readyz">/readyz</a> ·
<a href="/healthz">/healthz</a> · <a href="/api/status">/api/status</a></footer>
<script src="/static/uplot.min.js"></script>
<script src="/static/console.js"></script>
</body></html>
"""
