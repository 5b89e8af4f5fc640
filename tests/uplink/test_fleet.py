"""The fleet from one terminal: three hosts (each its own store and uplink) on one
server, listed and commanded through the `outpost fleet` commands."""

from __future__ import annotations

import argparse
import json

import trio

from runtime.cli.fleet import add_parsers, uplink_text
from runtime.store import StateBook, open_store
from runtime.uplink.methods import handlers
from runtime.uplink.uplink import Uplink
from tests.uplink.adapter import InProcessMethods
from tests.uplink.helpers import uplink_cfg

HOSTS = ("gw-a", "gw-b", "gw-c")


def cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="outpost")
    add_parsers(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(list(argv))
    return args.func(args)


async def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = await trio.to_thread.run_sync(lambda: cli(*argv))
    out, err = capsys.readouterr()
    return code, out, err


async def test_three_hosts_listed_and_commanded(nats_server, tmp_path, capsys):
    url = nats_server.url
    async with trio.open_nursery() as nursery:
        rooms = []
        for i, host in enumerate(HOSTS):
            store = await nursery.start(_store, tmp_path / host)
            port = InProcessMethods(StateBook(store))
            cfg = uplink_cfg(url, host, commands={"allow": ["state.set", "state.get", "ping"]})
            status = {"agents_running": i + 1, "agents_failed": i}
            room = await nursery.start(Uplink(cfg, store, commands=port,
                                              host_status=lambda s=status: s).run)
            rooms.append(room)
        with trio.fail_after(60):
            while not all(r.link.commands_ready for r in rooms):
                await trio.sleep(0.01)
            while True:
                code, out, _ = await run_cli(capsys, "fleet", "hosts", "--json", "--server", url)
                hosts = json.loads(out)["hosts"]
                if len(hosts) == 3:
                    break
                await trio.sleep(0.05)
        assert code == 0 and [h["host"] for h in hosts] == list(HOSTS)
        assert [h["agents_running"] for h in hosts] == [1, 2, 3]
        code, out, _ = await run_cli(capsys, "fleet", "hosts", "--server", url)
        assert code == 0 and out.splitlines()[0].split()[:3] == ["HOST", "LAST", "SEEN"]
        assert [line.split()[0] for line in out.splitlines()[1:]] == list(HOSTS)

        for host in HOSTS:
            code, out, _ = await run_cli(capsys, "fleet", "send", host, "state.set", "agent=x",
                                         "key=who", f'value="{host}"', "--server", url)
            assert code == 0, out
        for host in HOSTS:
            code, out, _ = await run_cli(capsys, "fleet", "send", host, "state.get", "agent=x",
                                         "--json", "--server", url)
            answer = json.loads(out)
            assert code == 0 and answer["host"] == host
            assert answer["result"]["state"] == {"who": host}
        code, out, err = await run_cli(capsys, "fleet", "send", "gw-a", "shutdown", "--server",
                                       url)
        assert code == 1 and "forbidden" in err

        stats = await handlers(rooms[0])["uplink"]({})
        assert stats["host"] == "gw-a" and stats["link"]["commands"] == 3
        text = uplink_text(stats)
        assert "connected to" in text and "refused" in text
        nursery.cancel_scope.cancel()


async def _store(path, task_status=trio.TASK_STATUS_IGNORED):
    async with open_store(path) as store:
        task_status.started(store)
        await trio.sleep_forever()


async def test_cli_errors_are_clear(capsys, tmp_path):
    code, _, err = await run_cli(capsys, "fleet", "hosts")
    assert code == 2 and "--server" in err
    code, _, err = await run_cli(capsys, "fleet", "send", "h", "ping", "oops", "--server",
                                 "nats://127.0.0.1:1")
    assert code == 2 and "KEY=VALUE" in err
    code, _, err = await run_cli(capsys, "fleet", "hosts", "--server", "nats://127.0.0.1:1",
                                 "--timeout", "2")
    assert code == 1 and "cannot connect" in err
