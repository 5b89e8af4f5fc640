"""Rollouts in real runtimes: gates, rollback with the state at the mark, tampered
releases, kill -9 in each phase, a canary over instances."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from runtime.control.client import RemoteError
from tests.rollouts.versions import (
    lines,
    rollout_of,
    starts,
    wait_phase,
    wait_start,
    write_version,
)
from tests.runtime_proc import wait_for, write_config


def agent_config(tmp: Path, v1: Path, kind: str = "task", extra_agent: str = "",
                 rollouts: str = 'gate = "1s"') -> Path:
    agent = (f'[[agents]]\nname = "a"\nkind = "{kind}"\nentry = "{v1}:run"\n'
             f'shutdown_timeout_s = 60\n{extra_agent}\n')
    return write_config(tmp, agent, f"[rollouts]\n{rollouts}\n")


def deploy(rt, path: Path, **params) -> dict:
    with rt.client() as c:
        return c.call("deploy", agent=params.pop("agent", "a"), path=str(path), **params)


def state(rt, agent: str = "a") -> dict:
    with rt.client() as c:
        return c.call("state.get", agent=agent)["state"]


def events(rt, type_: str, agent: str | None = None) -> list[dict]:
    with rt.client() as c:
        params = {"type": type_, "limit": 1000}
        if agent:
            params["agent"] = agent
        return c.call("events.query", **params)["events"]


@pytest.mark.parametrize("kind", ["task", "process"])
def test_a_good_version_is_committed_after_its_gate(tmp_path: Path, start_runtime,
                                                     kind: str) -> None:
    log = tmp_path / "versions.log"
    v1 = write_version(tmp_path, "v1", log)
    v2 = write_version(tmp_path, "v2", log)
    rt = start_runtime(agent_config(tmp_path, v1, kind))
    rt.wait_running("a")
    wait_start(log, "a", "v1")
    answer = deploy(rt, v2, version="2.0")
    assert answer["rollout"]["phase"] == "gating"  # answered once the new version runs
    wait_start(log, "a", "v2")
    ro = wait_phase(rt, "a", {"committed", "rolled_back"})
    assert ro["phase"] == "committed", ro
    with rt.client() as c:
        assert rollout_of(c, "a")["current"] == {"release": answer["rollout"]["release"],
                                                 "version": "2.0"}
        row = c.call("status", agent="a")["agents"][0]
        assert (row["state"], row["release"]) == ("running", answer["rollout"]["release"])
        listed = c.call("releases", agent="a")["releases"]
    assert [(r["version"], r["status"], r["current"]) for r in listed] == [("2.0", "live", True)]
    stored = wait_for(lambda: (found := events(rt, "rollout", "a"))[2:] and found,
                      what="the rollout's events stored")  # stored just after they happen
    assert [e["phase"] for e in stored] == ["switching", "gating", "committed"]
    # Committed means kept: the next start of the runtime runs 2.0, not the config's v1.
    assert rt.terminate() == 0
    rt = start_runtime(rt.config)
    wait_start(log, "a", "v2", count=2)
    assert [s["version"] for s in starts(log, "a")] == ["v1", "v2", "v2"]


def test_a_crash_5s_into_a_10s_gate_rolls_back_with_the_state_at_the_mark(
        tmp_path: Path, start_runtime) -> None:
    log = tmp_path / "versions.log"
    v1 = write_version(tmp_path, "v1", log)
    v2 = write_version(tmp_path, "v2", log, crash_after=5.0)
    rt = start_runtime(agent_config(tmp_path, v1, "process", rollouts='gate = "10s"'))
    rt.wait_running("a")
    wait_start(log, "a", "v1")
    wait_for(lambda: state(rt).get("ticks", 0) >= 5, what="v1 ticking")
    deploy(rt, v2)
    at_mark = wait_start(log, "a", "v2")["state"]  # what v2 found: the state at the mark
    assert at_mark["version"] == "v1" and at_mark["ticks"] >= 5
    ro = wait_phase(rt, "a", {"committed", "rolled_back"})
    assert ro["phase"] == "rolled_back" and "crashed on purpose" in ro["reason"], ro
    back = wait_start(log, "a", "v1", count=2)
    assert back["state"] == at_mark  # the old code runs again with the state at the mark
    # ... and v2's writes are not destroyed: they are in the rollback's archive.
    restored = wait_for(lambda: events(rt, "state-restored", "a"), what="state-restored")
    assert restored[-1]["discarded"] >= 1
    archive = Path(restored[-1]["archive"])
    assert any(archive.glob("events-*.opa"))
    from runtime.maintain.archive import read_archive
    kept = read_archive(next(archive.glob("events-*.opa")))
    assert kept[-1][1][1] == "state-before-rollback"
    assert kept[-1][1][3]["state"]["version"] == "v2"
    v2_starts = len(starts(log, "a", "v2"))
    with rt.client() as c:
        listed = c.call("releases", agent="a")["releases"]
        assert [r["status"] for r in listed] == ["bad"]
        assert rollout_of(c, "a")["current"] is None  # back on the config's own code
        # A bad release is not tried again by accident...
        with pytest.raises(RemoteError) as refused:
            c.call("deploy", agent="a", path=str(v2))
        assert refused.value.code == "failed" and "--force" in str(refused.value)
        # ... nor by a reload, nor by a restart of the agent.
        c.call("reload")
        c.call("agent.restart", agent="a")
    wait_start(log, "a", "v1", count=3)
    assert len(starts(log, "a", "v2")) == v2_starts


def test_a_tampered_release_is_refused_with_an_event(tmp_path: Path, start_runtime) -> None:
    log = tmp_path / "versions.log"
    v1 = write_version(tmp_path, "v1", log)
    v2 = write_version(tmp_path, "v2", log)
    rt = start_runtime(agent_config(tmp_path, v1, "process"))
    rt.wait_running("a")
    wait_start(log, "a", "v1")
    answer = deploy(rt, v2, gate=0.2)
    assert wait_phase(rt, "a", {"committed", "rolled_back"})["phase"] == "committed"
    digest = next(r["digest"] for r in rt.client().call("releases", agent="a")["releases"])
    released = tmp_path / "data" / "releases" / digest / "agent.py"
    assert released.is_file()
    os.chmod(released, stat.S_IRUSR | stat.S_IWUSR)
    text = released.read_text()
    assert "'v2'" in text
    released.write_text(text.replace("'v2'", "'evil'"))  # the file changed after the deploy
    with rt.client() as c:
        c.call("agent.restart", agent="a")
    refused = wait_for(lambda: events(rt, "release-refused", "a"), what="release-refused")
    assert answer["rollout"]["release"] in refused[0]["reason"]
    assert "changed after it was deployed" in refused[0]["reason"]
    assert not starts(log, "a", "evil")  # never ran
    with rt.client() as c:
        row = c.call("status", agent="a")["agents"][0]
    assert row["state"] != "running" and "could not start" in (row["last_exit"] or "")


def _deploy_in_background(rt, path: Path) -> None:
    """Deploy without waiting for the answer (the runtime is killed under it)."""
    import threading

    def go() -> None:
        try:
            with rt.client() as c:
                c.timeout = None
                c.call("deploy", agent="a", path=str(path))
        except Exception:
            pass
    threading.Thread(target=go, daemon=True).start()


@pytest.mark.parametrize("phase", ["switching", "gating", "rolling_back"])
def test_kill9_in_each_rollout_phase_ends_in_one_version(tmp_path: Path, start_runtime,
                                                         phase: str) -> None:
    log = tmp_path / "versions.log"
    # switching: v1 takes long to stop; rolling_back: v2 fails its gate, then takes long
    # to stop; gating: a long gate.
    v1 = write_version(tmp_path, "v1", log, slow_stop=30 if phase == "switching" else 0)
    v2 = write_version(tmp_path, "v2", log,
                       unhealthy_after=0.5 if phase == "rolling_back" else None,
                       slow_stop=30 if phase == "rolling_back" else 0)
    gate = "60s" if phase == "gating" else "5s"
    config = agent_config(tmp_path, v1, rollouts=f'gate = "{gate}"')
    rt = start_runtime(config)
    rt.wait_running("a")
    wait_start(log, "a", "v1")
    wait_for(lambda: state(rt).get("ticks", 0) >= 3, what="v1 ticking")
    _deploy_in_background(rt, v2)
    ro = wait_phase(rt, "a", {phase})
    if phase == "switching":
        wait_for(lambda: any(e["what"] == "stopping" for e in lines(log)), what="v1 stopping")
    at_mark = None
    if phase != "switching":
        at_mark = wait_start(log, "a", "v2")["state"]
    if phase == "rolling_back":
        assert "feels unwell" in ro["reason"]
    rt.kill9()
    before = len(starts(log, "a"))
    rt = start_runtime(config)
    rt.wait_running("a")
    wait_for(lambda: len(starts(log, "a")) > before, what="the agent started again")
    after = starts(log, "a")[before:]
    assert [s["version"] for s in after] == ["v1"], after  # one start, the old version
    with rt.client() as c:
        found = rollout_of(c, "a")
        row = c.call("status", agent="a")["agents"][0]
        statuses = [r["status"] for r in c.call("releases", agent="a")["releases"]]
    assert found["rollout"]["phase"] == "rolled_back", found
    assert found["current"] is None and row["release"] is None
    if phase == "rolling_back":
        assert "feels unwell" in found["rollout"]["reason"] and statuses == ["bad"]
    else:
        assert found["rollout"]["reason"].startswith("interrupted") and statuses == ["aborted"]
    if at_mark is not None:  # v2's writes undone, v1's state as it left it
        assert after[0]["state"] == at_mark, (lines(log), rt.log()[-6000:])


def test_a_3_instance_canary_failing_at_step_2_leaves_all_3_on_the_old_version(
        tmp_path: Path, start_runtime) -> None:
    log = tmp_path / "versions.log"
    v1 = write_version(tmp_path, "v1", log)
    v2 = write_version(tmp_path, "v2", log, crash_after=0.3, crash_instance=2)
    config = write_config(tmp_path, f'[[agents]]\nname = "w"\nentry = "{v1}:run"\n'
                          'instances = 3\nsteps = [1, "50%", "100%"]\n',
                          '[rollouts]\ngate = "2s"\n')
    rt = start_runtime(config)
    names = ["w@1", "w@2", "w@3"]
    for name in names:
        rt.wait_running(name)
        wait_start(log, name, "v1")
    answer = deploy(rt, v2, agent="w")
    assert answer["rollout"]["steps"] == [1, 2, 3]
    assert answer["rollout"]["switched"] == ["w@1"]  # the canary first
    ro = wait_phase(rt, "w", {"committed", "rolled_back"})
    assert ro["phase"] == "rolled_back" and ro["step"] == 2, ro
    assert ro["reason"].startswith("w@2 ") and "crashed on purpose" in ro["reason"]
    assert ro["switched"] == ["w@1", "w@2"]
    marks = {n: wait_start(log, n, "v2")["state"] for n in ("w@1", "w@2")}
    assert not starts(log, "w@3", "v2")  # step 3 never came
    for name in ("w@1", "w@2"):  # back on v1, each with its own state at its mark
        assert wait_start(log, name, "v1", count=2)["state"] == marks[name]
    with rt.client() as c:
        rows = {r["name"]: r for r in c.call("status")["agents"]}
    stored = wait_for(lambda: (found := events(rt, "rollout", "w")) and
                      found[-1]["phase"] == "rolled_back" and found, what="rolled_back event")
    phases = [(e["phase"], e["step"]) for e in stored]
    assert {n: (rows[n]["state"], rows[n]["release"]) for n in names} == \
        {n: ("running", None) for n in names}
    assert [s["version"] for s in starts(log, "w@3")] == ["v1"]
    assert ("gating", 1) in phases and ("gating", 2) in phases and ("gating", 3) not in phases


def test_the_cli_follows_a_deploy_to_its_end_and_says_what_happened(
        tmp_path: Path, start_runtime) -> None:
    log = tmp_path / "versions.log"
    v1 = write_version(tmp_path, "v1", log)
    v2 = write_version(tmp_path, "v2", log)
    v3 = write_version(tmp_path, "v3", log, crash_after=0.2)
    rt = start_runtime(agent_config(tmp_path, v1, rollouts='gate = "1s"'))
    rt.wait_running("a")
    good = rt.cli("deploy", "a", str(v2), "--version", "2.0")
    assert good.returncode == 0, good.stderr
    assert good.stdout.splitlines()[-1].endswith("(2.0) committed")
    bad = rt.cli("deploy", "a", str(v3), "--version", "3.0")
    assert bad.returncode == 1
    assert "rolled back to 2.0: a raised RuntimeError: v3 crashed on purpose" in bad.stdout
    status = rt.cli("rollout", "status")
    assert status.returncode == 0
    header, line = status.stdout.splitlines()
    assert header.split() == ["AGENT", "CURRENT", "PHASE", "ROLLOUT", "STEP", "UPDATED",
                              "REASON"]
    assert line.split()[:5] == ["a", "2.0", "rolled_back", "3.0", "1/1"]
    releases = rt.cli("releases", "a").stdout.splitlines()[1:]
    first, second = (r.split() for r in releases)
    assert (first[0], first[2], first[3]) == ("*", "2.0", "live")
    assert (second[1], second[2]) == ("3.0", "bad") and "crashed on purpose" in releases[1]
    again = rt.cli("deploy", "a", str(v2))
    assert again.returncode == 0 and "already runs release" in again.stdout
