"""The rollout state machine: pure transitions, no trio, no I/O."""

from __future__ import annotations

import pytest

from runtime.rollouts import machine as m


def release(n: int, digest: str | None = None) -> m.Release:
    d = digest or f"{n:02x}" * 32
    return m.Release(d[:12], d, f"v{n}", float(n), entry="a.py:run")


INSTANCES = ("w@1", "w@2", "w@3")


@pytest.mark.parametrize(("steps", "count", "plan"), [
    ((1, "50%", "100%"), 3, (1, 2, 3)),
    ((1, "50%", "100%"), 1, (1,)),
    ((1, "50%", "100%"), 10, (1, 5, 10)),
    ((2,), 5, (2, 5)),  # always ends with every instance
    ((5, 1, "10%"), 3, (3,)),  # capped, and never going down
])
def test_steps_resolve_to_increasing_counts_ending_with_all(steps, count, plan) -> None:
    assert m.resolve_steps(steps, count) == plan


def test_a_deploy_goes_step_by_step_to_a_commit() -> None:
    rec = m.begin(m.AgentRecord("w"), release(1), INSTANCES, (1, "50%", "100%"), 5.0, 100.0,
                  request_id="r1")
    ro = rec.rollout
    assert (ro.phase, ro.step, ro.switched, ro.step_instances(), ro.request_id) == \
        (m.SWITCHING, 0, ("w@1",), ("w@1",), "r1")
    rec = m.marked(rec, {"w@1": 7}, 101.0)
    rec = m.switched(rec, 101.0)
    assert rec.rollout.phase == m.GATING
    rec, dropped = m.gate_passed(rec, 106.0, keep=3)
    ro = rec.rollout
    assert (ro.phase, ro.step, ro.switched, ro.step_instances()) == \
        (m.SWITCHING, 1, ("w@1", "w@2"), ("w@2",)) and dropped == []
    rec = m.switched(m.marked(rec, {"w@2": 3}, 107.0), 107.0)
    rec, _ = m.gate_passed(rec, 112.0, keep=3)
    rec = m.switched(m.marked(rec, {"w@3": 9}, 113.0), 113.0)
    rec, _ = m.gate_passed(rec, 118.0, keep=3)
    assert rec.rollout.phase == m.COMMITTED and rec.current == release(1).id
    assert rec.release(rec.current).status == m.LIVE
    assert dict(rec.rollout.marks) == {"w@1": 7, "w@2": 3, "w@3": 9}
    assert m.AgentRecord.from_data(rec.to_data()) == rec  # what the store keeps


def test_a_failed_gate_rolls_back_and_marks_the_release_bad() -> None:
    rec = m.begin(m.AgentRecord("a"), release(1), ("a",), (1,), 5.0, 0.0)
    rec, _ = m.gate_passed(m.switched(rec, 0.0), 5.0, 3)
    rec = m.begin(rec, release(2), ("a",), (1,), 5.0, 10.0)
    rec = m.gate_failed(m.switched(rec, 10.0), "a raised boom", 12.0)
    assert rec.rollout.phase == m.ROLLING_BACK
    rec = m.rolled_back(rec, 13.0)
    assert rec.rollout.phase == m.ROLLED_BACK and rec.current == release(1).id
    assert rec.release(release(2).id).status == m.BAD
    with pytest.raises(m.RolloutRefused) as refused:
        m.begin(rec, release(2), ("a",), (1,), 5.0, 20.0)
    assert refused.value.code == "failed" and "--force" in str(refused.value)
    forced = m.begin(rec, release(2), ("a",), (1,), 5.0, 20.0, force=True)
    assert forced.release(release(2).id).status == m.STAGED
    with pytest.raises(m.RolloutRefused) as already:
        m.begin(rec, release(1), ("a",), (1,), 5.0, 20.0)
    assert already.value.code == "already"
    with pytest.raises(m.RolloutRefused) as busy:
        m.begin(forced, release(3), ("a",), (1,), 5.0, 20.0)
    assert busy.value.code == "busy"


@pytest.mark.parametrize(("phase", "after"), [
    (m.SWITCHING, m.ROLLING_BACK), (m.GATING, m.ROLLING_BACK),
    (m.ROLLING_BACK, m.ROLLING_BACK), (m.COMMITTED, m.COMMITTED),
    (m.ROLLED_BACK, m.ROLLED_BACK)])
def test_an_interrupted_deploy_rolls_back_at_the_next_start(phase: str, after: str) -> None:
    rec = m.begin(m.AgentRecord("a"), release(1), ("a",), (1,), 5.0, 0.0)
    rec = m.AgentRecord.from_data({**rec.to_data(), "rollout": {**rec.to_data()["rollout"],
                                                                 "phase": phase}})
    found = m.recover(rec, 50.0)
    assert found.rollout.phase == after
    if phase in (m.SWITCHING, m.GATING):
        assert found.rollout.reason == m.INTERRUPTED
        assert m.rolled_back(found, 51.0).release(release(1).id).status == m.ABORTED


def test_a_rollback_after_a_commit_goes_to_the_release_before_and_resumes_if_interrupted(
        ) -> None:
    rec = m.AgentRecord("a")
    for n in (1, 2):
        rec = m.begin(rec, release(n), ("a",), (1,), 5.0, float(n))
        rec, _ = m.gate_passed(m.switched(rec, n), n, 3)
    rec = m.begin_rollback(rec, ("a",), 10.0)
    assert (rec.rollout.kind, rec.rollout.release, rec.rollout.gate_s) == \
        (m.ROLLBACK, release(1).id, 0.0)
    assert rec.release(release(2).id).status == m.BAD
    assert m.recover(rec, 11.0).rollout.phase == m.SWITCHING  # goes on, no gate to finish
    rec, _ = m.gate_passed(m.switched(rec, 11.0), 11.0, 3)
    assert rec.current == release(1).id and rec.release(release(1).id).status == m.LIVE
    rec = m.begin_rollback(rec, ("a",), 12.0)
    rec, _ = m.gate_passed(m.switched(rec, 12.0), 12.0, 3)
    assert rec.current is None  # the config's own code
    with pytest.raises(m.RolloutRefused, match="nothing to roll back"):
        m.begin_rollback(rec, ("a",), 13.0)


def test_only_the_newest_releases_are_kept_and_bad_digests_are_remembered() -> None:
    rec = m.AgentRecord("a")
    rec = m.begin(rec, release(1), ("a",), (1,), 5.0, 1.0)
    rec, _ = m.gate_passed(m.switched(rec, 1.0), 1.0, 2)
    rec = m.begin(rec, release(2), ("a",), (1,), 5.0, 2.0)
    rec = m.rolled_back(m.gate_failed(m.switched(rec, 2.0), "boom", 2.0), 2.0)
    dropped_all = []
    for n in (3, 4):
        rec = m.begin(rec, release(n), ("a",), (1,), 5.0, float(n))
        rec, dropped = m.gate_passed(m.switched(rec, n), n, 2)
        dropped_all += dropped
    assert [r.id for r in rec.releases] == [release(3).id, release(4).id]
    assert dropped_all == [release(1).digest, release(2).digest]
    assert rec.bad_reason(release(2).digest) == "boom"  # gone from the list, still bad
    # The current release is kept even when it is the oldest.
    rec = m.begin(rec, release(5), ("a",), (1,), 5.0, 5.0)
    rec = m.rolled_back(m.gate_failed(m.switched(rec, 5.0), "x", 5.0), 5.0)
    kept, _ = m.prune(rec, 1)
    assert [r.id for r in kept.releases] == [release(4).id]
