"""The NATS side of the uplink: one thread, its own asyncio loop, one connection at a time.

nats-py is asyncio; the runtime is trio. This thread owns every NATS object and the
trio side never waits on it: the publisher reads the outbox straight from the store
(LMDB reads work from any thread), acknowledgements go back through
`Outbox.report_acked` (one trio callback per batch), and commands and snapshots that
need the runtime are run in the uplink's trio nursery through `to_trio`, answered on
an asyncio future.

Why our own reconnect loop (nats-py's is off): a nats-py client that reconnects
flushes the publishes it buffered while the link was down, but the ones in its socket
buffer at the break are lost, so later messages would land before earlier ones. A
fresh client per connection sends nothing old; each connection resends from the
first unacknowledged seq, in order. The server keeps the first copy of each
`Nats-Msg-Id` inside the stream's duplicate window, so the stream keeps every message
once and in outbox order (two ordered senders, first copies kept, stay ordered).
Backoff between attempts doubles from `reconnect_initial_s` to `reconnect_max_s`,
with jitter (each wait is 50-100% of the step), and resets after a connection
that lasted.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import random
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import nats.errors
from nats.js.api import AckPolicy, ConsumerConfig, RetentionPolicy, StorageType
from nats.js.errors import BadRequestError, NotFoundError

from runtime.uplink import commands as cmds
from runtime.uplink import subjects as subj
from runtime.uplink.connect import connect, section_options
from runtime.uplink.errors import UplinkError
from runtime.uplink.outbox import OUTBOX, Outbox, record_size

log = logging.getLogger("outpost.uplink")

ToTrio = Callable[..., "asyncio.Future[Any]"]
_READ_PAGE = 256
_STABLE_S = 10.0  # a connection that lasted this long resets the backoff
_REJECTED = object()  # a message the server can never take (over its max_payload)


class PublishError(UplinkError):
    """JetStream refused or did not acknowledge a publish; the connection is restarted."""


class Link:
    """The thread. `start()`, then `stop()` (both blocking: call them from a worker thread).

    `to_trio(async_fn, *args)` (given by the room) runs a function in the runtime and
    returns an asyncio future of its result. `port` takes the commands (None: no
    commands); `host_snapshot()` (an async function run in trio) gives what the host
    puts in the fleet's hosts bucket.
    """

    def __init__(self, cfg: Any, outbox: Outbox, *, to_trio: ToTrio,
                 port: cmds.CommandPort | None = None,
                 host_snapshot: Callable[[], Awaitable[dict]] | None = None,
                 on_published: Callable[[int], None] | None = None,
                 on_error: Callable[[], None] | None = None) -> None:
        self.cfg = cfg
        self.host: str = cfg.host_id
        self.outbox = outbox
        self._to_trio = to_trio
        self._port = port
        self._host_snapshot = host_snapshot
        self._on_published = on_published
        self._on_error = on_error
        self._allow = frozenset(cfg.commands.allow)
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._wake: asyncio.Event | None = None
        self.waiting = False  # the publisher sleeps until on_new
        # stats (written in this thread, read anywhere)
        self.connected = False
        self.server: str | None = None
        self.connects = 0
        self.errors = 0
        self.last_error: str | None = None
        self.published = 0
        self.duplicates = 0  # publishes JetStream reported as already stored
        self.skipped_stored = 0  # unacked messages found stored at a reconnect
        self.commands = 0
        self.commands_refused = 0
        self.commands_ready = False  # this connection's command consumer is listening
        self.in_flight = 0

    # -- lifecycle (from any thread but the link's) ---------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._thread_main, name="outpost-uplink",
                                        daemon=True)
        self._thread.start()
        self._ready.wait()

    def stop(self, timeout: float = 10.0) -> None:
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None:
            with contextlib.suppress(RuntimeError):  # the loop already ended
                loop.call_soon_threadsafe(stop.set)
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.error("uplink thread did not stop within %.0f s", timeout)

    def notify(self) -> None:
        """New records in the outbox (called in the trio thread, per commit)."""
        if self.waiting:
            self.waiting = False
            loop, wake = self._loop, self._wake
            if loop is not None and wake is not None:
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(wake.set)

    def _thread_main(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException:  # never let the thread die silently
            log.exception("uplink thread crashed")
            self._ready.set()
            raise

    def _note_error(self, where: str, exc: BaseException) -> None:
        error = f"{where}: {type(exc).__name__}: {exc}"
        self.errors += 1
        # The same error again (a server down for hours) is logged once, then counted.
        log.log(logging.WARNING if error != self.last_error else logging.DEBUG, "uplink %s",
                error)
        self.last_error = error
        if self._on_error is not None:
            self._on_error()

    # -- the connection loop ---------------------------------------------------------

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._wake = asyncio.Event()
        self._ready.set()
        step = self.cfg.reconnect_initial_s
        options = section_options(self.cfg)
        while not self._stop.is_set():
            lost = asyncio.Event()

            async def on_lost(lost: asyncio.Event = lost) -> None:
                lost.set()

            started = time.monotonic()
            attempt = asyncio.create_task(connect(options, disconnected_cb=on_lost,
                                                  closed_cb=on_lost))
            stopping = asyncio.create_task(self._stop.wait())
            await asyncio.wait([attempt, stopping], return_when=asyncio.FIRST_COMPLETED)
            stopping.cancel()
            if not attempt.done():  # stopped while connecting
                attempt.cancel()
                with contextlib.suppress(BaseException):
                    await attempt
                break
            try:
                nc = attempt.result()
            except Exception as exc:
                self._note_error("connect", exc)
            else:
                self.connected, self.connects = True, self.connects + 1
                self.server = nc.connected_url.netloc if nc.connected_url else None
                log.info("uplink connected to %s", self.server)
                try:
                    await self._session(nc, lost)
                except Exception as exc:
                    self._note_error("session", exc)
                finally:
                    self.connected, self.in_flight, self.commands_ready = False, 0, False
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(nc.close(), 2.0)
                if time.monotonic() - started >= _STABLE_S:
                    step = self.cfg.reconnect_initial_s
            if self._stop.is_set():
                break
            wait = step * (0.5 + random.random() / 2)  # noqa: S311 - jitter, not crypto
            step = min(self.cfg.reconnect_max_s, step * 2)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), wait)

    async def _session(self, nc: Any, lost: asyncio.Event) -> None:
        js = nc.jetstream(timeout=self.cfg.ack_timeout_s,
                          publish_async_max_pending=self.cfg.window)
        await self._ensure_streams(js)
        # Only the publisher ends a session: commands or snapshots that fail (a consumer
        # the server refuses, a bucket we may not write) retry on their own.
        work = [asyncio.create_task(self._publish(js), name="publish")]
        if self._port is not None and self.cfg.commands.enabled:
            work.append(asyncio.create_task(self._retrying("commands", self._commands, nc, js)))
        if self._host_snapshot is not None:
            work.append(asyncio.create_task(self._retrying("snapshots", self._snapshots, js)))
        assert self._stop is not None
        ends = [asyncio.create_task(lost.wait()), asyncio.create_task(self._stop.wait())]
        try:
            done, _ = await asyncio.wait([*work, *ends], return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (*work, *ends):
                task.cancel()
            await asyncio.gather(*work, *ends, return_exceptions=True)
        for task in work:
            if task in done and not task.cancelled() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]

    async def _retrying(self, what: str, fn: Callable[..., Awaitable[None]], *args: Any) -> None:
        step = self.cfg.reconnect_initial_s
        while True:
            try:
                await fn(*args)
                return
            except Exception as exc:
                self._note_error(what, exc)
            await asyncio.sleep(step * (0.5 + random.random() / 2))  # noqa: S311
            step = min(self.cfg.reconnect_max_s, step * 2)

    async def _ensure_streams(self, js: Any) -> None:
        cfg = self.cfg
        wanted = [
            (cfg.stream, subj.up_filter(cfg.prefix), RetentionPolicy.LIMITS),
            # Commands: each host's consumer takes only its own subject, and what it
            # acked is gone (a work queue), so the stream stays small.
            (subj.cmd_stream(cfg.stream), subj.cmd_filter(cfg.prefix),
             RetentionPolicy.WORK_QUEUE),
        ]
        for name, subject, retention in wanted:
            if name == subj.cmd_stream(cfg.stream) and \
                    (self._port is None or not cfg.commands.enabled):
                continue
            try:
                info = await js.stream_info(name)
            except NotFoundError:
                if not cfg.create_streams:
                    raise UplinkError(f"JetStream has no stream {name!r} and [uplink] "
                                      "create_streams = false: create it on the server") \
                        from None
                with contextlib.suppress(BadRequestError):  # another host was first
                    await js.add_stream(name=name, subjects=[subject], retention=retention,
                                        storage=StorageType.FILE,
                                        duplicate_window=cfg.duplicate_window_s)
                continue
            window = info.config.duplicate_window or 0
            if name == cfg.stream and window < cfg.duplicate_window_s * 0.99:
                log.warning("stream %s deduplicates resends for %.0f s only ([uplink] "
                            "duplicate_window_s = %.0f): resends after a longer outage may "
                            "be stored twice (same Nats-Msg-Id)", name, window,
                            cfg.duplicate_window_s)

    # -- publishing ------------------------------------------------------------------

    async def _publish(self, js: Any) -> None:
        """Send the outbox in seq order with up to `window` acks in flight; report the
        acknowledged prefix. Ends (raising) on a refused publish or an ack timeout."""
        outbox, store, cfg = self.outbox, self.outbox.store, self.cfg
        host, prefix = self.host, cfg.prefix
        assert self._wake is not None
        wake = self._wake
        window: collections.deque[tuple[int, int, Any, float]] = collections.deque()
        pos = await self._skip_stored(js)
        limit = cfg.window
        timeout = cfg.ack_timeout_s
        loop = asyncio.get_running_loop()
        while True:
            floor = outbox.next_seq  # drops move it past messages we may hold
            while window and window[0][0] < floor:
                window.popleft()
            pos = max(pos, floor)
            self._sweep(window)
            self.in_flight = len(window)
            room = limit - len(window)
            if room > 0 and pos <= store.last_seq(OUTBOX):
                now = time.monotonic()
                for seq, rec in store.read(OUTBOX, pos, limit=min(room, _READ_PAGE)):
                    ts, kind, tail, agent, payload, _ = rec
                    headers = {subj.HEADER_ID: self._id_of(seq, rec), subj.HEADER_HOST: host,
                               subj.HEADER_KIND: kind, subj.HEADER_TIME: repr(ts)}
                    if agent:
                        headers[subj.HEADER_AGENT] = agent
                    try:
                        fut = await js.publish_async(subj.up_subject(prefix, host, tail),
                                                     payload, headers=headers)
                    except nats.errors.MaxPayloadError:
                        fut = loop.create_future()
                        fut.set_result(_REJECTED)
                    window.append((seq, record_size(rec), fut, now))
                    pos = seq + 1
                continue
            if window:
                head = window[0]
                left = head[3] + timeout - time.monotonic()
                if left <= 0:
                    raise PublishError(f"no JetStream ack for outbox seq {head[0]} within "
                                       f"{timeout:.0f} s")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(head[2]), left)
                continue
            self.waiting = True
            wake.clear()
            if pos <= store.last_seq(OUTBOX) or outbox.next_seq > pos:
                self.waiting = False
                continue
            await wake.wait()

    def _id_of(self, seq: int, rec: list) -> str:
        origin = rec[5]
        epoch = self.outbox.epoch
        return subj.msg_id(self.host, epoch, origin[0], origin[1]) if origin else \
            subj.msg_id(self.host, epoch, OUTBOX, seq)

    async def _skip_stored(self, js: Any) -> int:
        """Before resending: which of the unacknowledged messages does JetStream hold
        already (their acks were lost with the last connection)? Each subject's last
        stored message tells: a subject's messages are stored in outbox order, so if
        it is ours and not older than a message, that message is stored. Those are
        reported acked and not sent again, so a resend after an outage longer than
        the duplicate window stores nothing twice. Returns the seq to send from."""
        outbox, store = self.outbox, self.outbox.store
        pos = outbox.next_seq
        last_on: dict[str, tuple[str, int] | None] = {}
        first, sizes = pos, []
        for seq, rec in store.read(OUTBOX, pos, limit=self.cfg.window):
            subject = subj.up_subject(self.cfg.prefix, self.host, rec[2])
            if subject not in last_on:
                try:
                    found = await js.get_last_msg(self.cfg.stream, subject)
                    last_on[subject] = subj.split_id((found.headers or {}).get(subj.HEADER_ID))
                except NotFoundError:
                    last_on[subject] = None
            mine = subj.split_id(self._id_of(seq, rec))
            held = last_on[subject]
            if held is None or mine is None or held[0] != mine[0] or held[1] < mine[1]:
                break
            if not sizes:
                first = seq
            sizes.append(record_size(rec))
            pos = seq + 1
        if sizes:
            self.outbox.report_acked(first, sizes)
            self.skipped_stored += len(sizes)
            log.info("uplink: %d message(s) were stored before their acks were lost; not "
                     "sent again", len(sizes))
        return pos

    def _sweep(self, window: collections.deque) -> None:
        """Pop the acknowledged prefix of the window and report it, a contiguous run at
        a time; raise PublishError for a refused one."""
        first, sizes, popped, rejected = 0, [], 0, 0
        try:
            while window and window[0][2].done():
                seq, size, fut, _ = window[0]
                if fut.cancelled() or fut.exception() is not None:
                    exc = fut.exception() if not fut.cancelled() else "cancelled"
                    raise PublishError(f"JetStream refused outbox seq {seq}: {exc}")
                window.popleft()
                popped += 1
                ack = fut.result()
                if ack is _REJECTED:
                    rejected += 1
                elif getattr(ack, "duplicate", False):
                    self.duplicates += 1
                if sizes and seq != first + len(sizes):
                    self.outbox.report_acked(first, sizes)
                    sizes = []
                if not sizes:
                    first = seq
                sizes.append(size)
        finally:
            if sizes:
                self.outbox.report_acked(first, sizes)
            if rejected:
                self.outbox.note_rejected(rejected)
                log.error("uplink: %d message(s) over the server's max_payload were "
                          "dropped", rejected)
            if popped:
                self.published += popped - rejected
                if self._on_published is not None:
                    self._on_published(popped - rejected)

    # -- commands --------------------------------------------------------------------

    async def _commands(self, nc: Any, js: Any) -> None:
        self.commands_ready = False
        cfg = self.cfg
        subject = subj.cmd_subject(cfg.prefix, self.host)
        durable = subj.cmd_consumer(self.host)
        config = ConsumerConfig(durable_name=durable, ack_policy=AckPolicy.EXPLICIT,
                                ack_wait=cfg.commands.ack_wait_s,
                                max_deliver=cfg.commands.max_deliver, filter_subject=subject)
        psub = await js.pull_subscribe(subject, durable=durable,
                                       stream=subj.cmd_stream(cfg.stream), config=config)
        self.commands_ready = True
        while True:
            try:
                msgs = await psub.fetch(8, timeout=5)
            except nats.errors.TimeoutError:
                continue
            for msg in msgs:
                await self._command(nc, msg)

    async def _command(self, nc: Any, msg: Any) -> None:
        """Apply one command and answer it; ack only after the port returned (its effect
        is durable). Whatever the message holds, it is answered and acked."""
        headers = msg.headers or {}
        reply = headers.get(subj.HEADER_REPLY)
        try:
            seq = msg.metadata.sequence.stream
        except Exception:
            seq = 0
        request_id = headers.get(subj.HEADER_ID) or f"{subj.cmd_stream(self.cfg.stream)}/{seq}"
        try:
            command = cmds.parse(msg.data, self._allow)
            request_id = command.id or request_id
            caller = cmds.CommandCaller("uplink", command.sender)
            assert self._port is not None
            future = self._to_trio(self._port.call, command.method, command.params,
                                   request_id=request_id, caller=caller)
            keepalive = self.cfg.commands.ack_wait_s / 3
            while True:
                try:
                    result = await asyncio.wait_for(asyncio.shield(future), keepalive)
                    break
                except TimeoutError:
                    await msg.in_progress()  # a long command is not redelivered meanwhile
            body = cmds.answer(request_id, self.host, result)
        except cmds.CommandRefused as exc:
            self.commands_refused += 1
            body = cmds.answer(exc.request_id or request_id, self.host,
                               error=(exc.code, str(exc)))
        except Exception as exc:
            code = getattr(exc, "code", None)
            if not isinstance(code, str):
                code = "internal"
                log.error("uplink command %s failed", request_id, exc_info=exc)
            body = cmds.answer(request_id, self.host, error=(code, str(exc)))
        try:  # no reply subject named: the answer goes where anyone may listen
            await nc.publish(reply or subj.results_subject(self.cfg.prefix, self.host), body)
        except Exception as exc:
            self._note_error("command answer", exc)
        await msg.ack()
        self.commands += 1

    # -- the host's snapshot ---------------------------------------------------------

    async def _snapshots(self, js: Any) -> None:
        bucket = subj.hosts_bucket(self.cfg.stream)
        try:
            kv = await js.key_value(bucket)
        except Exception:
            if not self.cfg.create_streams:
                raise
            try:
                kv = await js.create_key_value(bucket=bucket, history=1,
                                               description="outpost hosts: latest snapshot")
            except BadRequestError:  # another host created it meanwhile
                kv = await js.key_value(bucket)
        assert self._stop is not None and self._host_snapshot is not None
        while True:
            snapshot = await self._to_trio(self._host_snapshot)
            await kv.put(self.host, json.dumps(snapshot, separators=(",", ":"),
                                               default=str).encode())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.cfg.send.snapshot_every_s)
            if self._stop.is_set():
                return

    def stats(self) -> dict[str, Any]:
        return {"connected": self.connected, "server": self.server, "connects": self.connects,
                "errors": self.errors, "last_error": self.last_error,
                "published": self.published, "duplicates": self.duplicates,
                "skipped_stored": self.skipped_stored,
                "in_flight": self.in_flight, "commands": self.commands,
                "commands_refused": self.commands_refused}
