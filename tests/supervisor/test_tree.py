"""The supervision tree with real task agents: strategies, restart types, escalation,
dependencies, backoff bounds and the error budget. Timing is read from recorded events."""

from __future__ import annotations

from pathlib import Path

import pytest

from runtime.config import AgentSpec
from runtime.config.schema import GroupSpec, SupervisorSection
from runtime.supervisor import InvalidReloadError, SupervisorError, UnknownAgentError
from tests.supervisor.harness import fixture, running

CTRL = fixture("controlled.py")


def ctrl(name: str, **kw) -> AgentSpec:
    return AgentSpec(name=name, entry=CTRL, **kw)


async def started(h, *names: str, times: int = 1) -> None:
    await h.until(lambda: all(len(h.of("start", n)) >= times and h.state(n) == "running"
                              for n in names), what=f"{names} started {times}x")


@pytest.mark.parametrize("strategy, restarted", [
    ("one_for_one", {"b"}),
    ("one_for_all", {"a", "b", "c"}),
    ("rest_for_one", {"b", "c"}),
])
async def test_strategies_restart_exactly_the_affected_children(
        tmp_path: Path, strategy: str, restarted: set[str]) -> None:
    group = GroupSpec("g", strategy=strategy)
    specs = [ctrl(n, group="g") for n in ("a", "b", "c")]
    async with running(tmp_path, specs, (group,)) as h:
        await started(h, "a", "b", "c")
        await h.send("b", "crash")
        await started(h, *restarted, times=2)
        # Let anything else that would (wrongly) restart show itself: wait for a marker
        # message to be processed by every agent after the restarts.
        for n in ("a", "b", "c"):
            await h.send(n, "ready")
        await h.until(lambda: all(h.sup.find(n).ready.is_set() for n in "abc"))
        starts = {n: len(h.of("start", n)) for n in "abc"}
        assert starts == {n: 2 if n in restarted else 1 for n in "abc"}
        stopped = [e["agent"] for e in h.of("exit") if e["stopped"]]
        # Siblings are stopped in reverse start order before anything restarts.
        assert stopped == sorted(restarted - {"b"}, reverse=True)
        if strategy != "one_for_one":
            last_stop = max(e["t"] for e in h.of("exit"))
            first_restart = min(e["t"] for n in restarted for e in h.of("start", n)[1:])
            assert last_stop <= first_restart
            # ...and restarted in start order.
            order = [e["agent"] for e in h.of("start") if e["agent"] in restarted][len(restarted):]
            assert order == sorted(restarted)
        assert all(h.state(n) == "running" for n in "abc")


@pytest.mark.parametrize("restart, body, expect_restart", [
    ("permanent", "return", True), ("permanent", "crash", True),
    ("transient", "return", False), ("transient", "crash", True),
    ("temporary", "return", False), ("temporary", "crash", False),
])
async def test_restart_types(tmp_path: Path, restart: str, body: str,
                             expect_restart: bool) -> None:
    async with running(tmp_path, [ctrl("x", restart=restart), ctrl("marker_auto")]) as h:
        await started(h, "x", "marker_auto")
        await h.send("x", body)
        await h.until(lambda: h.of("exit", "x"), what="x exit")
        if expect_restart:
            await started(h, "x", times=2)
        else:
            await h.until(lambda: h.state("x") == "stopped")
            assert h.of("restart", "x") == []
        assert len(h.of("start", "x")) == (2 if expect_restart else 1)
        assert h.of("exit", "x")[0]["failed"] == (body == "crash")


async def test_escalation_stops_the_group_in_reverse_and_the_parent_restarts_it(
        tmp_path: Path) -> None:
    inner = GroupSpec("inner", max_restarts=2, restart_window_s=60)
    specs = [ctrl("first", group="inner"), AgentSpec(name="crasher", entry=fixture(
        "crash_now.py"), group="inner", max_restarts=100), ctrl("last", group="inner"),
        ctrl("outside")]
    async with running(tmp_path, specs, (inner,)) as h:
        await h.until(lambda: h.of("escalation"), what="escalation")
        esc = h.of("escalation")[0]
        assert esc["group"] == "/inner" and esc["trigger"] == "crasher"
        # Siblings of the failing child were stopped in reverse start order.
        await h.until(lambda: len(h.of("start", "first")) >= 2, what="group restarted")
        stops = [e["agent"] for e in h.events
                 if e["type"] == "exit" and e.get("stopped") and e["t"] >= esc["t"]]
        assert stops[:2] == ["last", "first"]
        group_restart = h.of("restart", None, group="/inner")
        assert group_restart and group_restart[0]["t"] >= esc["t"]
        # The agent outside the failing subtree never noticed.
        assert len(h.of("start", "outside")) == 1 and h.state("outside") == "running"
        assert h.gave_up == []


async def test_root_giving_up_reports_and_keep_running_marks_failed(tmp_path: Path) -> None:
    specs = [AgentSpec(name="crasher", entry=fixture("crash_now.py"), max_restarts=100),
             ctrl("bystander")]
    root = SupervisorSection(max_restarts=3, restart_window_s=60, on_give_up="keep_running")
    async with running(tmp_path, specs, root=root) as h:
        await h.until(lambda: h.of("give-up", None, group="/"), what="root give-up")
        assert h.gave_up == []  # keep_running: the runtime is not asked to stop
        await h.until(lambda: all(r["state"] == "failed" for r in h.sup.status()))
        assert h.sup.root_failure and "more than 3 restarts" in h.sup.root_failure
        # `outpost restart NAME` revives an agent of the failed tree.
        await h.sup.restart_agent("bystander")
        await started(h, "bystander", times=2)
    specs = [AgentSpec(name="crasher", entry=fixture("crash_now.py"), max_restarts=100)]
    async with running(tmp_path / "stop", specs, root=SupervisorSection(max_restarts=2)) as h:
        await h.until(lambda: h.gave_up, what="root give-up with on_give_up=stop")
        assert "more than 2 restarts" in h.gave_up[0]


async def test_dependents_start_only_after_readiness(tmp_path: Path) -> None:
    specs = [ctrl("db"), ctrl("api", depends_on=("db",)), ctrl("free_auto")]
    async with running(tmp_path, specs) as h:
        await started(h, "db", "free_auto")
        assert h.state("api") == "starting" and h.of("start", "api") == []
        assert h.of("waiting", "api")
        await h.send("db", "ready")
        await started(h, "api")
        ready = h.of("ready", "db")[0]["t"]
        assert h.of("start", "api")[0]["t"] >= ready


async def test_backoff_bounds_on_recorded_timestamps(tmp_path: Path) -> None:
    spec = AgentSpec(name="c", entry=fixture("crash_now.py"), backoff_initial_s=0.04,
                     backoff_multiplier=2, backoff_max_s=0.2, backoff_jitter=0.25,
                     max_restarts=100)
    async with running(tmp_path, [spec]) as h:
        await h.until(lambda: len(h.of("start", "c")) >= 7, what="7 starts")
    exits, starts, restarts = h.of("exit", "c"), h.of("start", "c"), h.of("restart", "c")
    for n in range(1, 7):
        nominal = min(0.2, 0.04 * 2 ** (n - 1))
        chosen = restarts[n - 1]["delay_s"]
        assert nominal * 0.75 - 1e-9 <= chosen <= min(0.2, nominal * 1.25) + 1e-9, (n, chosen)
        gap = starts[n]["t"] - exits[n - 1]["t"]
        # Never early; late only by scheduling (generous: a shared 2-core machine).
        assert chosen <= gap + 0.002 and gap <= chosen + 0.25, (n, chosen, gap)


async def test_backoff_resets_after_stable_uptime(tmp_path: Path) -> None:
    spec = ctrl("s", backoff_initial_s=0.01, backoff_multiplier=10, backoff_max_s=5,
                backoff_reset_s=0.2, max_restarts=100)
    async with running(tmp_path, [spec]) as h:
        for n in range(1, 4):
            await started(h, "s", times=n)
            # The agent stays up past backoff_reset_s before it is crashed.
            await h.until(lambda: (h.sup.find("s").uptime() or 0) > 0.25, what="uptime > reset")
            await h.send("s", "crash")
        await started(h, "s", times=4)
        delays = [e["delay_s"] for e in h.of("restart", "s")]
        assert delays == [0.01, 0.01, 0.01]  # never grows: every run was stable


async def test_error_budget_then_restart_agent_clears_it(tmp_path: Path) -> None:
    spec = AgentSpec(name="c", entry=fixture("crash_now.py"), max_restarts=3,
                     restart_window_s=60)
    async with running(tmp_path, [spec, ctrl("other_auto")]) as h:
        await h.until(lambda: h.state("c") == "failed", what="failed")
        assert len(h.of("start", "c")) == 4 and h.of("give-up", "c")
        assert h.state("other_auto") == "running"
        n = len(h.of("start", "c"))
        await h.sup.restart_agent("c")
        await h.until(lambda: h.state("c") == "failed" and len(h.of("start", "c")) == n + 4,
                      what="a fresh budget spent again")
        with pytest.raises(UnknownAgentError, match="no agent named 'nope'"):
            await h.sup.restart_agent("nope")


async def test_stop_start_and_reload_leave_unchanged_agents_alone(tmp_path: Path) -> None:
    specs = [ctrl("keep_auto"), ctrl("change_auto"), ctrl("drop_auto")]
    async with running(tmp_path, specs) as h:
        await started(h, "keep_auto", "change_auto", "drop_auto")
        await h.sup.stop_agent("keep_auto")
        assert h.state("keep_auto") == "stopped"
        await h.sup.start_agent("keep_auto")
        await started(h, "keep_auto", times=2)
        result = await h.sup.reload([ctrl("keep_auto"), ctrl("change_auto", max_restarts=5),
                                     ctrl("new_auto")])
        assert result == {"added": ["new_auto"], "removed": ["drop_auto"],
                          "changed": ["change_auto"], "unchanged": ["keep_auto"]}
        await started(h, "new_auto")
        await started(h, "change_auto", times=2)
        assert len(h.of("start", "keep_auto")) == 2  # untouched by the reload
        assert h.sup.find("drop_auto") is None
        assert [r["name"] for r in h.sup.status()] == ["keep_auto", "change_auto", "new_auto"]


async def test_reload_adds_a_group_with_its_agents_and_changes_strategies(tmp_path: Path) -> None:
    async with running(tmp_path, [ctrl("a_auto")]) as h:
        await started(h, "a_auto")
        from runtime.config import Config
        config = Config(path=tmp_path / "x.toml", data_dir=tmp_path, run_dir=tmp_path,
                        agents=(ctrl("a_auto"), ctrl("b_auto", group="g"),
                                ctrl("c_auto", group="g")),
                        groups=(GroupSpec("g", strategy="one_for_all"),),
                        supervisor=SupervisorSection(max_restarts=50))
        result = await h.sup.reload(config)
        assert result["added"] == ["b_auto", "c_auto"] and result["unchanged"] == ["a_auto"]
        await started(h, "b_auto", "c_auto")
        assert len(h.of("start", "b_auto")) == 1 and len(h.of("start", "c_auto")) == 1
        assert {r["name"]: r["group"] for r in h.sup.status()} == {
            "a_auto": "/", "b_auto": "/g", "c_auto": "/g"}
        await h.send("c_auto", "crash")  # one_for_all inside the new group
        await started(h, "b_auto", "c_auto", times=2)
        assert len(h.of("start", "a_auto")) == 1


async def test_a_reload_that_cannot_be_built_is_refused_and_changes_nothing(
        tmp_path: Path) -> None:
    async with running(tmp_path, [ctrl("a_auto")]) as h:
        await started(h, "a_auto")
        for bad, why in [
                ([ctrl("a_auto"), ctrl("b_auto", group="nowhere")], "'nowhere' is not a defined"),
                ([ctrl("x_auto", depends_on=("y_auto",)), ctrl("y_auto", depends_on=("x_auto",))],
                 "depends_on forms a cycle")]:
            with pytest.raises(InvalidReloadError, match=why) as refused:
                await h.sup.reload(bad)
            assert isinstance(refused.value, SupervisorError)
            assert str(refused.value).startswith("reload refused, nothing was changed: ")
        assert [r["name"] for r in h.sup.status()] == ["a_auto"] and h.of("reload") == []
        assert h.state("a_auto") == "running" and len(h.of("start", "a_auto")) == 1
        assert "a_auto" in h.sup.directory and "b_auto" not in h.sup.directory
