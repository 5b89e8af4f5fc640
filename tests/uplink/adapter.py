"""A small in-process stand-in for `Methods.call` with request-id idempotency (what
issue 17 builds into the real one): real handlers over a real store, so an answer
means the effect is durable."""

from __future__ import annotations

import collections
from collections.abc import Mapping
from typing import Any

import trio

from runtime.control import MethodError, Table
from runtime.store import StateBook


class InProcessMethods:
    """The CommandPort the uplink needs: call(method, params, request_id=, caller=)."""

    def __init__(self, book: StateBook) -> None:
        self.book = book
        self.applied: collections.Counter[str] = collections.Counter()
        self.callers: list[Any] = []
        self._results: dict[str, tuple[bool, Any]] = {}
        self._running: dict[str, trio.Event] = {}
        self.gate: trio.Event | None = None  # tests hold a call here

    async def call(self, method: str, params: Mapping[str, Any] | None = None, *,
                   request_id: str | None = None, caller: Any = None) -> Any:
        if request_id is not None:
            while request_id in self._running:
                await self._running[request_id].wait()
            if request_id in self._results:
                ok, value = self._results[request_id]
                if ok:
                    return value
                raise value
            self._running[request_id] = trio.Event()
        try:
            value = await self._apply(method, dict(params or {}), caller)
            outcome = (True, value)
        except MethodError as exc:
            outcome = (False, exc)
        finally:
            if request_id is not None:
                self._running.pop(request_id).set()
        if request_id is not None:
            self._results[request_id] = outcome
        if not outcome[0]:
            raise outcome[1]
        return outcome[1]

    async def _apply(self, method: str, params: dict, caller: Any) -> Any:
        self.applied[method] += 1
        self.callers.append(caller)
        if self.gate is not None:
            await self.gate.wait()
        if method == "state.set":
            state = await self.book.open(f"agent/{params['agent']}/state")
            await state.set(params["key"], params["value"])
            return {"agent": params["agent"], "seq": state.applied_seq}
        if method == "state.get":
            state = await self.book.open(f"agent/{params['agent']}/state")
            return {"agent": params["agent"], "state": state.to_dict()}
        if method == "status":
            return {"agents": Table(("name", "state"), [("a", "running"), ("b", "failed")])}
        if method in ("agent.restart", "ping"):
            return {"ok": True}
        raise MethodError("unknown_method", f"no method {method!r}")
