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


def size(n: float | None) -> str:
    """Bytes the way `ps`/`top` show them: 512B, 12.3K, 48.0M, 1.2G; '-' for None."""
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "K", "M", "G", "T"):
        if abs(value) < 1024 or unit == "T":
            return f"{int(value)}B" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024
    return f"{value:.1f}T"  # unreachable; keeps type checkers content


def percent(value: float | None) -> str:
    """12.5%; '-' for None."""
    return "-" if value is None else f"{value:.1f}%"


def rate(value: float | None) -> str:
    """Per-second rates: 0, 3.5, 120, 45.2k; '-' before there are two frames."""
    if value is None:
        return "-"
    if value >= 10_000:
        return f"{value / 1000:.1f}k"
    return f"{value:.0f}" if value >= 100 or value == 0 else f"{value:.1f}"


STATUS_HEADERS = ["NAME", "KIND", "STATE", "PID", "UPTIME", "RESTARTS", "HEARTBEAT", "CPU",
                  "MEM"]


def status_row(a: dict) -> list[object]:
    """One agent's cells under STATUS_HEADERS (missing fields show as '-')."""
    age = a.get("heartbeat_age_s")
    return [a["name"], a.get("kind", "-"), a.get("state", "-"), a.get("pid"),
            duration(a.get("uptime_s")), a.get("restarts"),
            "-" if age is None else duration(age) + " ago",
            percent(a.get("cpu_percent")), size(a.get("memory_rss_bytes"))]


def status_table(agents: list[dict]) -> str:
    """`outpost status`: one aligned row per agent, like `pm2 ls` / `supervisorctl status`."""
    return table(STATUS_HEADERS, [status_row(a) for a in agents])
