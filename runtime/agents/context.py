"""What an agent gets: `ctx`, the same API for every agent kind."""

from __future__ import annotations

import logging
import struct
import weakref
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import trio

from runtime.store import KeyValueState
from runtime.store.kvstate import DELETE, INCR, MERGE, SET
from shm import Counter, Gauge, Heartbeat, Histogram, Record, Segment, SegmentError
from shm.metrics import RECORD_MAX_BYTES


def state_stream(agent: str) -> str:
    """The store stream holding an agent's durable state (the store knows no agents)."""
    return f"agent/{agent}/state"


class AgentMetrics:
    """An agent's metrics in shared memory, named '<agent>:<metric>' in the segment.

    Asking twice for one name returns the same object (no second directory
    scan), so `ctx.metrics.counter("x").inc()` in a loop stays cheap; hoisting
    the object out of the loop is cheaper still.
    """

    def __init__(self, segment: Segment, agent: str) -> None:
        self._segment = segment
        self._agent = agent
        self._made: dict[tuple[str, str], Any] = {}

    def _get(self, kind: str, name: str, make: Callable[[str], Any]) -> Any:
        key = (kind, name)
        found = self._made.get(key)
        if found is None:
            found = self._made[key] = make(f"{self._agent}:{name}")
        return found

    def counter(self, name: str) -> Counter:
        """A counter: inc() adds one, add(n) adds n."""
        return self._get("counter", name, lambda full: Counter(self._segment, full))

    def gauge(self, name: str) -> Gauge:
        """A gauge: set(v), add(v)."""
        return self._get("gauge", name, lambda full: Gauge(self._segment, full))

    def histogram(self, name: str, bounds: Sequence[float]) -> Histogram:
        """A histogram with fixed bucket bounds (the same bounds every time for one name)."""
        bounds = [float(b) for b in bounds]
        made = self._get("histogram", name,
                         lambda full: Histogram(self._segment, full, bounds))
        if made.bounds != bounds:
            raise SegmentError(f"histogram {name!r} exists with bounds {made.bounds}, "
                               f"not {bounds}")
        return made

    def record(self, name: str, size: int) -> Record:
        """A seqlocked record of `size` bytes (e.g. a status struct read by the CLI)."""
        made = self._get("record", name, lambda full: Record(self._segment, full, size))
        if made.size != size:
            raise SegmentError(f"record {name!r} holds {made.size} bytes, not {size}")
        return made


HEALTH_METRIC = "health"  # the record slot '<agent>:health'
HEALTH_BYTES = RECORD_MAX_BYTES  # one slot
_HEALTH_HEAD = struct.Struct("<QB")  # reports so far, ok


def encode_health(reports: int, ok: bool, detail: str) -> bytes:
    """A health record's bytes: how many reports so far, ok, the detail (UTF-8, cut)."""
    text = detail.encode("utf-8", "replace")[:HEALTH_BYTES - _HEALTH_HEAD.size]
    return _HEALTH_HEAD.pack(reports, 1 if ok else 0) + text.ljust(
        HEALTH_BYTES - _HEALTH_HEAD.size, b"\0")


def decode_health(raw: bytes) -> tuple[int, bool, str]:
    """(reports so far, ok, detail) of a health record (0 reports: never reported)."""
    reports, ok = _HEALTH_HEAD.unpack_from(raw)
    return reports, bool(ok), raw[_HEALTH_HEAD.size:].rstrip(b"\0").decode("utf-8", "replace")


class HealthReporter:
    """`ctx.report_health(ok, detail="")`: the agent's own verdict on its health.

    For checks only the agent can make (a sensor that answers nonsense, a queue
    it cannot drain): a rollout's health gate fails if the new version reports
    `ok=False` while it is gated. Written to a seqlocked record in shared
    memory ('<agent>:health'), the same for task and process agents: no
    round trip, nothing to the store. The slot is claimed on the first report.
    """

    def __init__(self, segment: Segment, agent: str) -> None:
        self._segment = segment
        self._agent = agent
        self._record: Record | None = None
        self._reports = 0

    def __call__(self, ok: bool, detail: str = "") -> None:
        if self._record is None:
            self._record = Record(self._segment, f"{self._agent}:{HEALTH_METRIC}",
                                  HEALTH_BYTES)
            # A restarted agent goes on counting, so a reader can tell a new report.
            self._reports = decode_health(self._record.read())[0]
        self._reports += 1
        self._record.write(encode_health(self._reports, bool(ok), str(detail)))


_SLOTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class CountingState:
    """`ctx.state`: the agent's KeyValueState, counting durable writes in shared memory.

    Reads and every other attribute go straight to the state; set/delete/incr/
    merge bump `<agent>:state_writes` when they are durable (before they return).
    Each returns the state's own write coroutine, so counting adds no frame.
    """

    def __init__(self, state: KeyValueState, writes: Counter) -> None:
        self._state = state
        self._writes = writes

    def __getattr__(self, name: str) -> Any:
        return getattr(self._state, name)

    def __getitem__(self, key: str) -> Any:
        return self._state[key]

    def __contains__(self, key: object) -> bool:
        return key in self._state

    def __iter__(self):
        return iter(self._state)

    def __len__(self) -> int:
        return len(self._state)

    def set(self, key: str, value: Any) -> Awaitable[None]:
        """Set `key` to `value`; await it: returns once durable."""
        return self._state.write(SET, key, value, self._writes)

    def delete(self, key: str) -> Awaitable[None]:
        """Remove `key`; await it: returns once durable."""
        return self._state.write(DELETE, key, None, self._writes)

    def incr(self, key: str, by: int | float = 1) -> Awaitable[int | float]:
        """Add `by` to the number at `key`; await it for the new value."""
        return self._state.write(INCR, key, by, self._writes)

    def merge(self, key: str, fields: Any) -> Awaitable[dict]:
        """Shallow-merge `fields` into the map at `key`; await it for the map."""
        return self._state.write(MERGE, key, fields, self._writes)


class AgentContext:
    """Everything an agent touches: durable state, heartbeat, metrics, log, readiness, mail.

    `await ctx.state.set/delete/incr/merge(...)` returns only after the write is
    durable; `ctx.state.get(...)` reads the local materialised copy. Process
    agents get a ProcessContext with the same attributes (runtime.agents.process).
    """

    def __init__(self, name: str, state: KeyValueState, segment: Segment,
                 mailboxes: Any = None) -> None:
        self.name = name
        # Metric objects outlive an instance: a restart must not rescan the segment.
        per_segment = _SLOTS.setdefault(segment, {})
        made = per_segment.get(name)
        if made is None:
            metrics = AgentMetrics(segment, name)
            made = per_segment[name] = (metrics, Heartbeat(segment, f"{name}:heartbeat"),
                                        metrics.counter("state_writes"))
        self.metrics, self._heartbeat, writes = made
        self.state = CountingState(state, writes)
        self.log = logging.getLogger(f"outpost.agent.{name}")
        self.report_health = HealthReporter(segment, name)
        self.is_ready = trio.Event()
        self.on_ready: Callable[[], None] | None = None  # the supervisor's hook
        self._mailboxes = mailboxes
        self._inbox = None

    def heartbeat(self) -> None:
        """Tell the supervisor this agent is alive (one atomic store in shared memory)."""
        self._heartbeat.beat()

    def ready(self) -> None:
        """Signal readiness: agents that depend on this one may start."""
        if not self.is_ready.is_set():
            self.is_ready.set()
            if self.on_ready is not None:
                self.on_ready()

    @property
    def inbox(self):
        """This agent's durable inbox (runtime.agents.mailbox.Inbox)."""
        if self._mailboxes is None:
            raise RuntimeError("this context has no mailboxes (created outside a runtime)")
        if self._inbox is None:
            received = self.metrics.counter("messages_in")
            self._inbox = self._mailboxes.inbox(self.name)
            self._inbox.on_receive = received.inc
        return self._inbox

    async def send(self, agent: str, msg: Any, key: str | None = None) -> int:
        """Durably put `msg` in `agent`'s inbox (at-least-once; one delivery per `key`)."""
        if self._mailboxes is None:
            raise RuntimeError("this context has no mailboxes (created outside a runtime)")
        return await self._mailboxes.send(agent, msg, key=key, sender=self.name)
