"""Human output: aligned tables and short durations."""

from __future__ import annotations

from collections.abc import Sequence


def duration(seconds: float | None) -> str:
    """45s, 3m12s, 2h05m, 3d04h; '-' for None."""
    if seconds is None:
        return "-"
    s = int(seconds)
    if seconds < 10:
        return f"{seconds:.1f}s"
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Left-aligned columns separated by two spaces, like `supervisorctl status`."""
    cells = [[str(h) for h in headers]] + [["-" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        for row in cells)


def status_table(agents: list[dict]) -> str:
    rows = []
    for a in agents:
        age = a.get("heartbeat_age_s")
        rows.append([a["name"], a.get("kind", "-"), a["state"], a.get("pid"), a["restarts"],
                     duration(a.get("uptime_s")), "-" if age is None else duration(age) + " ago"])
    return table(["NAME", "KIND", "STATE", "PID", "RESTARTS", "UPTIME", "HEARTBEAT"], rows)
