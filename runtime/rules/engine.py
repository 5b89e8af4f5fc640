"""The rule engine: events in (the event log's follow stream), bounded actions out.

For each durable event the index gives the rules it matches; each one's state
decides (count window, cooldown, firing limit, suspension) whether it fires. A
firing runs its action in the engine's nursery with a timeout per attempt and
retries with capped exponential backoff; a rule whose action keeps failing is
suspended. Every step is an event carrying the trigger's seq, so
`outpost events --type rule_fired` is the audit trail:

    rule_fired      rule, trigger_seq, trigger_type, action
    action_ok       rule, trigger_seq, attempt, seconds[, output]
    action_failed   rule, trigger_seq, attempt, error, final
    rule_suspended  rule, reason
    rule_limited    rule, max_firings, window_s (once per window)
    rules_gap       from_seq, to_seq (events missed after falling behind)

Actions reach the runtime only through the ports (runtime.rules.ports): control
methods, the scheduler, and commands from [actions.exec].
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import trio

from runtime.config.autonomy import Action, ActionsSection, Autonomy, RuleSpec
from runtime.control.dispatch import Caller
from runtime.jobs.command import command_env, run_command
from runtime.rules.index import RuleIndex
from runtime.rules.metrics import Watch, sample_interval
from runtime.rules.ports import EventsPort, JobsPort, MethodsPort, MetricsPort
from runtime.rules.state import FIRE, LIMIT_REACHED, RuleState

log = logging.getLogger("outpost.rules")

_AGENT_METHODS = {"restart": "agent.restart", "stop": "agent.stop", "start": "agent.start",
                  "degrade": "agent.degrade"}
_EVENT_MAX = 2048  # the JSON of the trigger event given to an exec command


class ActionError(Exception):
    """An action that ran and failed (its message goes into action_failed)."""


@dataclass
class _Ports:
    events: EventsPort
    methods: MethodsPort
    jobs: JobsPort | None
    metrics: MetricsPort | None


class RuleEngine:
    """Runs [[rules]] against the live event stream. Start it with `nursery.start(engine.run)`."""

    def __init__(self, autonomy: Autonomy, agents: Iterable[str], *, events: EventsPort,
                 methods: MethodsPort, jobs: JobsPort | None = None,
                 metrics: MetricsPort | None = None,
                 clock: Callable[[], float] = trio.current_time) -> None:
        self._ports = _Ports(events, methods, jobs, metrics)
        self._clock = clock
        self._states: dict[str, RuleState] = {}
        self._watches: dict[str, Watch] = {}
        self._reloaded = trio.Event()
        self._nursery: trio.Nursery | None = None
        self.handled = 0  # events dispatched
        self.last_seq: int | None = None
        self.gaps = 0
        self._apply(autonomy, agents)

    # -- configuration -------------------------------------------------------------------

    def _apply(self, autonomy: Autonomy, agents: Iterable[str]) -> dict[str, list[str]]:
        self.agents = list(agents)
        self.index = RuleIndex(autonomy.rules, self.agents)
        self.actions: ActionsSection = autonomy.actions
        old, self._states = self._states, {}
        changes: dict[str, list[str]] = {"added": [], "changed": [], "removed": []}
        for rule in autonomy.rules:
            kept = old.get(rule.name)
            if kept is not None and kept.rule == rule:
                self._states[rule.name] = kept
                continue
            changes["changed" if kept is not None else "added"].append(rule.name)
            self._states[rule.name] = RuleState(rule)
        changes["removed"] = [n for n in old if n not in self._states]
        fresh = set(changes["added"] + changes["changed"])
        self._watches = {r.name: Watch(r) if r.name in fresh or r.name not in self._watches
                         else self._watches[r.name] for r in self.index.metric_rules()}
        return changes

    def reload(self, autonomy: Autonomy, agents: Iterable[str]) -> dict[str, list[str]]:
        """Apply new rules (already validated by the config loader). Unchanged rules keep
        their windows, counts and suspension; changed ones start afresh."""
        changes = self._apply(autonomy, agents)
        self._reloaded.set()
        return changes

    # -- running ---------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) \
            -> None:
        """Follow the event log and act until cancelled; never raises for an event or an
        action. Subscribed before `started`, so no event after start is missed."""
        channel = self._ports.events.follow()
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._watch_metrics)
            task_status.started()
            while True:
                await self._consume(channel)
                # The log dropped us for lagging (or is closing): subscribe again and
                # report what was missed once the next event shows the gap.
                log.warning("rules: the event stream dropped this follower; resubscribing")
                channel = self._ports.events.follow()

    async def _consume(self, channel: trio.MemoryReceiveChannel) -> None:
        async with channel:
            async for event in channel:
                seq = event.get("seq")
                if self.last_seq is not None and isinstance(seq, int) and \
                        seq > self.last_seq + 1:
                    self.gaps += 1
                    self._ports.events.emit("rules_gap", None, from_seq=self.last_seq + 1,
                                            to_seq=seq - 1)
                if isinstance(seq, int):
                    self.last_seq = seq
                self.handle(event)

    def handle(self, event: dict[str, Any]) -> None:
        """Dispatch one event: decide each matching rule and start the actions that fire."""
        self.handled += 1
        matched = self.index.matching(event)
        if not matched:
            return
        now = self._clock()
        for rule in matched:
            state = self._states[rule.name]
            decision = state.offer(now)
            if decision == FIRE:
                self._fire(state, event)
            elif decision == LIMIT_REACHED:  # once, not once per suppressed event
                self._ports.events.emit("rule_limited", None, rule=rule.name,
                                        max_firings=rule.spec.max_firings,
                                        window_s=rule.spec.max_firings_window)

    def _fire(self, state: RuleState, event: dict[str, Any]) -> None:
        rule = state.rule
        state.last_fired_at = time.time()
        self._ports.events.emit("rule_fired", event.get("agent"), rule=rule.name,
                                trigger_seq=event.get("seq"), trigger_type=event.get("type"),
                                action=rule.do.text())
        if self._nursery is None:  # not running (a test driving handle() alone)
            return
        state.running = True
        self._nursery.start_soon(self._act, state, event)

    async def _act(self, state: RuleState, event: dict[str, Any]) -> None:
        rule = state.rule
        emit = self._ports.events.emit
        base = {"rule": rule.name, "trigger_seq": event.get("seq")}
        agent = event.get("agent")
        error = "never attempted"
        try:
            for attempt in range(1, rule.retries + 2):
                started = self._clock()
                try:
                    with trio.fail_after(rule.timeout + self._grace(rule)):
                        output = await self._perform(rule, event)
                except trio.TooSlowError:
                    error = f"timed out after {rule.timeout:g}s"
                except Exception as exc:  # an action's failure never reaches the runtime
                    error = str(exc) or type(exc).__name__
                    code = getattr(exc, "code", None)
                    if isinstance(code, str):
                        error = f"{code}: {error}"
                else:
                    fields = {**base, "attempt": attempt,
                              "seconds": round(self._clock() - started, 6)}
                    if output is not None:
                        fields["output"] = output
                    emit("action_ok", agent, **fields)
                    state.succeeded({"result": "ok", "at": time.time(), "attempts": attempt,
                                     "trigger_seq": event.get("seq")})
                    return
                final = attempt == rule.retries + 1
                emit("action_failed", agent, **base, attempt=attempt, error=error, final=final)
                if not final:
                    await trio.sleep(min(rule.backoff_max, rule.backoff * 2 ** (attempt - 1)))
            if state.failed({"result": "failed", "at": time.time(), "error": error,
                             "attempts": rule.retries + 1, "trigger_seq": event.get("seq")}):
                log.error("rule %s suspended: %s", rule.name, state.suspended)
                emit("rule_suspended", None, rule=rule.name, reason=state.suspended,
                     failures=state.failures_in_a_row)
        finally:
            state.running = False

    def _grace(self, rule: RuleSpec) -> float:
        # An exec is killed at the timeout itself; give the kill its grace period.
        spec = self.actions.command(rule.do.target or "") if rule.do.verb == "exec" else None
        return 0.0 if spec is None else spec.kill_grace + 1.0

    async def _perform(self, rule: RuleSpec, event: dict[str, Any]) -> Any:
        """Run the rule's action once; returns what action_ok reports (or None)."""
        action: Action = rule.do
        ports = self._ports
        caller = Caller("rule", rule.name)
        verb = action.verb
        if verb in _AGENT_METHODS:
            target = action.target or event.get("agent")
            if not isinstance(target, str):
                raise ActionError(f"{verb}: the event names no agent to act on")
            params: dict[str, Any] = {"agent": target}
            if verb == "degrade":
                params["reason"] = f"rule {rule.name} (event {event.get('seq')})"
            await ports.methods.call(_AGENT_METHODS[verb], params, caller=caller)
        elif verb == "checkpoint":
            await ports.methods.call("checkpoint", {}, caller=caller)
        elif verb == "maintain":
            answer = await ports.methods.call("maintain", {"task": action.target},
                                              caller=caller)
            result = answer.get("result") if isinstance(answer, dict) else None
            if isinstance(result, dict) and result.get("ok") is False:
                raise ActionError(f"maintain {action.target}: "
                                  + "; ".join(map(str, result.get("problems") or [])))
        elif verb == "send":
            await ports.methods.call("send", {"agent": action.target,
                                              "message": action.message}, caller=caller)
        elif verb == "run":
            if ports.jobs is None:
                raise ActionError("this runtime has no scheduler to run jobs")
            assert action.target is not None
            await ports.jobs.trigger(action.target, by=f"rule:{rule.name}")
        elif verb == "exec":
            return await self._exec(rule, event)
        elif verb == "escalate":
            await ports.methods.call("runtime.escalate", {
                "severity": rule.severity, "rule": rule.name, "trigger_seq": event.get("seq"),
                "reason": f"rule {rule.name} on {event.get('type')} event {event.get('seq')}",
                "exit_code": self.actions.exit_code if rule.escalate == "exit" else None,
            }, caller=caller)
        else:  # the config loader only lets known verbs through
            raise ActionError(f"unknown action {verb!r}")
        return None

    async def _exec(self, rule: RuleSpec, event: dict[str, Any]) -> str:
        spec = self.actions.command(rule.do.target or "")
        if spec is None:
            raise ActionError(f"no command {rule.do.target!r} in [actions.exec]")
        trigger = json.dumps(event, default=str)
        env = command_env([*spec.env, ("OUTPOST_RULE", rule.name),
                           ("OUTPOST_AGENT", str(event.get("agent") or "")),
                           ("OUTPOST_TRIGGER_SEQ", str(event.get("seq"))),
                           ("OUTPOST_EVENT", trigger if len(trigger) <= _EVENT_MAX else "{}")])
        result = await run_command(spec.command, timeout=rule.timeout, env=env, cwd=spec.cwd,
                                   kill_grace=spec.kill_grace, tail_max=spec.output_max)
        output = result.output.decode("utf-8", "replace")
        if not result.ok:
            raise ActionError(f"exec {spec.name}: {result.describe()}"
                              + (f"; output: {output[-500:]}" if output else ""))
        return output

    async def _watch_metrics(self) -> None:
        while True:
            watches = list(self._watches.values())
            metrics = self._ports.metrics
            if not watches or metrics is None:
                await self._reloaded.wait()
                self._reloaded = trio.Event()
                continue
            now = self._clock()
            for watch in watches:
                assert watch.rule.metric is not None
                watch.sample(metrics.read(watch.rule.metric), now, self._ports.events.emit)
            with trio.move_on_after(sample_interval([w.rule for w in watches])):
                await self._reloaded.wait()
                self._reloaded = trio.Event()

    # -- views -----------------------------------------------------------------------------

    def status(self) -> list[dict[str, Any]]:
        """Every rule: firings, last outcome, suspended or not (`outpost rules`)."""
        rows = []
        for name, state in self._states.items():
            row = state.row()
            watch = self._watches.get(name)
            if watch is not None:
                row["metric_value"] = watch.last_value
                row["breached_since"] = watch.since
            rows.append(row)
        return rows

    def state(self, name: str) -> RuleState | None:
        return self._states.get(name)

    @property
    def rules(self) -> tuple[RuleSpec, ...]:
        return tuple(s.rule for s in self._states.values())
