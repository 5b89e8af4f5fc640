"""A process agent's side of its channel over a real socketpair; the test is the runtime.

The runtime's end here speaks runtime.agents.wire with role RUNTIME, as the
supervisor does, so these tests also show how that side drives the protocol.
"""

from __future__ import annotations

import socket

import pytest
import trio
import trio.testing

from runtime.agents import wire
from runtime.agents.process import AgentChannelError, _Channel, _finish, _read_hello
from runtime.wire.framing import NEED_DATA


class Runtime:
    """The runtime's end of the channel: a RUNTIME Connection over a trio socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.conn = wire.Connection(wire.RUNTIME)
        self.raw = sock
        self.sock: trio.socket.SocketType | None = None

    async def next_event(self) -> object:
        if self.sock is None:
            self.sock = trio.socket.from_stdlib_socket(self.raw)
        while (event := self.conn.next_event()) is NEED_DATA:
            self.conn.receive_data(await self.sock.recv(65536))
        return event

    async def reply(self, req: int, ok: bool, value: object) -> None:
        await self.sock.send(self.conn.send(wire.Reply(req, ok, value)))


def channel_pair(state: dict) -> tuple[_Channel, Runtime]:
    """A channel whose hello was read, as _prepare leaves it."""
    agent_sock, runtime_sock = socket.socketpair()
    runtime = Runtime(runtime_sock)
    runtime_sock.sendall(runtime.conn.send(wire.Hello(state)))  # before the "fork"
    conn = wire.Connection(wire.AGENT)
    assert _read_hello(agent_sock, conn) == state
    return _Channel(agent_sock, conn), runtime


async def test_requests_get_their_own_replies_in_any_order() -> None:
    channel, runtime = channel_pair({"count": 1})
    results: dict[str, object] = {}

    async def ask(name: str, request: type, *args: object) -> None:
        try:
            results[name] = await channel.call(request, *args)
        except AgentChannelError as exc:
            results[name] = exc
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(channel.run_reader)
            nursery.start_soon(ask, "set", wire.StateOp, "set", "k", 5)
            nursery.start_soon(ask, "recv", wire.Recv)
            got = [await runtime.next_event(), await runtime.next_event()]
            by_kind = {type(e).__name__: e for e in got}
            assert by_kind["StateOp"].op == "set" and by_kind["StateOp"].arg == 5
            await runtime.reply(by_kind["Recv"].req, True, [1, "a", "hi", None])
            await runtime.reply(by_kind["StateOp"].req, False, "StateError: read-only")
            while len(results) < 2:
                await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()
    assert results["recv"] == [1, "a", "hi", None]
    assert isinstance(results["set"], AgentChannelError)
    assert str(results["set"]) == "StateError: read-only"


@pytest.mark.parametrize("how", ["close", "garbage"])
async def test_when_the_runtime_goes_no_waiter_hangs(how: str) -> None:
    """Every call in flight wakes with AgentChannelError, and so does every later one."""
    channel, runtime = channel_pair({})
    errors: list[BaseException] = []
    reader_error: list[BaseException] = []

    async def reader(task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        try:
            await channel.run_reader(task_status=task_status)
        except AgentChannelError as exc:
            reader_error.append(exc)

    async def ask(request: type, *args: object) -> None:
        try:
            await channel.call(request, *args)
        except AgentChannelError as exc:
            errors.append(exc)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(reader)
            for request, args in ((wire.StateOp, ("set", "k", 1)), (wire.Recv, ()),
                                  (wire.Send, ("b", "m", None)), (wire.Ack, (3,))):
                nursery.start_soon(ask, request, *args)
            for _ in range(4):  # all four are out and waiting
                assert isinstance(await runtime.next_event(), wire.Request)
            if how == "close":
                runtime.sock.close()
            else:
                await runtime.sock.send(b"\x00\x00\x00\x01\xc1")
        with pytest.raises(AgentChannelError):  # at once: nobody may start waiting now
            await channel.call(wire.Recv)
    assert len(errors) == 4
    expected = "closed the agent channel" if how == "close" else "broke the agent channel"
    assert all(expected in str(e) for e in errors + reader_error)
    assert len(reader_error) == 1


async def test_the_exit_report_goes_out_even_after_the_runtime_broke_the_channel() -> None:
    channel, runtime = channel_pair({})
    runtime.raw.sendall(b"\x00\x00\x00\x01\xc1")
    with trio.fail_after(10), pytest.raises(AgentChannelError, match="broke"):
        await channel.run_reader()
    _finish(channel._raw, channel._conn, "AgentChannelError: the runtime broke it")
    with trio.fail_after(10):
        assert await runtime.next_event() == wire.ExitReport(
            "AgentChannelError: the runtime broke it")


def test_a_runtime_that_closes_before_the_hello_is_a_clear_error() -> None:
    agent_sock, runtime_sock = socket.socketpair()
    runtime_sock.close()
    with pytest.raises(AgentChannelError, match="before the hello"):
        _read_hello(agent_sock, wire.Connection(wire.AGENT))
    agent_sock.close()
