"""The rollouts room: the thin trio driver of the rollout state machine.

Each agent's `AgentRecord` (runtime.rollouts.machine) is one key of the
store stream `rollouts` (a KeyValueState: every transition is one durable
write, so a phase is either recorded or not). The driver makes a transition
durable first and then carries out what the new phase asks for, through the
room's ports:

- the one `Methods` table, to act on the supervisor (`agent.stop`,
  `agent.release`, `agent.start`, `status`), as Caller("rollout", agent);
- the event log (`follow` for the gate, `emit` for every phase);
- the shared-memory segment (heartbeats, the gate metric, health reports);
- the state book (records, and the agents' state at the mark);
- the agent directory (which agents and instances exist, their specs);
- the agent locks (a rollout holds its agent from deploy to its end, so no
  other mutation interleaves with it);
- the release store (copies of the code, by digest).

It never imports the runtime or the supervisor. `prepare` runs before any
agent starts: it finishes whatever a kill -9 or a power loss interrupted
(runtime.rollouts.machine.recover) and sets every agent to run its current
release, so the supervisor starts one consistent version of everything.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any, Protocol, TypeVar

import trio

from runtime.agents import state_stream
from runtime.agents.directory import AgentDirectory
from runtime.config import AgentSpec
from runtime.config.schema import RolloutsSection
from runtime.control.dispatch import Caller, Methods
from runtime.control.errors import MethodError
from runtime.control.mutations import AgentLocks
from runtime.releases import ReleaseError, ReleaseStore
from runtime.rollouts import machine
from runtime.rollouts.gate import Gate, Gated, SegmentProbe
from runtime.rollouts.machine import (
    COMMITTED,
    GATING,
    ROLLBACK,
    ROLLED_BACK,
    ROLLING_BACK,
    SWITCHING,
    AgentRecord,
    Release,
    RolloutRefused,
)
from runtime.rollouts.marks import (
    mark_path,
    mark_prefix,
    read_mark,
    restore_to_mark,
    write_marks,
)
from runtime.store import KeyValueState, StateBook, StoreError
from runtime.supervisor.overrides import default_entry
from shm import Segment

log = logging.getLogger("outpost.rollouts")

T = TypeVar("T")

STREAM = "rollouts"
EVENT = "rollout"


class Events(Protocol):
    def emit(self, type: str, agent: str | None = None, **fields: Any) -> None: ...
    def follow(self) -> trio.MemoryReceiveChannel: ...


class Rollouts:
    """Deploys, gates, commits and rolls back agents' releases (see the module docstring)."""

    def __init__(self, *, methods: Methods, events: Events, book: StateBook, segment: Segment,
                 directory: AgentDirectory, locks: AgentLocks,
                 scope_of: Callable[[str], Iterable[str]], releases: ReleaseStore,
                 marks_dir: Path, archive_dir: Path,
                 settings: Callable[[], RolloutsSection]) -> None:
        self.methods = methods
        self.events = events
        self.book = book
        self.probe = SegmentProbe(segment)
        self.directory = directory
        self.locks = locks
        self.scope_of = scope_of
        self.releases = releases
        self.marks_dir = marks_dir
        self.archive_dir = archive_dir
        self.settings = settings
        self._records: KeyValueState | None = None
        self._nursery: trio.Nursery | None = None
        self._gates: dict[str, trio.CancelScope] = {}
        self._aborts: dict[str, str] = {}
        self._done: dict[str, trio.Event] = {}
        self._dropped: list[str] = []  # release digests a commit let go

    # -- records -------------------------------------------------------------------------

    def record(self, agent: str) -> AgentRecord:
        """Agent `agent`'s record (an empty one if it never had a release)."""
        assert self._records is not None, "prepare() first"
        data = self._records.get(agent)
        return AgentRecord(agent) if data is None else AgentRecord.from_data(data)

    def agents(self) -> list[str]:
        """Every agent with a record."""
        assert self._records is not None, "prepare() first"
        return sorted(self._records)

    async def _save(self, rec: AgentRecord, **fields: Any) -> AgentRecord:
        """Make `rec` durable, then say so (one `rollout` event per phase)."""
        assert self._records is not None
        await self._records.set(rec.agent, rec.to_data())
        ro = rec.rollout
        if ro is not None:
            release = rec.release(ro.release)
            self.events.emit(EVENT, rec.agent, rollout=ro.id, kind=ro.kind, phase=ro.phase,
                             release=ro.release,
                             version=None if release is None else release.version,
                             step=ro.step + 1, steps=list(ro.steps),
                             switched=list(ro.switched), reason=ro.reason, **fields)
            if ro.phase in (COMMITTED, ROLLED_BACK) and release is not None:
                self.events.emit("release", rec.agent, action=release.status,
                                 release=release.id, version=release.version,
                                 reason=release.reason)
        return rec

    # -- what an agent is ----------------------------------------------------------------

    def instances(self, agent: str) -> tuple[str, ...]:
        """The instances of `agent` (itself, or name@1..N). MethodError not_found."""
        if agent in self.directory:
            spec = self.directory.get(agent)
            if spec is not None and spec.instance_of is None:
                return (agent,)
        found = [s for s in (self.directory.get(n) for n in self.directory.names())
                 if s is not None and s.instance_of == agent]
        if not found:
            known = sorted({(self.directory.get(n).instance_of or n)  # type: ignore[union-attr]
                            for n in self.directory.names()})
            raise MethodError("not_found", f"no agent named {agent!r} "
                              f"(agents: {', '.join(known) or 'none'})")
        return tuple(s.name for s in sorted(found, key=lambda s: s.order))

    def spec(self, agent: str) -> AgentSpec:
        spec = self.directory.get(self.instances(agent)[0])
        assert spec is not None
        return spec

    def _override(self, rec: AgentRecord, release_id: str | None) -> dict[str, Any] | None:
        release = rec.release(release_id)
        if release is None:
            return None
        return {"release": release.id, "root": str(self.releases.path(release.digest)),
                "digest": release.digest, "entry": release.entry, "program": release.program}

    async def _call(self, who: str, method: str, **params: Any) -> Any:
        return await self.methods.call(method, params, caller=Caller("rollout", who))

    async def _place(self, rec: AgentRecord) -> None:
        """Set every instance of the agent to run its current release from its next start."""
        names = self.instances(rec.agent)
        current = self._override(rec, rec.current)
        await self._call(rec.agent, "agent.release", agent=rec.agent, release=current)
        for name in names:
            if name != rec.agent:
                await self._call(rec.agent, "agent.release", agent=name, release=None)

    # -- start-up ------------------------------------------------------------------------

    async def prepare(self) -> None:
        """Before any agent starts: finish interrupted rollouts, place every agent on its
        current release."""
        self._records = await self.book.open(STREAM)
        await trio.to_thread.run_sync(self.releases.clean_staging)
        now = time.time()
        for agent in self.agents():
            rec = self.record(agent)
            try:
                self.instances(agent)
            except MethodError:
                log.warning("rollouts: agent %s is no longer in the config; its record stays",
                            agent)
                continue
            if rec.rollout is not None and rec.rollout.active:
                log.warning("rollouts: rollout %d of %s was interrupted in phase %s",
                            rec.rollout.id, agent, rec.rollout.phase)
                rec = await self._save(machine.recover(rec, now), resumed=True)
                rec = await self._finish_offline(rec)
            await self._place(rec)

    async def _finish_offline(self, rec: AgentRecord) -> AgentRecord:
        """Complete a recovered rollout while no agent runs."""
        ro = rec.rollout
        assert ro is not None
        if ro.phase == ROLLING_BACK:
            await self._restore(rec)
            rec = await self._save(machine.rolled_back(rec, time.time()))
        elif ro.phase == SWITCHING and ro.kind == ROLLBACK:
            rec = machine.switched(rec, time.time())
            rec, dropped = machine.gate_passed(rec, time.time(), self.settings().keep_releases)
            rec = await self._save(rec)
            await self._drop(dropped)
        self._forget_marks(rec)
        return rec

    async def run(self, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        """Hold the nursery rollouts run in, until cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    def stop(self) -> None:
        """Stop driving (the runtime is stopping): an active rollout stays recorded in its
        phase, and the next start finishes it."""
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    # -- deploy --------------------------------------------------------------------------

    async def deploy(self, agent: str, path: str, *, version: str | None, entry: str | None,
                     gate_s: float | None, force: bool, request_id: str | None,
                     wait: bool = False) -> dict[str, Any]:
        """Copy `path` in as a release of `agent` and roll it out; answers once the first
        step's instances run it (the gate and later steps go on in the room's nursery)."""
        names = self.instances(agent)
        rec = self.record(agent)
        if request_id is not None and rec.rollout is not None \
                and rec.rollout.request_id == request_id:
            return self.describe(rec)  # applied before the runtime could remember the id
        spec = self.spec(agent)
        def stage() -> tuple[str, bool, str | None, str | None]:
            digest, folder, new = self.releases.add(path)
            return (digest, new, *_what_runs(spec, Path(path), folder, entry))
        try:
            digest, new, rel_entry, program = await trio.to_thread.run_sync(stage)
        except (ReleaseError, OSError) as exc:
            raise MethodError("failed", f"deploy of {agent}: {exc}") from None
        release = Release(digest[:12], digest, version or digest[:12], time.time(),
                          rel_entry, program)
        settings = self.settings()
        gate = gate_s if gate_s is not None else spec.gate if spec.gate is not None \
            else settings.gate
        steps = spec.steps if spec.steps is not None else settings.steps
        try:
            rec = machine.begin(rec, release, names, steps, gate, time.time(), request_id, force)
        except RolloutRefused as exc:
            if exc.code == "already":
                return {**self.describe(rec), "already": True}
            raise MethodError(exc.code, str(exc)) from None
        self.events.emit("release", agent, action="added", release=release.id,
                         version=release.version, digest=digest, new=new)
        await self._start_driving(rec, wait)
        return self.describe(self.record(agent))

    async def _start_driving(self, rec: AgentRecord, wait: bool) -> None:
        """Save `rec` (its rollout's first phase) and drive it in the room's nursery;
        returns once its first step is done (or the rollout ended)."""
        assert self._nursery is not None, "run() first"
        await self._nursery.start(self._drive, rec, wait)

    async def _drive(self, rec: AgentRecord, wait: bool,
                     task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        agent = rec.agent
        ro = rec.rollout
        assert ro is not None
        done = self._done[agent] = trio.Event()
        reported = False
        try:
            async with self.locks.hold(self.scope_of(agent), f"rollout {ro.id} of {agent} is in "
                                       "progress", wait):
                gate: Gate | None = None
                unsaved = True  # saved alongside the first actions (see _alongside)
                while rec.rollout is not None and rec.rollout.active:
                    try:
                        rec, gate, unsaved = await self._advance(rec, gate, unsaved)
                    except Exception as exc:  # a bug of ours must not take the runtime down
                        log.exception("rollout %d of %s: %s failed", rec.rollout.id, agent,
                                      rec.rollout.phase)
                        if rec.rollout.phase == ROLLING_BACK:
                            break  # stays recorded: the next start finishes the rollback
                        rec, gate, unsaved = await self._save(machine.gate_failed(
                            rec, f"internal error: {exc!r}", time.time())), None, False
                    if not reported and rec.rollout.phase != SWITCHING:
                        reported = True  # the first step runs the release: deploy answers
                        task_status.started()
        finally:
            self._aborts.pop(agent, None)
            done.set()
            if not reported:
                task_status.started()
        # The agent is free again before this: housekeeping holds up no command.
        self._forget_marks(rec)
        dropped, self._dropped = self._dropped, []
        await self._drop(dropped)

    async def _alongside(self, rec: AgentRecord, work: Callable[[], Awaitable[T]]) -> T:
        """Make `rec` durable while `work` runs; both are done when this returns.

        For a phase whose first actions need not wait for it: stopping the old version
        and marking its state (before a switch), stopping the new one (before a
        rollback). Were the runtime to die before `rec` is durable, the record still in
        the phase before says to undo the same actions, which is what recovery does.
        """
        out: list[T] = []
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._save, rec)
                out.append(await work())
        except BaseExceptionGroup as group:  # one of the two failed: that failure, bare
            raise group.exceptions[0] from None
        return out[0]

    async def _advance(self, rec: AgentRecord, gate: Gate | None, unsaved: bool) \
            -> tuple[AgentRecord, Gate | None, bool]:
        """Carry out the current phase: the record after it, the gate that follows a
        switch (its event follower opened before the switch), and whether that record
        is still to be made durable (by the next phase's first actions)."""
        ro = rec.rollout
        assert ro is not None
        agent = rec.agent
        if ro.phase == SWITCHING:
            gate = self._new_gate(agent)
            try:
                rec = await self._switch(rec, gate, unsaved)
            except MethodError as exc:
                gate.events.close()
                return machine.gate_failed(rec, f"switch failed: {exc}", time.time()), None, \
                    True
            return await self._save(machine.switched(rec, time.time())), gate, False
        if ro.phase == GATING:
            gate = gate or self._new_gate(agent)
            with gate.events:
                verdict = await self._gate(rec, gate)
            if verdict is not None:
                return machine.gate_failed(rec, verdict, time.time()), None, True
            rec, dropped = machine.gate_passed(rec, time.time(), self.settings().keep_releases)
            if rec.rollout is not None and rec.rollout.phase == COMMITTED:
                await self._place(rec)
                rec = await self._save(rec)
                self._dropped.extend(dropped)  # deleted once the agent is let go
                return rec, None, False
            return rec, None, True  # the next step's switch saves it
        if ro.phase == ROLLING_BACK:
            async def stop_new() -> None:
                for name in reversed(ro.switched):
                    with contextlib.suppress(MethodError):
                        await self._call(agent, "agent.stop", agent=name)
            if unsaved:
                await self._alongside(rec, stop_new)
            else:
                await stop_new()
            await self._restore(rec)
            await self._place(rec)
            for name in ro.switched:
                try:
                    # restart, not start: a fresh error budget for the old version
                    await self._call(agent, "agent.restart", agent=name)
                except MethodError as exc:
                    log.error("rollback of %s: %s did not start again: %s", agent, name, exc)
            return await self._save(machine.rolled_back(rec, time.time())), None, False
        raise AssertionError(f"no action for phase {ro.phase}")

    def _new_gate(self, agent: str) -> Gate:
        spec = self.spec(agent)

        async def running() -> dict[str, tuple[str, int]]:
            table = (await self._call(agent, "status"))["agents"]
            cols = list(table.columns)
            at_name, at_state, at_restarts = (cols.index(c) for c in
                                              ("name", "state", "restarts"))
            return {r[at_name]: (r[at_state], r[at_restarts]) for r in table.rows}
        return Gate(self.events.follow(), self.probe, running, spec.gate_metric)

    async def _switch(self, rec: AgentRecord, gate: Gate, unsaved: bool) -> AgentRecord:
        """Stop the step's instances, mark their state, start them on the release (the
        record, if `unsaved`, made durable meanwhile: before anything new runs)."""
        ro = rec.rollout
        assert ro is not None
        agent = rec.agent
        moving = ro.step_instances()

        async def stop_and_mark() -> AgentRecord:
            for name in moving:
                await self._call(agent, "agent.stop", agent=name)
            gate.before_switch(ro.switched)  # what the old versions reported does not count
            if ro.kind == ROLLBACK:
                return rec
            # Durable before the new version starts: a mark file is the proof that an
            # instance may have run it (the record gets the seqs with the switch).
            marks, files = {}, []
            for name in moving:
                state = await self.book.open(state_stream(name))
                seq, snapshot = state.applied_seq, state.to_dict()  # one step: consistent
                files.append((mark_path(self.marks_dir, agent, ro.id, name), seq, snapshot))
                marks[name] = seq
            await trio.to_thread.run_sync(write_marks, files)
            return machine.marked(rec, marks, time.time())
        rec = await (self._alongside(rec, stop_and_mark) if unsaved else stop_and_mark())
        override = self._override(rec, ro.release)
        if agent in self._aborts:
            raise MethodError("failed", self._aborts[agent])
        for name in moving:
            await self._call(agent, "agent.release", agent=name, release=override)
            # A fresh start (error budget, backoff, `failed` cleared): new code, new count.
            await self._call(agent, "agent.restart", agent=name)
        return rec

    async def _gate(self, rec: AgentRecord, gate: Gate) -> str | None:
        """Run the step's gate; why it failed, or None."""
        ro = rec.rollout
        assert ro is not None
        agent = rec.agent
        if agent in self._aborts:
            return self._aborts[agent]
        gated = []
        for name in ro.switched:
            spec = self.directory.get(name)
            gated.append(Gated(name, spec.heartbeat_timeout_s if spec is not None else 0.0))
        with trio.CancelScope() as scope:
            self._gates[agent] = scope
            try:
                verdict = await gate.run(gated, ro.gate_s)
            finally:
                self._gates.pop(agent, None)
        if scope.cancelled_caught:
            return self._aborts.get(agent, "the gate was cancelled")
        return None if verdict.ok else verdict.reason

    async def _restore(self, rec: AgentRecord) -> None:
        """Put each switched instance's state back to its mark (what it wrote is archived)."""
        ro = rec.rollout
        assert ro is not None
        for name in ro.switched:
            path = mark_path(self.marks_dir, rec.agent, ro.id, name)
            seq = ro.mark_of(name)
            if seq is None:  # interrupted before the switch was recorded: the file says
                if not path.exists():
                    continue  # never started on the release
                seq = (await trio.to_thread.run_sync(read_mark, path))[0]
            state = await self.book.open(state_stream(name))
            folder = self.archive_dir / "rollbacks" / f"{rec.agent}-{ro.id}" / name
            try:
                done = await restore_to_mark(self.book.store, state, name, path, folder)
            except StoreError as exc:
                log.error("rollback of %s: the state of %s could not be restored to its mark "
                          "(seq %d): %s; it is left as the new version wrote it", rec.agent,
                          name, seq, exc)
                self.events.emit("rollout-restore-failed", name, rollout=ro.id, mark_seq=seq,
                                 error=str(exc))
                continue
            if done["restored"]:
                self.events.emit("state-restored", name, rollout=ro.id, mark_seq=seq, **done)

    def _forget_marks(self, rec: AgentRecord) -> None:
        ro = rec.rollout
        if ro is not None and not ro.active and self.marks_dir.is_dir():
            for path in self.marks_dir.glob(f"{mark_prefix(rec.agent, ro.id)}*"):
                path.unlink(missing_ok=True)

    async def _drop(self, digests: list[str]) -> None:
        """Delete releases no agent's record refers to any more."""
        if not digests:
            return
        used = {r.digest for a in self.agents() for r in self.record(a).releases}
        for digest in digests:
            if digest not in used:
                with contextlib.suppress(ReleaseError, OSError):
                    await trio.to_thread.run_sync(self.releases.remove, digest)
                    self.events.emit("release", None, action="removed", digest=digest)

    # -- rollback ------------------------------------------------------------------------

    async def rollback(self, agent: str, *, request_id: str | None, wait: bool,
                       caller: Caller) -> dict[str, Any]:
        """Roll back: an active rollout now (its gate fails), else from the current release
        to the one before it. Answers once every instance runs the older release."""
        names = self.instances(agent)
        rec = self.record(agent)
        ro = rec.rollout
        if request_id is not None and ro is not None and ro.request_id == request_id:
            return self.describe(rec)
        who = caller.kind + (f" {caller.name}" if caller.name else "") + \
            (f" uid {caller.uid}" if caller.uid is not None else "")
        if ro is not None and ro.active:
            if ro.phase != ROLLING_BACK:
                self._aborts[agent] = f"rollback requested ({who})"
                scope = self._gates.get(agent)
                if scope is not None:
                    scope.cancel()
            done = self._done.get(agent)
            if done is not None:
                await done.wait()
            return self.describe(self.record(agent))
        try:
            rec = machine.begin_rollback(rec, names, time.time(), request_id)
        except RolloutRefused as exc:
            raise MethodError(exc.code, str(exc)) from None
        await self._start_driving(rec, wait)
        await self._done[agent].wait()
        return self.describe(self.record(agent))

    # -- what it says --------------------------------------------------------------------

    def describe(self, rec: AgentRecord) -> dict[str, Any]:
        """The agent's current release and latest rollout, as plain data."""
        current = rec.release(rec.current)
        ro = rec.rollout
        out: dict[str, Any] = {
            "agent": rec.agent,
            "current": None if current is None else {"release": current.id,
                                                     "version": current.version},
            "holding": self.locks.holding(rec.agent),
            "rollout": None,
        }
        if ro is not None:
            release = rec.release(ro.release)
            previous = rec.release(ro.previous)
            out["rollout"] = {
                "id": ro.id, "kind": ro.kind, "phase": ro.phase, "release": ro.release,
                "version": None if release is None else release.version,
                "previous": ro.previous,
                "previous_version": None if previous is None else previous.version,
                "step": ro.step + 1, "steps": list(ro.steps), "instances": list(ro.instances),
                "switched": list(ro.switched), "gate_s": ro.gate_s, "started": ro.started,
                "updated": ro.updated, "reason": ro.reason, "request_id": ro.request_id,
                "gating": ro.phase == GATING,
                # Ended, and the agent let go (its last record is durable a moment before).
                "done": ro.phase in (COMMITTED, ROLLED_BACK) and (
                    rec.agent not in self._done or self._done[rec.agent].is_set()),
            }
        return out

    def list_releases(self, agent: str) -> list[dict[str, Any]]:
        """Every kept release of `agent`, oldest first."""
        rec = self.record(agent)
        return [{"release": r.id, "version": r.version, "status": r.status,
                 "current": r.id == rec.current, "added": r.added, "digest": r.digest,
                 "entry": r.entry, "program": r.program, "reason": r.reason}
                for r in rec.releases]


def _what_runs(spec: AgentSpec, source: Path, folder: Path, entry: str | None) \
        -> tuple[str | None, str | None]:
    """(entry, program) of a release of `spec`'s agent copied from `source` into `folder`,
    checked to exist there. ReleaseError says what to pass instead."""
    if spec.kind == "exec":
        # A folder: the first file of the command (the program, or a script it runs)
        # that the release holds.
        program = entry or (source.name if source.is_file() else next(
            (Path(a).name for a in spec.command if (folder / Path(a).name).is_file()),
            Path(spec.command[0]).name))
        if not (folder / program).is_file():
            raise ReleaseError(f"the release has no program {program!r}; pass --entry with "
                               "its path inside the release")
        return None, program
    func = (spec.entry or "").rpartition(":")[2]
    if entry is None:
        entry = f"{source.name}:{func}" if source.is_file() else default_entry(spec)
    elif ":" not in entry:
        entry = f"{entry}:{func}"
    file_part = entry.rpartition(":")[0]
    if not (folder / file_part).is_file():
        raise ReleaseError(f"the release has no {file_part!r} to run; pass --entry "
                           "FILE.py:FUNCTION with a file inside the release")
    return entry, None
