"""The rollouts room and the supervisor's new abilities inside one runtime (trio, in
process, real store and agents): rollback by request, degrade, gates on metrics and
heartbeats, exec programs, kept releases, and the windows a crash could open."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio

from runtime.app import Runtime, run_runtime
from runtime.config import load_config
from runtime.control.dispatch import Caller
from runtime.control.errors import MethodError
from runtime.releases import ReleaseStore
from tests.rollouts.versions import starts, write_version

ROLE = Caller("rule", "test")


async def call(rt: Runtime, method: str, **params: Any) -> Any:
    return await rt.methods.call(method, params, caller=ROLE)


async def until(condition: Any, what: str, timeout: float = 30) -> Any:
    with trio.move_on_after(timeout):
        while not (value := await condition() if callable(condition) else condition):
            await trio.sleep(0.01)
        return value
    raise AssertionError(f"timed out waiting for {what}")


async def rollout(rt: Runtime, agent: str = "a") -> dict:
    return (await call(rt, "rollout.status", agent=agent))["rollouts"][0]


async def done(rt: Runtime, agent: str = "a") -> dict:
    async def check() -> dict | None:
        ro = (await rollout(rt, agent))["rollout"]
        return ro if ro is not None and ro["done"] else None
    return await until(check, f"the rollout of {agent} to end")


async def row(rt: Runtime, agent: str) -> dict:
    table = (await call(rt, "status", agent=agent))["agents"]
    return dict(zip(table.columns, table.rows[0], strict=True))


@pytest.fixture
async def runtime(tmp_path: Path, template) -> AsyncIterator[Any]:
    started: list[Runtime] = []

    async def start(agents: str, extra: str = '[rollouts]\ngate = "0.3s"\n') -> Runtime:
        path = tmp_path / "outpost.toml"
        path.write_text('[runtime]\ndata_dir = "data"\nrun_dir = "run"\n'
                        'shutdown_timeout_s = 10\n' + extra + "\n" + agents)
        rt = await nursery.start(run_runtime, load_config(path), template)
        started.append(rt)
        return rt
    async with trio.open_nursery() as nursery:
        yield start
        for rt in started:
            rt.request_shutdown()


def agent(v1: Path, name: str = "a", **keys: Any) -> str:
    extra = "".join(f"{k} = {v!r}\n".replace("'", '"') for k, v in keys.items())
    return f'[[agents]]\nname = "{name}"\nentry = "{v1}:run"\n{extra}'


async def test_rollback_by_request_stops_a_gate_and_goes_back_after_a_commit(
        runtime, tmp_path: Path) -> None:
    log = tmp_path / "v.log"
    v1, v2, v3 = (write_version(tmp_path, v, log) for v in ("v1", "v2", "v3"))
    rt = await runtime(agent(v1))
    await call(rt, "deploy", agent="a", path=str(v2), version="2", gate=0.1)
    assert (await done(rt))["phase"] == "committed"
    # During a long gate, a rollback request ends the rollout at once.
    answer = await call(rt, "deploy", agent="a", path=str(v3), version="3", gate=3600)
    assert answer["rollout"]["phase"] == "gating"
    with trio.fail_after(20):
        back = await call(rt, "rollback", agent="a")
    assert back["rollout"]["phase"] == "rolled_back"
    assert back["rollout"]["reason"] == "rollback requested (rule test)"
    assert back["current"]["version"] == "2"
    # After a commit: back to the release before, without a gate; the current one is bad.
    again = await call(rt, "rollback", agent="a")
    assert again["rollout"]["kind"] == "rollback" and again["rollout"]["phase"] == "committed"
    assert again["current"] is None  # the config's own code (v1)
    assert (await row(rt, "a"))["release"] is None
    await until(lambda: _async(starts(log, "a")[-1]["version"] == "v1"), "v1 again")
    statuses = {r["version"]: r["status"] for r in
                (await call(rt, "releases", agent="a"))["releases"]}
    assert statuses == {"2": "bad", "3": "bad"}
    with pytest.raises(MethodError) as nothing:
        await call(rt, "rollback", agent="a")
    assert nothing.value.code == "failed" and "nothing to roll back" in str(nothing.value)


async def _async(value: Any) -> Any:
    return value


async def test_degrade_stops_the_agent_keeps_its_state_and_fails_a_gate(
        runtime, tmp_path: Path) -> None:
    log = tmp_path / "v.log"
    v1, v2 = (write_version(tmp_path, v, log) for v in ("v1", "v2"))
    rt = await runtime(agent(v1))
    await until(lambda: _ticks(rt), "ticks")
    await call(rt, "agent.degrade", agent="a", reason="too many errors")
    status = await row(rt, "a")
    assert status["state"] == "degraded"
    ticks = await _ticks(rt)
    await trio.sleep(0.3)
    assert await _ticks(rt) == ticks  # stopped, not restarted; state kept
    await call(rt, "agent.start", agent="a")
    assert (await row(rt, "a"))["state"] == "running"  # start clears it
    # A rule's degrade fails a gate: the new version is rolled back.
    await call(rt, "deploy", agent="a", path=str(v2), gate=30)
    await call(rt, "agent.degrade", agent="a", reason="rule says so")
    ro = await done(rt)
    assert ro["phase"] == "rolled_back" and "degraded: rule says so" in ro["reason"]
    assert (await row(rt, "a"))["state"] == "running"  # the old version runs again


async def _ticks(rt: Runtime) -> int:
    return (await call(rt, "state.get", agent="a"))["state"].get("ticks", 0)


GAUGE_AGENT = '''
import trio
async def run(ctx):
    errors = ctx.metrics.counter("errors")
    if {bad}:
        errors.add(3)
    while True:
        ctx.heartbeat()
        await trio.sleep({beat})
'''


@pytest.mark.parametrize("case", ["metric", "heartbeat"])
async def test_the_gate_holds_a_new_version_to_its_metric_and_heartbeat(
        runtime, tmp_path: Path, case: str) -> None:
    good = tmp_path / "good.py"
    good.write_text(GAUGE_AGENT.format(bad=False, beat=0.05))
    bad = tmp_path / "bad" / "good.py"
    bad.parent.mkdir()
    bad.write_text(GAUGE_AGENT.format(bad=case == "metric", beat=0.05 if case == "metric"
                                      else 5))
    rt = await runtime(agent(good, gate_metric="errors below 1", heartbeat_timeout_s=1.0))
    await call(rt, "deploy", agent="a", path=str(bad), gate=10)
    ro = await done(rt)
    assert ro["phase"] == "rolled_back"
    assert ("errors rose by 3 (must stay below 1)" if case == "metric"
            else "heartbeat") in ro["reason"], ro["reason"]


EXEC_V = '''#!/bin/sh
echo "{v} $OUTPOST_RELEASE" >> {log}
exec sleep 60
'''


async def test_an_exec_agent_runs_the_deployed_program(runtime, tmp_path: Path) -> None:
    log = tmp_path / "exec.log"
    for v in ("v1", "v2"):
        (tmp_path / v).mkdir()
        prog = tmp_path / v / "prog.sh"
        prog.write_text(EXEC_V.format(v=v, log=log))
        prog.chmod(0o755)
    rt = await runtime(f'[[agents]]\nname = "x"\nkind = "exec"\n'
                       f'command = ["/bin/sh", "{tmp_path / "v1" / "prog.sh"}"]\n')
    await until(lambda: _async(log.exists()), "v1 ran")
    answer = await call(rt, "deploy", agent="x", path=str(tmp_path / "v2" / "prog.sh"),
                        gate=0.2)
    release = answer["rollout"]["release"]
    assert (await done(rt, "x"))["phase"] == "committed"
    assert log.read_text().splitlines()[-1] == f"v2 {release}"


async def test_only_the_last_releases_are_kept(runtime, tmp_path: Path) -> None:
    log = tmp_path / "v.log"
    versions = [write_version(tmp_path, f"v{i}", log) for i in range(1, 6)]
    rt = await runtime(agent(versions[0]), '[rollouts]\ngate = "0.05s"\nkeep_releases = 2\n')
    for i, path in enumerate(versions[1:], 2):
        await call(rt, "deploy", agent="a", path=str(path), version=str(i))
        assert (await done(rt))["phase"] == "committed"
    listed = (await call(rt, "releases", agent="a"))["releases"]
    assert [(r["version"], r["status"]) for r in listed] == [("4", "retired"), ("5", "live")]
    kept = sorted(r["digest"] for r in listed)
    store = ReleaseStore(rt.config.data_dir / "releases")
    # Deleted just after the commit, once the agent is free again.
    await until(lambda: _async(store.digests() == kept), "the older releases deleted")


async def test_a_deploy_repeated_after_its_id_was_lost_still_applies_once(
        runtime, tmp_path: Path) -> None:
    """The crash window between a deploy's effect and its id's record: the rollout record
    itself carries the request id, so a retry finds it. Likewise a send's request id is
    the message's idempotency key, in the message's own transaction."""
    log = tmp_path / "v.log"
    v1, v2 = (write_version(tmp_path, v, log) for v in ("v1", "v2"))
    rt = await runtime(agent(v1))
    first = await call(rt, "deploy", agent="a", path=str(v2), request_id="d-1")
    await done(rt)
    sent = await call(rt, "send", agent="a", message="m", request_id="s-1")
    rt.mutations.ledger = None  # as if the runtime died before the ids were stored
    again = await call(rt, "deploy", agent="a", path=str(v2), request_id="d-1")
    assert again["rollout"]["id"] == first["rollout"]["id"]
    assert (await call(rt, "send", agent="a", message="m", request_id="s-1")) == sent
    assert len(starts(log, "a", "v2")) == 1


SLOW_STOP = '''
import trio
async def run(ctx):
    with open({log!r}, "a") as f:
        f.write("start\\n")
    try:
        await trio.sleep_forever()
    finally:
        with open({log!r}, "a") as f:
            f.write("stopping\\n")
        with trio.CancelScope(shield=True):
            await trio.sleep(0.2)
        with open({log!r}, "a") as f:
            f.write("stopped\\n")
'''


async def test_two_concurrent_restarts_of_one_agent_never_interleave(
        runtime, tmp_path: Path) -> None:
    log = tmp_path / "life.log"
    entry = tmp_path / "slow.py"
    entry.write_text(SLOW_STOP.format(log=str(log)))
    rt = await runtime(agent(entry))
    await until(lambda: _async(log.exists()), "the first start")
    outcomes: list[str] = []

    async def restart(wait: bool) -> None:
        try:
            await call(rt, "agent.restart", agent="a", wait=wait)
            outcomes.append("done")
        except MethodError as exc:
            outcomes.append(exc.code)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(restart, True)
        nursery.start_soon(restart, True)
    assert outcomes == ["done", "done"]
    # Two whole restarts, one after the other: a stop never begins before the last ended.
    assert log.read_text().split() == ["start", "stopping", "stopped", "start",
                                       "stopping", "stopped", "start"]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(restart, False)
        nursery.start_soon(restart, False)
    assert sorted(outcomes[2:]) == ["busy", "done"]
