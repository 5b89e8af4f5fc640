"""Run a Supervisor in the test's trio loop over a real store, segment and template process."""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import trio

from runtime.agents import AgentContext, state_stream
from runtime.agents.directory import AgentDirectory
from runtime.agents.mailbox import Mailboxes
from runtime.config import AgentSpec
from runtime.config.schema import GroupSpec, SupervisorSection
from runtime.store import StateBook, open_store
from runtime.supervisor import Supervisor
from runtime.supervisor.template import Template, TemplateClient
from shm import Segment
from shm.metrics import heartbeat_age
from tests.runtime_proc import FIXTURE_AGENTS


def fixture(name: str, func: str = "run") -> str:
    return f"{FIXTURE_AGENTS / name}:{func}"


@dataclass
class Harness:
    """A running supervisor plus every event it emitted, stamped with time.monotonic()."""

    sup: Supervisor
    mailboxes: Mailboxes
    book: StateBook
    segment: Segment
    tmp: Path
    events: list[dict] = field(default_factory=list)
    gave_up: list[str] = field(default_factory=list)
    changed: trio.Event = field(default_factory=trio.Event)  # set (and replaced) per event

    def of(self, type_: str, agent: str | None = None, **match: Any) -> list[dict]:
        return [e for e in self.events if e["type"] == type_
                and (agent is None or e["agent"] == agent)
                and all(e.get(k) == v for k, v in match.items())]

    async def until(self, condition: Callable[[], Any], timeout: float = 20.0,
                    what: str = "condition") -> Any:
        """Wait (re-checking after every event) until `condition()` is truthy."""
        with trio.move_on_after(timeout):
            while True:
                value = condition()
                if value:
                    return value
                await trio.sleep(0.002)
        raise AssertionError(f"timed out after {timeout}s waiting for {what}; events: "
                             + repr([(e['type'], e['agent']) for e in self.events[-30:]]))

    def note(self, event: dict) -> None:
        self.events.append(event)
        self.changed.set()
        self.changed = trio.Event()

    async def wait_for(self, condition: Callable[[], Any]) -> Any:
        """Wait, without polling, until `condition()` holds after some event.

        For tests under trio's MockClock, where a polling loop's sleeps would
        let the clock jump past what the test waits for.
        """
        while not (value := condition()):
            await self.changed.wait()
        return value

    def starts(self, name: str) -> list[list[str]]:
        path = self.tmp / f"{name}.starts"
        return [line.split() for line in path.read_text().splitlines()] if path.exists() else []

    def state(self, name: str) -> int:
        return self.sup.find(name).state

    async def send(self, to: str, msg: Any) -> int:
        return await self.mailboxes.send(to, msg)


@asynccontextmanager
async def running(tmp: Path, specs: tuple[AgentSpec, ...] | list[AgentSpec],
                  groups: tuple[GroupSpec, ...] = (), root: SupervisorSection | None = None,
                  template: Template | None = None) -> AsyncIterator[Harness]:
    """The supervisor running `specs` (and `groups`) until the block ends, then stopped."""
    before = os.environ.get("OUTPOST_TEST_DIR")
    os.environ["OUTPOST_TEST_DIR"] = str(tmp)  # task agents read it; restored afterwards
    try:
        async with _running(tmp, specs, groups, root, template) as h:
            yield h
    finally:
        if before is None:
            os.environ.pop("OUTPOST_TEST_DIR", None)
        else:
            os.environ["OUTPOST_TEST_DIR"] = before


@asynccontextmanager
async def _running(tmp: Path, specs: tuple[AgentSpec, ...] | list[AgentSpec],
                   groups: tuple[GroupSpec, ...], root: SupervisorSection | None,
                   template: Template | None) -> AsyncIterator[Harness]:
    async with open_store(tmp / "data") as store:
        segment = Segment.create(tmp / "seg.shm", 256)
        book = StateBook(store)
        directory = AgentDirectory()
        mailboxes = Mailboxes(store, book, directory)
        harness: list[Harness] = []

        def emit(type_: str, agent: str | None = None, **fields: Any) -> None:
            harness[0].note({"type": type_, "agent": agent, "t": time.monotonic(), **fields})

        async def make_context(spec: AgentSpec) -> AgentContext:
            return AgentContext(spec.name, await book.open(state_stream(spec.name)), segment,
                                mailboxes)

        def beat_age(agent: str) -> float | None:
            found = segment.find(f"{agent}:heartbeat")
            return None if found is None else heartbeat_age(segment.slot_words(found[0]))

        client = None if template is None else TemplateClient(template)
        gave_up: list[str] = []
        sup = Supervisor(tuple(specs), make_context, beat_age, emit, groups=groups, root=root,
                         template=client, segment=segment, book=book, mailboxes=mailboxes,
                         directory=directory, log_dir=tmp / "log", data_dir=tmp / "data",
                         on_root_give_up=gave_up.append)
        h = Harness(sup, mailboxes, book, segment, tmp, [], gave_up)
        harness.append(h)
        async with trio.open_nursery() as nursery:
            if client is not None:
                await nursery.start(client.run)
            await nursery.start(sup.run)
            try:
                yield h
            finally:
                with trio.CancelScope(shield=True), trio.fail_after(30):
                    await sup.stop()
                nursery.cancel_scope.cancel()
        segment.unlink()
        segment.close()


def zombies_of(pid: int) -> list[psutil.Process]:
    """Zombie descendants of `pid` (children not reaped by their parent)."""
    try:
        kids = psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []
    out = []
    for p in kids:
        try:
            if p.status() == psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.Error:
            pass
    return out


def gone(pid: int) -> bool:
    """Not running: no such process, or only a zombie left for init to reap."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True
