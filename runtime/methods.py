"""The control methods a live runtime answers: plain data in, plain data out.

Every handler checks its params' types itself and answers a wrong one with
`bad_params` (never an `internal` error: the fuzz test holds us to that).
Error codes: bad_params, not_found, not_available, failed, lagged.
"""

from __future__ import annotations

import functools
import inspect
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import trio

from runtime.agents import state_stream
from runtime.config import ConfigError, load_config
from runtime.control import MethodError, Stream, Table
from runtime.control.server import Handler
from runtime.store import StoreError
from shm import prometheus_text, snapshot

if TYPE_CHECKING:
    from runtime.app import Runtime

log = logging.getLogger("outpost.control")

MaintenanceTask = Callable[[dict[str, Any]], Awaitable[Any]]
"""A maintenance task run by the `maintain` method: params in, plain data (or an
object with `to_dict()`) out. Registered in `Runtime.maintenance_tasks` by name."""

EVENTS_MAX_LIMIT = 10_000  # keeps a query's answer well inside one 1 MiB frame
FOLLOW_MAX_BACKLOG = 1000


# -- params ------------------------------------------------------------------------


def _str(params: dict[str, Any], key: str, required: bool = False) -> str | None:
    value = params.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value:
        raise MethodError("bad_params", f"params.{key} must be a non-empty string")
    return value


def _number(params: dict[str, Any], key: str) -> float | None:
    value = params.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or \
            not math.isfinite(value):
        raise MethodError("bad_params", f"params.{key} must be a finite number "
                          "(seconds since the epoch)")
    return float(value)


def _int(params: dict[str, Any], key: str, default: int, lo: int, hi: int) -> int:
    value = params.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise MethodError("bad_params", f"params.{key} must be an integer from {lo} to {hi}")
    return value


def _agent_name(rt: Runtime, params: dict[str, Any], key: str = "agent") -> str:
    name = _str(params, key, required=True)
    assert name is not None
    if rt.supervisor.find(name) is None:
        known = ", ".join(c.name for c in rt.supervisor.children) or "none"
        raise MethodError("not_found", f"no agent named {name!r} (agents: {known})")
    return name


async def _maybe_await(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


def _plain(result: Any) -> Any:
    to_dict = getattr(result, "to_dict", None)
    return to_dict() if callable(to_dict) else result


# -- the table ---------------------------------------------------------------------


def control_methods(rt: Runtime) -> dict[str, Handler]:
    """The handler table the control server dispatches to."""

    async def status(params: dict[str, Any]) -> dict:
        """Every agent's row (or one agent's, with params.agent)."""
        sup = rt.supervisor
        rows = sup.status_rows()
        if params.get("agent") is not None:
            name = _agent_name(rt, params)
            return {"agents": Table(sup.STATUS_COLUMNS, [r for r in rows if r[0] == name])}
        return {"agents": Table(sup.STATUS_COLUMNS, rows), "groups": sup.groups_status()}

    def agent_action(action: str) -> Handler:
        async def handler(params: dict[str, Any]) -> dict:
            name = _str(params, "agent", required=True)  # an agent or a group
            fn = getattr(rt.supervisor, f"{action}_agent", None)
            if fn is None:
                raise MethodError("not_available",
                                  f"this runtime's supervisor cannot {action} agents yet")
            try:
                result = await _maybe_await(fn(name))
            except KeyError as exc:  # runtime.supervisor.UnknownAgentError
                message = str(exc) if type(exc) is not KeyError else f"no agent named {name!r}"
                raise MethodError("not_found", message) from None
            except ValueError as exc:  # e.g. a dependency that is not running
                raise MethodError("failed", str(exc)) from None
            rows = [r for r in rt.supervisor.status() if r["name"] == name]
            return {"agent": name, "action": action, "result": _plain(result),
                    "status": rows[0] if rows else None}
        handler.__doc__ = f"{action.capitalize()} one agent or group (params.agent)."
        return handler

    async def state_get(params: dict[str, Any]) -> dict:
        """An agent's whole durable state, or one key of it."""
        name = _agent_name(rt, params)
        key = _str(params, "key")
        state = await rt.book.open(state_stream(name))
        if key is None:
            return {"agent": name, "state": state.to_dict()}
        if key not in state:
            raise MethodError("not_found", f"agent {name!r} has no state key {key!r}")
        return {"agent": name, "key": key, "value": state.get(key)}

    async def state_set(params: dict[str, Any]) -> dict:
        """Set one key through the durable path (answers after the write is durable);
        the agent sees the new value at once: it shares the same KeyValueState."""
        name = _agent_name(rt, params)
        key = _str(params, "key", required=True)
        if "value" not in params:
            raise MethodError("bad_params", "params.value is required (null is a value)")
        state = await rt.book.open(state_stream(name))
        try:
            await state.set(key, params["value"])
        except StoreError as exc:
            raise MethodError("failed", str(exc)) from None
        return {"agent": name, "key": key, "value": state.get(key), "seq": state.applied_seq}

    async def state_delete(params: dict[str, Any]) -> dict:
        """Delete one key through the durable path."""
        name = _agent_name(rt, params)
        key = _str(params, "key", required=True)
        state = await rt.book.open(state_stream(name))
        existed = key in state
        try:
            await state.delete(key)
        except StoreError as exc:
            raise MethodError("failed", str(exc)) from None
        return {"agent": name, "key": key, "deleted": existed, "seq": state.applied_seq}

    async def send(params: dict[str, Any]) -> dict:
        """Put a message in an agent's mailbox (durable); answers with its seq."""
        name = _agent_name(rt, params)
        if "message" not in params:
            raise MethodError("bad_params", "params.message is required")
        key = _str(params, "key")
        mailboxes = getattr(rt, "mailboxes", None)
        if mailboxes is None:
            raise MethodError("not_available", "this runtime has no mailboxes yet")
        try:
            seq = await _maybe_await(mailboxes.send(name, params["message"], key=key))
        except KeyError:
            raise MethodError("not_found", f"agent {name!r} has no mailbox") from None
        except (StoreError, ValueError, TypeError) as exc:  # e.g. a message too large
            raise MethodError("failed", str(exc)) from None
        return {"agent": name, "seq": seq}

    def event_filters(params: dict[str, Any]) -> dict[str, Any]:
        since, until = _number(params, "since"), _number(params, "until")
        if since is not None and until is not None and since > until:
            raise MethodError("bad_params", "params.since is after params.until")
        return {"since": since, "until": until, "agent": _str(params, "agent"),
                "type": _str(params, "type")}

    async def events_query(params: dict[str, Any]) -> dict:
        """Stored events matching since/until/agent/type, the newest `limit`, oldest first."""
        filters = event_filters(params)
        limit = _int(params, "limit", 100, 1, EVENTS_MAX_LIMIT)
        # A scan of the whole log: off the event loop.
        return {"events": await trio.to_thread.run_sync(
            functools.partial(rt.events.query, **filters, limit=limit))}

    async def events_follow(params: dict[str, Any]) -> Stream:
        """Stream events as they become durable: first the `backlog` newest stored
        ones (or all since `since`, up to the cap), then live ones. Ends with
        `lagged` if this follower fell too far behind."""
        filters = event_filters(params)
        if filters["until"] is not None:
            raise MethodError("bad_params", "a follow has no end: params.until is for queries")
        backlog = _int(params, "backlog", 0, 0, FOLLOW_MAX_BACKLOG)
        if filters["since"] is not None and "backlog" not in params:
            backlog = FOLLOW_MAX_BACKLOG
        def wanted(event: dict[str, Any]) -> bool:
            return (filters["agent"] is None or event["agent"] == filters["agent"]) and \
                (filters["type"] is None or event["type"] == filters["type"]) and \
                (filters["since"] is None or event["ts"] >= filters["since"])

        async def items() -> AsyncIterator[dict[str, Any]]:
            # Subscribe (here, so a stream never started leaves no subscriber behind)
            # before reading the backlog: no event falls in between, and the
            # duplicates are skipped by seq.
            with rt.events.follow() as channel:
                last = 0
                if backlog:
                    for event in await trio.to_thread.run_sync(
                            functools.partial(rt.events.query, **filters, limit=backlog)):
                        last = event["seq"]
                        yield event
                async for event in channel:
                    if event["seq"] > last and wanted(event):
                        yield event
                if not rt.shutdown_requested.is_set():
                    raise MethodError("lagged", "this follower fell too far behind and was "
                                      "dropped; follow again (with --since) to catch up")
        return Stream(items())

    async def metrics(params: dict[str, Any]) -> dict:
        """The shared-memory metrics: a snapshot, or Prometheus text (format=prometheus)."""
        fmt = params.get("format", "snapshot")
        if fmt == "prometheus":
            return {"text": prometheus_text(rt.segment)}
        if fmt != "snapshot":
            raise MethodError("bad_params", "params.format is 'snapshot' or 'prometheus'")
        return {"metrics": snapshot(rt.segment)}

    async def checkpoint(params: dict[str, Any]) -> dict:
        """Checkpoint every changed state now and flush the store."""
        written = await rt.book.checkpoint_all()
        await rt.store.flush()
        return {"checkpoints_written": written,
                "checkpoints_total": rt.book.checkpoints_written}

    async def maintain(params: dict[str, Any]) -> dict:
        """Run one maintenance task inside the runtime (params.task, params.args);
        without a task, list the tasks this runtime offers."""
        tasks = rt.maintenance_tasks
        task = _str(params, "task")
        if task is None:
            return {"tasks": {name: (inspect.getdoc(fn) or "").split("\n")[0]
                              for name, fn in sorted(tasks.items())}}
        args = params.get("args", {})
        if not isinstance(args, dict):
            raise MethodError("bad_params", "params.args must be a map")
        fn = tasks.get(task)
        if fn is None:
            raise MethodError("not_available", f"no maintenance task {task!r} in this runtime "
                              f"(available: {', '.join(sorted(tasks)) or 'none'})")
        try:
            result = _plain(await fn(args))
        except MethodError:  # e.g. busy: another task runs
            raise
        except Exception as exc:  # a task's failure is the answer, not a crash
            log.error("maintenance task %s failed", task, exc_info=exc)
            raise MethodError("failed", f"{task}: {type(exc).__name__}: {exc}") from None
        return {"task": task, "result": result}

    async def reload(params: dict[str, Any]) -> dict:
        """Re-read the config file and apply it: agents added, removed and changed,
        unchanged ones left running; [control] allowed users take effect at once."""
        path = rt.config.path
        try:
            config = load_config(path)
        except ConfigError as exc:
            raise MethodError("bad_config", f"config not applied: {exc}") from None
        if config.data_dir != rt.config.data_dir or config.run_dir != rt.config.run_dir:
            raise MethodError("failed", "data_dir and run_dir cannot change while running; "
                              "restart the runtime to move them")
        fn = getattr(rt.supervisor, "reload", None)
        if fn is None:
            raise MethodError("not_available", "this runtime's supervisor cannot reload yet")
        try:
            changes = await fn(config)
        except ValueError as exc:
            raise MethodError("failed", str(exc)) from None
        rt.config = config
        if rt.control is not None:
            rt.control.set_allowed(config.allowed_uids, config.allowed_gids)
        return {"config": str(path), **{k: list(v) for k, v in dict(changes).items()}}

    async def ping(params: dict[str, Any]) -> dict:
        """The cheapest answer there is: a liveness probe, and the transport's own cost."""
        return {"pong": True}

    async def shutdown(params: dict[str, Any]) -> dict:
        """Stop the runtime cleanly (answers first, then stops)."""
        rt.shutdown_requested.set()
        return {"stopping": True, "pid": rt.info()["pid"]}

    async def info(params: dict[str, Any]) -> dict:
        """Version, pid, uptime, paths, agents, control connections."""
        out = dict(rt.info())
        out["agents"] = len(rt.supervisor.children)
        if rt.control is not None:
            out["control"] = {"socket": str(rt.control.path),
                              "connections": rt.control.active,
                              "refused": rt.control.refused,
                              "requests": rt.control.requests}
        return out

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
