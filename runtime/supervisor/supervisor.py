"""The supervision tree's runner loop and its public API (status, start/stop/restart, reload).

Every node, agent or group, is run by a runner task in its group's nursery,
one instance at a time: an agent's instance by its kind's runner
(runtime.supervisor.runners), a group's here. When an instance ends, the
runner asks the restart policy (runtime.supervisor.policy: a pure function of
the node's and its group's restart records, the exit and trio's clock) and
applies the decision it returns:

- Restart: after the delay, alone (one_for_one) or with the siblings the
  strategy names, stopped in reverse start order and started again in order;
- Stop: the node stays stopped;
- Fail: the agent spent its error budget and stays `failed` (contained: its
  group carries on; `restart_agent` clears it);
- Escalate: the group stops its children in reverse start order and fails to
  its parent, which restarts it as one of its own children. The root giving up
  stops the runtime (non-zero exit) unless `[supervisor] on_give_up =
  "keep_running"`, which leaves the tree marked `failed` for `outpost restart`.

Agents start in each group's start order; an agent with `depends_on` starts
only once those agents signalled ready. Every lifecycle change is an event.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from runtime.agents.directory import AgentDirectory
from runtime.config import AgentSpec, Config
from runtime.config.loader import start_order
from runtime.config.schema import GroupSpec, SupervisorSection
from runtime.supervisor import policy, procs
from runtime.supervisor.errors import InvalidReloadError
from runtime.supervisor.health import Health
from runtime.supervisor.metrics import Metrics
from runtime.supervisor.overrides import Overrides, ReleaseOverride
from runtime.supervisor.runners import MakeContext, ProcessRunner, TaskRunner
from runtime.supervisor.tree import (
    DEGRADED,
    FAILED,
    RESTARTING,
    RUNNING,
    STARTING,
    STATUS_COLUMNS,
    STOPPED,
    Child,
    Group,
    Node,
    Tree,
    root_spec,
)

log = logging.getLogger("outpost.supervisor")


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
    exec agents need a `template` (TemplateClient) and the segment's path. The
    `directory` (shared with the mailboxes) always lists the tree's agents.
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
                 directory: AgentDirectory | None = None,
                 log_dir: Path | None = None,
                 data_dir: Path | None = None,
                 log_level: str = "info",
                 on_root_give_up: Callable[[str], None] | None = None,
                 verify_release: Callable[[str, str], None] | None = None) -> None:
        root = root or SupervisorSection()
        # Agents running from a release (a rollout sets them), checked before every start.
        self.overrides = Overrides(verify_release)
        self.tree = Tree(root)
        self.on_give_up = root.on_give_up
        self.directory = AgentDirectory() if directory is None else directory
        self._emit = emit
        self._heartbeat_age = heartbeat_age
        self.pids = procs.PidRecord(data_dir)
        self.metrics = Metrics(segment)
        health = Health(heartbeat_age, self.metrics, self.pids, emit)
        check = self.overrides.check
        self._task = TaskRunner(emit, health, make_context, check)
        self._process = ProcessRunner(emit, health, self.metrics, template=template, book=book,
                                      segment=segment, mailboxes=mailboxes, pids=self.pids,
                                      log_dir=log_dir, log_level=log_level, check=check)
        self._on_root_give_up = on_root_give_up
        self.root_failure: str | None = None
        self._build(tuple(specs), tuple(groups))

    # -- the tree ---------------------------------------------------------------------

    def _build(self, specs: tuple[AgentSpec, ...], groups: tuple[GroupSpec, ...]) -> None:
        self.tree.build(self.overrides.shape(specs), groups)
        self.directory.replace(specs)

    @property
    def root(self) -> Group:
        return self.tree.root

    @property
    def children(self) -> list[Child]:
        """Every agent, in the tree's depth-first start order."""
        return self.tree.agents_in_order()

    def find(self, name: str) -> Child | None:
        """The agent called `name`, or None."""
        return self.tree.agents.get(name)

    def counter(self, name: str) -> Any:
        """The shared-memory counter called `name` (cached), or None without a segment."""
        return self.metrics.counter(name)

    # -- status ----------------------------------------------------------------------

    STATUS_COLUMNS = STATUS_COLUMNS

    def status_rows(self) -> list[tuple]:
        """One tuple of STATUS_COLUMNS values per agent, in start order (see Tree.status_rows)."""
        return self.tree.status_rows(trio.current_time(), self._heartbeat_age,
                                     self.overrides.release_of)

    def status(self) -> list[dict]:
        """One plain-data row per agent, in start order (STATUS_COLUMNS are the keys)."""
        return [dict(zip(STATUS_COLUMNS, row, strict=True)) for row in self.status_rows()]

    def groups_status(self) -> list[dict]:
        """One row per group (the root first): path, strategy, state, recent restarts."""
        return self.tree.groups_status()

    # -- running -----------------------------------------------------------------------

    async def run(self, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        """End what a killed predecessor left, start the tree, report started, supervise."""
        killed = await trio.to_thread.run_sync(self.pids.end_leftovers)
        if killed:
            log.warning("ended %d process(es) left by a previous runtime: %s", len(killed), killed)
            self._emit("leftovers-killed", None, pids=killed)
        async with trio.open_nursery() as nursery:
            self._process.nursery = nursery
            await nursery.start(self._run_node, None, self.root)
            task_status.started()

    async def stop(self) -> None:
        """Stop every agent in reverse start order, each fully before the next."""
        await self._stop_node(self.root)

    def _runner(self, child: Child) -> TaskRunner | ProcessRunner:
        return self._task if child.spec.kind == "task" else self._process

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
                        exit = await self._runner(node).run(node, report)
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
            if node.state not in (FAILED, RESTARTING, DEGRADED):
                node.state = STOPPED
            if isinstance(node, Child):
                node.clear_instance()
                if node.state != RESTARTING:
                    self._process.release(node.name)
            node.done.set()

    def _on_exit(self, group: Group, node: Node, exit: policy.Exit) -> float | None:
        """Apply the policy's decision: a restart delay for this runner, or None (no loop)."""
        decision, node.record, group.record = policy.decide(
            node.record, node.spec if isinstance(node, Child) else None, group.record,
            group.spec, len(group.children), exit, trio.current_time(), stopping=node.stopping)
        if isinstance(decision, policy.Restart):
            node.state = RESTARTING
            self._note_restart(node, decision.delay, exit.summary, group.spec.strategy)
            if decision.siblings is policy.Siblings.NONE:
                return decision.delay
            assert group.nursery is not None
            group.nursery.start_soon(self._restart_siblings, group, node, decision)
        elif isinstance(decision, policy.Stop):
            node.state = STOPPED
            if decision.reason is not None:
                self._emit("stopped", node.name, reason=decision.reason)
        elif isinstance(decision, policy.Fail):
            node.state = FAILED
            log.error("agent %s: %d restarts within %.0fs: giving up (state failed)",
                      node.name, decision.restarts, decision.window_s)
            self._emit("give-up", node.name, restarts=decision.restarts,
                       window_s=decision.window_s, group=node.path)
        elif isinstance(decision, policy.Escalate):
            reason = decision.reason(node.name, exit.summary)
            log.error("group %s: %s: stopping its children and failing to its parent",
                      group.group_path, reason)
            self._emit("escalation", None, group=group.group_path, reason=reason,
                       restarts=decision.restarts, trigger=node.name)
            group.give_up_reason = reason
            group.gave_up.set()
            node.state = STOPPED
        return None

    def _note_restart(self, node: Node, delay: float, reason: str, strategy: str) -> None:
        log.info("%s %s restarting in %.3fs (%s)", "agent" if isinstance(node, Child)
                 else "group", node.name, delay, reason)
        if isinstance(node, Child):
            self._emit("restart", node.name, delay_s=delay, restarts=node.restarts,
                       consecutive=node.record.consecutive, reason=reason, strategy=strategy)
            counter = self.metrics.counter(f"{node.name}:restarts")
            if counter is not None:
                counter.inc()
        else:
            self._emit("restart", None, group=node.group_path, delay_s=delay,
                       restarts=node.restarts, reason=reason, strategy=strategy)

    async def _restart_siblings(self, group: Group, node: Node, decision: policy.Restart) -> None:
        """one_for_all / rest_for_one: stop the affected siblings, then start them in order."""
        async with group.restart_lock:
            children = group.children
            index = children.index(node) if node in children else 0
            positions = policy.affected(decision.siblings, index, len(children))
            together = [children[i] for i in positions]
            strategy = group.spec.strategy
            for other in reversed(together):
                if other is not node and other.running_runner:
                    await self._stop_node(other)
                    other.state = RESTARTING
                    other.record = other.record.restarted()
                    self._note_restart(other, decision.delay, f"{strategy} after {node.name}",
                                       strategy)
            await node.done.wait()
            await trio.sleep(decision.delay)
            if group.stop_request.is_set() or group.gave_up.is_set():
                for other in together:
                    if other.state == RESTARTING and not other.running_runner:
                        other.state = STOPPED
                return
            for other in together:
                if other.user_stopped or other.running_runner or other.state == FAILED:
                    continue
                assert group.nursery is not None
                await group.nursery.start(self._run_node, group, other)

    async def _run_group_once(self, group: Group, report: Callable[[], None]) -> policy.Exit:
        group.gave_up = trio.Event()
        group.stop_request = trio.Event()
        group.give_up_reason = None
        group.state = STARTING
        async with trio.open_nursery() as nursery:
            group.nursery = nursery
            group.record = group.record.started(trio.current_time())
            for node in group.children:
                if node.user_stopped:
                    continue
                if isinstance(node, Child):
                    node.record = node.record.fresh()
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
                self._root_gave_up()
            await self._stop_children(group)
            nursery.cancel_scope.cancel()
        gave_up = group.give_up_reason is not None and not group.stop_request.is_set()
        summary = f"gave up: {group.give_up_reason}" if gave_up else "stopped"
        if group.parent is not None:
            self._emit("exit", None, group=group.group_path, summary=summary, failed=gave_up)
        return policy.Exit(gave_up, summary, stopped=not gave_up)

    def _root_gave_up(self) -> None:
        root = self.root
        root.state = FAILED
        for agent in self.children:
            if agent.state in (STOPPED, RESTARTING):
                agent.state = FAILED
        reason = root.give_up_reason or "gave up"
        self.root_failure = reason
        self._emit("give-up", None, group="/", reason=reason, on_give_up=self.on_give_up)
        if self.on_give_up == "stop":
            log.critical("the root supervisor gave up: %s; stopping the runtime", reason)
            if self._on_root_give_up is not None:
                self._on_root_give_up(reason)
        else:
            log.critical("the root supervisor gave up: %s; the runtime keeps running "
                         "with every agent failed (use `outpost restart`)", reason)
        root.gave_up = trio.Event()

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
        if node.scope is not None or node.signal_instance is not None:
            await self._runner(node).stop_instance(node)
        else:  # waiting for dependencies or in a backoff delay
            node.runner_scope.cancel()
        timeout = node.spec.shutdown_timeout_s
        with trio.move_on_after(timeout):
            await node.done.wait()
        if not node.done.is_set():
            log.error("agent %s did not stop within %.1fs; cancelling its runner",
                      node.name, timeout)
            node.runner_scope.cancel()
            await node.done.wait()

    async def _wait_dependencies(self, child: Child, report: Callable[[], None]) -> None:
        agents = self.tree.agents
        deps = [agents[d] for d in child.spec.depends_on if d in agents]
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

    # -- control (the control methods call these) --------------------------------------

    async def start_agent(self, name: str) -> None:
        """Start a stopped agent (or group). UnknownAgentError for an unknown name."""
        node = self.tree.get(name)
        node.user_stopped = False
        node.degraded = None
        if node.running_runner:
            return
        await self._start_node(node)

    async def _start_node(self, node: Node) -> None:
        if node.running_runner:  # e.g. started along with its group just before
            return
        group = node.parent
        if group is self.root and self.root.state == FAILED:
            self.root.state = RUNNING
            self.root.record = self.root.record.fresh()
            self.root_failure = None
        if group is not None and not group.is_running() and group is not self.root:
            group.user_stopped = False
            group.record = group.record.fresh()
            await self._start_node(group)  # starts its children, this one among them
            return
        assert group is not None and group.nursery is not None
        await group.nursery.start(self._run_node, group, node)

    async def stop_agent(self, name: str) -> None:
        """Stop an agent (or group) and keep it stopped until started again."""
        node = self.tree.get(name)
        node.user_stopped = True
        await self._stop_node(node)
        if node.state != FAILED:
            node.state = STOPPED
        self._emit("stopped", node.name if isinstance(node, Child) else None,
                   reason="stopped by request")

    async def restart_agent(self, name: str) -> None:
        """Restart an agent now, clearing `failed` and its error budget and backoff."""
        node = self.tree.get(name)
        if node.running_runner:
            await self._stop_node(node)
        node.record = node.record.fresh()
        node.user_stopped = False
        node.degraded = None
        node.state = STOPPED
        self._emit("restart", node.name if isinstance(node, Child) else None,
                   delay_s=0.0, restarts=node.restarts, reason="restart requested",
                   strategy="manual")
        await self._start_node(node)

    async def reload(self, specs_or_config: Config | tuple[AgentSpec, ...] | list[AgentSpec]) \
            -> dict[str, list[str]]:
        """Apply a new config: stop removed agents, restart changed ones, start new ones.

        Unchanged agents keep running untouched. Group settings (strategy,
        intensity) apply from now on; groups may be added or removed. A tree
        that cannot be built (an unknown group or dependency, a dependency
        cycle) is refused with InvalidReloadError before anything is touched.
        """
        if isinstance(specs_or_config, Config):
            specs, groups = specs_or_config.agents, specs_or_config.groups
        else:
            specs = tuple(specs_or_config)
            groups = tuple(g.spec for g in self.tree.groups.values())
        try:
            start_order(tuple(specs), tuple(groups))
        except (KeyError, ValueError) as exc:
            raise InvalidReloadError(f"{exc.args[0]!r} is not a defined agent or group"
                                     if isinstance(exc, KeyError) else str(exc)) from None
        if isinstance(specs_or_config, Config):
            self.root.spec = root_spec(specs_or_config.supervisor)
            self.on_give_up = specs_or_config.supervisor.on_give_up
        agents = self.tree.agents
        result = self.tree.diff(self.overrides.shape(specs))
        for name in reversed(result["removed"] + result["changed"]):
            await self._stop_node(agents[name])
        for name in result["removed"]:
            del agents[name]
        kept = {g.name for g in groups}
        for gname in [g for g in self.tree.groups if g not in kept]:
            await self._stop_node(self.tree.groups[gname])
            del self.tree.groups[gname]
        self._build(tuple(specs), tuple(groups))
        for name in result["changed"] + result["added"]:
            child = agents[name]
            child.record = child.record.fresh()
            child.user_stopped = False
            child.degraded = None
            if child.parent is not None and (child.parent.is_running()
                                             or child.parent.parent is not None):
                await self._start_node(child)
        for group in self.tree.groups.values():
            if not group.running_runner and not group.user_stopped and group.parent is not None \
                    and group.parent.is_running():
                await self._start_node(group)
        self._emit("reload", None, **result)
        return result

    async def degrade_agent(self, name: str, reason: str) -> None:
        """Stop agent (or group) `name` and keep it stopped, marked `degraded`, its state
        kept, until it is started or restarted (a rule's brake on a misbehaving agent)."""
        node = self.tree.get(name)
        await self.stop_agent(name)
        nodes = [node] if isinstance(node, Child) else \
            [self.tree.agents[n] for n in self.tree.scope_of(name) if n in self.tree.agents]
        for each in nodes:
            each.degraded = reason
            each.state = DEGRADED
            self._emit("degrade", each.name, reason=reason)

    def use_release(self, name: str, override: ReleaseOverride | None) -> list[str]:
        """Run agent `name` (or every instance of it) from `override` from its next start
        on (None: the config's own code again); returns the agents it applies to."""
        if name not in self.tree.agents and name not in self.tree.groups:
            self.tree.get(name)  # UnknownAgentError
        self.overrides.set(name, override)
        names = [n for n in self.tree.scope_of(name) if n in self.tree.agents]
        for each in names:
            self.tree.agents[each].spec = self.overrides.effective(each)
        return names

    def scope_of(self, name: str) -> list[str]:
        """Every agent and group a change of `name` touches (for one mutation at a time)."""
        return self.tree.scope_of(name)
