"""The core control methods a live runtime answers: plain data in, plain data out.

They work on the parts they are given, through the small ports declared here
(`Host`, `Supervision`), not on the runtime object: runtime.app builds the
parts and adds these handlers to the one `Methods` table. Each handler
declares its params (runtime.control.params), so it runs only on a request it
understood; it answers with a `MethodError` (codes: runtime.control.errors),
catching the store's and the supervisor's own error types, never a bare
KeyError/ValueError/TypeError that would turn a bug into a "not found".
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol

import trio

from runtime.agents import state_stream
from runtime.agents.mailbox import MailboxError, Mailboxes
from runtime.config import Config, ConfigError, load_config
from runtime.control.dispatch import Handler, Stream
from runtime.control.errors import MethodError
from runtime.control.params import (
    EVERY_AGENT,
    Int,
    Map,
    Number,
    OneOf,
    Str,
    Value,
    accepts,
    params_of,
)
from runtime.control.protocol import Table
from runtime.events import EventLog
from runtime.store import StateBook, StoreError
from runtime.supervisor.errors import SupervisorError, UnknownAgentError
from shm import Segment, prometheus_text, snapshot

log = logging.getLogger("outpost.control")

EVENTS_MAX_LIMIT = 10_000  # keeps a query's answer well inside one 1 MiB frame
FOLLOW_MAX_BACKLOG = 1000


# -- the ports ---------------------------------------------------------------------


class Named(Protocol):
    @property
    def name(self) -> str: ...


class Supervision(Protocol):
    """What the methods need of the supervisor (runtime.supervisor.Supervisor is one)."""

    STATUS_COLUMNS: tuple[str, ...]

    @property
    def children(self) -> Sequence[Named]: ...
    def find(self, name: str) -> object | None: ...
    def status_rows(self) -> list[tuple]: ...
    def groups_status(self) -> list[dict]: ...
    async def start_agent(self, name: str) -> None: ...
    async def stop_agent(self, name: str) -> None: ...
    async def restart_agent(self, name: str) -> None: ...
    async def reload(self, config: Config) -> dict[str, list[str]]: ...


class Host(Protocol):
    """What the methods need of the runtime itself (runtime.app.Runtime is one)."""

    @property
    def config(self) -> Config: ...  # the config now in force
    @property
    def stopping(self) -> bool: ...  # a shutdown was requested
    def info(self) -> dict[str, Any]: ...  # version, pid, uptime, paths, agents, control
    def request_shutdown(self) -> None: ...
    def use_config(self, config: Config) -> None: ...  # after the supervisor applied it


# -- params they share -------------------------------------------------------------

AGENT = Str("agent", required=True, doc="an agent name")
KEY = Str("key", required=True, doc="a state key")
FILTERS = (Number("since", doc="seconds since the epoch"),
           Str("agent", doc="only this agent's events"),
           Str("type", doc="only events of this type"))


def control_methods(*, host: Host, supervisor: Supervision, book: StateBook,
                    flush: Callable[[], Awaitable[None]], mailboxes: Mailboxes,
                    events: EventLog, segment: Segment,
                    maintenance: Mapping[str, Handler]) -> dict[str, Handler]:
    """The core handlers, by method name, over these parts of a runtime.

    `flush` makes every acknowledged store write durable now; `maintenance`
    holds the tasks `maintain` may run (runtime.maintain.online.online_tasks),
    each declaring its args like a method its params.
    """

    def known(name: str) -> str:
        if supervisor.find(name) is None:
            raise MethodError("not_found", str(UnknownAgentError(
                name, [c.name for c in supervisor.children])))
        return name

    @accepts(Str("agent", doc="only this agent's row"))
    async def status(params: dict[str, Any]) -> dict:
        """Every agent's row and the groups (or one agent's row, with params.agent)."""
        columns, rows = supervisor.STATUS_COLUMNS, supervisor.status_rows()
        if params["agent"] is not None:
            name = known(params["agent"])
            return {"agents": Table(columns, [r for r in rows if r[0] == name])}
        return {"agents": Table(columns, rows), "groups": supervisor.groups_status()}

    def agent_action(action: str) -> Handler:
        act = getattr(supervisor, f"{action}_agent")

        @accepts(Str("agent", required=True, doc="an agent or group name"), mutates="agent")
        async def handler(params: dict[str, Any]) -> dict:
            name = params["agent"]
            try:
                await act(name)
            except UnknownAgentError as exc:
                raise MethodError("not_found", str(exc)) from None
            except SupervisorError as exc:  # e.g. a dependency that is not running
                raise MethodError("failed", str(exc)) from None
            columns = supervisor.STATUS_COLUMNS
            rows = [dict(zip(columns, r, strict=True)) for r in supervisor.status_rows()
                    if r[0] == name]
            # "result" stays for clients of the JSON answer; the supervisor returns nothing.
            return {"agent": name, "action": action, "result": None,
                    "status": rows[0] if rows else None}
        handler.__doc__ = f"{action.capitalize()} one agent or group (params.agent)."
        return handler

    @accepts(AGENT, Str("key", doc="one key (without it: the whole state)"))
    async def state_get(params: dict[str, Any]) -> dict:
        """An agent's whole durable state, or one key of it."""
        name, key = known(params["agent"]), params["key"]
        state = await book.open(state_stream(name))
        if key is None:
            return {"agent": name, "state": state.to_dict()}
        if key not in state:
            raise MethodError("not_found", f"agent {name!r} has no state key {key!r}")
        return {"agent": name, "key": key, "value": state.get(key)}

    @accepts(AGENT, KEY, Value("value", required=True, doc="any value; null is one"),
             mutates="agent")
    async def state_set(params: dict[str, Any]) -> dict:
        """Set one key through the durable path (answers after the write is durable);
        the agent sees the new value at once: it shares the same KeyValueState."""
        name, key = known(params["agent"]), params["key"]
        state = await book.open(state_stream(name))
        try:
            await state.set(key, params["value"])
        except StoreError as exc:
            raise MethodError("failed", str(exc)) from None
        return {"agent": name, "key": key, "value": state.get(key), "seq": state.applied_seq}

    @accepts(AGENT, KEY, mutates="agent")
    async def state_delete(params: dict[str, Any]) -> dict:
        """Delete one key through the durable path."""
        name, key = known(params["agent"]), params["key"]
        state = await book.open(state_stream(name))
        existed = key in state
        try:
            await state.delete(key)
        except StoreError as exc:
            raise MethodError("failed", str(exc)) from None
        return {"agent": name, "key": key, "deleted": existed, "seq": state.applied_seq}

    # Not held per agent: messages are the agents' data flow, and a mailbox is not
    # rolled back, so a send interleaves with nothing.
    @accepts(AGENT, Value("message", required=True, doc="any value; null is one"),
             Str("key", doc="an idempotency key: a second send with it stores nothing"),
             mutates=True)
    async def send(params: dict[str, Any]) -> dict:
        """Put a message in an agent's mailbox (durable); answers with its seq.

        A request id doubles as the message's idempotency key (unless a key is
        given), so a repeated send stores nothing even if the runtime died before
        the id was remembered: the key is in the same transaction as the message."""
        name = known(params["agent"])
        key = params["key"] if params["key"] is not None else params["request_id"]
        try:
            seq = await mailboxes.send(name, params["message"], key=key)
        except MailboxError as exc:  # e.g. the agent was removed by a reload meanwhile
            raise MethodError("not_found", str(exc)) from None
        except StoreError as exc:
            raise MethodError("failed", str(exc)) from None
        return {"agent": name, "seq": seq}

    def query(filters: dict[str, Any], until: float | None, limit: int) -> Awaitable[list]:
        # A scan of the whole log: off the event loop.
        return trio.to_thread.run_sync(functools.partial(
            events.query, since=filters["since"], until=until, agent=filters["agent"],
            type=filters["type"], limit=limit))

    @accepts(*FILTERS, Number("until", doc="seconds since the epoch"),
             Int("limit", lo=1, hi=EVENTS_MAX_LIMIT, default=100, doc="the newest this many"))
    async def events_query(params: dict[str, Any]) -> dict:
        """Stored events matching since/until/agent/type, the newest `limit`, oldest first."""
        since, until = params["since"], params["until"]
        if since is not None and until is not None and since > until:
            raise MethodError("bad_params", "params.since is after params.until")
        return {"events": await query(params, until, params["limit"])}

    @accepts(*FILTERS, Int("backlog", lo=0, hi=FOLLOW_MAX_BACKLOG,
                           doc=f"stored events first (default: 0, or {FOLLOW_MAX_BACKLOG} "
                               "with since)"))
    async def events_follow(params: dict[str, Any]) -> Stream:
        """Stream events as they become durable: first the `backlog` newest stored
        ones (or all since `since`, up to the cap), then live ones. Ends with
        `lagged` if this follower fell too far behind."""
        since, agent, type_ = params["since"], params["agent"], params["type"]
        backlog = params["backlog"]
        if backlog is None:
            backlog = 0 if since is None else FOLLOW_MAX_BACKLOG

        def wanted(event: dict[str, Any]) -> bool:
            return (agent is None or event["agent"] == agent) and \
                (type_ is None or event["type"] == type_) and \
                (since is None or event["ts"] >= since)

        async def items() -> AsyncIterator[dict[str, Any]]:
            # Subscribe (here, so a stream never started leaves no subscriber behind)
            # before reading the backlog: no event falls in between, and the
            # duplicates are skipped by seq.
            with events.follow() as channel:
                last = 0
                if backlog:
                    for event in await query(params, None, backlog):
                        last = event["seq"]
                        yield event
                async for event in channel:
                    if event["seq"] > last and wanted(event):
                        yield event
                if not host.stopping:
                    raise MethodError("lagged", "this follower fell too far behind and was "
                                      "dropped; follow again (with --since) to catch up")
        return Stream(items())

    @accepts(OneOf("format", ("snapshot", "prometheus"), default="snapshot"))
    async def metrics(params: dict[str, Any]) -> dict:
        """The shared-memory metrics: a snapshot, or Prometheus text (format=prometheus)."""
        if params["format"] == "prometheus":
            return {"text": prometheus_text(segment)}
        return {"metrics": snapshot(segment)}

    @accepts()
    async def checkpoint(params: dict[str, Any]) -> dict:
        """Checkpoint every changed state now and flush the store."""
        written = await book.checkpoint_all()
        await flush()
        return {"checkpoints_written": written, "checkpoints_total": book.checkpoints_written}

    @accepts(Str("task", doc="a task name (without it: list the tasks)"),
             Map("args", doc="the task's own params, e.g. {arg: DIR} for backup"),
             mutates=True)
    async def maintain(params: dict[str, Any]) -> dict:
        """Run one maintenance task inside the runtime (params.task, params.args);
        without a task, list the tasks this runtime offers."""
        task, args = params["task"], params["args"]
        if task is None:
            if args is not None:
                raise MethodError("bad_params", "params.args needs params.task")
            return {"tasks": {name: (inspect.getdoc(fn) or "").split("\n")[0]
                              for name, fn in sorted(maintenance.items())}}
        fn = maintenance.get(task)
        if fn is None:
            raise MethodError("not_available", f"no maintenance task {task!r} in this runtime "
                              f"(available: {', '.join(sorted(maintenance)) or 'none'})")
        task_args = params_of(fn).parse(args, "params.args")  # type: ignore[union-attr]
        try:
            result = await fn(task_args)
        except (StoreError, OSError) as exc:  # a task's failure is the answer, not a crash
            log.error("maintenance task %s failed", task, exc_info=exc)
            raise MethodError("failed", f"{task}: {type(exc).__name__}: {exc}") from None
        return {"task": task, "result": result}

    @accepts(mutates=EVERY_AGENT)
    async def reload(params: dict[str, Any]) -> dict:
        """Re-read the config file and apply it: agents added, removed and changed,
        unchanged ones left running; [control] allowed users take effect at once."""
        now = host.config
        try:
            config = load_config(now.path)
        except ConfigError as exc:
            raise MethodError("bad_config", f"config not applied: {exc}") from None
        if config.data_dir != now.data_dir or config.run_dir != now.run_dir:
            raise MethodError("failed", "data_dir and run_dir cannot change while running; "
                              "restart the runtime to move them")
        try:
            changes = await supervisor.reload(config)
        except SupervisorError as exc:
            raise MethodError("failed", str(exc)) from None
        host.use_config(config)
        return {"config": str(now.path), **{k: list(v) for k, v in changes.items()}}

    @accepts()
    async def ping(params: dict[str, Any]) -> dict:
        """The cheapest answer there is: a liveness probe, and the transport's own cost."""
        return {"pong": True}

    @accepts()
    async def shutdown(params: dict[str, Any]) -> dict:
        """Stop the runtime cleanly (answers first, then stops)."""
        host.request_shutdown()
        return {"stopping": True, "pid": os.getpid()}

    @accepts()
    async def info(params: dict[str, Any]) -> dict:
        """Version, pid, uptime, paths, agents, control connections."""
        return host.info()

    return {
        "status": status,
        "agent.start": agent_action("start"),
        "agent.stop": agent_action("stop"),
        "agent.restart": agent_action("restart"),
        "state.get": state_get,
        "state.set": state_set,
        "state.delete": state_delete,
        "send": send,
        "events.query": events_query,
        "events.follow": events_follow,
        "metrics": metrics,
        "checkpoint": checkpoint,
        "maintain": maintain,
        "reload": reload,
        "shutdown": shutdown,
        "info": info,
        "ping": ping,
    }
