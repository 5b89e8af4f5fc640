"""The template process and its client: real forks, real signals, real sockets.

Most tests share one template started for this module; the ones that kill a
template or play it start their own.
"""

from __future__ import annotations

import array
import contextlib
import os
import signal
import socket
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

import msgpack
import psutil
import pytest
import trio
import trio.testing

from runtime.supervisor.template import Template, TemplateClient, TemplateGone
from runtime.supervisor.template_wire import TEMPLATE, Exited, Spawn, Spawned, TemplateWire

TIMEOUT_S = 30


@pytest.fixture(scope="module")
def template() -> Iterator[Template]:
    t = Template.start()
    yield t
    t.close()


@asynccontextmanager
async def client_of(template: Template) -> AsyncIterator[TemplateClient]:
    client = TemplateClient(template)
    async with trio.open_nursery() as nursery:
        await nursery.start(client.run)
        yield client
        nursery.cancel_scope.cancel()


def exec_spec(*argv: str) -> dict:
    return {"kind": "exec", "name": "t", "cwd": None, "env": {}, "argv": list(argv)}


async def spawn(client: TemplateClient, *argv: str) -> int:
    fds = [os.open(os.devnull, os.O_WRONLY), os.open(os.devnull, os.O_WRONLY)]
    try:
        return await client.spawn(exec_spec(*argv), fds)
    finally:
        for fd in fds:
            os.close(fd)


async def test_spawn_and_the_exit_report(template: Template) -> None:
    with trio.fail_after(TIMEOUT_S):
        async with client_of(template) as client:
            pid = await spawn(client, "sh", "-c", "exit 3")
            assert pid > 0
            assert await client.wait_exit(pid) == (3, None)
            missing = await spawn(client, "/nonexistent/outpost-test-binary")
            assert await client.wait_exit(missing) == (127, None)  # exec failed in the child


async def test_a_signal_reaches_the_agent_and_none_once_it_is_reaped(template: Template) -> None:
    with trio.fail_after(TIMEOUT_S):
        async with client_of(template) as client:
            pid = await spawn(client, "sleep", "60")
            await client.signal(pid, signal.SIGTERM)
            assert await client.wait_exit(pid) == (None, signal.SIGTERM)
            assert not client._wire.alive(pid)
            await client.signal(pid, signal.SIGKILL)  # reaped: nothing is sent, nothing raised


async def test_a_signal_sent_the_moment_an_agent_is_spawned_is_not_lost(
        template: Template) -> None:
    """Back-to-back spawns are fresh forks (the spare comes after 10 ms idle), signalled
    before they may have made their own process group: each must still get its SIGTERM."""
    with trio.fail_after(TIMEOUT_S):
        async with client_of(template) as client:
            pids = []
            for _ in range(6):
                pid = await spawn(client, "sleep", "60")
                await client.signal(pid, signal.SIGTERM)
                pids.append(pid)
            for pid in pids:
                assert await client.wait_exit(pid) == (None, signal.SIGTERM)


async def test_a_spare_forked_ahead_becomes_the_next_agent(template: Template) -> None:
    with trio.fail_after(TIMEOUT_S):
        async with client_of(template) as client:
            first = await spawn(client, "sleep", "60")
            parent = psutil.Process(template.pid)
            while not (spares := [p.pid for p in parent.children() if p.pid != first]):
                await trio.sleep(0.01)  # the template forks its spare once idle
            second = await spawn(client, "sleep", "60")
            assert second == spares[0]  # a hand-off, not a fork
            for pid in (first, second):
                await client.signal(pid, signal.SIGKILL)
                assert await client.wait_exit(pid) == (None, signal.SIGKILL)


async def test_a_garbage_packet_is_dropped_with_its_fds_and_the_template_serves_on(
        template: Template) -> None:
    with trio.fail_after(TIMEOUT_S):
        async with client_of(template) as client:
            r, w = os.pipe()
            for garbage in (b"\xc1\xc1", msgpack.packb(["spawn", "x", 1]),
                            msgpack.packb(["rm", "-rf"])):
                fds = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [w]))]
                await client.sock.sendmsg([garbage], fds)
            os.close(w)
            await trio.lowlevel.wait_readable(r)
            assert os.read(r, 1) == b""  # every copy of the write end is closed: none leaked
            os.close(r)
            pid = await spawn(client, "true")
            assert await client.wait_exit(pid) == (0, None)


@pytest.fixture
def own_template() -> Iterator[Template]:
    """A template of the test's own (forked here: never from inside a trio loop)."""
    t = Template.start()
    yield t
    t.close()


async def test_the_template_s_death_wakes_every_waiter(own_template: Template) -> None:
    template = own_template
    with trio.fail_after(TIMEOUT_S):
        async with client_of(template) as client:
            pid = await spawn(client, "sleep", "60")
            exits = []

            async def wait(pid: int) -> None:
                exits.append(await client.wait_exit(pid))
            async with trio.open_nursery() as nursery:
                nursery.start_soon(wait, pid)
                nursery.start_soon(wait, pid + 1_000_000)  # one no report will ever come for
                await trio.testing.wait_all_tasks_blocked()
                os.kill(template.pid, signal.SIGKILL)
            assert exits == [(None, signal.SIGKILL)] * 2
            assert client.gone
            with pytest.raises(TemplateGone):
                await spawn(client, "true")
            assert await client.wait_exit(pid) == (None, signal.SIGKILL)
    with contextlib.suppress(psutil.NoSuchProcess):  # its agent died with it
        psutil.Process(pid).wait(timeout=TIMEOUT_S)


class FakeTemplate:
    """The template's end of the socket, played by the test with the TEMPLATE wire."""

    def __init__(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        theirs.setblocking(False)
        self.handle = Template(-1, theirs)  # never closed through: there is no process
        self.sock = trio.socket.from_stdlib_socket(ours)
        self.wire = TemplateWire(TEMPLATE)

    async def receive(self) -> object:
        data, _, _, _ = await self.sock.recvmsg(1 << 20, socket.CMSG_SPACE(64))
        return self.wire.receive_packet(data)


async def test_the_reader_drops_bad_reports_and_a_closing_template_fails_every_waiter() -> None:
    fake = FakeTemplate()
    results: dict[str, object] = {}

    async def ask_spawn(name: str) -> None:
        try:
            results[name] = await fake_client.spawn(exec_spec("true"), [])
        except TemplateGone as exc:
            results[name] = exc
    with trio.fail_after(TIMEOUT_S):
        async with client_of(fake.handle) as fake_client, trio.open_nursery() as nursery:
            nursery.start_soon(ask_spawn, "first")
            first = await fake.receive()
            assert isinstance(first, Spawn)
            for bad in (b"\xc1", msgpack.packb(["spawned", 99, 5]),  # an answer to nothing
                        msgpack.packb(["exit", 5, 0, None])):  # a pid never spawned
                await fake.sock.send(bad)
            await fake.sock.send(fake.wire.send(Spawned(first.req, 4000)))
            while "first" not in results:
                await trio.testing.wait_all_tasks_blocked()
            assert results["first"] == 4000  # the reader got past the bad ones
            nursery.start_soon(ask_spawn, "second")
            assert isinstance(await fake.receive(), Spawn)  # asked, never answered
            waited = []

            async def wait_exit() -> None:
                waited.append(await fake_client.wait_exit(4000))
            nursery.start_soon(wait_exit)
            await trio.testing.wait_all_tasks_blocked()
            fake.sock.close()  # the template dies with a spawn and an exit awaited
    assert isinstance(results["second"], TemplateGone)
    assert waited == [(None, signal.SIGKILL)]


async def test_an_exit_reported_before_anyone_waits_is_kept_until_asked() -> None:
    fake = FakeTemplate()
    with trio.fail_after(TIMEOUT_S):
        async with client_of(fake.handle) as client, trio.open_nursery() as nursery:
            pids = []

            async def spawn_one() -> None:
                pids.append(await client.spawn(exec_spec("true"), []))
            nursery.start_soon(spawn_one)
            request = await fake.receive()
            await fake.sock.send(fake.wire.send(Spawned(request.req, 4001)))
            await fake.sock.send(fake.wire.send(Exited(4001, 0, None)))
            while 4001 in client._wire._alive or not pids:
                await trio.testing.wait_all_tasks_blocked()
            assert await client.wait_exit(4001) == (0, None)
            fake.sock.close()
