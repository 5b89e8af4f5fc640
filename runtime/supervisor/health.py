"""Health of running agent instances: heartbeat deadline, max_runtime, memory and CPU.

One watchdog task per instance that needs one (a task agent without a
heartbeat timeout or max_runtime gets none: the fastest restart path). Process
and exec agents are sampled with psutil at SAMPLE_INTERVAL_S in a worker
thread, one /proc scan per round for all of them (procs.ChildMap); the figures
go to the node (status) and to shared-memory gauges. A breach kills the
instance and is a failure of it, so the restart policy decides what follows.
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
from collections.abc import Callable
from typing import Any

import trio

from runtime.supervisor import procs
from runtime.supervisor.metrics import Metrics
from runtime.supervisor.tree import Child

log = logging.getLogger("outpost.supervisor")

SAMPLE_INTERVAL_S = 0.5  # psutil sampling of process/exec agents (>= 1 Hz)
CPU_BREACH_SAMPLES = 2  # consecutive samples above cpu_max before it counts as a breach


class Health:
    """Watches running instances against their spec's limits and kills those that breach."""

    def __init__(self, heartbeat_age: Callable[[str], float | None], metrics: Metrics,
                 pids: procs.PidRecord, emit: Callable[..., None]) -> None:
        self._heartbeat_age = heartbeat_age
        self._metrics = metrics
        self._pids = pids
        self._emit = emit
        self._child_map = procs.ChildMap()  # one /proc scan per sampling round

    async def watch(self, child: Child, pid: int | None) -> None:
        """Heartbeat timeout, max_runtime and (for OS processes) memory/CPU limits."""
        spec = child.spec
        started = child.record.started_at
        if started is None:
            started = trio.current_time()
        sample = pid is not None and (self._metrics.segment is not None or spec.memory_max
                                      or spec.cpu_max)
        next_sample = trio.current_time()
        tracked: dict[int, Any] = {}
        cpu_over = 0
        while True:
            now = trio.current_time()
            wake = [math.inf]
            if spec.heartbeat_timeout_s:
                age = self._heartbeat_age(child.name)
                since = now - started
                effective = since if age is None else min(age, since)
                if effective > spec.heartbeat_timeout_s:
                    await self.breach(child, "heartbeat", round(effective, 3),
                                      spec.heartbeat_timeout_s)
                    return
                wake.append(now + spec.heartbeat_timeout_s - effective + 0.002)
            if spec.max_runtime_s:
                if now - started > spec.max_runtime_s:
                    await self.breach(child, "max_runtime", round(now - started, 3),
                                      spec.max_runtime_s)
                    return
                wake.append(started + spec.max_runtime_s + 0.001)
            if sample:
                if now >= next_sample:
                    # /proc reads and parsing stay off the event loop.
                    rss, cpu = await trio.to_thread.run_sync(
                        sample_usage, pid, tracked, self._child_map)
                    self._pids.set_descendants(child.name, [
                        [p, proc.create_time()] for p, proc in tracked.items() if p != pid])
                    child.memory_rss_bytes, child.cpu_percent = rss, cpu
                    for metric, value in (("memory_rss_bytes", rss), ("cpu_percent", cpu)):
                        gauge = self._metrics.gauge(f"{child.name}:{metric}")
                        if gauge is not None and value is not None:
                            gauge.set(float(value))
                    if spec.memory_max and rss is not None and rss > spec.memory_max:
                        await self.breach(child, "memory_max", rss, spec.memory_max)
                        return
                    cpu_over = cpu_over + 1 if spec.cpu_max and cpu is not None \
                        and cpu > spec.cpu_max else 0
                    if cpu_over >= CPU_BREACH_SAMPLES:
                        await self.breach(child, "cpu_max", cpu, spec.cpu_max)
                        return
                    next_sample = now + SAMPLE_INTERVAL_S
                wake.append(next_sample)
            soonest = min(wake)
            if soonest == math.inf:
                return
            await trio.sleep_until(soonest)

    async def breach(self, child: Child, what: str, value: Any, limit: Any) -> None:
        """Kill `child`'s instance for breaching `what`; its exit says why."""
        log.error("agent %s breached %s: %s (limit %s): killing it", child.name, what, value,
                  limit)
        self._emit("health", child.name, breach=what, value=value, limit=limit, pid=child.pid)
        child.kill_reason = f"{what} {value} > {limit}"
        if child.scope is not None:
            child.scope.cancel()
        elif child.signal_instance is not None:
            leftovers = procs.descendants(child.pid) if child.pid else []
            await child.signal_instance(signal.SIGKILL)
            procs.kill_all(leftovers)


def sample_usage(pid: int, tracked: dict[int, Any],
                 child_map: procs.ChildMap) -> tuple[int | None, float | None]:
    """RSS bytes and CPU percent of `pid` and its descendants (psutil; a worker thread)."""
    import psutil
    try:
        root = tracked.get(pid) or tracked.setdefault(pid, psutil.Process(pid))
        procs_now = [root]
        for p in child_map.descendants(pid):
            proc = tracked.get(p)
            if proc is None:
                with contextlib.suppress(psutil.Error):
                    proc = psutil.Process(p)
            if proc is not None:
                procs_now.append(proc)
    except psutil.Error:
        return None, None
    rss = 0
    cpu = 0.0
    alive = set()
    for proc in procs_now:
        proc = tracked.setdefault(proc.pid, proc)
        alive.add(proc.pid)
        try:
            rss += proc.memory_info().rss
            cpu += proc.cpu_percent(None)
        except psutil.Error:
            continue
    for gone in set(tracked) - alive:
        tracked.pop(gone, None)
    return rss, round(cpu, 1)
