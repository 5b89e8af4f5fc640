"""The HTTP face in process: a real hypercorn on a real socket, over a small table of
control methods standing in for the runtime's (the room's whole port is `call`)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio

from runtime.config.schema import HttpSection
from runtime.control import MethodError, Table
from runtime.control.dispatch import Stream
from runtime.http.serve import HttpFace, Limits, read_token
from shm import Counter, Gauge, Segment
from tests.http.client import TOKEN, Reply, request, token_file

COLUMNS = ("name", "kind", "group", "state", "pid", "restarts", "uptime_s", "heartbeat_age_s",
           "last_exit", "cpu_percent", "memory_rss_bytes", "ready", "status")


class Methods:
    """The control methods the console uses, over plain data the test changes."""

    def __init__(self) -> None:
        self.agents = {"alpha": "running", "beta": "running"}
        self.restarts = {"alpha": 0, "beta": 0}
        self.events: list[dict[str, Any]] = [
            {"seq": 1, "ts": 1.0, "type": "start", "agent": "alpha"},
            {"seq": 2, "ts": 2.0, "type": "start", "agent": "beta", "note": "<script>x</script>"},
        ]
        self.live_send, self.live = trio.open_memory_channel[dict](100)
        self.actions: list[tuple[str, str]] = []

    async def call(self, method: str, params: dict[str, Any]) -> Any:
        if method == "status":
            rows = [(n, "task", "/", s, 1, self.restarts[n], 1.5, 0.1, None, None, None, True,
                     None) for n, s in self.agents.items()]
            return {"agents": Table(COLUMNS, rows), "groups": []}
        if method == "info":
            return {"version": "test", "pid": os.getpid(), "uptime_s": 12.0, "config": "t.toml"}
        if method == "events.query":
            if params.get("type") == "bad":
                raise MethodError("bad_params", "no such type")
            found = [e for e in self.events if params.get("agent") in (None, e["agent"])]
            return {"events": found[-params.get("limit", 100):]}
        if method == "events.follow":
            async def items() -> AsyncIterator[dict]:
                for e in self.events[-params.get("backlog", 0):] if params.get("backlog") else []:
                    yield e
                async for e in self.live:
                    if e.get("lag"):
                        raise MethodError("lagged", "fell behind")
                    yield e
            return Stream(items())
        if method.startswith("agent."):
            self.actions.append((method, params["agent"]))
            return {"agent": params["agent"], "action": method}
        if method == "boom":
            raise RuntimeError("secret internals")
        raise MethodError("unknown_method", method)


@pytest.fixture
def methods() -> Methods:
    return Methods()


@pytest.fixture
def segment(tmp_path: Path):
    seg = Segment.create(tmp_path / "outpost.shm", 64)
    yield seg
    seg.close()


@contextlib.asynccontextmanager
async def serving(methods: Methods, segment: Segment, limits: Limits | None = None,
                  **settings: Any) -> AsyncIterator[HttpFace]:
    face = HttpFace(HttpSection(**{"listen": "127.0.0.1:0", **settings}), methods.call,
                    segment, metrics_help={"agents_up": "Agents up."}, limits=limits or Limits())
    async with trio.open_nursery() as nursery:
        await nursery.start(face.run)
        assert face.url is not None
        yield face
        nursery.cancel_scope.cancel()


async def get(face: HttpFace, path: str, **kw: Any) -> Reply:
    base = face.url.rstrip("/") if face.url.startswith("http") else face.url
    return await trio.to_thread.run_sync(lambda: request(base, path, **kw))


async def test_routes_answer_and_unknown_paths_are_404(methods: Methods, segment) -> None:
    async with serving(methods, segment) as face:
        assert (await get(face, "/healthz")).status == 200
        missing = await get(face, "/nope")
        assert missing.status == 404 and "no such page" in missing.text
        assert (await get(face, "/static/nope.js")).status == 404
        wrong = await get(face, "/metrics", method="POST")
        assert wrong.status == 405 and wrong.headers["allow"] == "GET, HEAD"
        head = await get(face, "/", method="HEAD")
        assert head.status == 200 and head.body == b""


async def test_the_page_is_a_whole_table_without_javascript(methods: Methods, segment) -> None:
    async with serving(methods, segment) as face:
        page = await get(face, "/")
    assert page.status == 200 and page.headers["content-type"].startswith("text/html")
    html = page.text
    assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in html
    assert '<tr data-agent="alpha" data-state="running">' in html
    assert '<tr data-agent="beta" data-state="running">' in html
    assert "&lt;script&gt;" in html and "<script>x" not in html  # event fields escaped
    assert "data-action" not in html  # read-only: no action buttons
    assert "script-src 'self'" in page.headers["content-security-policy"]


async def test_event_filters_work_as_a_plain_form(methods: Methods, segment) -> None:
    async with serving(methods, segment) as face:
        page = (await get(face, "/?agent=alpha")).text
        bad = (await get(face, "/?type=bad")).text
    assert 'data-agent="alpha"' in page.split('id="events"')[1]
    assert 'data-agent="beta"' not in page.split('id="events"')[1]
    assert "no such type" in bad


async def test_static_files_are_vendored_and_typed(methods: Methods, segment) -> None:
    async with serving(methods, segment) as face:
        js = await get(face, "/static/uplot.min.js")
        css = await get(face, "/static/console.css")
        lic = await get(face, "/static/uplot.LICENSE")
    assert js.status == 200 and js.headers["content-type"].startswith("text/javascript")
    assert b"uPlot" in js.body
    assert css.headers["content-type"].startswith("text/css")
    assert b"MIT License" in lic.body


async def test_readyz_flips_with_an_agent_down_and_the_store(methods: Methods, segment) -> None:
    async with serving(methods, segment) as face:
        ready = await get(face, "/readyz")
        assert ready.status == 200 and json.loads(ready.body)["ready"] is True
        methods.agents["beta"] = "failed"
        down = await get(face, "/readyz")
        assert down.status == 503
        assert json.loads(down.body)["agents_down"] == [{"agent": "beta", "state": "failed"}]
        methods.agents["beta"] = "stopped"  # stopped on purpose is not down
        assert (await get(face, "/readyz")).status == 200
        Gauge(segment, "outpost:store_writable").set(0)
        unwritable = await get(face, "/readyz")
        assert unwritable.status == 503 and json.loads(unwritable.body)["store_writable"] is False


async def test_metrics_negotiate_text_or_openmetrics(methods: Methods, segment) -> None:
    from prometheus_client.openmetrics.parser import text_string_to_metric_families as om
    from prometheus_client.parser import text_string_to_metric_families as text

    Gauge(segment, "outpost:agents_up").set(2)
    Counter(segment, "alpha:restarts").add(3)
    async with serving(methods, segment) as face:
        plain = await get(face, "/metrics")
        open_ = await get(face, "/metrics", headers={
            "Accept": "application/openmetrics-text;version=1.0.0,text/plain;q=0.5"})
    assert plain.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert "# HELP outpost_agents_up Agents up." in plain.text
    families = {f.name: f for f in text(plain.text)}
    assert families["outpost_agents_up"].samples[0].value == 2
    assert open_.headers["content-type"].startswith("application/openmetrics-text")
    families = {f.name: f for f in om(open_.text)}
    assert families["outpost_restarts"].samples[0].labels == {"agent": "alpha"}


async def test_a_token_is_required_and_compared_whole(methods: Methods, segment,
                                                       tmp_path: Path) -> None:
    path = token_file(tmp_path)
    async with serving(methods, segment, auth_token_file=path) as face:
        none = await get(face, "/metrics")
        assert none.status == 401 and "Basic" in none.headers["www-authenticate"]
        for wrong in ("", TOKEN[:-3], TOKEN + "0", "x" * 200, TOKEN[:-1] + "8",
                      TOKEN.upper()):
            assert (await get(face, "/metrics", token=wrong)).status == 401, wrong
        assert (await get(face, "/metrics", headers={"Authorization": "Basic !!"})).status == 401
        assert (await get(face, "/metrics", token=TOKEN)).status == 200
        browser = await get(face, "/", basic=f"anyone:{TOKEN}")
        assert browser.status == 200
        # With a token the Host header is not checked (the token is the guard).
        assert (await get(face, "/healthz", headers={"Host": "box.example"},
                          token=TOKEN)).status == 200


async def test_without_a_token_only_loopback_host_names_are_served(methods: Methods,
                                                                   segment) -> None:
    async with serving(methods, segment) as face:
        for host in ("evil.example:9477", "127.evil.example", "localhost.evil.example",
                     "[::2]:80", ""):
            rebound = await get(face, "/api/status", headers={"Host": host})
            assert rebound.status == 421, host
        for host in ("localhost:9477", "127.0.0.1", "[::1]:8080"):
            assert (await get(face, "/healthz", headers={"Host": host})).status == 200, host


async def test_actions_are_refused_when_read_only_and_need_the_header(methods: Methods,
                                                                      segment) -> None:
    async with serving(methods, segment) as face:
        refused = await get(face, "/api/agents/alpha/restart", method="POST",
                            headers={"X-Outpost-Action": "1"})
        assert refused.status == 403 and "read-only" in refused.text
    async with serving(methods, segment, read_only=False) as face:
        page = (await get(face, "/")).text
        assert 'data-action="restart" data-agent="alpha"' in page
        no_header = await get(face, "/api/agents/alpha/restart", method="POST")
        assert no_header.status == 403
        cross = await get(face, "/api/agents/alpha/restart", method="POST",
                          headers={"X-Outpost-Action": "1", "Sec-Fetch-Site": "cross-site"})
        assert cross.status == 403
        done = await get(face, "/api/agents/alpha/restart", method="POST",
                         headers={"X-Outpost-Action": "1"})
        assert done.status == 200 and methods.actions == [("agent.restart", "alpha")]
        assert (await get(face, "/api/agents/alpha/explode", method="POST",
                          headers={"X-Outpost-Action": "1"})).status == 404


async def test_an_exception_is_a_500_without_a_traceback(methods: Methods, segment,
                                                          caplog) -> None:
    async with serving(methods, segment) as face:
        face.app.routes["/boom"] = {"GET": lambda request: methods.call("boom", {})}
        with caplog.at_level(logging.ERROR, logger="outpost.http"):
            reply = await get(face, "/boom")
    assert reply.status == 500
    assert b"Traceback" not in reply.body and b"secret internals" not in reply.body
    assert "http: GET /boom failed" in caplog.text and "secret internals" in caplog.text


async def test_method_errors_become_json_with_a_status(methods: Methods, segment) -> None:
    async with serving(methods, segment) as face:
        bad = await get(face, "/api/events?type=bad")
        nan = await get(face, "/api/events?limit=many")
    assert bad.status == 400
    assert json.loads(bad.body) == {"error": {"code": "bad_params", "message": "no such type"}}
    assert nan.status == 400


async def test_oversized_headers_get_431(methods: Methods, segment) -> None:
    async with serving(methods, segment, Limits(max_header_bytes=4096)) as face:
        big = await get(face, "/healthz", headers={"X-Big": "a" * 8000})
        assert big.status == 431
        assert (await get(face, "/healthz", headers={"X-Small": "a" * 1000})).status == 200
        huge = await get(face, "/healthz", headers={"X-Huge": "a" * 200_000})
        assert huge.status == 431  # refused by h11 before it was all read


async def test_a_request_whose_headers_trickle_in_is_cut_off(methods: Methods, segment) -> None:
    async with serving(methods, segment, Limits(keep_alive_timeout_s=1.0)) as face:
        host, port = face.url.removeprefix("http://").rstrip("/").rsplit(":", 1)
        stream = await trio.open_tcp_stream(host, int(port))
        await stream.send_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n")
        closed_after = None
        with trio.fail_after(60):
            for sent in range(10_000):  # one header byte at a time, never finishing
                with trio.move_on_after(0.2):
                    if await stream.receive_some(100) == b"":
                        closed_after = sent
                        break
                try:
                    await stream.send_all(b"X")
                except trio.BrokenResourceError:
                    closed_after = sent
                    break
        await stream.aclose()
    assert closed_after is not None


async def test_events_stream_as_sse_and_resume_after_last_event_id(methods: Methods,
                                                                   segment) -> None:
    async with serving(methods, segment) as face:
        host, port = face.url.removeprefix("http://").rstrip("/").rsplit(":", 1)

        async def open_stream(extra: str = "") -> trio.SocketStream:
            stream = await trio.open_tcp_stream(host, int(port))
            await stream.send_all(f"GET /events?backlog=5 HTTP/1.1\r\nHost: localhost\r\n"
                                  f"{extra}\r\n".encode())
            return stream

        async def read_until(stream: trio.SocketStream, marker: bytes) -> bytes:
            data = b""
            with trio.fail_after(30):
                while marker not in data:
                    chunk = await stream.receive_some(65536)
                    assert chunk, data
                    data += chunk
            return data

        stream = await open_stream()
        first = await read_until(stream, b"id: 2\n")
        assert b"text/event-stream" in first and b"retry: 2000" in first
        assert b'id: 1\ndata: {"seq":1' in first
        assert face.app.streams == 1
        methods.live_send.send_nowait({"seq": 3, "ts": 3.0, "type": "restart", "agent": "a"})
        assert b'"type":"restart"' in await read_until(stream, b"id: 3\n")
        await stream.aclose()  # the server notices the client went away
        with trio.fail_after(30):
            while face.app.streams:
                await trio.sleep(0.01)

        resumed = await open_stream("Last-Event-ID: 1\r\n")
        data = await read_until(resumed, b"id: 2\n")
        assert b"id: 1\n" not in data
        methods.live_send.send_nowait({"lag": True})
        assert b"event: lagged" in await read_until(resumed, b"event: lagged")
        await resumed.aclose()


async def test_too_many_streams_get_503(methods: Methods, segment) -> None:
    async with serving(methods, segment) as face:
        face.app.streams = 16
        reply = await get(face, "/events")
    assert reply.status == 503 and reply.headers["retry-after"] == "5"


async def test_a_unix_socket_is_served_0660_and_removed(methods: Methods, segment,
                                                        tmp_path: Path) -> None:
    path = tmp_path / "http.sock"
    async with serving(methods, segment, listen=f"unix:{path}") as face:
        assert face.url == f"unix:{path}"
        assert stat.S_IMODE(path.stat().st_mode) == 0o660
        reply = await get(face, "/api/status", headers={"Host": "proxy.example"})
        assert reply.status == 200  # no Host check behind a socket only a group can open
        assert [a["name"] for a in json.loads(reply.body)["agents"]] == ["alpha", "beta"]
    assert not path.exists()


async def test_a_taken_port_leaves_the_runtime_running_and_retries(methods: Methods, segment,
                                                                   caplog) -> None:
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    face = HttpFace(HttpSection(listen=f"127.0.0.1:{port}"), methods.call, segment)
    try:
        with caplog.at_level(logging.ERROR, logger="outpost.http"):
            async with trio.open_nursery() as nursery:
                await nursery.start(face.run)  # returns: the runtime goes on starting
                assert face.url is None
                nursery.cancel_scope.cancel()
    finally:
        holder.close()
    assert f"cannot listen on 127.0.0.1:{port}" in caplog.text and "tries again" in caplog.text


def test_a_token_file_must_be_private_and_long_enough(tmp_path: Path) -> None:
    path = token_file(tmp_path, "x" * 32)
    assert read_token(path) == b"x" * 32
    path.chmod(0o644)
    with pytest.raises(OSError, match=r"readable by every user .*chmod 600"):
        read_token(path)
    path.chmod(0o600)
    path.write_text("short\n")
    with pytest.raises(OSError, match="expected one token of 16 to 4096 bytes"):
        read_token(path)
    with pytest.raises(OSError, match="No such file"):
        read_token(tmp_path / "missing")
