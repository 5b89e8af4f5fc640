"""The control methods a live runtime answers: plain data in, plain data out."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from runtime.agents import state_stream
from runtime.control import MethodError
from runtime.control.server import Handler
from shm import prometheus_text, snapshot

if TYPE_CHECKING:
    from runtime.app import Runtime


def _agent_name(rt: Runtime, params: dict[str, Any]) -> str:
    name = params.get("agent")
    if not isinstance(name, str):
        raise MethodError("bad_params", "params.agent must be an agent name")
    if rt.supervisor.find(name) is None:
        known = ", ".join(c.name for c in rt.supervisor.children) or "none"
        raise MethodError("not_found", f"no agent named {name!r} (agents: {known})")
    return name


def control_methods(rt: Runtime) -> dict[str, Handler]:
    """The handler table the control server dispatches to."""

    async def status(params: dict[str, Any]) -> dict:
        rows = rt.supervisor.status()
        if "agent" in params:
            name = _agent_name(rt, params)
            rows = [r for r in rows if r["name"] == name]
        return {"agents": rows}

    async def state_get(params: dict[str, Any]) -> dict:
        name = _agent_name(rt, params)
        state = await rt.book.open(state_stream(name))
        key = params.get("key")
        if key is None:
            return {"agent": name, "state": state.to_dict()}
        if not isinstance(key, str):
            raise MethodError("bad_params", "params.key must be a string")
        if key not in state:
            raise MethodError("not_found", f"agent {name!r} has no state key {key!r}")
        return {"agent": name, "key": key, "value": state.get(key)}

    async def metrics(params: dict[str, Any]) -> dict:
        if params.get("format") == "prometheus":
            return {"text": prometheus_text(rt.segment)}
        return {"metrics": snapshot(rt.segment)}

    async def info(params: dict[str, Any]) -> dict:
        return rt.info()

    async def shutdown(params: dict[str, Any]) -> dict:
        rt.shutdown_requested.set()
        return {"stopping": True, "pid": rt.info()["pid"]}

    return {
        "status": status,
        "state.get": state_get,
        "metrics": metrics,
        "info": info,
        "shutdown": shutdown,
    }
