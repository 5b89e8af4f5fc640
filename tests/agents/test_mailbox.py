"""Durable mailboxes over a real store: at-least-once, idempotency keys, restart survival."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from runtime.agents.directory import AgentDirectory
from runtime.agents.mailbox import MailboxError, Mailboxes
from runtime.config import AgentSpec
from runtime.store import StateBook, open_store


async def test_unacked_messages_are_redelivered_and_keys_deliver_once(tmp_path: Path) -> None:
    async with open_store(tmp_path / "data") as store:
        boxes = Mailboxes(store, StateBook(store))
        s1 = await boxes.send("a", {"n": 1}, key="order-1", sender="x")
        assert await boxes.send("a", {"n": 1}, key="order-1", sender="x") == s1
        s2 = await boxes.send("a", {"n": 2})
        inbox = boxes.inbox("a")
        first = await inbox.receive()
        assert (first.seq, first.body, first.key, first.sender) == (s1, {"n": 1}, "order-1", "x")
        # Not acknowledged: a new reader (a restarted agent) gets it again.
        again = boxes.inbox("a")
        assert (await again.receive()).seq == s1
        await again.ack(first)
        third = boxes.inbox("a")
        assert (await third.receive()).seq == s2
        # Concurrent sends with one key store one message.
        async with trio.open_nursery() as nursery:
            for _ in range(5):
                nursery.start_soon(boxes.send, "a", "dup", "k-dup")
        assert [r[0] for _, r in store.read("agent/a/inbox")].count("k-dup") == 1

    # After a restart of the whole runtime: keys and acks are durable.
    async with open_store(tmp_path / "data") as store:
        boxes = Mailboxes(store, StateBook(store))
        assert await boxes.send("a", {"n": 1}, key="order-1") == s1
        inbox = boxes.inbox("a")
        assert (await inbox.receive()).seq == s2


async def test_a_receiver_waits_for_the_next_message(tmp_path: Path) -> None:
    async with open_store(tmp_path / "data") as store:
        boxes = Mailboxes(store, StateBook(store))
        got = []

        async def reader() -> None:
            async for msg in boxes.inbox("b"):
                got.append(msg.body)
                if len(got) == 3:
                    return
        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader)
            for i in range(3):
                await boxes.send("b", i)
        assert got == [0, 1, 2]


async def test_the_shared_directory_decides_who_receives(tmp_path: Path) -> None:
    async with open_store(tmp_path / "data") as store:
        directory = AgentDirectory([AgentSpec(name="a", entry="m:f")])
        boxes = Mailboxes(store, StateBook(store), directory)
        assert await boxes.send("a", 1) == 1
        with pytest.raises(MailboxError, match=r"no agent named 'b' to send to \(agents: a\)"):
            await boxes.send("b", 1)
        # The supervisor replaces the directory on reload: the mailboxes see it at once.
        directory.replace([AgentSpec(name="b", entry="m:f")])
        assert "b" in directory and "a" not in directory and directory.names() == ["b"]
        assert await boxes.send("b", 1) == 1
        with pytest.raises(MailboxError, match="no agent named 'a'"):
            await boxes.send("a", 2)
        with pytest.raises(MailboxError, match="idempotency key must be a string, not int"):
            await boxes.send("b", 2, key=7)
        assert [seq for seq, _ in store.read("agent/b/inbox")] == [1]
