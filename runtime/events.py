"""The event log: every lifecycle change, durable, queryable and followable.

`emit()` is synchronous and never blocks the caller (a supervisor reacting to
a crash must not wait for a disk): events are queued and the `run()` task
appends them to the store's `events` stream in batches. Followers get every
event after it is durable, through bounded channels; a follower too slow to
keep up loses its channel rather than slowing the runtime.

Index: each event is also recorded, in the same store transaction (so the two
never disagree, even after a crash), as an entry [seq, ts] in `events/type/<type>`
and, if it has one, `events/agent/<agent>`. A query by agent or type walks its
index stream backwards from the newest entry in its time window (found by binary
search: timestamps never decrease along the log) and reads only the events it
returns. Events stored without an index (by an older version, or written to the
stream directly) are found by scanning just their range. Pruning (`prune_events`)
removes index entries with their events; a query re-checks every event it reads,
so it never returns one that was pruned.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import trio

from runtime.store import Store, StoreError

log = logging.getLogger("outpost.events")

STREAM = "events"
TYPE_INDEX = "events/type/"
AGENT_INDEX = "events/agent/"
_FOLLOW_BUFFER = 1000
_QUEUE_MAX = 100_000
_QUERY_PAGE = 4096
_INDEX_PAGE = 256
_NAME_MAX = 120  # longer names (or odd ones) get a hashed index stream name


def event_dict(seq: int, record: list) -> dict[str, Any]:
    """The plain-data form of a stored event record [ts, type, agent, fields]."""
    ts, type_, agent, fields = record
    return {"seq": seq, "ts": ts, "type": type_, "agent": agent, **fields}


class EventLog:
    """Durable lifecycle events over one store stream."""

    def __init__(self, store: Store) -> None:
        self.store = store
        # Timestamps never decrease along the log (a clock stepped back repeats the last
        # one until it catches up), so time windows can be found by binary search.
        newest = store.read(STREAM, max(1, store.last_seq(STREAM)), limit=1)
        self._last_ts = float(newest[0][1][0]) if newest else 0.0
        self._indexed_from, self._indexed_upto = _index_bounds(store)
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
        ts = time.time()
        if ts < self._last_ts:
            ts = self._last_ts
        self._last_ts = ts
        self._pending.append([ts, type, agent, fields])
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
                    seqs = await self.store.append_many(STREAM, batch, index=index_entries)
            except StoreError as exc:
                log.error("could not store %d event(s): %s", len(batch), exc)
                return
            if seqs[0] == self._indexed_upto + 1:
                self._indexed_upto = seqs[-1]
            else:  # someone else appended to the stream: those are scanned, so are these
                log.warning("events %d..%d were stored without this log: queries scan from "
                            "there", self._indexed_upto + 1, seqs[0] - 1)
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

        Reads the index of `agent` or `type` (the shorter one if both are given) and
        only the events it returns; without either, the stream itself, from the end
        of the time window. Synchronous (LMDB reads): call it from a worker thread
        inside the runtime.
        """
        if limit <= 0:
            return []
        store = self.store
        first, last = store.first_seq(STREAM), store.last_seq(STREAM)
        if first == 0:
            return []
        lo_ts = -math.inf if since is None else since
        hi_ts = math.inf if until is None else until
        if lo_ts > hi_ts:
            return []
        # The window's seq range along the stream (timestamps do not decrease).
        lo = first if since is None else _bisect(store, STREAM, first, last, _ts, lo_ts)
        hi = last if until is None else _bisect(store, STREAM, first, last, _ts,
                                                hi_ts, after=True) - 1
        want = _matcher(lo_ts, hi_ts, agent, type)
        if agent is None and type is None:
            found = _newest(store, lo, hi, limit, want, page=min(limit, _QUERY_PAGE))
            return found[::-1]
        upto = min(self._indexed_upto, hi)
        frm = max(self._indexed_from, lo)
        found = _newest(store, max(lo, upto + 1), hi, limit, want)  # not indexed (yet)
        if len(found) < limit and frm <= upto:
            found += _from_index(store, _pick_index(store, agent, type), frm, upto,
                                 lo_ts, hi_ts, limit - len(found), want)
        if len(found) < limit:  # stored before the index existed
            found += _newest(store, lo, min(hi, frm - 1, upto), limit - len(found), want)
        return found[::-1]

    def scan_query(self, since: float | None = None, until: float | None = None,
                   agent: str | None = None, type: str | None = None,
                   limit: int = 100) -> list[dict[str, Any]]:
        """The same answer as `query`, found by reading the whole stream (no index):
        the reference the index is tested and benchmarked against."""
        if limit <= 0:
            return []
        want = _matcher(-math.inf if since is None else since,
                        math.inf if until is None else until, agent, type)
        newest: deque[dict[str, Any]] = deque(maxlen=limit)
        seq = 1
        while page := self.store.read(STREAM, seq, limit=_QUERY_PAGE):
            for s, record in page:
                event = want(s, record)
                if event is not None:
                    newest.append(event)
            seq = page[-1][0] + 1
        return list(newest)


# -- the index ----------------------------------------------------------------------------


@functools.lru_cache(maxsize=4096)
def _index_stream(prefix: str, name: Any) -> str:
    """The index stream of a type or agent name; odd or long names are hashed (a query
    re-checks each event it reads, so a collision could only cost a read)."""
    if isinstance(name, str) and "\0" not in name and len(name.encode("utf-8",
                                                                     "replace")) <= _NAME_MAX:
        return prefix + name
    return prefix + "#" + hashlib.blake2b(repr(name).encode(), digest_size=16).hexdigest()


def type_index(type_: str) -> str:
    """The index stream of the events of one type."""
    return _index_stream(TYPE_INDEX, type_)


def agent_index(agent: str) -> str:
    """The index stream of the events of one agent."""
    return _index_stream(AGENT_INDEX, agent)


def index_entries(seq: int, record: list) -> list[tuple[str, list]]:
    """What one event adds to the index (runs in the store's writer thread)."""
    ts, type_, agent, _ = record
    entry = [seq, ts]
    if agent is None:
        return [(type_index(type_), entry)]
    return [(type_index(type_), entry), (agent_index(agent), entry)]


def is_index_stream(stream: str) -> bool:
    return stream.startswith((TYPE_INDEX, AGENT_INDEX))


def _index_bounds(store: Store) -> tuple[int, int]:
    """(oldest, newest) event seq the index covers. Every indexed event has exactly one
    type entry, so the type streams' first and last entries bound what is indexed."""
    oldest, newest = None, 0
    for stream in store.streams():
        if not stream.startswith(TYPE_INDEX) or not store.first_seq(stream):
            continue
        head = store.read(stream, store.first_seq(stream), limit=1)
        tail = store.read(stream, store.last_seq(stream), limit=1)
        if head and tail:
            oldest = head[0][1][0] if oldest is None else min(oldest, head[0][1][0])
            newest = max(newest, tail[0][1][0])
    if oldest is None:  # nothing indexed yet: what is stored is scanned
        last = store.last_seq(STREAM)
        return last + 1, last
    return oldest, newest


def _ts(record: list) -> float:
    return record[0]


def _bisect(store: Store, stream: str, lo: int, hi: int, key: Callable[[Any], float],
            target: float, after: bool = False) -> int:
    """The first seq in [lo, hi] whose record's key is >= target (> target if `after`),
    or hi + 1: binary search over a stream whose keys do not decrease."""
    while lo <= hi:
        mid = (lo + hi) // 2
        got = store.read(stream, mid, limit=1)
        if not got or got[0][0] > hi:
            hi = mid - 1
            continue
        seq, record = got[0]
        value = key(record)
        if value > target or (value == target and not after):
            hi = mid - 1
        else:
            lo = seq + 1
    return lo


def _matcher(lo_ts: float, hi_ts: float, agent: str | None, type_: str | None) \
        -> Callable[[int, list], dict[str, Any] | None]:
    def want(seq: int, record: list) -> dict[str, Any] | None:
        ts, t, a, _ = record
        if lo_ts <= ts <= hi_ts and (agent is None or a == agent) and \
                (type_ is None or t == type_):
            return event_dict(seq, record)
        return None
    return want


def _newest(store: Store, lo: int, hi: int, limit: int,
            want: Callable[[int, list], dict[str, Any] | None],
            page: int = _QUERY_PAGE) -> list[dict[str, Any]]:
    """Matching events of the stream with seq in [lo, hi], newest first, at most `limit`."""
    out: list[dict[str, Any]] = []
    while hi >= lo and len(out) < limit:
        start = max(lo, hi - page + 1)
        for seq, record in reversed(store.read(STREAM, start, limit=hi - start + 1)):
            if seq <= hi and (event := want(seq, record)) is not None:
                out.append(event)
                if len(out) == limit:
                    break
        hi = start - 1
    return out


def _pick_index(store: Store, agent: str | None, type_: str | None) -> str:
    if agent is None:
        return type_index(type_)
    if type_ is None:
        return agent_index(agent)
    a, t = agent_index(agent), type_index(type_)

    def size(stream: str) -> int:
        first = store.first_seq(stream)
        return store.last_seq(stream) - first + 1 if first else 0
    return a if size(a) <= size(t) else t


def _from_index(store: Store, index: str, frm: int, upto: int, lo_ts: float, hi_ts: float,
                limit: int, want: Callable[[int, list], dict[str, Any] | None]) \
        -> list[dict[str, Any]]:
    """Matching events listed in `index` with seq in [frm, upto], newest first."""
    first, last = store.first_seq(index), store.last_seq(index)
    if first == 0:
        return []

    def event_seq(entry: list) -> float:
        return entry[0]

    def entry_ts(entry: list) -> float:
        return entry[1]
    # Bounds by binary search, skipped where the ends already qualify (the usual
    # "newest N of this agent": no window, everything indexed).
    head, tail = store.read(index, first, limit=1), store.read(index, last, limit=1)
    if not head or not tail:
        return []
    hi, lo = last, first
    if tail[0][1][0] > upto:
        hi = _bisect(store, index, first, last, event_seq, upto, after=True) - 1
    if tail[0][1][1] > hi_ts:
        hi = min(hi, _bisect(store, index, first, last, entry_ts, hi_ts, after=True) - 1)
    if head[0][1][0] < frm:
        lo = _bisect(store, index, first, last, event_seq, frm)
    if head[0][1][1] < lo_ts:
        lo = max(lo, _bisect(store, index, first, last, entry_ts, lo_ts))
    out: list[dict[str, Any]] = []
    while hi >= lo and len(out) < limit:
        start = max(lo, hi - _INDEX_PAGE + 1)
        for pos, (seq, _) in reversed(store.read(index, start, limit=hi - start + 1)):
            if pos > hi:
                continue
            got = store.read(STREAM, seq, limit=1)
            # Re-checked: a pruned event (or a hashed-name collision) is never returned.
            if got and got[0][0] == seq and (event := want(seq, got[0][1])) is not None:
                out.append(event)
                if len(out) == limit:
                    break
        hi = start - 1
    return out


async def prune_events(store: Store, upto_seq: int) -> int:
    """Delete events with seq <= `upto_seq` and their index entries; returns how many
    events. The events go first: an entry left by a crash in between points at nothing
    and is skipped by queries (and removed by the next prune)."""
    removed = await store.prune(STREAM, upto_seq, uncovered=True)
    for stream in store.streams():
        if not is_index_stream(stream):
            continue
        first, last = store.first_seq(stream), store.last_seq(stream)
        if first == 0:
            continue
        cut = _bisect(store, stream, first, last, lambda entry: entry[0], upto_seq,
                      after=True) - 1
        if cut >= first:
            await store.prune(stream, cut, uncovered=True)
    return removed
