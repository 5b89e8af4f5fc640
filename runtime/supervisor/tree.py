"""The supervision tree: its nodes (agents and groups) and their shape, built from specs.

A node carries its restart state as one `RestartRecord` (runtime.supervisor.policy),
replaced whole after every decision, beside what its runner needs while it runs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from runtime.config import AgentSpec
from runtime.config.loader import start_order
from runtime.config.schema import GroupSpec, SupervisorSection
from runtime.supervisor.errors import UnknownAgentError
from runtime.supervisor.policy import RestartRecord

RUNNING, RESTARTING, FAILED, STOPPED, STARTING, DEGRADED = (
    "running", "restarting", "failed", "stopped", "starting", "degraded")
STATUS_COLUMNS = ("name", "kind", "group", "state", "pid", "restarts", "uptime_s",
                  "heartbeat_age_s", "last_exit", "cpu_percent", "memory_rss_bytes",
                  "ready", "status", "release")


@dataclass(eq=False)
class Node:
    """Bookkeeping common to agents and groups under a supervisor."""

    name: str
    parent: Any = None  # the Group supervising this node (None for the root)
    state: str = STOPPED
    record: RestartRecord = field(default_factory=RestartRecord)
    last_exit: str | None = None
    stopping: bool = False
    ready: trio.Event = field(default_factory=trio.Event)
    done: trio.Event = field(default_factory=trio.Event)  # the runner task has ended
    running_runner: bool = False
    kill_reason: str | None = None
    user_stopped: bool = False  # stopped by request: not started with its group
    degraded: str | None = None  # why it was degraded (stopped, kept so until started)
    runner_scope: trio.CancelScope | None = None

    @property
    def restarts(self) -> int:
        return self.record.restarts

    def uptime(self) -> float | None:
        """Seconds the running instance has been up (trio's clock), or None."""
        if self.state != RUNNING:
            return None
        return self.record.uptime(trio.current_time())

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
        self.record = self.record.started(trio.current_time())
        self.ready = trio.Event()
        self.kill_reason = None
        self.cpu_percent = self.memory_rss_bytes = None

    def clear_instance(self) -> None:
        """Forget the instance that ended (its pid, its handles, its samples)."""
        self.pid = None
        self.signal_instance = None
        self.scope = None
        self.cpu_percent = self.memory_rss_bytes = None


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

    def is_running(self) -> bool:
        return self.running_runner and self.nursery is not None and self.state == RUNNING


def root_spec(section: SupervisorSection) -> GroupSpec:
    """The root group's spec from the [supervisor] section."""
    return GroupSpec("root", None, 0, section.strategy, section.max_restarts,
                     section.restart_window_s)


class Tree:
    """Every node by name, and the root; `build` (re)shapes it from specs, keeping nodes."""

    def __init__(self, root: SupervisorSection) -> None:
        self.root = Group(root_spec(root))
        self.agents: dict[str, Child] = {}
        self.groups: dict[str, Group] = {}

    def build(self, specs: tuple[AgentSpec, ...], groups: tuple[GroupSpec, ...]) -> None:
        """Shape the tree after `specs` and `groups`; existing nodes keep their records."""
        for g in groups:
            if g.name not in self.groups:
                self.groups[g.name] = Group(g)
            else:
                self.groups[g.name].spec = g
        for s in specs:
            if s.name not in self.agents:
                self.agents[s.name] = Child.of(s)
            else:
                self.agents[s.name].spec = s
        for group_name, items in start_order(specs, groups).items():
            group = self.root if group_name is None else self.groups[group_name]
            group.children = []
            for kind, name in items:
                node = self.agents[name] if kind == "agent" else self.groups[name]
                node.parent = group
                group.children.append(node)

    def agents_in_order(self) -> list[Child]:
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

    def scope_of(self, name: str) -> list[str]:
        """Every name a change of `name` touches: an agent itself; a group itself and every
        node under it (so holding a group holds its agents)."""
        group = self.groups.get(name)
        if group is None:
            return [name]
        out = [name]

        def walk(g: Group) -> None:
            for node in g.children:
                out.append(node.name)
                if isinstance(node, Group):
                    walk(node)
        walk(group)
        return out

    def get(self, name: str) -> Node:
        """The agent or group called `name`; UnknownAgentError if there is none."""
        node = self.agents.get(name) or self.groups.get(name)
        if node is None:
            raise UnknownAgentError(name, [c.name for c in self.agents_in_order()])
        return node

    def diff(self, specs: tuple[AgentSpec, ...]) -> dict[str, list[str]]:
        """Agent names `specs` would add, remove, change and leave unchanged."""
        new = {s.name: s for s in specs}
        old = {c.name: c for c in self.agents_in_order()}
        return {"added": [n for n in new if n not in old],
                "removed": [n for n in old if n not in new],
                "changed": [n for n in new if n in old and old[n].spec != new[n]],
                "unchanged": [n for n in new if n in old and old[n].spec == new[n]]}

    def status_rows(self, now: float, heartbeat_age: Callable[[str], float | None],
                    release_of: Callable[[str], str | None] = lambda name: None) -> list[tuple]:
        """One tuple of STATUS_COLUMNS values per agent, in start order, at `now`.

        Tuples, not dicts: the control socket sends them as a table
        (runtime.control.Table), and 13-key dicts per agent were a measurable
        part of a status call. Uptimes come from the records' start times.
        """
        rows = []
        for child in self.agents_in_order():
            running = child.state == RUNNING
            uptime = child.record.uptime(now) if running else None
            rows.append((
                child.name, child.spec.kind, child.path, child.state, child.pid, child.restarts,
                None if uptime is None else round(uptime, 3), heartbeat_age(child.name),
                child.last_exit, child.cpu_percent, child.memory_rss_bytes,
                running and child.ready.is_set(), child.status_text, release_of(child.name),
            ))
        return rows

    def groups_status(self) -> list[dict]:
        """One row per group (the root first): path, strategy, state, recent restarts."""
        return [{"group": group.group_path, "strategy": group.spec.strategy,
                 "state": group.state, "restarts": group.restarts,
                 "give_up_reason": group.give_up_reason}
                for group in [self.root, *self.groups.values()]]
