"""Restart decisions: what follows an exit, as a pure function over plain data.

As in OTP's supervisor.erl, `decide` reads the exited node's `RestartRecord`,
its spec (None for a group), its group's record and settings, the `Exit` and
`now`, and returns a decision with the new records. The supervisor applies the
decision; nothing here awaits, sleeps or reads a clock (`now` is an argument:
trio's clock in the runtime, so tests may drive it with trio's MockClock).

The rules, in the order they are applied:

- a stop on purpose is never undone: `Stop(None)`;
- restart type: permanent (always), transient (only after a failure), temporary
  (never) -> `Stop(reason)`;
- an agent's error budget: more than `max_restarts` restarts within
  `restart_window_s` -> `Fail` (contained: the group carries on);
- the group's intensity: more than the group's `max_restarts` restarts of its
  children within its `restart_window_s` -> `Escalate` (the group stops its
  children and fails to its parent);
- otherwise `Restart(delay, siblings)`: the delay is the agent's backoff,
  initial * multiplier**(n-1), capped, jittered, where n counts failures since
  the last instance that stayed up `backoff_reset_s`; the siblings are the
  group strategy's: none (one_for_one), all (one_for_all), the ones started
  after it (rest_for_one).
"""

from __future__ import annotations

import enum
import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

from runtime.config.schema import AgentSpec, GroupSpec

# Compact a Window's shared list once this many dead entries outnumber the live ones.
_COMPACT_AFTER = 32


@dataclass(frozen=True, slots=True)
class Exit:
    """How one instance ended. `failed` decides transient restarts; the rest is for people."""

    failed: bool
    summary: str
    code: int | None = None
    signal: int | None = None
    exception: str | None = None
    stopped: bool = False  # ended because the supervisor stopped it on purpose

    def fields(self) -> dict[str, Any]:
        return {"failed": self.failed, "summary": self.summary, "code": self.code,
                "signal": self.signal, "exception": self.exception, "stopped": self.stopped}


def exc_summary(exc: BaseException) -> str:
    """`Type: message` of an exception (unwrapping single-exception groups), for an Exit."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return f"{type(exc).__name__}: {exc}"[:500]


class Window:
    """The times of recent restarts, oldest first, as a value: `add` returns a new Window.

    Successive Windows share one append-only list, each seeing its own slice,
    so adding costs O(1) however many restarts a wide limit lets a window hold
    (10**6 within 60 s is a valid config). Adding to a Window that is not the
    newest on its list copies its slice first, so no Window ever changes.
    """

    __slots__ = ("_end", "_start", "_times")

    def __init__(self, times: Iterable[float] = ()) -> None:
        self._times = list(times)
        self._start = 0
        self._end = len(self._times)

    def add(self, now: float, span: float) -> Window:
        """This window plus a restart at `now`, without those more than `span` s before it."""
        times, start, end = self._times, self._start, self._end
        if end != len(times) or (start > _COMPACT_AFTER and start > end - start):
            times, start, end = times[start:end], 0, end - start
        times.append(now)
        end += 1
        while start < end and now - times[start] > span:
            start += 1
        window = Window.__new__(Window)
        window._times, window._start, window._end = times, start, end
        return window

    def __len__(self) -> int:
        return self._end - self._start

    def __iter__(self) -> Iterator[float]:
        return iter(self._times[self._start:self._end])

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Window) and list(self) == list(other)

    def __hash__(self) -> int:
        return hash(tuple(self))

    def __repr__(self) -> str:
        return f"Window({list(self)!r})"


EMPTY = Window()


class RestartRecord(NamedTuple):
    """The restart state one node carries: what `decide` reads and returns (a value).

    `window` holds the restarts counted against this node's own limit: an
    agent's own restarts (its error budget), a group's restarts of its children
    (its intensity). A NamedTuple: made on every start and every exit, and half
    the cost of a frozen dataclass.
    """

    restarts: int = 0  # restarts so far (status shows them)
    consecutive: int = 0  # failures since the last stable run: the backoff's exponent
    window: Window = EMPTY
    started_at: float | None = None  # `now` when the current instance started; None: not up

    def started(self, now: float) -> RestartRecord:
        """This record with an instance started at `now`."""
        return RestartRecord(self.restarts, self.consecutive, self.window, now)

    def ended(self) -> RestartRecord:
        """This record with no instance up."""
        return RestartRecord(self.restarts, self.consecutive, self.window)

    def restarted(self) -> RestartRecord:
        """One restart more, without a failure of its own (a sibling restarted by strategy)."""
        return RestartRecord(self.restarts + 1, self.consecutive, self.window, self.started_at)

    def fresh(self) -> RestartRecord:
        """The error budget (or intensity) and backoff cleared; the restart count kept."""
        return RestartRecord(self.restarts, 0, EMPTY, self.started_at)

    def uptime(self, now: float) -> float | None:
        """Seconds the current instance has been up at `now`, or None if none is."""
        return None if self.started_at is None else now - self.started_at


class Siblings(enum.Enum):
    """Which of the group's children restart with the one that exited."""

    NONE = "none"  # one_for_one, or a group of one
    ALL = "all"  # one_for_all
    LATER = "later"  # rest_for_one: the ones after it in start order


def affected(siblings: Siblings, index: int, count: int) -> range:
    """Positions (in start order) of the children restarted together, the exited one included.

    `index` is the exited child's position among `count` children.
    """
    if siblings is Siblings.ALL:
        return range(count)
    if siblings is Siblings.LATER:
        return range(index, count)
    return range(index, index + 1)


@dataclass(frozen=True, slots=True)
class Restart:
    """Start the node again after `delay` seconds, with `siblings` restarted around it."""

    delay: float
    siblings: Siblings = Siblings.NONE


@dataclass(frozen=True, slots=True)
class Stop:
    """Do not restart. `reason` is None for a stop on purpose (nothing to report)."""

    reason: str | None = None


@dataclass(frozen=True, slots=True)
class Fail:
    """The agent spent its error budget: `restarts` within `window_s`. It stays `failed`."""

    restarts: int
    window_s: float


@dataclass(frozen=True, slots=True)
class Escalate:
    """The group exceeded its intensity: it stops its children and fails to its parent."""

    restarts: int
    max_restarts: int
    window_s: float

    def reason(self, trigger: str, summary: str) -> str:
        """The sentence the group gives up with; `trigger` exited with `summary`."""
        return (f"more than {self.max_restarts} restarts within {self.window_s:g}s "
                f"(last: {trigger}: {summary})")


Decision = Restart | Stop | Fail | Escalate

STOPPED_ON_PURPOSE = Stop()


# A decision and the records it leaves: the exited node's and its group's.
Outcome = tuple[Decision, RestartRecord, RestartRecord]

# Restarts without a delay (the default backoff's first), made once: the fastest
# restart path allocates no decision.
_AT_ONCE = {siblings: Restart(0.0, siblings) for siblings in Siblings}


def next_backoff(spec: AgentSpec, consecutive_failures: int,
                 rng: random.Random | None = None) -> float:
    """Delay before restart number `consecutive_failures` (1-based).

    initial * multiplier**(n-1), capped at backoff_max_s, then jittered by up to
    ±backoff_jitter of itself (never above the cap) so many agents failing
    together do not restart in lockstep.
    """
    if consecutive_failures <= 1 or spec.backoff_initial_s == 0:
        delay = spec.backoff_initial_s
    else:
        delay = min(spec.backoff_max_s,
                    spec.backoff_initial_s * spec.backoff_multiplier ** (consecutive_failures - 1))
    if spec.backoff_jitter and delay > 0:
        r = (rng or random).uniform(-spec.backoff_jitter, spec.backoff_jitter)
        delay = min(spec.backoff_max_s, max(0.0, delay * (1 + r)))
    return delay


def decide(record: RestartRecord, spec: AgentSpec | None, group: RestartRecord,
           rules: GroupSpec, group_size: int, exit: Exit, now: float, *,
           stopping: bool = False, rng: random.Random | None = None) -> Outcome:
    """What follows `exit` of a node whose record is `record`, at `now`.

    `spec` is the agent's (None: the node is a group, always restarted at once,
    with no budget of its own); `group` and `rules` are the record and settings
    of the group it belongs to, which has `group_size` children; `stopping`
    says a stop was asked for. The returned records replace the node's and
    the group's.
    """
    if stopping or exit.stopped:
        return STOPPED_ON_PURPOSE, record.ended(), group
    uptime = record.uptime(now)
    window = record.window
    if spec is None:
        consecutive = record.consecutive + 1
    else:
        restart = spec.restart
        if restart == "temporary" or (restart == "transient" and not exit.failed):
            return Stop(f"{restart} agent exited, not restarted"), record.ended(), group
        stable = uptime is not None and uptime >= spec.backoff_reset_s
        consecutive = 1 if stable else record.consecutive + 1
        window = window.add(now, spec.restart_window_s)
        if len(window) > spec.max_restarts:
            return (Fail(len(window), spec.restart_window_s),
                    RestartRecord(record.restarts, consecutive, window), group)
    intensity = group.window.add(now, rules.restart_window_s)
    group = RestartRecord(group.restarts, group.consecutive, intensity, group.started_at)
    if len(intensity) > rules.max_restarts:
        return (Escalate(len(intensity), rules.max_restarts, rules.restart_window_s),
                RestartRecord(record.restarts, consecutive, window), group)
    delay = 0.0 if spec is None else next_backoff(spec, consecutive, rng)
    if rules.strategy == "one_for_one" or group_size == 1:
        siblings = Siblings.NONE
    else:
        siblings = Siblings.ALL if rules.strategy == "one_for_all" else Siblings.LATER
    decision = _AT_ONCE[siblings] if delay == 0.0 else Restart(delay, siblings)
    return decision, RestartRecord(record.restarts + 1, consecutive, window), group
