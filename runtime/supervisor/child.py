"""Supervised nodes' records: what each agent or group is doing now and how it has fared."""

from __future__ import annotations

import random
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import trio

from runtime.config import AgentSpec

RUNNING, RESTARTING, FAILED, STOPPED, STARTING = (
    "running", "restarting", "failed", "stopped", "starting")


def next_backoff(spec: AgentSpec, consecutive_failures: int,
                 rng: random.Random | None = None) -> float:
    """Delay before restart number `consecutive_failures` (1-based).

    initial * multiplier**(n-1), capped at backoff_max_s, then jittered by up to
    ±backoff_jitter of itself (never above the cap) so many agents failing
    together do not restart in lockstep.
    """
    if consecutive_failures <= 1 or spec.backoff_initial_s == 0:
        delay = spec.backoff_initial_s
    else:
        delay = min(spec.backoff_max_s,
                    spec.backoff_initial_s * spec.backoff_multiplier ** (consecutive_failures - 1))
    if spec.backoff_jitter and delay > 0:
        r = (rng or random).uniform(-spec.backoff_jitter, spec.backoff_jitter)
        delay = min(spec.backoff_max_s, max(0.0, delay * (1 + r)))
    return delay


@dataclass(frozen=True)
class Exit:
    """How one instance ended. `failed` decides transient restarts; the rest is for people."""

    failed: bool
    summary: str
    code: int | None = None
    signal: int | None = None
    exception: str | None = None
    stopped: bool = False  # ended because the supervisor stopped it on purpose

    def fields(self) -> dict[str, Any]:
        return {"failed": self.failed, "summary": self.summary, "code": self.code,
                "signal": self.signal, "exception": self.exception, "stopped": self.stopped}


@dataclass(eq=False)
class Node:
    """Bookkeeping common to agents and groups under a supervisor."""

    name: str
    parent: Any = None  # the Group supervising this node (None for the root)
    state: str = STOPPED
    restarts: int = 0
    started_at: float | None = None  # time.monotonic() of the current instance's start
    last_exit: str | None = None
    failures: deque = field(default_factory=deque)  # monotonic times of recent restarts
    consecutive: int = 0  # failures in a row without a stable run in between
    stopping: bool = False
    ready: trio.Event = field(default_factory=trio.Event)
    done: trio.Event = field(default_factory=trio.Event)  # the runner task has ended
    running_runner: bool = False
    kill_reason: str | None = None
    user_stopped: bool = False  # stopped by request: not started with its group
    runner_scope: trio.CancelScope | None = None

    def record_failure(self, now: float, max_restarts: int, window_s: float) -> bool:
        """Note a restart; True if more than `max_restarts` fell within `window_s`."""
        self.failures.append(now)
        while self.failures and now - self.failures[0] > window_s:
            self.failures.popleft()
        return len(self.failures) > max_restarts

    def uptime(self) -> float | None:
        if self.state != RUNNING or self.started_at is None:
            return None
        return time.monotonic() - self.started_at

    @property
    def path(self) -> str:
        """The group path this node lives in, e.g. '/' or '/edge/net'."""
        parts = []
        up = self.parent
        while up is not None and up.parent is not None:
            parts.append(up.name)
            up = up.parent
        return "/" + "/".join(reversed(parts))


@dataclass(eq=False)
class Child(Node):
    """An agent under a supervisor."""

    spec: AgentSpec = None  # type: ignore[assignment]
    pid: int | None = None
    scope: trio.CancelScope | None = None  # task agents: the running instance's scope
    signal_instance: Any = None  # process/exec: async fn(signum) for the running instance
    cpu_percent: float | None = None
    memory_rss_bytes: int | None = None
    status_text: str | None = None  # exec: the last sd_notify STATUS=

    @classmethod
    def of(cls, spec: AgentSpec, parent: Any = None) -> Child:
        return cls(name=spec.name, spec=spec, parent=parent)

    def mark_started(self, pid: int | None) -> None:
        self.state = RUNNING
        self.pid = pid
        self.started_at = time.monotonic()
        self.ready = trio.Event()
        self.kill_reason = None
        self.cpu_percent = self.memory_rss_bytes = None
