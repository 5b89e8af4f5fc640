"""Inside a process agent: the same `ctx` as a task agent, over a socketpair to the runtime.

The template forks this process and calls `agent_main`. State writes, sends,
receives and acks travel as msgpack frames to the runtime, which persists them
and answers once they are durable; reads of state are local (the runtime sends
the materialised state in its hello frame and every acknowledged write is
applied here too). Heartbeats and metrics never cross the socket: the process
attaches the shared-memory segment read-write and writes its slots directly.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import socket
import sys
import traceback
from collections.abc import Iterator, Mapping
from typing import Any

import trio

from runtime.agents import wire
from runtime.agents.context import AgentMetrics, HealthReporter
from runtime.agents.entry import load_entry
from runtime.agents.mailbox import InboxIteration, Message
from runtime.store.kvstate import apply_op
from runtime.wire.errors import ProtocolError
from runtime.wire.framing import CLOSED, NEED_DATA
from runtime.wire.pending import Pending
from shm import Heartbeat, Segment


class AgentChannelError(Exception):
    """The runtime refused a request (the message says why) or the channel is gone."""


class _Channel:
    """Requests over the socketpair; one reader task hands each reply to its waiter."""

    def __init__(self, sock: socket.socket, conn: wire.Connection) -> None:
        self._raw = sock
        self._conn = conn  # the hello was already read through it
        self._stream: trio.SocketStream | None = None
        self._ids = itertools.count(1)
        self._replies: Pending[int, wire.Reply] = Pending()
        self._send_lock = trio.Lock()

    async def run_reader(self, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        self._stream = trio.SocketStream(trio.socket.from_stdlib_socket(self._raw))
        task_status.started()
        conn, replies = self._conn, self._replies
        why = "the agent channel is gone"
        try:
            while True:
                event = conn.next_event()
                if event is NEED_DATA:
                    conn.receive_data(await self._stream.receive_some(65536))
                elif event is CLOSED:
                    why = "the runtime closed the agent channel"
                    raise AgentChannelError(why)
                else:  # after the hello, the runtime sends only replies
                    replies.resolve(event.req, event)
        except ProtocolError as exc:
            why = f"the runtime broke the agent channel: {exc}"
            raise AgentChannelError(why) from exc
        finally:
            replies.fail_all(lambda: AgentChannelError(why))

    async def send(self, event: wire.Event) -> None:
        async with self._send_lock:  # encoded in the lock: frames go out in send order
            await self._stream.send_all(self._conn.send(event))

    async def call(self, request: type[wire.Request], *args: Any) -> Any:
        """Send `request(req, *args)` with a new id; its reply's value (or AgentChannelError)."""
        event = request(next(self._ids), *args)
        with self._replies.expect(event.req) as slot:
            await self.send(event)
            reply = await slot.wait()
        if not reply.ok:
            raise AgentChannelError(reply.value)
        return reply.value


class RemoteState(Mapping):
    """`ctx.state` of a process agent: local reads, durable writes through the runtime."""

    def __init__(self, channel: _Channel, data: dict) -> None:
        self._channel = channel
        self._data = data

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def to_dict(self) -> dict:
        return dict(self._data)

    async def _write(self, op: str, key: str, arg: Any) -> Any:
        await self._channel.call(wire.StateOp, op, key, arg)
        return apply_op(self._data, [op, key, arg])  # the runtime applied the same op

    async def set(self, key: str, value: Any) -> None:
        await self._write("set", key, value)

    async def delete(self, key: str) -> None:
        await self._write("del", key, None)

    async def incr(self, key: str, by: int | float = 1) -> int | float:
        return await self._write("incr", key, by)

    async def merge(self, key: str, fields: Mapping[str, Any]) -> dict:
        return await self._write("merge", key, dict(fields))


class RemoteInbox(InboxIteration):
    """`ctx.inbox` of a process agent (same semantics as runtime.agents.mailbox.Inbox)."""

    def __init__(self, channel: _Channel) -> None:
        self._channel = channel

    async def receive(self) -> Message:
        seq, sender, body, key = await self._channel.call(wire.Recv)
        return Message(seq, sender, body, key)

    async def ack(self, msg: Message | int) -> None:
        await self._channel.call(wire.Ack, msg if isinstance(msg, int) else msg.seq)


class ProcessContext:
    """The `ctx` a process agent gets: the same attributes as AgentContext."""

    def __init__(self, name: str, channel: _Channel, segment: Segment, state: dict) -> None:
        self.name = name
        self._channel = channel
        self.state = RemoteState(channel, state)
        self.metrics = AgentMetrics(segment, name)
        self.report_health = HealthReporter(segment, name)  # shared memory: no frame
        self.log = logging.getLogger(f"outpost.agent.{name}")
        self._heartbeat = Heartbeat(segment, f"{name}:heartbeat")
        self.heartbeat = self._heartbeat.beat  # one atomic store, no Python frame
        self.is_ready = trio.Event()
        self.inbox = RemoteInbox(channel)

    def ready(self) -> None:
        """Signal readiness: agents that depend on this one may start."""
        if not self.is_ready.is_set():
            self.is_ready.set()
            trio.lowlevel.spawn_system_task(self._send_ready)

    async def _send_ready(self) -> None:
        # A system task must not raise; a broken channel ends the agent elsewhere.
        with contextlib.suppress(Exception):
            await self._channel.send(wire.Ready())

    async def send(self, agent: str, msg: Any, key: str | None = None) -> int:
        """Durably put `msg` in `agent`'s inbox; returns its seq."""
        return await self._channel.call(wire.Send, agent, msg, key)


def _runtime_says() -> bytes:
    agent, runtime = wire.Connection(wire.AGENT), wire.Connection(wire.RUNTIME)
    hello = runtime.send(wire.Hello({"k": 0}))
    agent.receive_data(hello)
    agent.next_event()
    runtime.receive_data(agent.send(wire.StateOp(1, "set", "k", 1)))
    runtime.next_event()
    return hello + runtime.send(wire.Reply(1, True, None))


_PRIMER = _runtime_says()  # a hello and a reply, as the runtime sends them


def idle_connection() -> wire.Connection:
    """A fresh agent-side Connection, built ahead, with the channel's code run once.

    A spare of the template calls this while it waits for its agent. Being a
    fork, its every page is copy-on-write, and the first write to each costs
    a fault (microseconds on a VM): building a Connection and a first pass
    over the frame path (hello, a state write, its reply, the exit report, on
    a throwaway one) take those faults now, not on a restart's path.
    """
    with contextlib.suppress(Exception):
        primer = wire.Connection(wire.AGENT)
        primer.receive_data(_PRIMER)
        primer.next_event()
        primer.send(wire.StateOp(1, "set", "k", 1))
        primer.next_event()
        primer.send(wire.ExitReport(None))
    return wire.Connection(wire.AGENT)


def _read_hello(sock: socket.socket, conn: wire.Connection) -> dict:
    """The runtime's hello (sent before the fork: already in the socket buffer)."""
    while True:
        event = conn.next_event()
        if event is NEED_DATA:
            conn.receive_data(sock.recv(1 << 16))
        elif event is CLOSED:
            raise AgentChannelError("the runtime closed the channel before the hello")
        else:
            return event.state  # the protocol lets only a Hello come first


def _prepare(spec: dict[str, Any], sock: socket.socket, conn: wire.Connection,
             segment: Segment | None) -> tuple[Any, ProcessContext, _Channel]:
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    root.setLevel(spec.get("log_level", "INFO").upper())
    if segment is None:
        segment = Segment.attach(spec["segment"], writable=True)
    main = load_entry(spec["entry"])
    state = _read_hello(sock, conn)
    channel = _Channel(sock, conn)
    return main, ProcessContext(spec["name"], channel, segment, state), channel


async def _run(main: Any, ctx: ProcessContext, channel: _Channel) -> None:
    async with trio.open_nursery() as nursery:
        await nursery.start(channel.run_reader)
        await main(ctx)
        nursery.cancel_scope.cancel()


def _report(exc: BaseException) -> str:
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]  # the agent's own error, not trio's wrapping
    traceback.print_exception(exc)
    return f"{type(exc).__name__}: {exc}"[:500]


def _finish(sock: socket.socket, conn: wire.Connection, summary: str | None) -> None:
    """Send the exit report: the runtime learns how the agent ended without waiting."""
    try:
        data = conn.send(wire.ExitReport(summary))  # allowed even after a protocol error
        sock.setblocking(True)
        sock.sendall(data)
    except (OSError, ProtocolError):
        pass


def agent_main(spec: dict[str, Any], channel_fd: int, segment: Segment | None = None) -> int:
    """Run the agent `spec["entry"]` in this process; the exit code for the template.

    `segment` is the mapping the template attached (inherited by the fork);
    without it the agent attaches the segment itself.
    """
    return trio.run(agent_main_async, spec, channel_fd, segment)


async def agent_main_async(spec: dict[str, Any], channel_fd: int,
                           segment: Segment | None = None,
                           conn: wire.Connection | None = None) -> int:
    """`agent_main` inside an already running trio loop (a spare of the template),
    on `conn` if the spare built it ahead (see idle_connection)."""
    sock = socket.socket(fileno=channel_fd)
    conn = wire.Connection(wire.AGENT) if conn is None else conn
    summary = None
    try:
        main, ctx, channel = _prepare(spec, sock, conn, segment)
        await _run(main, ctx, channel)
        return 0
    except BaseException as exc:
        summary = _report(exc)
        return 1
    finally:
        _finish(sock, conn, summary)
