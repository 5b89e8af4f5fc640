"""Reply slots: a request id a task waits on until its answer comes or the connection is gone.

    with pending.expect(req) as slot:     # registered before the request is sent
        await send(request)
        answer = await slot.wait()        # the answer, or the connection's error

The reader task calls `resolve(req, answer)` for each answer, and
`fail_all(error)` when the connection ends (closed, broken, or its reader
cancelled): every waiter wakes with a fresh `error()`, and so does any later
`expect`, so no task can wait forever on a peer that is gone. A waiter that is
cancelled gives its slot back; an answer that comes later finds nobody and is
dropped (`resolve` returns False).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any, Generic, TypeVar

import trio

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class Slot(Generic[V]):
    """One awaited answer; use it as `with pending.expect(key) as slot`."""

    __slots__ = ("_error", "_event", "_pending", "_value", "key")

    def __init__(self, pending: Pending, key: Any) -> None:
        self._pending = pending
        self.key = key
        self._event = trio.Event()
        self._value: Any = None
        self._error: Callable[[], BaseException] | None = None

    def __enter__(self) -> Slot[V]:
        pending = self._pending
        if pending._failed is not None:
            raise pending._failed()
        if self.key in pending._slots:
            raise ValueError(f"{self.key!r} is already awaited")
        pending._slots[self.key] = self
        return self

    def __exit__(self, *exc_info: object) -> None:
        slots = self._pending._slots
        if slots.get(self.key) is self:
            del slots[self.key]

    async def wait(self) -> V:
        """The answer, once it came; the connection's error if it ended first."""
        await self._event.wait()
        if self._error is not None:
            raise self._error()
        return self._value


class Pending(Generic[K, V]):
    """The open slots of one connection, by request id (or any key: a pid)."""

    def __init__(self) -> None:
        self._slots: dict[Any, Slot[V]] = {}
        self._failed: Callable[[], BaseException] | None = None

    def expect(self, key: K) -> Slot[V]:
        """A slot for `key`'s answer, registered when its `with` block is entered.

        Entering raises the connection's error if it has already ended, and
        ValueError if a task already waits on `key` (one answer, one waiter).
        """
        return Slot(self, key)

    def resolve(self, key: K, value: V) -> bool:
        """Wake the task waiting on `key` with `value`; False if none waits."""
        slot = self._slots.pop(key, None)
        if slot is None:
            return False
        slot._value = value
        slot._event.set()
        return True

    def fail_all(self, error: Callable[[], BaseException]) -> None:
        """The connection ended: wake every waiter, now and later, with `error()`.

        `error` makes a new exception for each waiter (one instance raised in
        several tasks would collect all their tracebacks). The first call wins.
        """
        if self._failed is None:
            self._failed = error
        slots, self._slots = self._slots, {}
        for slot in slots.values():
            slot._error = self._failed
            slot._event.set()

    @property
    def failed(self) -> bool:
        """Whether the connection has ended (every `expect` now raises)."""
        return self._failed is not None

    def __len__(self) -> int:
        return len(self._slots)

    def __contains__(self, key: object) -> bool:
        return key in self._slots
