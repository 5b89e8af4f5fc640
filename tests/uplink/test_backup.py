"""Backups off the host into a JetStream Object Store, and the offline restore."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest
import trio

from runtime.config.schema import UplinkBackupSection
from runtime.maintain.report import MaintainError
from runtime.store import StateBook, open_store
from runtime.uplink import subjects
from runtime.uplink.backup import backup_nats, list_backups, parse_at, restore_nats
from runtime.uplink.connect import connect, connect_options
from tests.uplink.helpers import uplink_cfg


async def write_state(store, n: int) -> dict:
    book = StateBook(store)
    state = await book.open("agent/a/state")
    for i in range(n):
        await state.set(f"k{i}", {"i": i, "pad": "p" * 100})
    await state.checkpoint()
    return state.to_dict()


async def load_state(path) -> dict:
    async with open_store(path) as store:
        return (await StateBook(store).open("agent/a/state")).to_dict()


async def test_backup_keep_and_restore_on_a_fresh_host(nats_server, tmp_path):
    cfg = dataclasses.replace(uplink_cfg(nats_server.url, "gw7"),
                              backup=UplinkBackupSection(keep=2))
    created = []
    async with open_store(tmp_path / "data") as store:
        for n in (10, 20, 30):
            states = await write_state(store, n)
            result = await trio.to_thread.run_sync(backup_nats, store, cfg)
            assert result.ok, result.problems
            created.append((result.details["created"], states))
    listing = await trio.to_thread.run_sync(list_backups, cfg)
    assert len(listing) == 2  # keep = 2: the oldest went
    assert [b["created"] for b in listing] == [c for c, _ in created[1:]]

    fresh = tmp_path / "fresh"
    result = await trio.to_thread.run_sync(restore_nats, fresh, cfg)
    assert result.ok, result.problems
    assert await load_state(fresh) == created[2][1]

    older = tmp_path / "older"
    result = await trio.to_thread.run_sync(
        lambda: restore_nats(older, cfg, at=created[1][0] + 0.001))
    assert result.ok and result.details["created"] == created[1][0]
    assert await load_state(older) == created[1][1]

    with pytest.raises(MaintainError, match="no backup of host 'gw7' made at or before"):
        await trio.to_thread.run_sync(lambda: restore_nats(tmp_path / "x", cfg, at=1.0))
    with pytest.raises(MaintainError, match="no backups of host 'nosuch'"):
        await trio.to_thread.run_sync(lambda: restore_nats(tmp_path / "y", cfg, host="nosuch"))


async def test_a_damaged_backup_is_refused_and_nothing_changes(nats_server, tmp_path):
    cfg = uplink_cfg(nats_server.url, "gw8")
    async with open_store(tmp_path / "data") as store:
        await write_state(store, 5)
        assert (await trio.to_thread.run_sync(backup_nats, store, cfg)).ok

    async def plant() -> None:  # a newer object whose bytes do not match its header
        from nats.js.api import ObjectMeta

        nc = await connect(connect_options(servers=[nats_server.url], name="t"))
        obj = await nc.jetstream().object_store(subjects.backup_bucket("OUTPOST", "gw8"))
        await obj.put("outpost-backup-bogus", b"OPBK1\nnot a backup",
                      meta=ObjectMeta(name="outpost-backup-bogus", headers={
                          "Outpost-Blake2b": "00" * 32, "Outpost-Created": "9e12"}))
        await nc.close()
    await trio.to_thread.run_sync(lambda: asyncio.run(plant()))
    target = tmp_path / "target"
    with pytest.raises(MaintainError, match="blake2b does not match"):
        await trio.to_thread.run_sync(restore_nats, target, cfg)
    assert not (target / "data.mdb").exists()


def test_parse_at():
    assert parse_at("1700000000") == 1700000000.0
    assert parse_at("2023-11-14T22:13:20Z") == 1700000000.0
    assert parse_at("2023-11-14T22:13:20") == 1700000000.0
    with pytest.raises(MaintainError, match="ISO time"):
        parse_at("yesterday")
