"""Mutating methods: applied once per request id, one at a time per agent, audited.

`Methods.call` hands every method declared `accepts(..., mutates=...)` to
`Mutations.apply`, the one place where:

- **a request id applies once.** A request with an id seen before (same
  method, same params) gets the first answer and changes nothing; the same id
  with other params is refused `conflict`. Ids and answers live in the store
  (runtime.control.ledger), so this holds across restarts, for at least the
  TTL. Only ids the caller chose are remembered (one is generated otherwise,
  for the audit trail only: nobody can repeat it).
- **one mutation at a time per agent.** The agent named by the declared param
  (with, for a group, every agent under it) is held while the handler runs; a
  second mutation of it is answered `busy`, or waits with `wait`. A rollout
  holds its agent the same way for as long as it runs (`locks.hold`), so
  nothing interleaves with it. Holds are shared down the tasks that a holder
  starts: a rollout's own calls (and a deploy handing over to its rollout)
  pass.
- **each mutation is an event** (`command`): method, agent, request id, the
  caller (kind, name, uid and pid: a socket peer's kernel credentials) and the
  outcome.

Order of a remembered request: the effect is made durable by the handler,
then the id and answer are appended, then the answer is sent. If the runtime
dies between the effect's commit and the id's (one group commit apart), the
id is not remembered and a retry applies again. Methods close that window
where the effect allows it: `send` stores the request id as the message's
idempotency key in the same transaction as the message; `deploy` keeps it in
the rollout record written with the rollout's first step. For the rest (state
set/delete, agent start/stop/restart) a second application writes the same
value or restarts the agent once more.
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from contextvars import ContextVar
from typing import Any

import trio

from runtime.control.dispatch import Caller, Handler
from runtime.control.errors import MethodError
from runtime.control.ledger import RequestLedger, params_digest
from runtime.control.params import EVERY_AGENT, Mutates
from runtime.store import StoreError

log = logging.getLogger("outpost.control")

AUDIT_EVENT = "command"


def new_request_id() -> str:
    """A fresh request id (for callers that gave none)."""
    return uuid.uuid4().hex


class Hold:
    """A hold on some agents (or on every agent) by one holder, shared down its tasks."""

    __slots__ = ("every", "keys", "released", "sharers")

    def __init__(self, keys: frozenset[str], every: bool, what: str) -> None:
        self.keys = keys
        self.every = every
        # Who holds it: the holder and the tasks sharing it, each saying what it does (a
        # deploy hands its hold to its rollout, which outlives it).
        self.sharers: list[list[str]] = [[what]]
        self.released = trio.Event()

    @property
    def live(self) -> bool:
        return bool(self.sharers)

    @property
    def what(self) -> str:
        return self.sharers[-1][0]


_held: ContextVar[tuple[Hold, ...]] = ContextVar("outpost_held_agents", default=())


class AgentLocks:
    """Which agents are being changed, by what. One mutation at a time per agent."""

    def __init__(self) -> None:
        self._by_key: dict[str, Hold] = {}
        self._every: Hold | None = None

    def holding(self, name: str) -> str | None:
        """What holds agent `name` now (for status), or None."""
        hold = self._by_key.get(name) or self._every
        return None if hold is None else hold.what

    def _blocker(self, keys: frozenset[str], every: bool, mine: tuple[Hold, ...]) \
            -> tuple[str, Hold] | None:
        if self._every is not None and self._every not in mine:
            return "every agent", self._every
        if every:
            for key, hold in self._by_key.items():
                if hold not in mine:
                    return f"agent {key!r}", hold
            return None
        for key in keys:
            hold = self._by_key.get(key)
            if hold is not None and hold not in mine:
                return f"agent {key!r}", hold
        return None

    @contextlib.asynccontextmanager
    async def hold(self, keys: Iterable[str] | str, what: str, wait: bool = False) \
            -> AsyncIterator[None]:
        """Hold agents `keys` (or EVERY_AGENT) while the block runs.

        A key held by another holder: MethodError("busy") saying what holds
        it, or with `wait` the block waits until it is free. Keys this task
        already holds (or a task that started it holds) are shared, not taken
        again, so a holder's own calls pass.
        """
        every = keys == EVERY_AGENT
        wanted = frozenset() if every else frozenset([keys] if isinstance(keys, str) else keys)
        mine = tuple(h for h in _held.get() if h.live)
        while (blocked := self._blocker(wanted, every, mine)) is not None:
            subject, hold = blocked
            if not wait:
                raise MethodError("busy", f"{subject} is busy: {hold.what}; try again when "
                                  "it is done, or wait for it (--wait)")
            await hold.released.wait()
        shared = [h for h in mine if h.every or (h.keys & wanted)]
        covered = any(h.every for h in shared)
        new_keys = frozenset() if covered else wanted.difference(*(h.keys for h in shared))
        own = Hold(new_keys, every and not covered, what) if (new_keys or (every and not covered)) \
            else None
        me = [what]  # this holder's entry (identity matters: two may say the same)
        for h in shared:
            h.sharers.append(me)
        if own is not None:
            own.sharers = [me]
            if own.every:
                self._every = own
            for key in new_keys:
                self._by_key[key] = own
        token = _held.set((*mine, own) if own is not None else mine)
        try:
            yield
        finally:
            _held.reset(token)
            for h in [*shared, *([own] if own is not None else [])]:
                h.sharers = [e for e in h.sharers if e is not me]
                if not h.sharers:
                    self._release(h)

    def _release(self, hold: Hold) -> None:
        if self._every is hold:
            self._every = None
        for key in hold.keys:
            if self._by_key.get(key) is hold:
                del self._by_key[key]
        hold.released.set()


class Mutations:
    """The guard `Methods` runs mutating methods through (see the module docstring).

    `ledger` remembers request ids (None: nothing is remembered, e.g. in tests
    of dispatch alone); `emit` is the event log's; `scope_of(name)` is every
    agent a mutation of `name` changes (a group: the agents under it).
    """

    def __init__(self, ledger: RequestLedger | None, emit: Callable[..., None],
                 scope_of: Callable[[str], Iterable[str]] = lambda name: (name,)) -> None:
        self.ledger = ledger
        self.locks = AgentLocks()
        self._emit = emit
        self._scope_of = scope_of
        self._inflight: dict[str, tuple[str, str, trio.Event]] = {}

    async def apply(self, method: str, mutates: Mutates, args: dict[str, Any],
                    caller: Caller, handler: Handler) -> Any:
        """Run `handler(args)` for `method` once per request id, holding what it mutates."""
        given = args.get("request_id")
        rid = given or new_request_id()
        held = isinstance(mutates, str) and mutates != EVERY_AGENT
        agent = args.get(mutates) if held else args.get("agent")  # for the audit event
        started = time.monotonic()
        outcome, replayed = "ok", False
        try:
            if given is not None and self.ledger is not None:
                digest = params_digest(method, args)
                while True:
                    first = self._seen(given, method, digest)
                    if first is not None:
                        replayed = True
                        return first[0]
                    inflight = self._inflight.get(given)
                    if inflight is None:
                        break
                    await inflight[2].wait()  # the same request is being applied now
                done = trio.Event()
                self._inflight[given] = (method, digest, done)
                try:
                    answer = await self._run(method, mutates, args, agent, rid, handler)
                    try:
                        await self.ledger.record(given, method, digest, answer)
                    except StoreError as exc:
                        raise MethodError(
                            "failed", f"{method} was applied, but its request id could not be "
                            f"stored ({exc}): a retry with this id would apply it again") \
                            from None
                    return answer
                finally:
                    del self._inflight[given]
                    done.set()
            return await self._run(method, mutates, args, agent, rid, handler)
        except MethodError as exc:
            outcome = exc.code
            raise
        except trio.Cancelled:
            outcome = "cancelled"
            raise
        except BaseException:
            outcome = "internal"
            raise
        finally:
            self._audit(method, agent, rid, caller, outcome, replayed, started)

    def _seen(self, rid: str, method: str, digest: str) -> tuple[Any] | None:
        """(the first answer,) if `rid` was applied; conflict if it was another request."""
        assert self.ledger is not None
        applied = self.ledger.get(rid)
        inflight = self._inflight.get(rid)
        other = (applied.method, applied.digest) if applied is not None else \
            inflight[:2] if inflight is not None else None
        if other is not None and other != (method, digest):
            raise MethodError("conflict", f"request id {rid!r} was already used for "
                              + (f"another {method} request (other params)"
                                 if other[0] == method else f"a {other[0]} request")
                              + "; use a new id for a new request")
        if applied is None:
            return None
        return (self.ledger.answer(applied),)

    async def _run(self, method: str, mutates: Mutates, args: dict[str, Any],
                   agent: str | None, rid: str, handler: Handler) -> Any:
        if mutates is True:
            answer = await handler(args)
        else:
            keys = EVERY_AGENT if mutates == EVERY_AGENT else \
                frozenset(self._scope_of(agent)) if isinstance(agent, str) else frozenset()
            async with self.locks.hold(keys, f"{method} (request {rid})",
                                       args.get("wait", False)):
                answer = await handler(args)
        return answer

    def _audit(self, method: str, agent: str | None, rid: str, caller: Caller, outcome: str,
               replayed: bool, started: float) -> None:
        self._emit(AUDIT_EVENT, agent, method=method, request_id=rid, caller=caller.kind,
                   caller_name=caller.name, uid=caller.uid, pid=caller.pid, outcome=outcome,
                   replayed=replayed, ms=round((time.monotonic() - started) * 1000, 3))
