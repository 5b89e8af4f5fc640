"""The one table of control methods, and who is calling.

Every way into the runtime's methods goes through `Methods.call`: the control
socket (the server passes its peer as the `Caller`), and rooms acting in
process (a rule, a job, the uplink). That makes it the one place where params
are validated (each handler declares them, see runtime.control.params), where
an unexpected exception becomes an `internal` answer instead of a crash, and
where a method declared mutating (`accepts(..., mutates=...)`) is handed to
the guard (runtime.control.mutations): request ids that apply once, one
mutation at a time per agent, the audit event. The table wraps such a
handler when it is added, so a read-only call pays nothing for any of it.

No trio here: importing the control package costs a client command nothing.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Protocol

from runtime.control.errors import MethodError
from runtime.control.params import Mutates, Params, params_of

log = logging.getLogger("outpost.control")

Handler = Callable[[dict[str, Any]], Awaitable[Any]]
"""A control method: its validated params in, plain data (or a `Stream`) out."""


class Stream:
    """Return this from a handler to answer with a stream of items (e.g. events -f).

    The server sends each item as it comes, then the end. If the client goes
    away (or cannot keep up within the send timeout) the iterator is closed,
    so a follower never outlives its client. An item source raising MethodError
    ends the stream with that error.
    """

    def __init__(self, items: AsyncIterator[Any]) -> None:
        self.items = items


@dataclass(frozen=True)
class Caller:
    """Who asked: a socket peer, or a room acting in process (a rule, a job, ...)."""

    kind: str  # "socket" | "rule" | "job" | "uplink" | "http" | "internal"
    name: str | None = None  # e.g. the rule or job name
    uid: int | None = None  # socket peers: from SO_PEERCRED
    pid: int | None = None


INTERNAL = Caller("internal")

_caller: ContextVar[Caller] = ContextVar("outpost_control_caller", default=INTERNAL)


def current_caller() -> Caller:
    """The caller of the method running now (INTERNAL outside any call)."""
    return _caller.get()


@contextlib.contextmanager
def acting_as(caller: Caller) -> Iterator[None]:
    """Run the block with current_caller() == caller: the server uses it while a
    stream's items are produced, after the handler itself has returned."""
    token = _caller.set(caller)
    try:
        yield
    finally:
        _caller.reset(token)


def as_method_error(exc: Exception, method: str) -> MethodError:
    """`exc` as the answer to send: a MethodError as it is; anything else is a bug,
    logged in full and answered `internal` (the runtime goes on)."""
    if isinstance(exc, MethodError):
        return exc
    log.error("control method %s failed", method, exc_info=exc)
    return MethodError("internal", f"{type(exc).__name__}: {exc}")


class Guard(Protocol):
    """What runs a mutating method (runtime.control.mutations.Mutations is the one)."""

    async def apply(self, method: str, mutates: Mutates, args: dict[str, Any],
                    caller: Caller, handler: Handler) -> Any: ...


class Methods:
    """Control methods by name, each with the params it declared."""

    def __init__(self, guard: Guard | None = None) -> None:
        # name -> (handler, its params, what it gets for no params: None if that is refused).
        # A mutating method's handler is wrapped in the guard (see `_guarded`), so a
        # read-only call runs exactly as before: nothing here tests for mutations.
        self._table: dict[str, tuple[Handler, Params, dict[str, Any] | None]] = {}
        self._guard = guard

    def use_guard(self, guard: Guard | None) -> None:
        """Run mutating methods through `guard` from now on (None: run them bare, as in
        tests of a room's handlers on their own)."""
        self._guard = guard

    def add(self, handlers: Mapping[str, Handler]) -> None:
        """Add `handlers` by name. ValueError if a name is taken; TypeError if a
        handler did not declare its params (`@accepts(...)` from runtime.control.params)."""
        entries = {}
        for name, handler in handlers.items():
            if name in self._table:
                raise ValueError(f"control method {name!r} is defined twice")
            spec = params_of(handler)
            if spec is None:
                raise TypeError(f"control method {name!r} does not declare its params: "
                                "decorate it with runtime.control.params.accepts(...)")
            run = handler if spec.mutates is None else self._guarded(name, spec.mutates,
                                                                      handler)
            entries[name] = (run, spec, spec.parse(None) if spec.optional else None)
        self._table.update(entries)  # all or nothing

    def names(self) -> list[str]:
        """Every method's name, sorted."""
        return sorted(self._table)

    def __contains__(self, name: str) -> bool:
        return name in self._table

    def params(self, name: str) -> Params:
        """What method `name` accepts (KeyError if there is no such method)."""
        return self._table[name][1]

    def mutates(self, name: str) -> Mutates:
        """What method `name` declared it mutates (None: read-only; KeyError if unknown)."""
        return self._table[name][1].mutates

    def _guarded(self, method: str, mutates: Mutates, handler: Handler) -> Handler:
        """`handler` run through the guard in force when it is called."""
        async def guarded(args: dict[str, Any]) -> Any:
            guard = self._guard
            if guard is None:
                return await handler(args)
            return await guard.apply(method, mutates, args, _caller.get(), handler)
        return guarded

    async def call(self, method: str, params: Mapping[str, Any] | None = None,
                   *, caller: Caller = INTERNAL) -> Any:
        """Run `method` with `params` on behalf of `caller`; its result (or a Stream).

        MethodError("unknown_method") for an unknown name, ("bad_params") for
        params it did not declare or of the wrong type or range (before the handler
        runs), a handler's own MethodError as it is, and any other exception logged
        and raised as MethodError("internal").

        A mutating method takes `params["request_id"]`: a repeated request with it
        answers the first time's answer without applying again. An in-process
        caller with ids of its own (the uplink's message ids) passes them there,
        or through `request`.
        """
        entry = self._table.get(method)
        if entry is None:
            raise MethodError("unknown_method", f"no method {method!r}; known: "
                              + ", ".join(self.names()))
        handler, spec, bare = entry
        if bare is not None and (params is None or params == {}):
            args = bare.copy()  # most requests (ping, status, info) carry none: no parse
        else:
            args = spec.parse(params)  # bad_params before anything runs
        token = _caller.set(caller)
        try:
            return await handler(args)
        except MethodError:
            raise
        except Exception as exc:
            raise as_method_error(exc, method) from None
        finally:
            _caller.reset(token)

    async def request(self, method: str, params: Mapping[str, Any] | None = None, *,
                      request_id: str | None = None, caller: Caller = INTERNAL) -> Any:
        """`call` with the request id given apart from the params (the uplink's
        CommandPort.call has this shape): `await methods.request("send", {...},
        request_id=nats_msg_id, caller=Caller("uplink"))`. Kept apart from `call` so
        the hot path of every other call stays as short as it is."""
        if request_id is not None:
            params = {**(params or {}), "request_id": request_id}
        return await self.call(method, params, caller=caller)
