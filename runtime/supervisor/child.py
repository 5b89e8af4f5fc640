"""A supervised child's record: what it is doing now and how it has fared."""

from __future__ import annotations

import os
import time
from collections import deque
from dataclasses import dataclass, field

import trio

from runtime.config import AgentSpec

RUNNING, RESTARTING, FAILED, STOPPED, STARTING = (
    "running", "restarting", "failed", "stopped", "starting")


def next_backoff(spec: AgentSpec, consecutive_failures: int) -> float:
    """Delay before restart number `consecutive_failures` (1-based): capped exponential."""
    if consecutive_failures <= 1 or spec.backoff_initial_s == 0:
        return spec.backoff_initial_s
    delay = spec.backoff_initial_s * spec.backoff_multiplier ** (consecutive_failures - 1)
    return min(spec.backoff_max_s, delay)


@dataclass
class Child:
    """Live bookkeeping of one agent under a supervisor."""

    spec: AgentSpec
    state: str = STOPPED
    pid: int | None = None
    restarts: int = 0
    started_at: float | None = None  # time.monotonic() of the current instance's start
    last_exit: str | None = None
    failures: deque = field(default_factory=deque)  # monotonic times of recent failures
    scope: trio.CancelScope | None = None
    stopping: bool = False
    done: trio.Event = field(default_factory=trio.Event)

    @property
    def name(self) -> str:
        return self.spec.name

    def mark_started(self) -> None:
        self.state = RUNNING
        self.pid = os.getpid()  # task agents run inside the runtime's process
        self.started_at = time.monotonic()

    def record_failure(self, now: float) -> bool:
        """Note a failure; True if the error budget (max_restarts in window) is spent."""
        self.failures.append(now)
        while self.failures and now - self.failures[0] > self.spec.restart_window_s:
            self.failures.popleft()
        return len(self.failures) > self.spec.max_restarts

    def uptime(self) -> float | None:
        if self.state != RUNNING or self.started_at is None:
            return None
        return time.monotonic() - self.started_at
