"""Durable mailboxes: at-least-once delivery with idempotency keys.

Each agent's inbox is a store stream `agent/<name>/inbox` of records
[key, sender, message]. A send returns once the record is durable. The
recipient acknowledges what it has processed; the acknowledged seq is durable
state (`agent/<name>/inbox-acked`), so after a crash or restart delivery
resumes after the last acknowledged message: a message can be delivered twice
(at-least-once), never lost. A send with an idempotency key already in the
inbox returns the first send's seq and stores nothing (delivered once).

Who may receive is the shared `AgentDirectory`'s answer; a send it refuses (an
unknown recipient, a key that is not a string) raises `MailboxError`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import trio

from runtime.agents.directory import AgentDirectory
from runtime.store import StateBook, Store


class MailboxError(Exception):
    """A send the mailboxes refuse; str() is a full sentence for the user."""


def inbox_stream(agent: str) -> str:
    return f"agent/{agent}/inbox"


def acked_stream(agent: str) -> str:
    return f"agent/{agent}/inbox-acked"


@dataclass(frozen=True)
class Message:
    """One delivered message. `seq` orders an inbox; `key` is the sender's idempotency key."""

    seq: int
    sender: str | None
    body: Any
    key: str | None


class Mailboxes:
    """Every agent's inbox in one store. `rt.mailboxes.send(...)` is the runtime's entry.

    With a `directory`, only agents in it receive; without one (a store used on
    its own, as in tests) any name does.
    """

    def __init__(self, store: Store, book: StateBook, directory: AgentDirectory | None = None,
                 on_send: Callable[[str | None, str], None] = lambda sender, to: None) -> None:
        self.store = store
        self.book = book
        self.directory = directory
        self._on_send = on_send  # counters: messages_out of the sender
        self._keys: dict[str, dict[str, int | trio.Event]] = {}
        self._arrived: dict[str, trio.Event] = {}

    def _keys_of(self, to: str) -> dict[str, int | trio.Event]:
        keys = self._keys.get(to)
        if keys is None:
            # Rebuilt from the stream itself, so a crash between append and any
            # index update cannot let a key through twice.
            keys = {}
            for seq, record in self.store.read(inbox_stream(to)):
                if record[0] is not None:
                    keys.setdefault(record[0], seq)
            self._keys[to] = keys
        return keys

    async def send(self, to: str, msg: Any, key: str | None = None,
                   sender: str | None = None) -> int:
        """Store `msg` durably in `to`'s inbox; returns its seq (the first one for a known key)."""
        directory = self.directory
        if directory is not None and to not in directory:
            known = ", ".join(directory.names()) or "none"
            raise MailboxError(f"no agent named {to!r} to send to (agents: {known})")
        if key is not None and not isinstance(key, str):
            raise MailboxError(f"an idempotency key must be a string, not {type(key).__name__}")
        keys = self._keys_of(to)
        if key is not None:
            while True:
                found = keys.get(key)
                if found is None:
                    break
                if isinstance(found, int):
                    return found
                await found.wait()  # the same key is being stored right now
            keys[key] = trio.Event()
        try:
            seq = await self.store.append(inbox_stream(to), [key, sender, msg])
        except BaseException:
            if key is not None:
                keys.pop(key).set()
            raise
        if key is not None:
            keys.pop(key).set()
            keys[key] = seq
        self._on_send(sender, to)
        self._arrived.pop(to, trio.Event()).set()
        return seq

    def inbox(self, agent: str) -> Inbox:
        """A fresh reader of `agent`'s inbox, starting after its acknowledged messages."""
        return Inbox(self, agent)

    async def _wait_arrival(self, agent: str) -> None:
        event = self._arrived.get(agent)
        if event is None:
            event = self._arrived[agent] = trio.Event()
        await event.wait()


class InboxIteration:
    """`async for msg in inbox`: each message is acknowledged when the next one is asked
    for, so a crash while handling one redelivers it. Shared by the task agent's `Inbox`
    and the process agent's `RemoteInbox`, which must behave the same."""

    _unacked: Message | None = None

    async def receive(self) -> Message:
        raise NotImplementedError

    async def ack(self, msg: Message | int) -> None:
        raise NotImplementedError

    def __aiter__(self) -> InboxIteration:
        return self

    async def __anext__(self) -> Message:
        if self._unacked is not None:
            await self.ack(self._unacked)
        self._unacked = await self.receive()
        return self._unacked


class Inbox(InboxIteration):
    """An agent's view of its inbox: `async for msg in ctx.inbox` or `await ctx.inbox.receive()`.

    Iterating acknowledges each message when the next one is asked for (so a
    crash while handling one redelivers it); `await inbox.ack(msg)` acknowledges
    explicitly.
    """

    def __init__(self, boxes: Mailboxes, agent: str,
                 on_receive: Callable[[], None] = lambda: None) -> None:
        self._boxes = boxes
        self.agent = agent
        self._next: int | None = None
        self._state = None
        self.on_receive = on_receive

    async def _acked_state(self):
        if self._state is None:
            self._state = await self._boxes.book.open(acked_stream(self.agent))
        return self._state

    async def receive(self) -> Message:
        """The next message not yet delivered to this reader (waits for one)."""
        state = await self._acked_state()
        if self._next is None:
            self._next = int(state.get("acked", 0)) + 1
        while True:
            found = self._boxes.store.read(inbox_stream(self.agent), self._next, limit=1)
            if found:
                seq, (key, sender, body) = found[0]
                self._next = seq + 1
                self.on_receive()
                return Message(seq, sender, body, key)
            await self._boxes._wait_arrival(self.agent)

    async def ack(self, msg: Message | int) -> None:
        """Durably mark everything up to `msg` as processed (not delivered again)."""
        seq = msg if isinstance(msg, int) else msg.seq
        state = await self._acked_state()
        if seq > int(state.get("acked", 0)):
            await state.set("acked", seq)
