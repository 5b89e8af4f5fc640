"""The runtime's own metrics, published into the shared-memory segment.

`outpost metrics` reads the segment file and the HTTP face's /metrics reads the
same slots, so both show one value with no IPC between them. Slots are named
'outpost:<metric>' (shm.exposition.RUNTIME_OWNER: no agent label). The store's
commit latency is observed in the writer thread through the store's commit
hooks (one native histogram add per commit); the rest is sampled once a second.
Per-agent restarts, heartbeat ages, CPU and memory are the supervisor's own
'<agent>:<metric>' slots; the sampler only makes sure every agent's restart
counter exists from the start, so the series is there at 0.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

from shm import Counter, Gauge, Histogram, Segment, SegmentError

if TYPE_CHECKING:
    import trio

    from runtime.events import EventLog
    from runtime.maintain.disk import DiskGuard
    from runtime.store import Store

log = logging.getLogger("outpost.telemetry")

HELP: dict[str, str] = {
    # the runtime's own ('outpost:<metric>')
    "agents": "Agents in the configuration.",
    "agents_up": "Agents in the running state.",
    "store_commit_seconds": "Time the store writer spent in one commit (write and fsync "
                            "of a whole group-commit batch).",
    "store_commit_errors": "Store commits that did not complete (with durability = sync a "
                           "failed fsync fails its commit); counted at the next attempt.",
    "store_writable": "1 if the store's last commit succeeded and none has hung for "
                      "10 s, else 0.",
    "disk_used_bytes": "Bytes on disk under the data, archive and log directories.",
    "disk_budget_bytes": "The [maintain] disk budget in bytes.",
    "disk_level": "The disk budget level: 0 ok, 1 over budget, 2 critical (event log "
                  "writes refused).",
    "events_dropped": "Events lost because the event log's queue overflowed.",
    "events_refused": "Events refused while the disk was critical.",
    "loop_lag_seconds": "How late the runtime's event loop ran a 1 s timer, last sample.",
    "uplink_lag_seconds": "Age of the oldest record not yet acknowledged by the uplink.",
    # the supervisor's per agent ('<agent>:<metric>')
    "restarts": "Restarts of the agent by its supervisor.",
    "heartbeat": "Seconds since the agent's last heartbeat.",
    "cpu_percent": "CPU use of the agent's processes (100 = one core), last sample.",
    "memory_rss_bytes": "Resident memory of the agent's processes, last sample.",
    "state_writes": "State operations the agent's process sent to be stored.",
    "messages_in": "Messages the agent received from its mailbox.",
    "messages_out": "Messages the agent sent.",
}
"""HELP text by slot metric name, for shm.exposition.prometheus_text(help=HELP)."""

COMMIT_BOUNDS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
_LEVELS = {"ok": 0, "over": 1, "critical": 2}
STUCK_COMMIT_S = 10.0

Call = Callable[[str, Mapping[str, Any]], Awaitable[Any]]


class CommitProbe:
    """The store's commit hooks: latency into a histogram, unfinished commits counted.

    `before` and `after` run in the store's writer thread; `writable()` is read
    from the event loop (plain attribute reads).
    """

    def __init__(self, latency: Histogram | None, errors: Counter | None) -> None:
        self._observe = None if latency is None else latency.observe
        self._errors = errors
        self._started = 0.0  # perf_counter() of the commit in progress, 0 if none
        self.last_failed = False

    def before(self, batch_no: int, ops: list) -> None:
        if self._started:  # the previous commit raised: the writer failed its batch
            self.last_failed = True
            if self._errors is not None:
                self._errors.inc()
        self._started = time.perf_counter()

    def after(self, batch_no: int, ops: list) -> None:
        if self._observe is not None:
            self._observe(time.perf_counter() - self._started)
        self._started = 0.0
        self.last_failed = False

    def writable(self) -> bool:
        """False after a failed commit (until one succeeds) or while one hangs."""
        started = self._started
        return not self.last_failed and not (
            started and time.perf_counter() - started > STUCK_COMMIT_S)


class Telemetry:
    """Publishes the runtime's own metrics into `segment` while `run()` runs.

    Ports: the segment, the store (its commit hooks), the event log and disk
    guard (their counters), and `call` for the `status` control method.
    """

    def __init__(self, segment: Segment, store: Store, events: EventLog,
                 disk_guard: DiskGuard | None, call: Call, interval_s: float = 1.0) -> None:
        self.segment, self.store, self.events = segment, store, events
        self.disk_guard, self.call, self.interval_s = disk_guard, call, interval_s
        self._gauges: dict[str, Gauge | None] = {}
        self._counters: dict[str, Counter | None] = {}
        self._counted: dict[str, int] = {}  # counter name -> value already added
        self.probe = CommitProbe(
            self._make(Histogram, "store_commit_seconds", COMMIT_BOUNDS),
            self._counter("store_commit_errors"))
        self.lag = 0.0

    def _make(self, kind: type, metric: str, *args: Any) -> Any:
        name = metric if ":" in metric else f"outpost:{metric}"
        try:
            return kind(self.segment, name, *args)
        except SegmentError as exc:  # e.g. the segment is full: run without this one
            log.error("telemetry: no slot for %s: %s ([shm] slots may be too few)", name, exc)
            return None

    def _gauge(self, metric: str) -> Gauge | None:
        if metric not in self._gauges:
            self._gauges[metric] = self._make(Gauge, metric)
        return self._gauges[metric]

    def _counter(self, metric: str) -> Counter | None:
        if metric not in self._counters:
            self._counters[metric] = self._make(Counter, metric)
        return self._counters[metric]

    def _set(self, metric: str, value: float) -> None:
        gauge = self._gauge(metric)
        if gauge is not None:
            gauge.set(float(value))

    def _count_to(self, metric: str, total: int) -> None:
        """Bring a counter up to `total` (a monotonic count kept elsewhere)."""
        counter = self._counter(metric)
        delta = total - self._counted.get(metric, 0)
        if counter is not None and delta > 0:
            counter.add(delta)
            self._counted[metric] = total

    async def sample(self) -> None:
        """Publish one sample of everything sampled (not the commit histogram)."""
        status = await self.call("status", {})
        table = status["agents"]
        name_at, state_at = table.columns.index("name"), table.columns.index("state")
        self._set("agents", len(table.rows))
        self._set("agents_up", sum(row[state_at] == "running" for row in table.rows))
        for row in table.rows:
            self._counter(f"{row[name_at]}:restarts")  # the series exists at 0
        self._count_to("events_dropped", self.events.dropped)
        self._count_to("events_refused", self.events.refused)
        self._set("store_writable", 1 if self.probe.writable() else 0)
        self._set("loop_lag_seconds", self.lag)
        usage = None if self.disk_guard is None else self.disk_guard.usage
        if usage is not None:
            self._set("disk_used_bytes", usage.total)
            self._set("disk_budget_bytes", usage.budget)
            self._set("disk_level", _LEVELS.get(usage.level, 2))

    async def run(self, task_status: trio.TaskStatus | None = None) -> None:
        """Hook the store, publish a first sample, report started, sample every interval."""
        import trio  # here: the CLI imports HELP from this module without paying for trio

        self.store.set_commit_hooks(self.probe.before, self.probe.after)
        try:
            await self.sample()
            if task_status is not None:
                task_status.started()
            while True:
                due = trio.current_time() + self.interval_s
                await trio.sleep_until(due)
                self.lag = max(0.0, trio.current_time() - due)
                try:
                    await self.sample()
                except Exception:  # a sample is not worth the runtime: log, try next time
                    log.exception("telemetry: sample failed")
        finally:
            self.store.set_commit_hooks(None, None)
