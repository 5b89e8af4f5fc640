"""A process agent's channel, the runtime's side: its requests over the socketpair.

The channel's protocol is the sans-IO `runtime.agents.wire.Connection` (RUNTIME
role): this module only moves bytes and acts on its typed events, the agent's state
ops, sends, receives, acks, `ready` and its last words (its exception). State ops are
applied one at a time in the order they were sent and acknowledged once durable;
mailbox calls run side by side.

Back-pressure: at most STATE_OPS_QUEUED state ops wait for the store, and at
most CALLS_IN_FLIGHT mailbox calls run at once. Beyond that this side stops
reading the socket until one finishes: the kernel's socket buffers fill and
the agent's own sends simply wait, so an agent flooding writes is slowed to the
store's pace; nothing here grows without bound and nothing is dropped.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import signal
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from runtime.agents import state_stream, wire
from runtime.supervisor.metrics import Metrics
from runtime.supervisor.policy import exc_summary
from runtime.supervisor.tree import Child
from runtime.wire.errors import ProtocolError
from runtime.wire.framing import CLOSED, NEED_DATA

log = logging.getLogger("outpost.supervisor")

STATE_OPS_QUEUED = 64  # state ops read but not yet applied (each frame <= MAX_FRAME)
CALLS_IN_FLIGHT = 64  # sends, receives and acks being served at once


class ChannelServer:
    """Serves process agents' channels against the state book and the mailboxes."""

    def __init__(self, book: Any, mailboxes: Any, metrics: Metrics, emit: Callable[..., None],
                 mark_ready: Callable[[Child, str], None]) -> None:
        self.book = book
        self.mailboxes = mailboxes
        self._metrics = metrics
        self._emit = emit
        self._mark_ready = mark_ready

    async def serve(self, child: Child, sock: socket.socket, conn: wire.Connection,
                    reported: dict, done: trio.Event, hello_rest: bytes = b"") -> None:
        """A process agent's requests: state ops (in order), sends, receives, acks, ready.

        `conn` has sent the hello already (`hello_rest` is what of it did not fit in the
        socket buffer before the fork). `reported["exception"]` receives the agent's
        last words; `done` is set when the channel is finished with. A request the
        protocol does not allow kills the agent.
        """
        name = child.name
        stream = trio.SocketStream(trio.socket.from_stdlib_socket(sock))
        lock = trio.Lock()
        try:
            state = await self.book.open(state_stream(name))
            writes = self._metrics.counter(f"{name}:state_writes")
            received = self._metrics.counter(f"{name}:messages_in")
            inbox = self.mailboxes.inbox(name) if self.mailboxes is not None else None
            if inbox is not None and received is not None:
                inbox.on_receive = received.inc

            async def reply(req: int, ok: bool, value: Any) -> None:
                try:
                    data = conn.send(wire.Reply(req, ok, value))
                except ProtocolError as exc:  # e.g. a value too large to send back
                    data = conn.send(wire.Reply(req, False, str(exc)))
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    async with lock:
                        await stream.send_all(data)

            if hello_rest:  # what of the hello did not fit in the socket buffer
                await stream.send_all(hello_rest)
            ops_send, ops_recv = trio.open_memory_channel(STATE_OPS_QUEUED)
            calls = trio.Semaphore(CALLS_IN_FLIGHT)

            async def state_worker() -> None:
                methods = {"set": state.set, "del": state.delete, "incr": state.incr,
                           "merge": state.merge}
                async for op in ops_recv:
                    try:
                        method = methods[op.op]
                        await (method(op.key) if op.op == "del" else method(op.key, op.arg))
                        if writes is not None:
                            writes.inc()
                        await reply(op.req, True, None)
                    except Exception as exc:
                        await reply(op.req, False, exc_summary(exc))

            async def call(req: int, fn: Callable[[], Awaitable[Any]]) -> None:
                try:
                    await reply(req, True, await fn())
                except Exception as exc:
                    await reply(req, False, exc_summary(exc))
                finally:
                    calls.release()

            async def receive() -> list:
                msg = await inbox.receive()
                return [msg.seq, msg.sender, msg.body, msg.key]

            async with trio.open_nursery() as nursery:
                nursery.start_soon(state_worker)
                while True:
                    event = conn.next_event()
                    if event is NEED_DATA:
                        data = await stream.receive_some(65536)
                        if not data:
                            break
                        conn.receive_data(data)
                        continue
                    if event is CLOSED:
                        break
                    kind = type(event)
                    if kind is wire.StateOp:
                        await ops_send.send(event)  # waits while the store is behind
                    elif kind is wire.Ready:
                        self._mark_ready(child, "ctx.ready()")
                    elif kind is wire.ExitReport:
                        reported["exception"] = event.summary
                    elif kind is wire.Send and self.mailboxes is not None:
                        await calls.acquire()
                        nursery.start_soon(call, event.req, functools.partial(
                            self.mailboxes.send, event.to, event.msg, key=event.key,
                            sender=name))
                    elif kind is wire.Recv and inbox is not None:
                        await calls.acquire()
                        nursery.start_soon(call, event.req, receive)
                    elif kind is wire.Ack and inbox is not None:
                        await calls.acquire()
                        nursery.start_soon(call, event.req, functools.partial(inbox.ack,
                                                                              event.seq))
                    else:
                        await reply(event.req, False, f"{kind.__name__} is not available "
                                    "to this agent")
                ops_send.close()
        except Exception as exc:  # possibly wrapped by the nursery
            inner = exc
            while isinstance(inner, BaseExceptionGroup) and len(inner.exceptions) == 1:
                inner = inner.exceptions[0]
            if isinstance(inner, trio.BrokenResourceError | trio.ClosedResourceError | OSError):
                return  # the agent went away: its exit is reported by the template
            log.error("agent %s: channel error (%s): killing it", name, exc_summary(exc))
            self._emit("protocol-error", name, error=exc_summary(exc)[:200])
            if child.signal_instance is not None:
                await child.signal_instance(signal.SIGKILL)
        finally:
            done.set()
            sock.close()
