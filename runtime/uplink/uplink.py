"""The uplink room: the outbox, what feeds it, and the link that empties it into JetStream.

Feeds (each a store stream read from a durable position, so nothing is missed
across a crash, and each copy's message id names its source record):
- agents' messages: `await uplink.publish(agent, suffix, data)` (ctx.publish) puts
  straight into the outbox and returns once durable;
- events: the `events` stream, types chosen in [uplink.send] events ("*" = all);
  when the outbox is full under refuse_new they are dropped and counted;
- state changes of the agents in [uplink.send] state_of: each op of their state
  stream, in order. They are never dropped at the source: under refuse_new the
  copier waits for room; if the WAL it needed was pruned meanwhile (a checkpoint),
  or a state message was evicted under drop_oldest, the agent's whole state is sent
  instead ("resync": true), so a consumer can always rebuild it;
- metrics: a snapshot of the shared-memory segment every metrics_every_s.

Ports (given by the composition root; nothing here imports the Runtime):
`events` (EventLog: `follow()` is used as a wake-up), `segment` (shm), `commands`
(a CommandPort: the control methods), `host_status()` (agents running/failed for the
fleet's hosts view), `state_snapshot(agent)` (an agent's (seq, state); default: loaded
from the store).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import outcome
import trio

from runtime import __version__
from runtime.agents.context import state_stream
from runtime.events import STREAM as EVENTS
from runtime.events import event_dict
from runtime.store import KeyValueState, Store, StoreError
from runtime.store.kvstate import DELETE, INCR, MERGE, SET
from runtime.uplink import subjects as subj
from runtime.uplink.commands import CommandPort
from runtime.uplink.errors import MessageError, UplinkError
from runtime.uplink.link import Link
from runtime.uplink.outbox import Outbox

log = logging.getLogger("outpost.uplink")

_OPS = {SET: "set", DELETE: "delete", INCR: "incr", MERGE: "merge"}
_PAGE = 512
_POLL_S = 0.5  # how often state streams are looked at (a dict lookup each)

StateSnapshot = Callable[[str], Awaitable[tuple[int, dict]]]


class Uplink:
    """The room. Build it, `await nursery.start(uplink.run)`, cancel to stop."""

    def __init__(self, cfg: Any, store: Store, *, events: Any = None, segment: Any = None,
                 commands: CommandPort | None = None,
                 host_status: Callable[[], dict] | None = None,
                 state_snapshot: StateSnapshot | None = None) -> None:
        self.cfg = cfg
        self.host: str = cfg.host_id
        self.store = store
        self.events = events
        self.segment = segment
        self.commands = commands
        self.host_status = host_status
        self.state_snapshot = state_snapshot or self._load_state
        ob = cfg.outbox
        self.outbox = Outbox(store, max_bytes=ob.max_bytes, max_age_s=ob.max_age_s,
                             when_full=ob.when_full, max_message_bytes=ob.max_message_bytes)
        self._nursery: trio.Nursery | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._resync: set[str] = set()
        self._started = time.time()
        self._rate = (time.monotonic(), 0, 0.0)  # (when, published then, msgs/s)
        self.link = Link(cfg, self.outbox, to_trio=self._to_trio, port=commands,
                         host_snapshot=self.snapshot, on_published=self._published,
                         on_error=self._link_error)
        self.outbox.on_new = self.link.notify
        self.outbox.on_drop = self._dropped
        self._metrics = _Metrics(segment) if segment is not None else None

    # -- what agents call -------------------------------------------------------------

    async def publish(self, agent: str, suffix: str, data: Any) -> int:
        """Put `data` (bytes, or JSON-able data) for `<prefix>.<host>.up.pub.<agent>.<suffix>`
        in the outbox; returns its seq once durable. OutboxFullError (refuse_new, full),
        MessageError (bad suffix, too large, not encodable)."""
        subj.check_suffix(suffix)
        return await self.outbox.put(f"pub.{subj.token(agent)}.{suffix}", data,
                                     kind="publish", agent=agent)

    # -- running ------------------------------------------------------------------------

    async def run(self, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Recover the outbox, start the link thread and the feeds; runs until cancelled.
        On the way out the link thread is stopped and the cursor written."""
        self._token = trio.lowlevel.current_trio_token()
        states = [state_stream(a) for a in self.cfg.send.state_of]
        fresh = await self.outbox.open(
            sources=[*([EVENTS] if self.cfg.send.events else []), *states])
        # A consumer's first view of a state is all of it.
        self._resync.update(a for a in self.cfg.send.state_of if state_stream(a) in fresh)
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                await nursery.start(self.outbox.run)
                await trio.to_thread.run_sync(self.link.start)
                if self.cfg.send.events and self.events is not None:
                    nursery.start_soon(self._feed, "events", self._copy_events)
                for agent in self.cfg.send.state_of:
                    nursery.start_soon(self._feed, f"state of {agent}", self._copy_state, agent)
                if self.cfg.send.metrics_every_s > 0 and self.segment is not None:
                    nursery.start_soon(self._feed, "metrics", self._send_metrics)
                if self._metrics is not None:
                    nursery.start_soon(self._refresh_metrics)
                task_status.started(self)
                try:
                    await trio.sleep_forever()
                finally:
                    # While the nursery still takes the link's calls (they end at once,
                    # cancelled), so the thread is never left waiting on trio.
                    with trio.CancelScope(shield=True):
                        await trio.to_thread.run_sync(self.link.stop)
        finally:
            self._nursery = None
            with trio.CancelScope(shield=True):  # if we failed before the nursery's end
                await trio.to_thread.run_sync(self.link.stop)

    def _to_trio(self, fn: Callable[..., Awaitable[Any]], *args: Any,
                 **kwargs: Any) -> asyncio.Future:
        """From the link's asyncio thread: run `fn` in this room's nursery; an asyncio
        future of its result."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future = loop.create_future()

        def settle(result: outcome.Outcome) -> None:
            if future.done():
                return
            if isinstance(result, outcome.Error):
                future.set_exception(result.error)
            else:
                future.set_result(result.value)

        async def runner() -> None:
            result: outcome.Outcome = outcome.Error(UplinkError("the runtime is stopping"))
            try:
                result = outcome.Value(await fn(*args, **kwargs))
            except Exception as exc:
                result = outcome.Error(exc)
            finally:
                with contextlib.suppress(RuntimeError):  # the link's loop already ended
                    loop.call_soon_threadsafe(settle, result)

        def spawn() -> None:
            try:
                if self._nursery is None:
                    raise RuntimeError
                self._nursery.start_soon(runner)
            except RuntimeError:  # no nursery, or it is closing
                settle(outcome.Error(UplinkError("the uplink is stopping")))

        try:
            assert self._token is not None
            self._token.run_sync_soon(spawn)
        except trio.RunFinishedError:
            future.set_exception(UplinkError("the runtime has stopped"))
        return future

    # -- feeds --------------------------------------------------------------------------

    async def _feed(self, what: str, fn: Callable[..., Awaitable[None]], *args: Any) -> None:
        """Run a feed until cancelled; a store error (a full disk) pauses it, never ends
        the room: it resumes from its durable position."""
        pause = 0.5
        while True:
            try:
                await fn(*args)
            except (StoreError, UplinkError) as exc:
                log.error("uplink feed %s paused %.1f s: %s", what, pause, exc)
                self._link_error()
            await trio.sleep(pause)
            pause = min(30.0, pause * 2)

    async def _copy_events(self) -> None:
        types = set(self.cfg.send.events)
        every = "*" in types
        ob = self.outbox
        while True:
            with self.events.follow() as wakeups:  # re-followed if we fell behind
                while True:
                    done = ob.sources.get(EVENTS, 0)
                    page = self.store.read(EVENTS, done + 1, limit=_PAGE)
                    if page:
                        items = []
                        for seq, rec in page:
                            if every or rec[1] in types:
                                try:
                                    items.append(ob.item(
                                        f"event.{subj.token(rec[1])}", event_dict(seq, rec),
                                        kind="event", agent=rec[2], origin=(EVENTS, seq)))
                                except MessageError as exc:
                                    ob.note_rejected()
                                    log.error("event %d not sent: %s", seq, exc)
                        await ob.offer(items)
                        ob.mark_source(EVENTS, page[-1][0])
                        with contextlib.suppress(trio.WouldBlock, trio.EndOfChannel):
                            while True:  # they are wake-ups only: the store has them
                                wakeups.receive_nowait()
                        continue
                    with trio.move_on_after(_POLL_S * 4):
                        try:
                            await wakeups.receive()
                        except (trio.EndOfChannel, trio.ClosedResourceError):
                            break

    async def _copy_state(self, agent: str) -> None:
        stream = state_stream(agent)
        tail = f"state.{subj.token(agent)}"
        ob = self.outbox
        while True:
            done = ob.sources.get(stream, 0)
            last = self.store.last_seq(stream)
            first = self.store.first_seq(stream)
            if agent in self._resync or (last > done and first > done + 1):
                seq, state = await self.state_snapshot(agent)
                item = ob.item(tail, {"agent": agent, "seq": seq, "state": state,
                                      "resync": True},
                               kind="state", agent=agent, origin=(stream + subj.RESYNC, seq))
                if await self._offer_state([item]):
                    self._resync.discard(agent)
                    ob.mark_source(stream, max(seq, done))
                continue
            page = self.store.read(stream, done + 1, limit=_PAGE) if last > done else []
            if not page:
                await trio.sleep(_POLL_S)
                continue
            items = [ob.item(tail, {"agent": agent, "seq": seq, "op": _OPS.get(op[0], op[0]),
                                    "key": op[1], "value": op[2]},
                             kind="state", agent=agent, origin=(stream, seq))
                     for seq, op in page]
            if await self._offer_state(items):
                ob.mark_source(stream, page[-1][0])

    async def _offer_state(self, items: list) -> bool:
        """State is never dropped at the source: under refuse_new wait for room."""
        ob = self.outbox
        size = sum(i.size for i in items)
        if ob.when_full == "refuse_new" and ob.backlog_bytes + size > ob.max_bytes:
            await trio.sleep(_POLL_S)
            return False
        await ob.offer(items)
        return True

    async def _load_state(self, agent: str) -> tuple[int, dict]:
        state = await KeyValueState.load(self.store, state_stream(agent))
        return state.applied_seq, state.to_dict()

    async def _send_metrics(self) -> None:
        from shm import snapshot

        while True:
            await trio.sleep(self.cfg.send.metrics_every_s)
            try:
                item = self.outbox.item("metrics", snapshot(self.segment), kind="metrics")
            except MessageError as exc:
                log.error("metrics snapshot not sent: %s", exc)
                continue
            await self.outbox.offer([item])

    def _dropped(self, kind: str, n: int) -> None:
        if kind == "state":  # a consumer missed an op: send whole states again
            self._resync.update(self.cfg.send.state_of)
        if self._metrics is not None:
            self._metrics.dropped.add(n)

    def _published(self, n: int) -> None:  # in the link's thread: atomics only
        if self._metrics is not None:
            self._metrics.published.add(n)

    def _link_error(self) -> None:
        if self._metrics is not None:
            self._metrics.errors.inc()

    # -- what it reports ------------------------------------------------------------------

    def publish_rate(self) -> float:
        """Acknowledged messages per second, over the last second or more."""
        when, then, rate = self._rate
        now = time.monotonic()
        if now - when >= 1.0:
            published = self.link.published
            rate = (published - then) / (now - when)
            self._rate = (now, published, rate)
        return rate

    def stats(self) -> dict[str, Any]:
        """Everything `outpost uplink` shows: backlog, lag, rate, drops, link, errors."""
        return {"host": self.host, "servers": list(self.cfg.servers),
                "stream": self.cfg.stream, "prefix": self.cfg.prefix,
                "rate_per_s": self.publish_rate(), **self.outbox.stats(),
                "link": self.link.stats()}

    async def snapshot(self) -> dict[str, Any]:
        """What this host puts in the fleet's hosts bucket."""
        out: dict[str, Any] = {"host": self.host, "ts": time.time(), "version": __version__,
                               "started": self._started}
        if self.host_status is not None:
            out.update(self.host_status())
        stats = self.outbox.stats()
        out["uplink"] = {k: stats[k] for k in ("backlog_msgs", "backlog_bytes", "lag_s",
                                                "dropped", "expired", "refused")}
        return out

    async def _refresh_metrics(self) -> None:
        while True:
            self._metrics.update(self)
            await trio.sleep(1.0)


class _Metrics:
    """The uplink's slots in the shared-memory segment: outpost:uplink_*."""

    def __init__(self, segment: Any) -> None:
        from shm import Counter, Gauge

        def counter(name: str) -> Any:
            return Counter(segment, f"outpost:uplink_{name}")

        def gauge(name: str) -> Any:
            return Gauge(segment, f"outpost:uplink_{name}")

        self.published = counter("published")
        self.dropped = counter("dropped")
        self.errors = counter("errors")
        self.backlog_bytes = gauge("backlog_bytes")
        self.backlog_msgs = gauge("backlog_msgs")
        self.lag_s = gauge("lag_seconds")
        self.rate = gauge("rate_per_s")
        self.connected = gauge("connected")

    def update(self, uplink: Uplink) -> None:
        stats = uplink.outbox.stats()
        self.backlog_bytes.set(stats["backlog_bytes"])
        self.backlog_msgs.set(stats["backlog_msgs"])
        self.lag_s.set(stats["lag_s"])
        self.rate.set(uplink.publish_rate())
        self.connected.set(1.0 if uplink.link.connected else 0.0)
