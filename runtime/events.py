"""The event log: every lifecycle change, durable, queryable and followable.

`emit()` is synchronous and never blocks the caller (a supervisor reacting to
a crash must not wait for a disk): events are queued and the `run()` task
appends them to the store's `events` stream in batches. Followers get every
event after it is durable, through bounded channels; a follower too slow to
keep up loses its channel rather than slowing the runtime.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Iterator
from typing import Any

import trio

from runtime.store import Store, StoreError

log = logging.getLogger("outpost.events")

STREAM = "events"
_FOLLOW_BUFFER = 1000
_QUEUE_MAX = 100_000
_QUERY_PAGE = 4096


def event_dict(seq: int, record: list) -> dict[str, Any]:
    """The plain-data form of a stored event record [ts, type, agent, fields]."""
    ts, type_, agent, fields = record
    return {"seq": seq, "ts": ts, "type": type_, "agent": agent, **fields}


class EventLog:
    """Durable lifecycle events over one store stream."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._pending: list[list] = []
        self._wakeup = trio.Event()
        self._followers: set[trio.MemorySendChannel] = set()
        self.dropped = 0  # events lost because the queue overflowed (disk stuck)
        self.suspended: str | None = None  # why events are refused (disk critical)
        self.refused = 0  # events refused while suspended

    def suspend(self, reason: str) -> None:
        """Refuse new events (they are non-essential writes) until `resume()`."""
        if self.suspended is None:
            log.error("event log suspended: %s", reason)
        self.suspended = reason

    def resume(self) -> None:
        if self.suspended is not None:
            log.warning("event log resumed (%d event(s) were refused meanwhile)", self.refused)
        self.suspended = None

    def emit(self, type: str, agent: str | None = None, **fields: Any) -> None:
        """Record an event (queued; durable shortly after). Never blocks, never raises."""
        if self.suspended is not None:
            self.refused += 1
            return
        if len(self._pending) >= _QUEUE_MAX:
            self.dropped += 1
            return
        self._pending.append([time.time(), type, agent, fields])
        self._wakeup.set()
        log.debug("event %s %s %s", type, agent or "-", fields)

    async def run(self) -> None:
        """Append queued events to the store until cancelled; flush what is left on the way out."""
        try:
            while True:
                await self._wakeup.wait()
                self._wakeup = trio.Event()
                await self._flush()
        finally:
            with trio.CancelScope(shield=True):
                await self._flush()
            for channel in self._followers:
                channel.close()

    async def _flush(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            try:
                # Shielded: a batch taken off the queue must reach the store or be reported.
                with trio.CancelScope(shield=True):
                    seqs = await self.store.append_many(STREAM, batch)
            except StoreError as exc:
                log.error("could not store %d event(s): %s", len(batch), exc)
                return
            for seq, record in zip(seqs, batch, strict=True):
                self._publish(event_dict(seq, record))

    def _publish(self, event: dict[str, Any]) -> None:
        for channel in list(self._followers):
            try:
                channel.send_nowait(event)
            except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
                self._followers.discard(channel)
                channel.close()

    def follow(self) -> trio.MemoryReceiveChannel:
        """A channel of every event stored from now on (closed if the reader falls behind)."""
        send, receive = trio.open_memory_channel(_FOLLOW_BUFFER)
        self._followers.add(send)
        return receive

    def query(self, since: float | None = None, until: float | None = None,
              agent: str | None = None, type: str | None = None,
              limit: int = 100) -> list[dict[str, Any]]:
        """Stored events matching every given filter, newest `limit` of them, oldest first.

        Reads the stream a page at a time and keeps only the newest `limit` matches, so
        memory stays bounded however long the log is. Synchronous and as long as the
        log: call it from a worker thread inside the runtime.
        """
        if limit <= 0:
            return []
        lo = -math.inf if since is None else since
        hi = math.inf if until is None else until
        newest: deque[dict[str, Any]] = deque(maxlen=limit)
        for seq, record in self._stored():
            ts, type_, agent_, _ = record
            if lo <= ts <= hi and (agent is None or agent_ == agent) \
                    and (type is None or type_ == type):
                newest.append(event_dict(seq, record))
        return list(newest)

    def _stored(self) -> Iterator[tuple[int, list]]:
        seq = 1
        while page := self.store.read(STREAM, seq, limit=_QUERY_PAGE):
            yield from page
            seq = page[-1][0] + 1
