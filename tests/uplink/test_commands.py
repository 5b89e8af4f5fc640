"""Commands down (issue 18, must hold 4): applied once per id, allow-list enforced,
malformed ones answered and acked, the uplink unharmed."""

from __future__ import annotations

import asyncio
import json

import pytest
import trio

from runtime.cli.fleet import fleet_hosts, fleet_send
from runtime.store import StateBook, open_store
from runtime.uplink import commands, subjects
from runtime.uplink.connect import connect, connect_options
from runtime.uplink.uplink import Uplink
from tests.uplink.adapter import InProcessMethods
from tests.uplink.helpers import uplink_cfg

ALLOW = {"allow": ["state.get", "state.set", "status", "ping"]}


def settings(url: str) -> dict:
    return {"servers": [url], "creds_file": None, "nkey_file": None, "user": None,
            "password": None, "token": None, "ca_file": None, "cert_file": None,
            "key_file": None, "prefix": "outpost", "stream": "OUTPOST"}


async def send(url, host, method, params=None, request_id=None, timeout=60.0):
    return await trio.to_thread.run_sync(
        lambda: asyncio.run(fleet_send(settings(url), host, method, params or {},
                                       request_id, timeout)))


async def raw_commands(url: str, host: str, bodies: list[bytes]) -> list[dict]:
    """Publish raw command bodies with a reply inbox; the answers, in order."""
    async def go() -> list[dict]:
        nc = await connect(connect_options(servers=[url], name="t", reconnect=True))
        try:
            inbox = nc.new_inbox()
            got: asyncio.Queue = asyncio.Queue()
            await nc.subscribe(inbox, cb=got.put)
            js = nc.jetstream()
            for body in bodies:
                await js.publish(subjects.cmd_subject("outpost", host), body,
                                 headers={subjects.HEADER_REPLY: inbox})
            out = []
            for _ in bodies:
                out.append(json.loads((await asyncio.wait_for(got.get(), 60)).data))
            info = await js.consumer_info(subjects.cmd_stream("OUTPOST"),
                                          subjects.cmd_consumer(host))
            out.append({"ack_pending": info.num_ack_pending, "pending": info.num_pending,
                        "redelivered": info.num_redelivered})
            return out
        finally:
            await nc.close()
    return await trio.to_thread.run_sync(lambda: asyncio.run(go()))


@pytest.fixture
async def host(nats_server, tmp_path):
    async with open_store(tmp_path / "data") as store, trio.open_nursery() as nursery:
        port = InProcessMethods(StateBook(store))
        cfg = uplink_cfg(nats_server.url, "gw1", commands=ALLOW)
        uplink = await nursery.start(Uplink(cfg, store, commands=port,
                                            host_status=lambda: {"agents_running": 2,
                                                                 "agents_failed": 1}).run)
        with trio.fail_after(60):
            while not uplink.link.commands_ready:
                await trio.sleep(0.01)
        yield uplink, port, nats_server.url
        nursery.cancel_scope.cancel()


async def test_a_command_is_applied_and_answered(host):
    _uplink, port, url = host
    answer = await send(url, "gw1", "state.set", {"agent": "a", "key": "k", "value": 7})
    assert answer["host"] == "gw1" and answer["result"]["seq"] == 1
    answer = await send(url, "gw1", "state.get", {"agent": "a"})
    assert answer["result"]["state"] == {"k": 7}
    status = await send(url, "gw1", "status")
    assert status["result"]["agents"] == [{"name": "a", "state": "running"},
                                          {"name": "b", "state": "failed"}]
    assert port.callers[0] == commands.CommandCaller("uplink", "fleet")


async def test_the_same_id_applies_once(host):
    _uplink, port, url = host
    first = await send(url, "gw1", "state.set", {"agent": "a", "key": "n", "value": 1},
                       request_id="req-1")
    again = await send(url, "gw1", "state.set", {"agent": "a", "key": "n", "value": 1},
                       request_id="req-1")
    assert first["result"] == again["result"] and first["id"] == again["id"] == "req-1"
    assert port.applied["state.set"] == 1
    state = await port.book.open("agent/a/state")
    assert state.applied_seq == 1


async def test_outside_the_allow_list_is_refused_clearly(host):
    _uplink, port, url = host
    answer = await send(url, "gw1", "shutdown")
    assert answer["error"]["code"] == "forbidden"
    assert "not allowed over the uplink" in answer["error"]["message"]
    assert "[uplink.commands] allow" in answer["error"]["message"]
    assert port.applied["shutdown"] == 0


async def test_malformed_commands_are_answered_acked_and_harmless(host):
    uplink, _port, url = host
    bodies = [b"\xff\x00 not json", b"[1, 2]", b'{"params": {}}',
              b'{"method": "ping", "params": [1]}', b'{"method": 5}',
              b'{"method": "nosuch.method"}', b'{"method": "ping"}']
    *answers, consumer = await raw_commands(url, "gw1", bodies)
    codes = [a.get("error", {}).get("code") for a in answers]
    assert codes == ["bad_command", "bad_command", "bad_command", "bad_params",
                     "bad_command", "forbidden", None]
    assert answers[-1]["result"] == {"ok": True}
    assert consumer == {"ack_pending": 0, "pending": 0, "redelivered": 0}
    assert uplink.link.connected and uplink.link.commands == len(bodies)


async def test_hosts_lists_the_snapshot(host):
    _uplink, _port, url = host

    async def hosts():
        return await trio.to_thread.run_sync(
            lambda: asyncio.run(fleet_hosts(settings(url), 30)))
    with trio.fail_after(60):
        while not (found := await hosts()):
            await trio.sleep(0.05)
    (snap,) = found
    assert snap["host"] == "gw1" and snap["agents_running"] == 2 and snap["agents_failed"] == 1
    assert snap["uplink"]["backlog_msgs"] == 0 and snap["age_s"] < 60
