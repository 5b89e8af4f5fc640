"""The rollout state machine: pure transitions over one agent's durable record.

No trio, no I/O, `now` is an argument: like runtime.supervisor.policy, every
rule of a rollout is a function from a record (and what happened) to the next
record, and the driver (runtime.rollouts.room) only makes the record durable
and carries out what the new phase asks for. Each agent has one
`AgentRecord`: the releases deployed for it, which one it runs, and its
latest rollout.

A rollout's phases:

    switching (step i) -> gating (step i) -> switching (step i+1) ... -> committed
         \\________________________\\____________> rolling_back -> rolled_back

- **switching**: the instances of step i (all of them before i's count are
  already on the release) are stopped, their state marked, and started on the
  release. `switched` names every instance that is, or may be, on it.
- **gating**: the switched instances must stay healthy for the gate.
- **committed**: the release is the agent's current one (status live).
- **rolling_back**: every switched instance is stopped, its state restored to
  its mark, and started on the previous release again.
- **rolled_back**: the release is marked bad (or aborted, if the rollout was
  only interrupted by a runtime restart) and not used again unless forced.

`recover` is the rule for a record found active at start-up (a kill -9 or a
power loss mid-rollout): a deploy still switching or gating rolls back (its
gate never finished), a rollback or a commit in progress completes. Either
way every instance ends on one release before any agent starts.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any

SWITCHING, GATING, COMMITTED, ROLLING_BACK, ROLLED_BACK = (
    "switching", "gating", "committed", "rolling_back", "rolled_back")
ACTIVE = frozenset({SWITCHING, GATING, ROLLING_BACK})

# Release statuses
STAGED, LIVE, RETIRED, BAD, ABORTED = "staged", "live", "retired", "bad", "aborted"

DEPLOY, ROLLBACK = "deploy", "rollback"  # what a rollout does
INTERRUPTED = "interrupted: the runtime stopped during the rollout"
BAD_KEPT = 32  # bad digests remembered after their release left the list


class RolloutRefused(Exception):
    """A rollout that cannot begin: `code` (a control error code) and a sentence."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Release:
    """One release of an agent: its content (digest), label, what it runs, its fate."""

    id: str
    digest: str
    version: str
    added: float
    entry: str | None = None  # task/process: "file.py:function", relative to the release
    program: str | None = None  # exec: the program's path, relative to the release
    status: str = STAGED
    reason: str | None = None


@dataclass(frozen=True)
class Rollout:
    """One rollout (a deploy, or a rollback to an older release) of one agent."""

    id: int
    kind: str
    release: str | None  # the release rolled out (None: the config's own code)
    previous: str | None  # the release it replaces (None: the config's own code)
    phase: str
    instances: tuple[str, ...]
    steps: tuple[int, ...]  # instances on the release after each step (last = all)
    step: int
    switched: tuple[str, ...]
    marks: tuple[tuple[str, int], ...]  # (instance, its state's seq at the mark)
    gate_s: float
    started: float
    updated: float
    reason: str | None = None  # why it rolled back
    request_id: str | None = None

    @property
    def active(self) -> bool:
        return self.phase in ACTIVE

    def step_instances(self) -> tuple[str, ...]:
        """The instances this step moves onto the release."""
        before = self.steps[self.step - 1] if self.step else 0
        return self.instances[before:self.steps[self.step]]

    def mark_of(self, instance: str) -> int | None:
        return dict(self.marks).get(instance)


@dataclass(frozen=True)
class AgentRecord:
    """Everything durable about one agent's code: its releases, the one it runs, its
    latest rollout, and digests found bad (a bad release is not deployed unless forced)."""

    agent: str
    current: str | None = None
    releases: tuple[Release, ...] = ()
    rollout: Rollout | None = None
    next_rollout: int = 1
    bad: tuple[tuple[str, str], ...] = ()  # (digest, reason) no longer in `releases`

    def release(self, release_id: str | None) -> Release | None:
        return next((r for r in self.releases if r.id == release_id), None)

    def by_digest(self, digest: str) -> Release | None:
        return next((r for r in self.releases if r.digest == digest), None)

    def bad_reason(self, digest: str) -> str | None:
        found = self.by_digest(digest)
        if found is not None:
            return found.reason if found.status == BAD else None
        return dict(self.bad).get(digest)

    def to_data(self) -> dict[str, Any]:
        """Plain data for the store (msgpack)."""
        return asdict(self)

    @classmethod
    def from_data(cls, data: dict[str, Any]) -> AgentRecord:
        ro = data.get("rollout")
        rollout = None if ro is None else Rollout(**{
            **ro, "instances": tuple(ro["instances"]), "steps": tuple(ro["steps"]),
            "switched": tuple(ro["switched"]),
            "marks": tuple((m[0], m[1]) for m in ro["marks"])})
        return cls(data["agent"], data.get("current"),
                   tuple(Release(**r) for r in data.get("releases", ())), rollout,
                   data.get("next_rollout", 1), tuple((b[0], b[1]) for b in data.get("bad", ())))


def resolve_steps(steps: tuple[int | str, ...], count: int) -> tuple[int, ...]:
    """Instance counts after each step, for `count` instances: [1, "50%", "100%"] with 3
    instances is (1, 2, 3). Increasing, capped at `count`, always ending with all."""
    out: list[int] = []
    for step in steps:
        n = math.ceil(count * int(step[:-1]) / 100) if isinstance(step, str) else int(step)
        n = max(1, min(count, n))
        if not out or n > out[-1]:
            out.append(n)
    if not out or out[-1] != count:
        out.append(count)
    return tuple(out)


def _set_release(rec: AgentRecord, release_id: str | None, **changes: Any) -> AgentRecord:
    return replace(rec, releases=tuple(replace(r, **changes) if r.id == release_id else r
                                       for r in rec.releases))


def begin(rec: AgentRecord, release: Release, instances: tuple[str, ...],
          steps: tuple[int | str, ...], gate_s: float, now: float,
          request_id: str | None = None, force: bool = False) -> AgentRecord:
    """Start deploying `release` (added to the record if new): the first step switching.

    RolloutRefused: a rollout already running, a release found bad (unless
    `force`), or the release the agent already runs.
    """
    if rec.rollout is not None and rec.rollout.active:
        raise RolloutRefused("busy", f"agent {rec.agent!r} has rollout {rec.rollout.id} "
                             f"in progress ({rec.rollout.phase}); wait for it or roll it back")
    bad = rec.bad_reason(release.digest)
    if bad is not None and not force:
        raise RolloutRefused("failed", f"release {release.id} of {rec.agent!r} was rolled back "
                             f"({bad}); deploy it again with --force to retry it")
    known = rec.by_digest(release.digest)
    if known is not None and known.id == rec.current:
        raise RolloutRefused("already", f"agent {rec.agent!r} already runs release {known.id}")
    if known is None:
        rec = replace(rec, releases=(*rec.releases, release),
                      bad=tuple(b for b in rec.bad if b[0] != release.digest))
    else:  # deployed before (retired, or bad and forced): it goes again
        rec = _set_release(rec, known.id, status=STAGED, reason=None,
                           **({"version": release.version} if release.version else {}))
        release = rec.release(known.id)
    plan = resolve_steps(steps, len(instances))
    rollout = Rollout(rec.next_rollout, DEPLOY, release.id, rec.current, SWITCHING, instances,
                      plan, 0, instances[:plan[0]], (), gate_s, now, now,
                      request_id=request_id)
    return replace(rec, rollout=rollout, next_rollout=rec.next_rollout + 1)


def begin_rollback(rec: AgentRecord, instances: tuple[str, ...], now: float,
                   request_id: str | None = None) -> AgentRecord:
    """Go back from the current release to the one before it (or to the config's own
    code), every instance at once, no gate: the current one is marked bad."""
    if rec.rollout is not None and rec.rollout.active:
        raise RolloutRefused("busy", f"agent {rec.agent!r} has rollout {rec.rollout.id} in "
                             "progress")
    if rec.current is None:
        raise RolloutRefused("failed", f"agent {rec.agent!r} runs the code of its config, "
                             "not a deployed release: there is nothing to roll back to")
    older = [r for r in rec.releases if r.status == RETIRED]
    target = older[-1].id if older else None
    rec = _set_release(rec, rec.current, status=BAD, reason="rolled back by request")
    rollout = Rollout(rec.next_rollout, ROLLBACK, target, rec.current, SWITCHING, instances,
                      (len(instances),), 0, instances, (), 0.0, now, now,
                      request_id=request_id)
    return replace(rec, rollout=rollout, next_rollout=rec.next_rollout + 1)


def marked(rec: AgentRecord, marks: dict[str, int], now: float) -> AgentRecord:
    """The step's instances are stopped and their state marked (instance -> seq)."""
    ro = rec.rollout
    assert ro is not None and ro.phase == SWITCHING
    kept = tuple((i, s) for i, s in ro.marks if i not in marks)
    return replace(rec, rollout=replace(ro, marks=kept + tuple(marks.items()), updated=now))


def switched(rec: AgentRecord, now: float) -> AgentRecord:
    """The step's instances run the release: its gate begins."""
    ro = rec.rollout
    assert ro is not None and ro.phase == SWITCHING
    return replace(rec, rollout=replace(ro, phase=GATING, updated=now))


def gate_passed(rec: AgentRecord, now: float, keep: int) -> tuple[AgentRecord, list[str]]:
    """The gate held: the next step switches, or the release is committed. Returns the
    record and the digests of releases no longer kept (`keep` per agent)."""
    ro = rec.rollout
    assert ro is not None and ro.phase == GATING
    if ro.step + 1 < len(ro.steps):
        nxt = ro.step + 1
        return replace(rec, rollout=replace(ro, phase=SWITCHING, step=nxt,
                                            switched=ro.instances[:ro.steps[nxt]],
                                            updated=now)), []
    rec = _set_release(rec, rec.current, status=RETIRED) if rec.current != ro.release and \
        ro.kind == DEPLOY else rec
    rec = _set_release(rec, ro.release, status=LIVE, reason=None)
    rec = replace(rec, current=ro.release, rollout=replace(ro, phase=COMMITTED, updated=now))
    return prune(rec, keep)


def gate_failed(rec: AgentRecord, reason: str, now: float) -> AgentRecord:
    """The gate failed (or a switch could not be made, or a rollback was asked for)."""
    ro = rec.rollout
    assert ro is not None and ro.phase in (SWITCHING, GATING)
    return replace(rec, rollout=replace(ro, phase=ROLLING_BACK, reason=reason, updated=now))


def rolled_back(rec: AgentRecord, now: float) -> AgentRecord:
    """Every switched instance runs the previous release with its state at its mark."""
    ro = rec.rollout
    assert ro is not None and ro.phase == ROLLING_BACK
    status = ABORTED if ro.reason == INTERRUPTED else BAD
    rec = _set_release(rec, ro.release, status=status, reason=ro.reason)
    return replace(rec, rollout=replace(ro, phase=ROLLED_BACK, updated=now))


def recover(rec: AgentRecord, now: float) -> AgentRecord:
    """The record as a runtime starting finds it: an interrupted deploy rolls back, an
    interrupted rollback to an older release goes on (it had no gate to finish)."""
    ro = rec.rollout
    if ro is None or not ro.active or ro.phase == ROLLING_BACK:
        return rec
    if ro.kind == ROLLBACK:
        return replace(rec, rollout=replace(ro, phase=SWITCHING, updated=now))
    return gate_failed(rec, INTERRUPTED, now)


def prune(rec: AgentRecord, keep: int) -> tuple[AgentRecord, list[str]]:
    """Keep the newest `keep` releases (never the current one's); bad ones that go are
    remembered by digest. Returns the record and the digests dropped."""
    if len(rec.releases) <= keep:
        return rec, []
    current = rec.release(rec.current)
    kept = list(rec.releases[-keep:])
    if current is not None and current not in kept:
        kept = [current, *kept[1:]] if keep > 1 else [current]
    dropped = [r for r in rec.releases if r not in kept]
    bad = [*rec.bad, *((r.digest, r.reason or "rolled back") for r in dropped
                       if r.status in (BAD,))][-BAD_KEPT:]
    return replace(rec, releases=tuple(r for r in rec.releases if r in kept),
                   bad=tuple(bad)), [r.digest for r in dropped]
