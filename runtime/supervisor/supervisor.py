"""The supervisor: starts agents in order, restarts them by policy, stops them in reverse.

one_for_one: a failing child is restarted on its own. Restart types follow OTP:
permanent (always), transient (only after a failure), temporary (never). A
child that fails more than `max_restarts` times within `restart_window_s`
spends its error budget and is marked `failed`. Every child runs in its own
cancel scope inside the supervisor's nursery, so stopping is deliberate and
ordered.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from runtime.agents import load_entry
from runtime.config import AgentSpec
from runtime.supervisor.child import (
    FAILED,
    RESTARTING,
    STARTING,
    STOPPED,
    Child,
    next_backoff,
)

log = logging.getLogger("outpost.supervisor")

MakeContext = Callable[[AgentSpec], Awaitable[Any]]


class Supervisor:
    """Owns the agents of one config. Run `await nursery.start(sup.run)`, then `await sup.stop()`."""

    def __init__(self, specs: tuple[AgentSpec, ...], make_context: MakeContext,
                 heartbeat_age: Callable[[str], float | None] = lambda name: None,
                 emit: Callable[..., None] = lambda *a, **kw: None) -> None:
        self.children = [Child(spec) for spec in specs]
        self._make_context = make_context
        self._heartbeat_age = heartbeat_age
        self._emit = emit  # EventLog.emit: lifecycle events
        self._nursery: trio.Nursery | None = None

    async def run(self, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        """Start every child in config order, report started, and supervise until stopped."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for child in self.children:
                await nursery.start(self._supervise, child)
            task_status.started()

    async def stop(self) -> None:
        """Stop the children in reverse start order, each fully before the next."""
        for child in reversed(self.children):
            await self._stop_child(child)

    async def _stop_child(self, child: Child) -> None:
        child.stopping = True
        if child.scope is not None:
            child.scope.cancel()
        with trio.move_on_after(child.spec.shutdown_timeout_s) as waited:
            await child.done.wait()
        if waited.cancelled_caught:
            log.error("agent %s did not stop within %.1fs", child.name,
                      child.spec.shutdown_timeout_s)

    def find(self, name: str) -> Child | None:
        return next((c for c in self.children if c.name == name), None)

    def status(self) -> list[dict]:
        """One plain-data row per child, in start order."""
        rows = []
        for child in self.children:
            uptime = child.uptime()
            rows.append({
                "name": child.name,
                "kind": child.spec.kind,
                "state": child.state,
                "pid": child.pid,
                "restarts": child.restarts,
                "uptime_s": None if uptime is None else round(uptime, 3),
                "heartbeat_age_s": self._heartbeat_age(child.name),
                "last_exit": child.last_exit,
            })
        return rows

    async def _supervise(self, child: Child,
                         task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        spec = child.spec
        reported = False
        consecutive = 0
        try:
            while not child.stopping:
                failed = False
                with trio.CancelScope() as scope:
                    child.scope = scope
                    child.state = STARTING
                    try:
                        ctx = await self._make_context(spec)
                        main = load_entry(spec.entry)
                        child.mark_started()
                        log.info("agent %s started (restarts: %d)", child.name, child.restarts)
                        self._emit("start", child.name, pid=child.pid, restarts=child.restarts)
                        if not reported:
                            task_status.started()
                            reported = True
                        await main(ctx)
                        child.last_exit = "returned"
                        log.info("agent %s returned", child.name)
                    except Exception as exc:
                        failed = True
                        child.last_exit = f"raised {type(exc).__name__}: {exc}"
                        log.error("agent %s %s", child.name, child.last_exit, exc_info=True)
                if not reported:
                    task_status.started()
                    reported = True
                self._emit("exit", child.name, outcome=child.last_exit, failed=failed,
                           stopping=child.stopping)
                if child.stopping:
                    break
                child.pid = None
                child.started_at = None
                if spec.restart == "temporary" or (spec.restart == "transient" and not failed):
                    child.state = STOPPED
                    return
                now = time.monotonic()
                if child.record_failure(now):
                    child.state = FAILED
                    log.error("agent %s failed %d times within %.0fs: giving up (state failed)",
                              child.name, len(child.failures), spec.restart_window_s)
                    self._emit("give-up", child.name, failures=len(child.failures),
                               window_s=spec.restart_window_s)
                    return
                consecutive = consecutive + 1 if failed else 0
                delay = next_backoff(spec, consecutive)
                child.state = RESTARTING
                child.restarts += 1
                log.info("agent %s restarting in %.3fs", child.name, delay)
                self._emit("restart", child.name, delay_s=delay, restarts=child.restarts)
                await trio.sleep(delay)
            child.state = STOPPED
        finally:
            child.scope = None
            child.pid = None
            if child.state != FAILED:
                child.state = STOPPED
            child.done.set()
