"""The outbox: a durable, bounded queue of messages for JetStream, in outpost's store.

It is one store stream (`uplink/outbox`), written through the same group commit as
agent state, so `await outbox.put(...)` returns only once the message is fsynced, like
`ctx.state.set`. A second stream (`uplink/cursor`) holds a small record saying how far
the outbox is done (`next_seq`: everything below it was acknowledged by JetStream or
dropped), how far each source (the event log, agents' state streams) was copied, and
every drop counted, so counts and progress survive a crash.

Bounds: `max_bytes` of unsent messages, `max_age_s`. When full, `drop_oldest` evicts the
oldest unsent messages to make room (a sixteenth of max_bytes at a time, so a full
outbox does not prune on every put) and `refuse_new` makes `put` raise OutboxFullError,
while copies offered by the sources (events, state changes, metrics) are dropped and
counted instead: the uplink never refuses or delays an agent's state write.

Record: [ts, kind, tail, agent, payload, origin]: `tail` is the subject after
`<prefix>.<host>.up.`; `payload` the bytes sent; `origin` [stream, seq] for a copy
(its message id names the source record, so a re-copy after a crash is the same id),
None for a message put here (its id names the outbox seq).
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import trio

from runtime.store import Store, StoreError
from runtime.uplink.errors import MessageError, OutboxFullError

log = logging.getLogger("outpost.uplink")

OUTBOX = "uplink/outbox"
CURSOR = "uplink/cursor"
KINDS = ("publish", "event", "state", "metrics")
OVERHEAD = 48  # bytes counted per message beyond payload and subject (headers, keys)
_PAGE = 512
_PRUNE_EVERY = 1024  # sent records pruned once this many piled up (or when idle)
_CURSOR_PRUNE_EVERY = 256
NEW_EPOCH = "uplink.new-epoch"  # in the data dir: the store was restored, draw a new epoch


def mark_restored(data_dir: Any) -> None:
    """Called after a store was restored from a backup (offline): the outbox draws a new
    message-id epoch when it opens, since the restored seqs repeat ones already sent."""
    from pathlib import Path

    (Path(data_dir) / NEW_EPOCH).write_text("the store was restored; see runtime/uplink\n")


@dataclass(frozen=True)
class Item:
    """One message to put: subject tail, payload bytes, kind, agent, origin."""

    tail: str
    payload: bytes
    kind: str = "publish"
    agent: str | None = None
    origin: tuple[str, int] | None = None

    @property
    def size(self) -> int:
        return len(self.payload) + len(self.tail) + OVERHEAD


def record_size(record: Sequence[Any]) -> int:
    """The bytes a stored record counts against max_bytes (as Item.size)."""
    return len(record[4]) + len(record[2]) + OVERHEAD


def encode(data: Any) -> bytes:
    """What goes on the wire: bytes as given, anything else as compact JSON."""
    if isinstance(data, bytes | bytearray | memoryview):
        return bytes(data)
    try:
        return json.dumps(data, separators=(",", ":"), ensure_ascii=False,
                          allow_nan=False).encode()
    except (TypeError, ValueError) as exc:
        raise MessageError(f"message data must be bytes or JSON-able plain data: {exc}") \
            from None


class Outbox:
    """The durable queue. `await open()` once (recovery), run `run()` in a nursery.

    Trio side only, except the read-only attributes the publisher thread looks at
    (`next_seq`, `store`) and `report_acked`, which any thread may call.
    """

    def __init__(self, store: Store, *, max_bytes: int, max_age_s: float = 0.0,
                 when_full: str = "drop_oldest", max_message_bytes: int = 256 << 10,
                 clock: Callable[[], float] = time.time) -> None:
        if when_full not in ("drop_oldest", "refuse_new"):
            raise ValueError(f"when_full must be drop_oldest or refuse_new, not {when_full!r}")
        self.store = store
        self.max_bytes = max_bytes
        self.max_age_s = max_age_s
        self.when_full = when_full
        self.max_message_bytes = max_message_bytes
        self.clock = clock
        self.next_seq = 1  # first seq not yet done (acked or dropped)
        self.epoch = ""  # the message-id epoch (see subjects); drawn when created
        self.backlog_bytes = 0  # unsent: seqs >= next_seq
        self.backlog_msgs = 0
        self.sources: dict[str, int] = {}  # source stream -> last seq copied
        self.dropped: collections.Counter[str] = collections.Counter()  # full, by kind
        self.expired: collections.Counter[str] = collections.Counter()  # max_age, by kind
        self.rejected = 0  # refused by the server for good (e.g. over its max_payload)
        self.refused = 0  # puts that raised OutboxFullError
        self.acked = 0  # messages acknowledged by JetStream (this run)
        self.put_count = 0
        self.on_new: Callable[[], None] | None = None  # the publisher's wake-up
        self.on_drop: Callable[[str, int], None] | None = None  # (kind, n) for the room
        self._reserved = 0  # bytes of puts admitted but not yet durable
        self._room_lock = trio.Lock()
        self._dirty = trio.Event()
        self._acks: list[tuple[int, list[int]]] = []
        self._acks_lock = threading.Lock()
        self._token: trio.lowlevel.TrioToken | None = None
        self._acks_scheduled = False
        self._pruned_upto = 0
        self._cursor_writes = 0

    # -- recovery -------------------------------------------------------------------

    async def open(self, sources: Iterable[str] = ()) -> set[str]:
        """Recover the cursor and the backlog; returns the sources seen for the first
        time, which start at their stream's end (switching one on sends no history)."""
        self._token = trio.lowlevel.current_trio_token()
        last = self.store.read(CURSOR, max(1, self.store.last_seq(CURSOR)), limit=1)
        if last and not isinstance(last[0][1], dict):
            log.error("uplink cursor record %d is not a map (%r): starting from the outbox's "
                      "oldest record; counts restart at 0", last[0][0], last[0][1])
            last = []
        if last:
            rec = last[0][1]
            self.next_seq = int(rec.get("next", 1))
            self.sources = {str(k): int(v) for k, v in rec.get("sources", {}).items()}
            self.dropped.update(rec.get("dropped", {}))
            self.expired.update(rec.get("expired", {}))
            self.rejected = int(rec.get("rejected", 0))
            self.refused = int(rec.get("refused", 0))
            self.epoch = str(rec.get("epoch", ""))
        marker = self.store.path / NEW_EPOCH
        restored = marker.exists()
        if restored or not self.epoch:
            self.epoch = secrets.token_hex(4)
            log.info("uplink message-id epoch %s (%s)", self.epoch,
                     "store restored" if restored else "new outbox")
        self.next_seq = max(self.next_seq, self.store.first_seq(OUTBOX) or 1)
        fresh = set()
        for stream in sources:
            if stream not in self.sources:
                self.sources[stream] = self.store.last_seq(stream)
                fresh.add(stream)

        def scan() -> tuple[int, int]:
            total = count = 0
            seq = self.next_seq
            while page := self.store.read(OUTBOX, seq, limit=4096):
                total += sum(record_size(r) for _, r in page)
                count += len(page)
                seq = page[-1][0] + 1
            return total, count

        self.backlog_bytes, self.backlog_msgs = await trio.to_thread.run_sync(scan)
        if self.next_seq > 1:
            await self._prune_sent(self.next_seq - 1)
        if fresh or not last or restored:
            await self._write_cursor()
        if restored:
            marker.unlink()
        log.info("outbox open: %d unsent message(s), %d bytes, next seq %d",
                 self.backlog_msgs, self.backlog_bytes, self.next_seq)
        return fresh

    # -- writes ---------------------------------------------------------------------

    def item(self, tail: str, data: Any, *, kind: str = "publish", agent: str | None = None,
             origin: tuple[str, int] | None = None) -> Item:
        """Encode and check one message (MessageError if it cannot be sent)."""
        if kind not in KINDS:
            raise MessageError(f"kind must be one of {', '.join(KINDS)}, not {kind!r}")
        item = Item(tail, encode(data), kind, agent, origin)
        if len(item.payload) > self.max_message_bytes:
            raise MessageError(f"message of {len(item.payload)} bytes is over [uplink.outbox] "
                               f"max_message_bytes ({self.max_message_bytes})")
        return item

    async def put(self, tail: str, data: Any, *, kind: str = "publish",
                  agent: str | None = None) -> int:
        """Store one message durably; returns its outbox seq once fsynced.

        Full: with refuse_new raises OutboxFullError (nothing stored); with
        drop_oldest evicts the oldest unsent messages first (counted).
        """
        item = self.item(tail, data, kind=kind, agent=agent)
        if item.size > self.max_bytes:
            raise MessageError(f"message of {item.size} bytes is larger than the whole outbox "
                               f"([uplink.outbox] max_bytes = {self.max_bytes})")
        if not await self._admit(item.size):
            self.refused += 1
            self._dirty.set()
            raise OutboxFullError(
                f"the uplink outbox is full ({self.backlog_bytes} of {self.max_bytes} bytes "
                "unsent) and [uplink.outbox] when_full = \"refuse_new\": the message was not "
                "stored; retry later or raise max_bytes")
        seqs = await self._append([item])
        return seqs[0]

    async def offer(self, items: Sequence[Item]) -> int:
        """Store copies from a source; what does not fit under refuse_new is dropped and
        counted, never raised. Returns how many were stored (durably)."""
        kept: list[Item] = []
        for item in items:
            if await self._admit(item.size):
                kept.append(item)
            else:
                self._count_drop(self.dropped, item.kind, 1)
        if kept:
            await self._append(kept)
        return len(kept)

    async def _admit(self, size: int) -> bool:
        """Reserve room for `size` bytes (evicting under drop_oldest); False if refused."""
        if self.backlog_bytes + self._reserved + size <= self.max_bytes:
            self._reserved += size
            return True
        if self.when_full == "refuse_new" or size > self.max_bytes:
            return False
        async with self._room_lock:
            over = self.backlog_bytes + self._reserved + size - self.max_bytes
            if over > 0:
                await self._evict(over + self.max_bytes // 16)
        self._reserved += size
        return True

    async def _append(self, items: list[Item]) -> list[int]:
        now = self.clock()
        records = [[now, i.kind, i.tail, i.agent, i.payload,
                    list(i.origin) if i.origin else None] for i in items]
        size = sum(i.size for i in items)

        def durable(seqs: list[int]) -> None:
            self._reserved -= size
            self.backlog_bytes += size
            self.backlog_msgs += len(seqs)
            self.put_count += len(seqs)
            if self.on_new is not None:
                self.on_new()

        try:
            return await self.store.append_many(OUTBOX, records, durable)
        except BaseException:
            self._reserved -= size
            raise

    # -- drops ----------------------------------------------------------------------

    async def _evict(self, need: int) -> None:
        """Drop the oldest unsent messages until `need` bytes are free (or none left)."""
        freed, seq, upto = 0, self.next_seq, 0
        kinds: collections.Counter[str] = collections.Counter()
        while freed < need and (page := self.store.read(OUTBOX, seq, limit=_PAGE)):
            for s, rec in page:
                freed += record_size(rec)
                kinds[rec[1]] += 1
                upto = s
                if freed >= need:
                    break
            seq = page[-1][0] + 1
        if upto:
            await self._drop(upto, freed, kinds, self.dropped, "outbox full")

    async def expire(self) -> int:
        """Drop unsent messages older than max_age_s; returns how many."""
        if self.max_age_s <= 0:
            return 0
        limit = self.clock() - self.max_age_s
        freed, seq, upto = 0, self.next_seq, 0
        kinds: collections.Counter[str] = collections.Counter()
        while page := self.store.read(OUTBOX, seq, limit=_PAGE):
            for s, rec in page:
                if rec[0] >= limit:
                    break
                freed += record_size(rec)
                kinds[rec[1]] += 1
                upto = s
            else:
                seq = page[-1][0] + 1
                continue
            break
        if upto:
            async with self._room_lock:
                await self._drop(upto, freed, kinds, self.expired, "older than max_age_s")
        return sum(kinds.values())

    async def _drop(self, upto: int, freed: int, kinds: collections.Counter[str],
                    counter: collections.Counter[str], why: str) -> None:
        if upto < self.next_seq:
            return
        self.next_seq = upto + 1  # the publisher skips them from now on
        self.backlog_bytes -= freed
        self.backlog_msgs -= sum(kinds.values())
        for kind, n in kinds.items():
            self._count_drop(counter, kind, n)
        log.warning("uplink outbox: dropped %d unsent message(s) (%s): %s",
                    sum(kinds.values()), why, dict(kinds))
        await self._write_cursor()  # counts and progress durable before the records go
        await self._prune_sent(upto)

    def _count_drop(self, counter: collections.Counter[str], kind: str, n: int) -> None:
        counter[kind] += n
        self._dirty.set()
        if self.on_drop is not None:
            self.on_drop(kind, n)

    # -- acks from the publisher ------------------------------------------------------

    def report_acked(self, first: int, sizes: list[int]) -> None:
        """From the publisher's thread: seqs first..first+len(sizes)-1 are acknowledged
        by JetStream (or rejected for good); `sizes` are their record sizes."""
        with self._acks_lock:
            self._acks.append((first, sizes))
            if self._acks_scheduled or self._token is None:
                return
            self._acks_scheduled = True
        with contextlib.suppress(trio.RunFinishedError):  # the runtime is stopping
            self._token.run_sync_soon(self._take_acks)

    def _take_acks(self) -> None:
        with self._acks_lock:
            acks, self._acks = self._acks, []
            self._acks_scheduled = False
        for first, sizes in acks:
            skip = max(0, self.next_seq - first)  # dropped meanwhile: already uncounted
            if skip >= len(sizes):
                continue
            self.backlog_bytes -= sum(sizes[skip:])
            self.backlog_msgs -= len(sizes) - skip
            self.acked += len(sizes) - skip
            self.next_seq = first + len(sizes)
        self._dirty.set()

    def note_rejected(self, n: int = 1) -> None:
        """From the publisher's thread (under the GIL): messages the server refused for good."""
        self.rejected += n

    # -- the cursor -----------------------------------------------------------------

    def cursor_record(self) -> dict[str, Any]:
        return {"next": self.next_seq, "epoch": self.epoch, "sources": dict(self.sources),
                "dropped": dict(self.dropped), "expired": dict(self.expired),
                "rejected": self.rejected, "refused": self.refused, "ts": self.clock()}

    async def _write_cursor(self) -> None:
        seq = await self.store.append(CURSOR, self.cursor_record())
        self._cursor_writes += 1
        if self._cursor_writes % _CURSOR_PRUNE_EVERY == 0:
            await self.store.prune(CURSOR, seq - 1, uncovered=True)

    async def _prune_sent(self, upto: int) -> None:
        if upto > self._pruned_upto:
            await self.store.prune(OUTBOX, upto, uncovered=True)
            self._pruned_upto = upto

    def mark_source(self, stream: str, seq: int) -> None:
        """A source copied `stream` up to `seq` (written with the next cursor record)."""
        if seq > self.sources.get(stream, 0):
            self.sources[stream] = seq
            self._dirty.set()

    async def run(self, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Until cancelled: write the cursor when something changed (acks coalesce while
        a write is in flight), prune what was sent, expire old messages."""
        task_status.started()
        every = min(5.0, self.max_age_s / 4) if self.max_age_s > 0 else 5.0
        next_expiry = trio.current_time() + every
        try:
            while True:
                with trio.move_on_at(next_expiry):
                    await self._dirty.wait()
                self._dirty = trio.Event()
                try:
                    if trio.current_time() >= next_expiry:
                        next_expiry = trio.current_time() + every
                        await self.expire()
                    await self._write_cursor()
                    done = self.next_seq - 1
                    if done - self._pruned_upto >= _PRUNE_EVERY or \
                            (self.backlog_msgs == 0 and done > self._pruned_upto):
                        await self._prune_sent(done)
                except StoreError as exc:
                    log.error("uplink cursor not written: %s (retried on the next change)", exc)
        finally:
            with trio.CancelScope(shield=True):
                try:
                    await self._write_cursor()
                except StoreError as exc:
                    log.error("uplink cursor not written at stop: %s", exc)

    # -- reading ----------------------------------------------------------------------

    def oldest_unsent_ts(self) -> float | None:
        page = self.store.read(OUTBOX, self.next_seq, limit=1)
        return page[0][1][0] if page else None

    def stats(self) -> dict[str, Any]:
        oldest = self.oldest_unsent_ts()
        return {
            "backlog_msgs": self.backlog_msgs, "backlog_bytes": self.backlog_bytes,
            "max_bytes": self.max_bytes, "when_full": self.when_full,
            "lag_s": max(0.0, self.clock() - oldest) if oldest is not None else 0.0,
            "next_seq": self.next_seq, "last_seq": self.store.last_seq(OUTBOX),
            "put": self.put_count, "acked": self.acked, "dropped": dict(self.dropped),
            "expired": dict(self.expired), "rejected": self.rejected, "refused": self.refused,
        }
