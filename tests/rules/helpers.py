"""What the rules and jobs tests share: configs from TOML text, and the control methods
as a plain table of async handlers (the `Methods` port without the control server)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import trio

from runtime.config import Config, load_config
from runtime.control.dispatch import INTERNAL, Caller, Methods
from runtime.control.params import accepts
from runtime.events import EventLog
from runtime.store import Store, open_store


def config_from(tmp_path: Path, text: str, agents: tuple[str, ...] = ("a", "b")) -> Config:
    """A validated config: `text` (rules, jobs...) after [[agents]] named `agents`."""
    path = tmp_path / "outpost.toml"
    blocks = "".join(f'[[agents]]\nname = "{n}"\nentry = "x.py:run"\n\n' for n in agents)
    path.write_text('[runtime]\ndata_dir = "data"\nrun_dir = "run"\n\n' + blocks + text)
    return load_config(path)


class HandlerTable(Methods):
    """The runtime's Methods over plain async handlers (each taking any params), recording
    every call with its caller."""

    def __init__(self, handlers: Mapping[str, Callable[[dict], Awaitable[Any]]] | None = None
                 ) -> None:
        super().__init__()
        self.add({name: accepts(open=True)(handler) for name, handler in
                  (handlers or {}).items()})
        self.calls: list[tuple[str, dict, Caller]] = []

    async def call(self, method: str, params: Mapping[str, Any] | None = None, *,
                   caller: Caller = INTERNAL) -> Any:
        self.calls.append((method, dict(params or {}), caller))
        return await super().call(method, params, caller=caller)

    def of(self, method: str) -> list[dict]:
        return [params for m, params, _ in self.calls if m == method]


@contextlib.asynccontextmanager
async def event_log(path: Path) -> AsyncIterator[tuple[Store, EventLog]]:
    """A real store and event log, its writer task running."""
    async with open_store(path) as store:
        events = EventLog(store)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(events.run)
            yield store, events
            nursery.cancel_scope.cancel()


async def wait_for_event(follower: trio.MemoryReceiveChannel, type_: str, count: int = 1,
                         timeout: float | None = 60, **fields: Any) -> list[dict]:
    """Receive from `follower` until `count` events of `type_` with `fields` arrived.

    Pass timeout=None under an autojump clock: it would jump to the deadline while the
    store's writer thread works.
    """
    found: list[dict] = []
    with trio.fail_after(timeout if timeout is not None else float("inf")):
        async for event in follower:
            if event["type"] == type_ and all(event.get(k) == v for k, v in fields.items()):
                found.append(event)
                if len(found) == count:
                    return found
    raise AssertionError(f"the event stream ended before {count} {type_} event(s)")


async def settle(events: EventLog, follower: trio.MemoryReceiveChannel) -> None:
    """Return once every event emitted so far is durable, seen on `follower`, and every
    other follower (the engine) has dealt with it, and what they emitted meanwhile is
    durable too: a marker event, all tasks idle, a second marker."""
    for _ in range(2):
        events.emit("test-marker")
        await wait_for_event(follower, "test-marker", timeout=None)
        await trio.testing.wait_all_tasks_blocked()


def _dead_now(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        with open(f"/proc/{pid}/stat") as f:  # a zombie waiting to be reaped counts
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (ProcessLookupError, FileNotFoundError):
        return True


async def dies(pid: int) -> bool:
    """Whether `pid` dies within 10 s (a SIGKILL is delivered, not awaited, by kill())."""
    with trio.move_on_after(10):
        while not _dead_now(pid):
            await trio.sleep(0.01)
    return _dead_now(pid)
