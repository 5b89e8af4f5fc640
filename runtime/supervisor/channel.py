"""A process agent's channel, the runtime's side: its requests over the socketpair.

Frames (runtime.agents.frames) carry the agent's state ops, sends, receives,
acks, `ready` and its last words (`exit`, with its exception). State ops are
applied one at a time in the order they were sent and acknowledged once
durable; mailbox calls run side by side.

Back-pressure: at most STATE_OPS_QUEUED state ops wait for the store, and at
most CALLS_IN_FLIGHT mailbox calls run at once. Beyond that this side stops
reading the socket until one finishes: the kernel's socket buffers fill and
the agent's own sends simply wait, so an agent flooding writes is slowed to the
store's pace; nothing here grows without bound and nothing is dropped.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from runtime.agents import state_stream
from runtime.agents.frames import FrameBuffer, FrameError, encode
from runtime.supervisor.metrics import Metrics
from runtime.supervisor.policy import exc_summary
from runtime.supervisor.tree import Child

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

    async def serve(self, child: Child, sock: socket.socket, reported: dict,
                    done: trio.Event, hello_rest: bytes = b"") -> None:
        """A process agent's requests: state ops (in order), sends, receives, acks, ready.

        `reported["exception"]` receives the agent's last words; `done` is set
        when the channel is finished with. A malformed frame kills the agent.
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

            async def reply(kind: str, req: int, value: Any) -> None:
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    async with lock:
                        await stream.send_all(encode([kind, req, value]))

            if hello_rest:  # what of the hello did not fit in the socket buffer
                await stream.send_all(hello_rest)
            ops_send, ops_recv = trio.open_memory_channel(STATE_OPS_QUEUED)
            calls = trio.Semaphore(CALLS_IN_FLIGHT)

            async def state_worker() -> None:
                methods = {"set": state.set, "del": state.delete, "incr": state.incr,
                           "merge": state.merge}
                async for req, op, key, arg in ops_recv:
                    try:
                        method = methods[op]
                        await (method(key) if op == "del" else method(key, arg))
                        if writes is not None:
                            writes.inc()
                        await reply("ok", req, None)
                    except Exception as exc:
                        await reply("err", req, exc_summary(exc))

            async def call(req: int, fn: Callable[[], Awaitable[Any]]) -> None:
                try:
                    await reply("ok", req, await fn())
                except Exception as exc:
                    await reply("err", req, exc_summary(exc))
                finally:
                    calls.release()

            async def receive() -> list:
                msg = await inbox.receive()
                return [msg.seq, msg.sender, msg.body, msg.key]

            async with trio.open_nursery() as nursery:
                nursery.start_soon(state_worker)
                frames = FrameBuffer()
                while True:
                    data = await stream.receive_some(65536)
                    if not data:
                        break
                    for frame in frames.feed(data):
                        if not isinstance(frame, list) or len(frame) < 2:
                            raise FrameError("not a request frame")
                        op, req, *args = frame
                        if op == "state" and len(args) == 3:
                            await ops_send.send((req, *args))  # waits while the store is behind
                        elif op == "ready":
                            self._mark_ready(child, "ctx.ready()")
                        elif op == "exit" and len(args) == 1:
                            reported["exception"] = args[0]
                        elif op == "send" and len(args) == 3 and self.mailboxes is not None:
                            to, msg, key = args
                            await calls.acquire()
                            nursery.start_soon(call, req, lambda to=to, msg=msg, key=key:
                                               self.mailboxes.send(to, msg, key=key, sender=name))
                        elif op == "recv" and inbox is not None:
                            await calls.acquire()
                            nursery.start_soon(call, req, receive)
                        elif op == "ack" and inbox is not None and len(args) == 1:
                            await calls.acquire()
                            nursery.start_soon(call, req, lambda seq=args[0]: inbox.ack(seq))
                        else:
                            await reply("err", req, f"unknown or malformed request {op!r}")
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
