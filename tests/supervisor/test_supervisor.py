"""The supervisor with real task agents, a real store and a real segment."""

from __future__ import annotations

import itertools
from pathlib import Path

import trio

from runtime.agents import AgentContext, state_stream
from runtime.config import AgentSpec
from runtime.store import StateBook, open_store
from runtime.supervisor import Supervisor, next_backoff
from shm import Segment
from tests.runtime_proc import FIXTURE_AGENTS


async def supervise(tmp_path: Path, specs: tuple[AgentSpec, ...], until) -> Supervisor:
    """Run `specs` until `until(supervisor)` holds (checked after every scheduling pass)."""
    async with open_store(tmp_path / "data") as store:
        segment = Segment.create(tmp_path / "seg.shm", 64)
        book = StateBook(store)

        async def make_context(spec: AgentSpec) -> AgentContext:
            return AgentContext(spec.name, await book.open(state_stream(spec.name)), segment)

        sup = Supervisor(specs, make_context)
        async with trio.open_nursery() as nursery:
            await nursery.start(sup.run)
            with trio.fail_after(20):
                while not until(sup):
                    await trio.sleep(0.001)
            await sup.stop()
        sup.book = book  # for assertions on state
        segment.close()
    return sup


def flaky_spec(**kw) -> AgentSpec:
    return AgentSpec(name="flaky", entry=f"{FIXTURE_AGENTS / 'flaky.py'}:run", **kw)


async def test_an_agent_that_raises_is_restarted_and_finds_its_state(tmp_path: Path) -> None:
    sup = await supervise(tmp_path, (flaky_spec(),),
                          lambda s: s.children[0].restarts >= 3
                          and s.children[0].state == "running")
    child = sup.children[0]
    assert child.restarts == 3
    assert child.last_exit == "stopped"  # by sup.stop(); the failures were before
    state = (await sup.book.open(state_stream("flaky"))).to_dict()
    # Each start saw exactly the count its predecessors left: 3 increments per run.
    assert state["starts"] == 4
    for start in range(1, 5):
        assert state[f"seen_at_start_{start}"] == 3 * (start - 1)
    assert child.state == "stopped"  # after stop()


async def test_error_budget_marks_the_agent_failed(tmp_path: Path) -> None:
    sup = await supervise(tmp_path, (flaky_spec(max_restarts=1, restart_window_s=60),),
                          lambda s: s.children[0].state == "failed")
    assert sup.children[0].state == "failed"
    assert sup.children[0].restarts == 1


async def test_temporary_agent_is_not_restarted(tmp_path: Path) -> None:
    sup = await supervise(tmp_path, (flaky_spec(restart="temporary"),),
                          lambda s: s.children[0].done.is_set())
    assert sup.children[0].restarts == 0
    assert sup.children[0].state == "stopped"


def test_backoff_grows_and_is_capped() -> None:
    spec = AgentSpec(name="a", entry="m:f", backoff_initial_s=0.1, backoff_multiplier=2,
                     backoff_max_s=0.5)
    delays = [next_backoff(spec, n) for n in range(1, 7)]
    assert delays[0] == 0.1
    assert all(a <= b for a, b in itertools.pairwise(delays))
    assert max(delays) == 0.5
