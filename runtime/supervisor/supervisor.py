"""The supervision tree: groups of agents, restarted by strategy, within an intensity.

Every node (agent or group) is run by a runner task in its group's nursery. A
runner runs one instance at a time and, when it ends, asks its group what to
do (`_on_exit`), following OTP:

- restart type: permanent (always), transient (only after a failure), temporary
  (never);
- per-agent error budget: more than `max_restarts` restarts within
  `restart_window_s` -> state `failed`, no more restarts, a `give-up` event
  (contained: the group carries on; `restart_agent` clears it);
- group intensity: more than the group's `max_restarts` restarts of its
  children within its `restart_window_s` -> `escalation`: the group stops its
  children in reverse start order and fails to its parent, which restarts it
  as one of its own children. The root giving up stops the runtime (non-zero
  exit) unless `[supervisor] on_give_up = "keep_running"`, which leaves the
  tree marked `failed` for `outpost restart`;
- strategy: one_for_one restarts the failed child alone; one_for_all stops
  every other child (reverse order) and restarts them all in order;
  rest_for_one does that for the children started after the failed one;
- backoff per agent: initial * multiplier**(n-1), capped, jittered; n counts
  failures since the last instance that stayed up `backoff_reset_s`.

Agents start in each group's start order; an agent with `depends_on` starts
only once those agents signalled ready. Every lifecycle change is an event.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import socket
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

from runtime.agents import load_entry, state_stream
from runtime.agents.frames import FrameBuffer, FrameError, encode
from runtime.config import AgentSpec, Config
from runtime.config.loader import start_order
from runtime.config.schema import GroupSpec, SupervisorSection
from runtime.supervisor import procs
from runtime.supervisor.child import (
    FAILED,
    RESTARTING,
    RUNNING,
    STARTING,
    STOPPED,
    Child,
    Exit,
    Node,
    next_backoff,
)
from runtime.supervisor.errors import UnknownAgentError

log = logging.getLogger("outpost.supervisor")

MakeContext = Callable[[AgentSpec], Awaitable[Any]]
SAMPLE_INTERVAL_S = 0.5  # psutil sampling of process/exec agents (>= 1 Hz)
CPU_BREACH_SAMPLES = 2  # consecutive samples above cpu_max before it counts as a breach
CHANNEL_GRACE_S = 0.2  # after an exit, how long to wait for its last frame (its exception)


class Group(Node):
    """A supervisor node: children (agents and groups) in start order."""

    def __init__(self, spec: GroupSpec, parent: Group | None = None) -> None:
        super().__init__(name=spec.name, parent=parent)
        self.spec = spec
        self.children: list[Node] = []
        self.nursery: trio.Nursery | None = None
        self.gave_up = trio.Event()
        self.stop_request = trio.Event()
        self.give_up_reason: str | None = None
        self.restart_lock = trio.Lock()

    @property
    def group_path(self) -> str:
        """This group's own path ('/' for the root)."""
        if self.parent is None:
            return "/"
        return self.path.rstrip("/") + "/" + self.name


def _root_spec(section: SupervisorSection) -> GroupSpec:
    """The root group's spec from the [supervisor] section."""
    return GroupSpec("root", None, 0, section.strategy, section.max_restarts,
                     section.restart_window_s)


def _exc_summary(exc: BaseException) -> str:
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return f"{type(exc).__name__}: {exc}"[:500]


async def _wait_any(*events: trio.Event) -> None:
    async with trio.open_nursery() as nursery:
        async def wait(event: trio.Event) -> None:
            await event.wait()
            nursery.cancel_scope.cancel()
        for event in events:
            nursery.start_soon(wait, event)


class Supervisor:
    """The root of the supervision tree and its public API (status, start/stop/restart, reload).

    Run `await nursery.start(sup.run)`, then `await sup.stop()`. Process and
    exec agents need a `template` (TemplateClient) and the segment's path.
    """

    def __init__(self, specs: tuple[AgentSpec, ...], make_context: MakeContext,
                 heartbeat_age: Callable[[str], float | None] = lambda name: None,
                 emit: Callable[..., None] = lambda *a, **kw: None, *,
                 groups: tuple[GroupSpec, ...] = (),
                 root: SupervisorSection | None = None,
                 template: Any = None,
                 segment: Any = None,
                 book: Any = None,
                 mailboxes: Any = None,
                 log_dir: Path | None = None,
                 data_dir: Path | None = None,
                 log_level: str = "info",
                 on_root_give_up: Callable[[str], None] | None = None) -> None:
        root = root or SupervisorSection()
        self.root = Group(_root_spec(root))
        self.on_give_up = root.on_give_up
        self._make_context = make_context
        self._heartbeat_age = heartbeat_age
        self._emit = emit
        self.template = template
        self.segment = segment
        self.book = book
        self.mailboxes = mailboxes
        self.log_dir = log_dir
        self.log_level = log_level
        self.pids = procs.PidRecord(data_dir)
        self._on_root_give_up = on_root_give_up
        self.root_failure: str | None = None
        self._entries: dict[str, tuple[tuple, Any]] = {}
        self._counters: dict[str, Any] = {}
        self._gauges: dict[str, Any] = {}
        self._child_map = procs.ChildMap()  # one /proc scan per sampling round
        self._notify_seq = 0
        self._logfiles: dict[str, procs.RotatingLog] = {}
        self._nursery: trio.Nursery | None = None
        self._groups: dict[str, Group] = {}
        self._agents: dict[str, Child] = {}
        self._build(tuple(specs), tuple(groups))

    # -- the tree ---------------------------------------------------------------------

    def _build(self, specs: tuple[AgentSpec, ...], groups: tuple[GroupSpec, ...]) -> None:
        for g in groups:
            if g.name not in self._groups:
                self._groups[g.name] = Group(g)
            else:
                self._groups[g.name].spec = g
        for s in specs:
            if s.name not in self._agents:
                self._agents[s.name] = Child.of(s)
            else:
                self._agents[s.name].spec = s
        plan = start_order(specs, groups)
        for group_name, items in plan.items():
            group = self.root if group_name is None else self._groups[group_name]
            group.children = []
            for kind, name in items:
                node = self._agents[name] if kind == "agent" else self._groups[name]
                node.parent = group
                group.children.append(node)

    @property
    def children(self) -> list[Child]:
        """Every agent, in the tree's depth-first start order."""
        out: list[Child] = []

        def walk(group: Group) -> None:
            for node in group.children:
                if isinstance(node, Group):
                    walk(node)
                else:
                    out.append(node)
        walk(self.root)
        return out

    def find(self, name: str) -> Child | None:
        """The agent called `name`, or None."""
        return self._agents.get(name)

    def _get(self, name: str) -> Node:
        node = self._agents.get(name) or self._groups.get(name)
        if node is None:
            raise UnknownAgentError(name, [c.name for c in self.children])
        return node

    # -- status ----------------------------------------------------------------------

    STATUS_COLUMNS = ("name", "kind", "group", "state", "pid", "restarts", "uptime_s",
                      "heartbeat_age_s", "last_exit", "cpu_percent", "memory_rss_bytes",
                      "ready", "status")

    def status_rows(self) -> list[tuple]:
        """One tuple of STATUS_COLUMNS values per agent, in start order.

        Tuples, not dicts: the control socket sends them as a table
        (runtime.control.Table), and 13-key dicts per agent were a measurable
        part of a status call.
        """
        heartbeat_age = self._heartbeat_age
        rows = []
        for child in self.children:
            uptime = child.uptime()
            rows.append((
                child.name, child.spec.kind, child.path, child.state, child.pid, child.restarts,
                None if uptime is None else round(uptime, 3), heartbeat_age(child.name),
                child.last_exit, child.cpu_percent, child.memory_rss_bytes,
                child.state == RUNNING and child.ready.is_set(), child.status_text,
            ))
        return rows

    def status(self) -> list[dict]:
        """One plain-data row per agent, in start order (STATUS_COLUMNS are the keys)."""
        columns = self.STATUS_COLUMNS
        return [dict(zip(columns, row, strict=True)) for row in self.status_rows()]

    def groups_status(self) -> list[dict]:
        """One row per group (the root first): path, strategy, state, recent restarts."""
        rows = []
        for group in [self.root, *self._groups.values()]:
            rows.append({"group": group.group_path, "strategy": group.spec.strategy,
                         "state": group.state, "restarts": group.restarts,
                         "give_up_reason": group.give_up_reason})
        return rows

    # -- metrics in shared memory ----------------------------------------------------

    def counter(self, name: str) -> Any:
        """The shared-memory counter called `name` (cached), or None without a segment."""
        if self.segment is None:
            return None
        found = self._counters.get(name)
        if found is None:
            from shm import Counter
            with contextlib.suppress(Exception):
                found = self._counters[name] = Counter(self.segment, name)
        return found

    def _gauge(self, name: str) -> Any:
        if self.segment is None:
            return None
        found = self._gauges.get(name)
        if found is None:
            from shm import Gauge
            with contextlib.suppress(Exception):
                found = self._gauges[name] = Gauge(self.segment, name)
        return found

    # -- running -----------------------------------------------------------------------

    async def run(self, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        """End what a killed predecessor left, start the tree, report started, supervise."""
        killed = await trio.to_thread.run_sync(self.pids.end_leftovers)
        if killed:
            log.warning("ended %d process(es) left by a previous runtime: %s", len(killed), killed)
            self._emit("leftovers-killed", None, pids=killed)
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await nursery.start(self._run_node, None, self.root)
            task_status.started()

    async def stop(self) -> None:
        """Stop every agent in reverse start order, each fully before the next."""
        await self._stop_node(self.root)

    async def _run_node(self, group: Group | None, node: Node,
                        task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        """Run `node` under `group` until it must not be restarted (or is stopped)."""
        node.running_runner = True
        node.done = trio.Event()
        node.stopping = False
        reported = False

        def report() -> None:
            nonlocal reported
            if not reported:
                reported = True
                task_status.started()
        try:
            with trio.CancelScope() as scope:
                node.runner_scope = scope
                while True:
                    if isinstance(node, Group):
                        exit = await self._run_group_once(node, report)
                    else:
                        await self._wait_dependencies(node, report)
                        exit = await self._run_agent_once(node, report)
                    report()
                    if group is None:  # the root ends only when stopped
                        return
                    delay = self._on_exit(group, node, exit)
                    if delay is None:
                        return
                    await trio.sleep(delay)
                    if node.stopping:
                        return
        finally:
            report()
            node.running_runner = False
            if isinstance(node, Child):
                node.pid = None
                node.signal_instance = None
                node.scope = None
                node.cpu_percent = node.memory_rss_bytes = None
            if node.state not in (FAILED, RESTARTING):
                node.state = STOPPED
            if node.state != RESTARTING and node.name in self._logfiles:
                self._logfiles.pop(node.name).close()
            node.done.set()

    def _on_exit(self, group: Group, node: Node, exit: Exit) -> float | None:
        """Decide what follows an exit: a restart delay, or None for no restart (here)."""
        uptime = None if node.started_at is None else time.monotonic() - node.started_at
        node.started_at = None
        if node.stopping or exit.stopped:
            node.state = STOPPED
            return None
        if isinstance(node, Child):
            restart = node.spec.restart
            if restart == "temporary" or (restart == "transient" and not exit.failed):
                node.state = STOPPED
                self._emit("stopped", node.name, reason=f"{restart} agent exited, not restarted")
                return None
        now = time.monotonic()
        reset_after = node.spec.backoff_reset_s if isinstance(node, Child) else math.inf
        if uptime is not None and uptime >= reset_after:
            node.consecutive = 0
        node.consecutive += 1
        if isinstance(node, Child) and node.record_failure(
                now, node.spec.max_restarts, node.spec.restart_window_s):
            node.state = FAILED
            log.error("agent %s: %d restarts within %.0fs: giving up (state failed)",
                      node.name, len(node.failures), node.spec.restart_window_s)
            self._emit("give-up", node.name, restarts=len(node.failures),
                       window_s=node.spec.restart_window_s, group=node.path)
            return None
        if group.record_failure(now, group.spec.max_restarts, group.spec.restart_window_s):
            reason = (f"more than {group.spec.max_restarts} restarts within "
                      f"{group.spec.restart_window_s:g}s (last: {node.name}: {exit.summary})")
            log.error("group %s: %s: stopping its children and failing to its parent",
                      group.group_path, reason)
            self._emit("escalation", None, group=group.group_path, reason=reason,
                       restarts=len(group.failures), trigger=node.name)
            group.give_up_reason = reason
            group.gave_up.set()
            node.state = STOPPED
            return None
        delay = next_backoff(node.spec, node.consecutive) if isinstance(node, Child) else 0.0
        node.restarts += 1
        node.state = RESTARTING
        strategy = group.spec.strategy
        self._note_restart(node, delay, f"{exit.summary}", strategy)
        if strategy == "one_for_one" or len(group.children) == 1:
            return delay
        assert group.nursery is not None
        group.nursery.start_soon(self._restart_siblings, group, node, delay)
        return None

    def _note_restart(self, node: Node, delay: float, reason: str, strategy: str) -> None:
        log.info("%s %s restarting in %.3fs (%s)", "agent" if isinstance(node, Child)
                 else "group", node.name, delay, reason)
        if isinstance(node, Child):
            self._emit("restart", node.name, delay_s=delay, restarts=node.restarts,
                       consecutive=node.consecutive, reason=reason, strategy=strategy)
            counter = self.counter(f"{node.name}:restarts")
            if counter is not None:
                counter.inc()
        else:
            self._emit("restart", None, group=node.group_path, delay_s=delay,
                       restarts=node.restarts, reason=reason, strategy=strategy)

    async def _restart_siblings(self, group: Group, node: Node, delay: float) -> None:
        """one_for_all / rest_for_one: stop the affected siblings, then start them in order."""
        async with group.restart_lock:
            index = group.children.index(node) if node in group.children else 0
            affected = group.children if group.spec.strategy == "one_for_all" \
                else group.children[index:]
            for other in reversed(affected):
                if other is not node and other.running_runner:
                    await self._stop_node(other)
                    other.state = RESTARTING
                    other.restarts += 1
                    self._note_restart(other, delay, f"{group.spec.strategy} after {node.name}",
                                       group.spec.strategy)
            await node.done.wait()
            await trio.sleep(delay)
            if group.stop_request.is_set() or group.gave_up.is_set():
                for other in affected:
                    if other.state == RESTARTING and not other.running_runner:
                        other.state = STOPPED
                return
            for other in affected:
                if other.user_stopped or other.running_runner or other.state == FAILED:
                    continue
                assert group.nursery is not None
                await group.nursery.start(self._run_node, group, other)

    async def _run_group_once(self, group: Group, report: Callable[[], None]) -> Exit:
        group.gave_up = trio.Event()
        group.stop_request = trio.Event()
        group.give_up_reason = None
        group.state = STARTING
        async with trio.open_nursery() as nursery:
            group.nursery = nursery
            group.started_at = time.monotonic()
            for node in group.children:
                if node.user_stopped:
                    continue
                if isinstance(node, Child):
                    node.failures.clear()
                    node.consecutive = 0
                await nursery.start(self._run_node, group, node)
            group.state = RUNNING
            report()
            if group.parent is not None:
                self._emit("start", None, group=group.group_path, restarts=group.restarts)
            while True:
                await _wait_any(group.gave_up, group.stop_request)
                if group.stop_request.is_set():
                    break
                await self._stop_children(group)
                if group.parent is not None:
                    break
                # The root gave up.
                group.state = FAILED
                for agent in self.children:
                    if agent.state in (STOPPED, RESTARTING):
                        agent.state = FAILED
                reason = group.give_up_reason or "gave up"
                self.root_failure = reason
                self._emit("give-up", None, group="/", reason=reason, on_give_up=self.on_give_up)
                if self.on_give_up == "stop":
                    log.critical("the root supervisor gave up: %s; stopping the runtime", reason)
                    if self._on_root_give_up is not None:
                        self._on_root_give_up(reason)
                else:
                    log.critical("the root supervisor gave up: %s; the runtime keeps running "
                                 "with every agent failed (use `outpost restart`)", reason)
                group.gave_up = trio.Event()
            await self._stop_children(group)
            nursery.cancel_scope.cancel()
        gave_up = group.give_up_reason is not None and not group.stop_request.is_set()
        summary = f"gave up: {group.give_up_reason}" if gave_up else "stopped"
        if group.parent is not None:
            self._emit("exit", None, group=group.group_path, summary=summary, failed=gave_up)
        return Exit(gave_up, summary, stopped=not gave_up)

    async def _stop_children(self, group: Group) -> None:
        for node in reversed(group.children):
            if node.running_runner:
                await self._stop_node(node)

    async def _stop_node(self, node: Node) -> None:
        """Stop `node` for good (until started again): graceful, then forced."""
        node.stopping = True
        if not node.running_runner:
            return
        if isinstance(node, Group):
            node.stop_request.set()
            await node.done.wait()
            return
        spec = node.spec
        if node.scope is not None:  # a task agent's instance
            node.scope.cancel()
        elif node.signal_instance is not None:
            leftovers = procs.descendants(node.pid) if node.pid else []
            await node.signal_instance(signal.SIGTERM)
            with trio.move_on_after(spec.shutdown_timeout_s):
                await node.done.wait()
            if not node.done.is_set():
                log.warning("agent %s did not stop within %.1fs: SIGKILL", node.name,
                            spec.shutdown_timeout_s)
                self._emit("kill", node.name, reason="shutdown timeout",
                           timeout_s=spec.shutdown_timeout_s)
                if node.signal_instance is not None:
                    await node.signal_instance(signal.SIGKILL)
            procs.kill_all(leftovers)  # descendants that left the process group
        else:  # waiting for dependencies or in a backoff delay
            node.runner_scope.cancel()
        with trio.move_on_after(spec.shutdown_timeout_s):
            await node.done.wait()
        if not node.done.is_set():
            log.error("agent %s did not stop within %.1fs; cancelling its runner",
                      node.name, spec.shutdown_timeout_s)
            node.runner_scope.cancel()
            await node.done.wait()

    async def _wait_dependencies(self, child: Child, report: Callable[[], None]) -> None:
        deps = [self._agents[d] for d in child.spec.depends_on if d in self._agents]
        if all(d.ready.is_set() and d.state == RUNNING for d in deps):
            return
        child.state = STARTING
        report()  # the group goes on starting its other children meanwhile
        self._emit("waiting", child.name, depends_on=list(child.spec.depends_on))
        while not all(d.ready.is_set() and d.state == RUNNING for d in deps):
            for d in deps:
                if not (d.ready.is_set() and d.state == RUNNING):
                    with trio.move_on_after(0.5):  # a dependency may restart: look again
                        await d.ready.wait()

    # -- agent instances -------------------------------------------------------------

    def _load(self, entry: str) -> Any:
        """The agent function, re-imported only when its file changed (fast restarts)."""
        target = entry.rpartition(":")[0]
        key: tuple = ()
        if target.endswith(".py"):
            with contextlib.suppress(OSError):
                st = os.stat(target)
                key = (st.st_mtime_ns, st.st_size, st.st_ino)
        cached = self._entries.get(entry)
        if cached is not None and cached[0] == key and key:
            return cached[1]
        func = load_entry(entry)
        self._entries[entry] = (key, func)
        return func

    async def _run_agent_once(self, child: Child, report: Callable[[], None]) -> Exit:
        child.state = STARTING
        try:
            if child.spec.kind == "task":
                exit = await self._run_task(child, report)
            else:
                exit = await self._run_os(child, report)
        except Exception as exc:  # our own bug must not take the runtime down: contain it
            log.exception("agent %s: supervisor error", child.name)
            report()
            exit = Exit(True, f"supervisor error: {_exc_summary(exc)}")
        child.last_exit = exit.summary
        level = logging.INFO if not exit.failed else logging.ERROR
        log.log(level, "agent %s %s", child.name, exit.summary)
        self._emit("exit", child.name, pid=child.pid, **exit.fields(),
                   uptime_s=None if child.started_at is None
                   else round(time.monotonic() - child.started_at, 6))
        child.pid = None
        return exit

    def _started(self, child: Child, pid: int, report: Callable[[], None]) -> None:
        child.mark_started(pid)
        log.info("agent %s started (pid %d, restarts %d)", child.name, pid, child.restarts)
        self._emit("start", child.name, pid=pid, kind=child.spec.kind, restarts=child.restarts,
                   group=child.path)
        report()

    def _mark_ready(self, child: Child, via: str) -> None:
        if not child.ready.is_set():
            child.ready.set()
            self._emit("ready", child.name, via=via)

    async def _run_task(self, child: Child, report: Callable[[], None]) -> Exit:
        spec = child.spec
        try:
            ctx = await self._make_context(spec)
            main = self._load(spec.entry)
        except Exception as exc:
            report()
            return Exit(True, f"could not start: {_exc_summary(exc)}",
                        exception=_exc_summary(exc))
        self._started(child, os.getpid(), report)
        if getattr(ctx, "is_ready", None) is not None and ctx.is_ready.is_set():
            self._mark_ready(child, "ctx.ready()")
        else:
            ctx.on_ready = lambda: self._mark_ready(child, "ctx.ready()")
        exit: Exit | None = None
        with trio.CancelScope() as scope:
            child.scope = scope
            try:
                if spec.heartbeat_timeout_s or spec.max_runtime_s:
                    async with trio.open_nursery() as helpers:
                        helpers.start_soon(self._watchdog, child, None)
                        await main(ctx)
                        helpers.cancel_scope.cancel()
                else:  # no helper task: the fastest restart path
                    await main(ctx)
                exit = Exit(False, "returned")
            except Exception as exc:
                log.debug("agent %s raised", child.name, exc_info=True)
                exit = Exit(True, f"raised {_exc_summary(exc)}", exception=_exc_summary(exc))
        child.scope = None
        if exit is None:
            if child.kill_reason is not None:
                exit = Exit(True, f"cancelled by the supervisor: {child.kill_reason}")
            else:
                exit = Exit(False, "stopped", stopped=True)
        return exit

    def _output_sink(self, child: Child) -> tuple[Callable[[str, bytes], None], Any]:
        logfile = self._logfiles.get(child.name)
        spec = child.spec
        if logfile is not None and (logfile.max_bytes, logfile.keep) != (spec.log_max_bytes,
                                                                         spec.log_keep):
            logfile.close()
            logfile = None
        if logfile is None and self.log_dir is not None:
            try:  # kept open across restarts (closed when the agent stops for good)
                logfile = self._logfiles[child.name] = procs.RotatingLog(
                    Path(self.log_dir) / f"{child.name}.log", spec.log_max_bytes, spec.log_keep)
            except OSError as exc:
                log.warning("agent %s: no log file: %s", child.name, exc)

        def on_line(stream: str, line: bytes) -> None:
            if logfile is not None:
                with contextlib.suppress(OSError, ValueError):
                    logfile.write(line)
            self._emit("output", child.name, stream=stream,
                       line=line.rstrip(b"\n").decode("utf-8", "replace"))
        return on_line, logfile

    async def _run_os(self, child: Child, report: Callable[[], None]) -> Exit:
        """A process or exec agent: one process forked by the template, until it is reaped."""
        spec = child.spec
        if self.template is None:
            report()
            return Exit(True, "could not start: no template process (process and exec agents "
                        "need `outpost run`)")
        env = dict(spec.env)
        request: dict[str, Any] = {"kind": spec.kind, "name": spec.name, "cwd": spec.cwd,
                                   "env": env}
        # Awaited before any fd exists: a cancellation here leaks nothing.
        state = await self.book.open(state_stream(spec.name)) if spec.kind == "process" \
            else None
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        fds = [out_w, err_w]
        mine: socket.socket | None = None
        theirs: socket.socket | None = None
        notify: Any = None
        if spec.kind == "process":
            mine, theirs = socket.socketpair()
            fds.append(theirs.fileno())
            request.update(entry=spec.entry, segment=str(self.segment.path),
                           log_level=self.log_level)
        else:
            request["argv"] = list(spec.command)
            self._notify_seq += 1
            notify, env["NOTIFY_SOCKET"] = procs.open_notify_socket(
                f"{spec.name}-{self._notify_seq}")
            if spec.heartbeat_timeout_s:
                env["WATCHDOG_USEC"] = str(int(spec.heartbeat_timeout_s * 1e6))
        hello = b""
        try:
            if mine is not None:  # in the socket buffer before the fork: no round trip
                hello = encode(["hello", 0, {"state": state.to_dict()}])
                mine.setblocking(False)
                with contextlib.suppress(BlockingIOError):
                    hello = hello[mine.send(hello):]
            # Shielded: a spawn cannot be withdrawn once asked for, and a process we
            # never learnt the pid of would run unsupervised. A stop lands right after.
            with trio.CancelScope(shield=True):
                pid = await self.template.spawn(request, fds)
        except Exception as exc:
            for fd in (out_r, err_r):
                os.close(fd)
            for s in (mine, notify):
                if s is not None:
                    s.close()
            report()
            return Exit(True, f"could not start: {_exc_summary(exc)}")
        finally:
            for fd in (out_w, err_w):
                os.close(fd)
            if theirs is not None:
                theirs.close()
        self._started(child, pid, report)
        template = self.template
        try:  # the kernel tells us of the exit directly, without the template's round trip
            pidfd = os.pidfd_open(pid) if spec.kind == "process" else None
        except OSError:
            pidfd = None

        async def signal_instance(signum: int) -> None:
            await template.signal(pid, signum)
        child.signal_instance = signal_instance
        self.pids.add(child.name, pid)
        on_line, _ = self._output_sink(child)
        reported: dict[str, Any] = {}
        code = signum = None
        try:
            async with trio.open_nursery() as helpers:
                channel_done = trio.Event()
                # Output is pumped until EOF outside this instance: its last lines (a
                # traceback, say) never hold up the restart.
                assert self._nursery is not None
                self._nursery.start_soon(procs.pump_lines, out_r, "stdout", on_line)
                self._nursery.start_soon(procs.pump_lines, err_r, "stderr", on_line)
                if mine is not None:
                    helpers.start_soon(self._serve_channel, child, mine, reported, channel_done,
                                       hello)
                else:
                    channel_done.set()
                    helpers.start_soon(self._serve_notify, child, notify, pid)
                    if not spec.notify:
                        self._mark_ready(child, "start")
                helpers.start_soon(self._watchdog, child, pid)
                try:
                    code, signum = await self._wait_exit(pid, pidfd, reported, channel_done)
                finally:
                    child.signal_instance = None
                    if code is None and signum is None:  # cancelled while it runs: kill it
                        with trio.CancelScope(shield=True):
                            await template.signal(pid, signal.SIGKILL)
                            code, signum = await template.wait_exit(pid)
                self.pids.remove(child.name)
                with trio.move_on_after(CHANNEL_GRACE_S):
                    await channel_done.wait()  # its last frame (the exception) is in
                helpers.cancel_scope.cancel()
        finally:
            if notify is not None:
                notify.close()
            if pidfd is not None:
                os.close(pidfd)
        exception = reported.get("exception")
        if child.kill_reason is not None:
            return Exit(True, f"killed by the supervisor: {child.kill_reason}", code, signum,
                        exception)
        if signum is not None:
            name = signal.Signals(signum).name if signum in signal.Signals._value2member_map_ \
                else str(signum)
            stopped = child.stopping and signum in (signal.SIGTERM, signal.SIGKILL)
            return Exit(not stopped, f"killed by {name}", None, signum, exception, stopped)
        if code == 0:
            return Exit(False, "exited 0", 0, None, None, child.stopping)
        summary = f"raised {exception}" if exception else f"exited {code}"
        return Exit(not child.stopping, summary, code, None, exception, child.stopping)

    async def _wait_exit(self, pid: int, pidfd: int | None, reported: dict,
                         channel_done: trio.Event) -> tuple[int | None, int | None]:
        """(code, signal) of agent `pid` once it has exited.

        A process agent's last frame says whether it returned or raised, which
        fixes its exit code (agent_main returns 0 or 1); with that and the pidfd
        turning readable (the process is gone) the template's report is not
        waited for. Anything else (a signal, os._exit) comes from the template.
        """
        if pidfd is not None:
            await trio.lowlevel.wait_readable(pidfd)
            with trio.move_on_after(0.05):
                await channel_done.wait()
            if "exception" in reported:
                self.template.forget(pid)
                return (0 if reported["exception"] is None else 1), None
        return await self.template.wait_exit(pid)

    async def _serve_notify(self, child: Child, sock: Any, pgid: int) -> None:
        """sd_notify from an exec agent: READY=1, WATCHDOG=1, STATUS=..., STOPPING=1."""
        beat = None
        if self.segment is not None:
            from shm import Heartbeat
            with contextlib.suppress(Exception):
                beat = Heartbeat(self.segment, f"{child.name}:heartbeat").beat

        def on_field(key: str, value: str) -> None:
            if key == "READY" and value == "1":
                self._mark_ready(child, "sd_notify")
            elif key == "WATCHDOG" and value == "1":
                if beat is not None:
                    beat()
            elif key == "STATUS":
                child.status_text = value[:200]
                self._emit("status", child.name, status=child.status_text)
            elif key == "STOPPING" and value == "1":
                self._emit("stopping", child.name)
        await procs.read_notify(sock, pgid, on_field)

    async def _serve_channel(self, child: Child, sock: socket.socket, reported: dict,
                             done: trio.Event, hello_rest: bytes = b"") -> None:
        """A process agent's requests: state ops (in order), sends, receives, acks, ready."""
        name = child.name
        stream = trio.SocketStream(trio.socket.from_stdlib_socket(sock))
        lock = trio.Lock()
        try:
            state = await self.book.open(state_stream(name))
            writes = self.counter(f"{name}:state_writes")
            received = self.counter(f"{name}:messages_in")
            inbox = self.mailboxes.inbox(name) if self.mailboxes is not None else None
            if inbox is not None and received is not None:
                inbox.on_receive = received.inc

            async def reply(kind: str, req: int, value: Any) -> None:
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    async with lock:
                        await stream.send_all(encode([kind, req, value]))

            if hello_rest:  # what of the hello did not fit in the socket buffer
                await stream.send_all(hello_rest)
            ops_send, ops_recv = trio.open_memory_channel(math.inf)

            async def state_worker() -> None:
                methods = {"set": state.set, "del": state.delete, "incr": state.incr,
                           "merge": state.merge}
                async for req, op, key, arg in ops_recv:
                    try:
                        method = methods[op]
                        await (method(key) if op == "del" else method(key, arg))
                        if writes is not None:
                            writes.inc()
                        await reply("ok", req, None)
                    except Exception as exc:
                        await reply("err", req, _exc_summary(exc))

            async def call(req: int, fn: Callable[[], Awaitable[Any]]) -> None:
                try:
                    await reply("ok", req, await fn())
                except Exception as exc:
                    await reply("err", req, _exc_summary(exc))

            async def receive() -> list:
                msg = await inbox.receive()
                return [msg.seq, msg.sender, msg.body, msg.key]

            async with trio.open_nursery() as nursery:
                nursery.start_soon(state_worker)
                frames = FrameBuffer()
                while True:
                    data = await stream.receive_some(65536)
                    if not data:
                        break
                    for frame in frames.feed(data):
                        if not isinstance(frame, list) or len(frame) < 2:
                            raise FrameError("not a request frame")
                        op, req, *args = frame
                        if op == "state" and len(args) == 3:
                            ops_send.send_nowait((req, *args))
                        elif op == "ready":
                            self._mark_ready(child, "ctx.ready()")
                        elif op == "exit" and len(args) == 1:
                            reported["exception"] = args[0]
                        elif op == "send" and len(args) == 3 and self.mailboxes is not None:
                            to, msg, key = args
                            nursery.start_soon(call, req, lambda to=to, msg=msg, key=key:
                                               self.mailboxes.send(to, msg, key=key, sender=name))
                        elif op == "recv" and inbox is not None:
                            nursery.start_soon(call, req, receive)
                        elif op == "ack" and inbox is not None and len(args) == 1:
                            nursery.start_soon(call, req, lambda seq=args[0]: inbox.ack(seq))
                        else:
                            await reply("err", req, f"unknown or malformed request {op!r}")
                ops_send.close()
        except Exception as exc:  # possibly wrapped by the nursery
            inner = exc
            while isinstance(inner, BaseExceptionGroup) and len(inner.exceptions) == 1:
                inner = inner.exceptions[0]
            if isinstance(inner, trio.BrokenResourceError | trio.ClosedResourceError | OSError):
                return  # the agent went away: its exit is reported by the template
            log.error("agent %s: channel error (%s): killing it", name, _exc_summary(exc))
            self._emit("protocol-error", name, error=_exc_summary(exc)[:200])
            if child.signal_instance is not None:
                await child.signal_instance(signal.SIGKILL)
        finally:
            done.set()
            sock.close()

    # -- health -----------------------------------------------------------------------

    async def _watchdog(self, child: Child, pid: int | None) -> None:
        """Heartbeat timeout, max_runtime and (for OS processes) memory/CPU limits."""
        spec = child.spec
        started = child.started_at or time.monotonic()
        sample = pid is not None and (self.segment is not None or spec.memory_max or spec.cpu_max)
        next_sample = time.monotonic()
        tracked: dict[int, Any] = {}
        cpu_over = 0
        while True:
            now = time.monotonic()
            wake = [math.inf]
            if spec.heartbeat_timeout_s:
                age = self._heartbeat_age(child.name)
                since = now - started
                effective = since if age is None else min(age, since)
                if effective > spec.heartbeat_timeout_s:
                    await self._breach(child, "heartbeat", round(effective, 3),
                                       spec.heartbeat_timeout_s)
                    return
                wake.append(now + spec.heartbeat_timeout_s - effective + 0.002)
            if spec.max_runtime_s:
                if now - started > spec.max_runtime_s:
                    await self._breach(child, "max_runtime", round(now - started, 3),
                                       spec.max_runtime_s)
                    return
                wake.append(started + spec.max_runtime_s + 0.001)
            if sample:
                if now >= next_sample:
                    # /proc reads and parsing stay off the event loop.
                    rss, cpu = await trio.to_thread.run_sync(
                        self._sample, pid, tracked, self._child_map)
                    self.pids.set_descendants(child.name, [
                        [p, proc.create_time()] for p, proc in tracked.items() if p != pid])
                    child.memory_rss_bytes, child.cpu_percent = rss, cpu
                    for metric, value in (("memory_rss_bytes", rss), ("cpu_percent", cpu)):
                        gauge = self._gauge(f"{child.name}:{metric}")
                        if gauge is not None and value is not None:
                            gauge.set(float(value))
                    if spec.memory_max and rss is not None and rss > spec.memory_max:
                        await self._breach(child, "memory_max", rss, spec.memory_max)
                        return
                    cpu_over = cpu_over + 1 if spec.cpu_max and cpu is not None \
                        and cpu > spec.cpu_max else 0
                    if cpu_over >= CPU_BREACH_SAMPLES:
                        await self._breach(child, "cpu_max", cpu, spec.cpu_max)
                        return
                    next_sample = now + SAMPLE_INTERVAL_S
                wake.append(next_sample)
            soonest = min(wake)
            if soonest == math.inf:
                return
            await trio.sleep(max(0.0, soonest - time.monotonic()))

    @staticmethod
    def _sample(pid: int, tracked: dict[int, Any],
                child_map: procs.ChildMap) -> tuple[int | None, float | None]:
        """RSS bytes and CPU percent of `pid` and its descendants (psutil)."""
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

    async def _breach(self, child: Child, what: str, value: Any, limit: Any) -> None:
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

    # -- control (for the CLI engineer's methods) ----------------------------------------

    def _group_running(self, group: Group) -> bool:
        return group.running_runner and group.nursery is not None and group.state == RUNNING

    async def start_agent(self, name: str) -> None:
        """Start a stopped agent (or group). UnknownAgentError for an unknown name."""
        node = self._get(name)
        node.user_stopped = False
        if node.running_runner:
            return
        await self._start_node(node)

    async def _start_node(self, node: Node) -> None:
        if node.running_runner:  # e.g. started along with its group just before
            return
        group = node.parent
        if group is self.root and self.root.state == FAILED:
            self.root.state = RUNNING
            self.root.failures.clear()
            self.root_failure = None
        if group is not None and not self._group_running(group) and group is not self.root:
            group.user_stopped = False
            group.failures.clear()
            await self._start_node(group)  # starts its children, this one among them
            return
        assert group is not None and group.nursery is not None
        await group.nursery.start(self._run_node, group, node)

    async def stop_agent(self, name: str) -> None:
        """Stop an agent (or group) and keep it stopped until started again."""
        node = self._get(name)
        node.user_stopped = True
        await self._stop_node(node)
        if node.state != FAILED:
            node.state = STOPPED
        self._emit("stopped", node.name if isinstance(node, Child) else None,
                   reason="stopped by request")

    async def restart_agent(self, name: str) -> None:
        """Restart an agent now, clearing `failed` and its error budget and backoff."""
        node = self._get(name)
        if node.running_runner:
            await self._stop_node(node)
        node.failures.clear()
        node.consecutive = 0
        node.user_stopped = False
        node.state = STOPPED
        self._emit("restart", node.name if isinstance(node, Child) else None,
                   delay_s=0.0, restarts=node.restarts, reason="restart requested",
                   strategy="manual")
        await self._start_node(node)

    async def reload(self, specs_or_config: Config | tuple[AgentSpec, ...] | list[AgentSpec]) \
            -> dict[str, list[str]]:
        """Apply a new config: stop removed agents, restart changed ones, start new ones.

        Unchanged agents keep running untouched. Group settings (strategy,
        intensity) apply from now on; groups may be added or removed.
        """
        if isinstance(specs_or_config, Config):
            specs, groups = specs_or_config.agents, specs_or_config.groups
            self.root.spec = _root_spec(specs_or_config.supervisor)
            self.on_give_up = specs_or_config.supervisor.on_give_up
        else:
            specs = tuple(specs_or_config)
            groups = tuple(g.spec for g in self._groups.values())
        start_order(tuple(specs), tuple(groups))  # ValueError before anything is touched
        new = {s.name: s for s in specs}
        old = {c.name: c for c in self.children}
        result = {"added": [n for n in new if n not in old],
                  "removed": [n for n in old if n not in new],
                  "changed": [n for n in new if n in old and old[n].spec != new[n]],
                  "unchanged": [n for n in new if n in old and old[n].spec == new[n]]}
        for name in reversed(result["removed"] + result["changed"]):
            await self._stop_node(old[name])
        for name in result["removed"]:
            del self._agents[name]
        gone_groups = [g for g in self._groups if g not in {x.name for x in groups}]
        for gname in gone_groups:
            await self._stop_node(self._groups[gname])
            del self._groups[gname]
        self._build(tuple(specs), tuple(groups))
        for name in result["changed"] + result["added"]:
            child = self._agents[name]
            child.failures.clear()
            child.consecutive = 0
            child.user_stopped = False
            if child.parent is not None and (self._group_running(child.parent)
                                             or child.parent.parent is not None):
                await self._start_node(child)
        for group in self._groups.values():
            if not group.running_runner and not group.user_stopped and group.parent is not None \
                    and self._group_running(group.parent):
                await self._start_node(group)
        self._emit("reload", None, **result)
        return result
