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

from runtime.agents.context import AgentMetrics, HealthReporter
from runtime.agents.entry import load_entry
from runtime.agents.frames import FrameBuffer, encode
from runtime.agents.mailbox import InboxIteration, Message
from runtime.store.kvstate import apply_op
from shm import Heartbeat, Segment


class AgentChannelError(Exception):
    """The runtime refused a request (the message says why) or the channel is gone."""


class _Channel:
    """Request/response over the socketpair; one reader task dispatches the answers."""

    def __init__(self, sock: socket.socket) -> None:
        self._raw = sock
        self._stream: trio.SocketStream | None = None
        self._ids = itertools.count(1)
        self._waiting: dict[int, list] = {}
        self._send_lock = trio.Lock()

    async def run_reader(self, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        self._stream = trio.SocketStream(trio.socket.from_stdlib_socket(self._raw))
        task_status.started()
        frames = FrameBuffer()
        while True:
            data = await self._stream.receive_some(65536)
            if not data:
                raise AgentChannelError("the runtime closed the agent channel")
            for frame in frames.feed(data):
                kind, req, value = frame
                slot = self._waiting.pop(req, None)
                if slot is not None:
                    slot[1] = (kind, value)
                    slot[0].set()

    async def send(self, frame: list) -> None:
        async with self._send_lock:
            await self._stream.send_all(encode(frame))

    async def call(self, op: str, *args: Any) -> Any:
        req = next(self._ids)
        slot = self._waiting[req] = [trio.Event(), None]
        await self.send([op, req, *args])
        await slot[0].wait()
        kind, value = slot[1]
        if kind == "err":
            raise AgentChannelError(value)
        return value


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
        await self._channel.call("state", op, key, arg)
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
        seq, sender, body, key = await self._channel.call("recv")
        return Message(seq, sender, body, key)

    async def ack(self, msg: Message | int) -> None:
        await self._channel.call("ack", msg if isinstance(msg, int) else msg.seq)


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
            await self._channel.send(["ready", 0, None])

    async def send(self, agent: str, msg: Any, key: str | None = None) -> int:
        """Durably put `msg` in `agent`'s inbox; returns its seq."""
        return await self._channel.call("send", agent, msg, key)


def _read_hello(sock: socket.socket) -> dict:
    frames = FrameBuffer()
    while True:
        data = sock.recv(1 << 16)
        if not data:
            raise AgentChannelError("the runtime closed the channel before the hello")
        got = frames.feed(data)
        if got:
            return got[0][2]


def _prepare(spec: dict[str, Any], sock: socket.socket,
             segment: Segment | None) -> tuple[Any, ProcessContext, _Channel]:
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    root.setLevel(spec.get("log_level", "INFO").upper())
    if segment is None:
        segment = Segment.attach(spec["segment"], writable=True)
    main = load_entry(spec["entry"])
    hello = _read_hello(sock)  # sent before the fork: already in the socket buffer
    channel = _Channel(sock)
    return main, ProcessContext(spec["name"], channel, segment, hello["state"]), channel


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


def _finish(sock: socket.socket, summary: str | None) -> None:
    try:
        sock.setblocking(True)
        sock.sendall(encode(["exit", 0, summary]))
    except OSError:
        pass


def agent_main(spec: dict[str, Any], channel_fd: int, segment: Segment | None = None) -> int:
    """Run the agent `spec["entry"]` in this process; the exit code for the template.

    `segment` is the mapping the template attached (inherited by the fork);
    without it the agent attaches the segment itself.
    """
    return trio.run(agent_main_async, spec, channel_fd, segment)


async def agent_main_async(spec: dict[str, Any], channel_fd: int,
                           segment: Segment | None = None) -> int:
    """`agent_main` inside an already running trio loop (a spare of the template)."""
    sock = socket.socket(fileno=channel_fd)
    summary = None
    try:
        main, ctx, channel = _prepare(spec, sock, segment)
        await _run(main, ctx, channel)
        return 0
    except BaseException as exc:
        summary = _report(exc)
        return 1
    finally:
        _finish(sock, summary)
