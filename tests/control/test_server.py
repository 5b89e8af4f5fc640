"""The control server in-process, over real Unix sockets: limits, streams, peers.

Each test serves a small `Methods` table with short limits, then drives it with
raw trio sockets speaking the sans-IO protocol (or deliberately not speaking it).
"""

from __future__ import annotations

import os
import resource
import socket
import stat
import struct
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
import trio

from runtime.control.dispatch import Caller, Methods, Stream, current_caller
from runtime.control.errors import MethodError
from runtime.control.params import accepts
from runtime.control.protocol import (
    CLIENT,
    NEED_DATA,
    Connection,
    ErrorResponse,
    Hello,
    Request,
    Response,
    StreamEnd,
    StreamItem,
)
from runtime.control.server import ControlServer, Limits, Peer
from tests.runtime_proc import ROOT, agent_block, wait_for, write_config

COUNTER = agent_block("counter", str(ROOT / "examples" / "agents" / "counter.py") + ":run")
FAST = Limits(max_connections=300, hello_timeout_s=1.0, frame_timeout_s=1.0,
              idle_timeout_s=2.0, send_timeout_s=1.0)


class AsyncClient:
    """A protocol-speaking trio client (the CLI's client is blocking)."""

    def __init__(self, sock: trio.socket.SocketType) -> None:
        self.sock = sock
        self.conn = Connection(CLIENT)
        self.ids = 0

    @classmethod
    async def connect(cls, path: Path, hello: bool = True) -> AsyncClient:
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        await sock.connect(str(path))
        client = cls(sock)
        if hello:
            await sock.send(client.conn.send(Hello()))
            event = await client.next()
            assert isinstance(event, Hello), event
        return client

    async def next(self) -> Any:
        while True:
            event = self.conn.next_event()
            if event is NEED_DATA:
                self.conn.receive_data(await self.sock.recv(65536))
                continue
            return event

    async def send(self, method: str, **params: Any) -> int:
        self.ids += 1
        await self.sock.send(self.conn.send(Request(self.ids, method, params)))
        return self.ids

    async def call(self, method: str, **params: Any) -> Any:
        req_id = await self.send(method, **params)
        event = await self.next()
        assert event.id == req_id
        return event

    def close(self) -> None:
        self.sock.close()


async def _is_closed_by_server(sock: trio.socket.SocketType) -> bytes:
    """Read until EOF; what the server said before closing."""
    data = b""
    while chunk := await sock.recv(65536):
        data += chunk
    return data


def methods(*handlers: Any) -> Methods:
    """A Methods table of `handlers` by their names, each taking any params."""
    table = Methods()
    table.add({h.__name__: accepts(open=True)(h) for h in handlers})
    return table


def _decode_frames(data: bytes) -> list[Any]:
    out = []
    while data:
        (n,) = struct.unpack(">I", data[:4])
        out.append(msgpack.unpackb(data[4:4 + n]))
        data = data[4 + n:]
    return out


@pytest.fixture
async def served(tmp_path: Path, nursery: trio.Nursery):
    """A server with a few handlers; yields (server, socket path, finalized aiters)."""
    closed_streams: list[str] = []

    async def echo(params: dict) -> Any:
        return params

    async def boom(params: dict) -> Any:
        raise ZeroDivisionError("deliberate")

    async def refuse(params: dict) -> Any:
        raise MethodError("not_found", "no such thing")

    async def count(params: dict) -> Stream:
        n = params.get("n")

        async def items() -> AsyncIterator[int]:
            try:
                i = 0
                while n is None or i < n:
                    yield i
                    i += 1
                    await trio.sleep(0)  # let other tasks run between items
                if params.get("fail"):
                    raise MethodError("lagged", "fell behind")
            finally:
                closed_streams.append(params.get("tag", "?"))
        return Stream(items())

    async def big(params: dict) -> Any:
        return "x" * (2 << 20)

    async def whoami(params: dict) -> Any:
        caller = current_caller()
        return [caller.kind, caller.uid, caller.pid]

    path = tmp_path / "run" / "ctl.sock"
    server = ControlServer(path, methods(echo, boom, refuse, count, big, whoami), limits=FAST)
    await nursery.start(server.serve)
    return server, path, closed_streams


async def test_socket_is_0600_in_a_0700_dir(served) -> None:
    _, path, _ = served
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700


async def test_results_errors_and_handler_crashes_keep_the_connection(served) -> None:
    _, path, _ = served
    c = await AsyncClient.connect(path)
    assert await c.call("echo", a=1) == Response(1, {"a": 1})
    err = await c.call("boom")
    assert isinstance(err, ErrorResponse) and err.code == "internal"
    assert "ZeroDivisionError" in err.message
    assert (await c.call("refuse")).code == "not_found"
    unknown = await c.call("nope")
    assert unknown.code == "unknown_method" and "echo" in unknown.message
    too_big = await c.call("big")
    assert too_big.code == "too_large"
    assert await c.call("echo", b=2) == Response(6, {"b": 2})  # still the same connection
    c.close()


async def test_the_peer_is_the_caller_the_method_sees(served) -> None:
    _, path, _ = served
    c = await AsyncClient.connect(path)
    answer = await c.call("whoami")
    assert answer.result == ["socket", os.getuid(), os.getpid()]  # from SO_PEERCRED
    assert current_caller() == Caller("internal")  # set only while the method runs
    c.close()


async def test_stream_items_then_end_then_more_requests(served) -> None:
    _, path, closed = served
    c = await AsyncClient.connect(path)
    req = await c.send("count", n=3, tag="finite")
    events = [await c.next() for _ in range(4)]
    assert events == [StreamItem(req, 0), StreamItem(req, 1), StreamItem(req, 2),
                      StreamEnd(req)]
    req = await c.send("count", n=1, fail=True, tag="failing")
    assert await c.next() == StreamItem(req, 0)
    assert await c.next() == ErrorResponse(req, "lagged", "fell behind")
    assert await c.call("echo", x=1) == Response(req + 1, {"x": 1})
    assert closed == ["finite", "failing"]
    c.close()


async def test_a_client_that_leaves_mid_stream_ends_the_stream(served) -> None:
    server, path, closed = served
    c = await AsyncClient.connect(path)
    req = await c.send("count", tag="endless")
    assert await c.next() == StreamItem(req, 0)
    c.close()
    with trio.fail_after(5):
        while closed != ["endless"] or server.active:
            await trio.sleep(0.01)
    assert server.active == 0


async def test_silent_half_frame_and_non_reading_clients_do_not_block_others(served) -> None:
    """Three bad clients at once; a good client is answered promptly throughout,
    and each bad one is cut off by its own deadline."""
    server, path, _ = served
    silent = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    await silent.connect(str(path))  # never says hello
    half = await AsyncClient.connect(path)
    data = half.conn.send(Request(1, "echo", {"pad": "y" * 1000}))
    await half.sock.send(data[: len(data) // 2])  # half a frame, then nothing
    reader = await AsyncClient.connect(path)
    reader.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    await reader.send("count", tag="non-reader")  # endless stream, never read

    good = await AsyncClient.connect(path)
    start = trio.current_time()
    worst = 0.0
    while trio.current_time() - start < FAST.frame_timeout_s + FAST.send_timeout_s + 0.5:
        t0 = trio.current_time()
        with trio.fail_after(1):
            assert isinstance(await good.call("echo", n=1), Response)
        worst = max(worst, trio.current_time() - t0)
        await trio.sleep(0.05)
    assert worst < 0.5, worst

    with trio.fail_after(5):
        silent_said = _decode_frames(await _is_closed_by_server(silent))
        half_said = _decode_frames(await _is_closed_by_server(half.sock))
    assert silent_said == [] and half_said == []  # cut off by the deadline, not a reply
    with trio.fail_after(10):
        while server.active > 1:  # only the good client is left
            await trio.sleep(0.01)
    for s in (silent, half.sock, reader.sock):
        s.close()
    good.close()


async def test_many_concurrent_clients(served) -> None:
    _, path, _ = served
    answered = 0

    async def one(i: int) -> None:
        nonlocal answered
        c = await AsyncClient.connect(path)
        for j in range(5):
            assert await c.call("echo", i=i, j=j) == Response(j + 1, {"i": i, "j": j})
        answered += 1
        c.close()

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            for i in range(200):
                nursery.start_soon(one, i)
    assert answered == 200


async def test_connection_cap_answers_busy(tmp_path: Path, nursery: trio.Nursery) -> None:
    async def echo(params: dict) -> Any:
        return params

    path = tmp_path / "ctl.sock"
    server = ControlServer(path, methods(echo), limits=Limits(max_connections=3))
    await nursery.start(server.serve)
    held = [await AsyncClient.connect(path) for _ in range(3)]
    extra = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    await extra.connect(str(path))
    with trio.fail_after(5):
        said = _decode_frames(await _is_closed_by_server(extra))
    assert said[0]["error"]["code"] == "busy"
    assert server.refused == 1
    extra.close()
    held[0].close()
    with trio.fail_after(5):
        while server.active > 2:
            await trio.sleep(0.01)
    again = await AsyncClient.connect(path)
    assert await again.call("echo") == Response(1, {})
    for c in [*held, again]:
        c.close()


async def test_protocol_errors_get_a_coded_error_then_close(served) -> None:
    _, path, _ = served
    for payload, code in [
        (struct.pack(">I", 50 << 20), "too_large"),
        (struct.pack(">I", 1) + b"\xc1", "bad_frame"),
        (struct.pack(">I", 3) + msgpack.packb([1, 2]), "bad_frame"),
    ]:
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        await sock.connect(str(path))
        await sock.send(payload)
        with trio.fail_after(5):
            said = _decode_frames(await _is_closed_by_server(sock))
        assert said == [{"id": None, "error": {"code": code, "message": said[0]["error"][
            "message"]}}]
        sock.close()
    bad_version = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    await bad_version.connect(str(path))
    body = msgpack.packb({"hello": "outpost", "version": 2})
    await bad_version.send(struct.pack(">I", len(body)) + body)
    with trio.fail_after(5):
        said = _decode_frames(await _is_closed_by_server(bad_version))
    assert said[0]["error"]["code"] == "version"
    bad_version.close()


def test_peer_rules() -> None:
    server = ControlServer(Path("/nonexistent"), Methods(), allowed_uids=(1000,),
                           allowed_gids=(50,))
    me = os.getuid()
    assert server.allows(Peer(1, me, 12345))
    assert server.allows(Peer(1, 0, 0))
    assert server.allows(Peer(1, 1000, 1000))
    assert server.allows(Peer(1, 2000, 50))  # primary group
    assert server.allows(Peer(1, 2000, 2000, (7, 50)))  # supplementary group
    assert not server.allows(Peer(1, 2000, 2000, (7, 8))) or me == 2000
    server.set_allowed((), ())
    assert not server.allows(Peer(1, 1000, 1000)) or me == 1000


async def test_peer_credentials_come_from_the_kernel(served) -> None:
    from runtime.control.server import peer_of

    _, path, _ = served
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(str(path))
    peer = peer_of(sock)  # the server's pid/uid as seen from the client side
    assert (peer.pid, peer.uid, peer.gid) == (os.getpid(), os.getuid(), os.getgid())
    sock.close()


async def test_a_stale_socket_file_is_replaced_and_a_live_one_refused(
        tmp_path: Path, nursery: trio.Nursery) -> None:
    path = tmp_path / "ctl.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # the file stays, nobody listens
    server = ControlServer(path, Methods())
    await nursery.start(server.serve)
    c = await AsyncClient.connect(path)
    second = ControlServer(path, Methods())
    with pytest.raises(OSError, match="already answers"):
        await second.serve()
    c.close()


async def test_closing_right_after_connect_costs_nothing(served) -> None:
    server, path, _ = served
    for _ in range(200):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(str(path))
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()
    with trio.fail_after(5):
        while server.active:
            await trio.sleep(0.01)
    c = await AsyncClient.connect(path)
    assert (await c.call("echo")).result == {}
    assert c.conn.next_event() is NEED_DATA
    c.close()


def test_refusals_are_logged_but_not_without_bound(caplog: pytest.LogCaptureFixture) -> None:
    capped = ControlServer(Path("/nonexistent"), Methods())._refusal_log
    with caplog.at_level("WARNING", logger="outpost.control"):
        for i in range(25):
            capped.warning("control: refused connection from %s", Peer(100 + i, 4242, 4242))
        logged = [r.getMessage() for r in caplog.records]
        assert len(logged) == 20
        assert "pid 100 uid 4242 gid 4242" in logged[0]
        assert capped.unlogged == 5  # counted, summarised once the minute is over
        capped._window -= 60.0  # the minute is over
        capped.warning("control: refused connection from %s", Peer(200, 4242, 4242))
    assert [r.getMessage() for r in caplog.records][20:] == [
        "control: 5 more refused connection(s) not logged in the last minute",
        "control: refused connection from pid 200 uid 4242 gid 4242"]


def test_out_of_fds_accept_is_retried_and_serving_resumes(tmp_path: Path,
                                                          start_runtime) -> None:
    """A real runtime whose RLIMIT_NOFILE is lowered under it: accept hits EMFILE; the
    connection it already serves goes on, the failures are retried without a busy
    loop and logged without flooding, and once fds are free again the connections
    that waited in the backlog are served."""
    rt = start_runtime(write_config(tmp_path, COUNTER))
    rt.wait_running("counter")
    pid = rt.proc.pid
    served = rt.client()  # connected before the limit: must keep working
    limits = resource.prlimit(pid, resource.RLIMIT_NOFILE)
    waiting: list[socket.socket] = []
    try:
        # One above the highest fd: only the holes below it are left.
        highest = max(int(fd) for fd in os.listdir(f"/proc/{pid}/fd"))
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (highest + 1, limits[1]))
        hello = Connection(CLIENT).send(Hello())
        for _ in range(40):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(str(rt.socket))  # completes in the listen backlog
            sock.sendall(hello)
            waiting.append(sock)
        wait_for(lambda: served.call("info")["control"]["accept_failures"] >= 3,
                 what="accept failing with EMFILE")
        first, started = served.call("info")["control"]["accept_failures"], time.monotonic()
        wait_for(lambda: served.call("info")["control"]["accept_failures"] >= first + 5,
                 what="accept retried")
        rate = (served.call("info")["control"]["accept_failures"] - first) / (
            time.monotonic() - started)
        assert rate < 50, rate  # a retry every 0.1 s, not a busy loop
        assert served.call("status")["agents"][0]["state"] == "running"
    finally:
        resource.prlimit(pid, resource.RLIMIT_NOFILE, limits)
    for sock in waiting:  # every connection that waited is served now
        sock.settimeout(30)
        conn = Connection(CLIENT)
        while (event := conn.next_event()) is NEED_DATA:
            conn.receive_data(sock.recv(65536))
        assert isinstance(event, Hello), event
        sock.close()
    with rt.client() as fresh:
        assert fresh.call("ping") == {"pong": True}
    served.close()
    lines = [line for line in rt.log().splitlines() if "accept failed" in line]
    assert lines and "EMFILE (Too many open files)" in lines[0]
    assert len(lines) <= 5, lines  # logged a few times a minute, not every retry
    assert "accepting connections again after" in rt.log()
    assert rt.terminate() == 0


async def _send_all(sock: trio.socket.SocketType, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[await sock.send(view):]


async def test_a_reply_larger_than_the_socket_buffer_arrives_whole(served) -> None:
    # The server writes what the socket takes at once, then waits for the rest.
    _, path, _ = served
    client = await AsyncClient.connect(path)
    client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    pad = "".join(chr(ord("a") + i % 26) for i in range(700_000))
    client.ids += 1
    await _send_all(client.sock, client.conn.send(Request(client.ids, "echo", {"pad": pad})))
    with trio.fail_after(10):
        event = await client.next()
    assert isinstance(event, Response) and event.result == {"pad": pad}
    assert isinstance(await client.call("echo", n=2), Response)  # the connection goes on
    client.close()


async def test_pipelined_requests_are_answered_in_order_without_starving_others(
        served) -> None:
    server, path, _ = served
    client = await AsyncClient.connect(path)
    n = 300
    batch = b"".join(client.conn.send(Request(i, "echo", {"i": i})) for i in range(1, n + 1))
    base = server.requests
    seen: set[int] = set()  # how far the server had got, each time another task ran
    done = trio.Event()

    async def other_task() -> None:
        while not done.is_set():
            seen.add(server.requests - base)
            await trio.sleep(0)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(other_task)
        await _send_all(client.sock, batch)  # one write: the server reads many frames at once
        with trio.fail_after(10):
            answers = [await client.next() for _ in range(n)]
        done.set()
    assert [a.id for a in answers] == list(range(1, n + 1))
    assert [a.result["i"] for a in answers] == list(range(1, n + 1))
    # The server yielded between answers instead of running the batch in one go.
    assert len({k for k in seen if 0 < k < n}) > n // 10
    client.close()
