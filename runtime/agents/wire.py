"""The process-agent channel as a sans-IO state machine: typed events in, frames out.

A process agent and the runtime talk over a socketpair in frames (4-byte
length + msgpack, runtime.wire.framing) of at most 4 MiB, so a state value or
a message of up to about that size travels; containers are bounded by the
frame's own size and nesting by msgpack's 1024 levels. Plain data only:
msgpack, never pickle, so a confused or hostile agent cannot make the runtime
allocate without bound or execute anything.

    runtime -> agent   ["hello", 0, {"state": map}]           first, sent before the fork
    agent -> runtime   ["state", req, op, key, arg]           op: set | del | incr | merge
                       ["send", req, to, msg, key]            ["recv", req]   ["ack", req, seq]
                       ["ready", 0, nil]                      ["exit", 0, summary | nil]
    runtime -> agent   ["ok", req, value] | ["err", req, message]

Each request id is open from its request until its one reply; both sides
track them. The exit report is the agent's last word: it may be sent in any
state (even before the hello arrived, or after a protocol error) and nothing
follows it. The runtime checks shapes only; the values (keys, recipients, seqs)
are the agent's user code's, and the runtime answers a bad one with "err".

A wrong frame is a RemoteProtocolError whose message says what was wrong; it
latches the connection in ERROR (runtime.wire.connection).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from runtime.wire.connection import FramedConnection
from runtime.wire.errors import LocalProtocolError, RemoteProtocolError
from runtime.wire.framing import Decoder, Encoder

MAX_FRAME = 4 << 20  # bytes of one frame body (a state value or message must fit)
AGENT, RUNTIME = "agent", "runtime"
STATE_OPS = frozenset({"set", "del", "incr", "merge"})


# Plain (not frozen) dataclasses: a frozen one costs ~1 us more to build, per frame.
@dataclass(slots=True)
class Hello:
    """runtime -> agent, first: the agent's materialised state."""

    state: dict


@dataclass(slots=True)
class StateOp:
    """A state write (`op` one of STATE_OPS; `arg` None for del), answered once durable."""

    req: int
    op: str
    key: Any
    arg: Any


@dataclass(slots=True)
class Send:
    """Put `msg` durably in agent `to`'s inbox (`key`: idempotency key); answered with its seq."""

    req: int
    to: Any
    msg: Any
    key: Any = None


@dataclass(slots=True)
class Recv:
    """The next message of this agent's inbox, answered with [seq, sender, body, key]."""

    req: int


@dataclass(slots=True)
class Ack:
    """Message `seq` of the inbox is handled."""

    req: int
    seq: Any


@dataclass(slots=True)
class Ready:
    """The agent called ctx.ready(): agents that depend on it may start."""


@dataclass(slots=True)
class ExitReport:
    """The agent's last word: None if its entry returned, else what it raised."""

    summary: str | None


@dataclass(slots=True)
class Reply:
    """runtime -> agent: request `req` succeeded with `value`, or failed (`value`: why)."""

    req: int
    ok: bool
    value: Any = None


Request = StateOp | Send | Recv | Ack
Event = Hello | Request | Ready | ExitReport | Reply


def channel_decoder(max_frame: int = MAX_FRAME) -> Decoder:
    """The channel's unpacking limits: anything that fits in a frame, nothing more.

    Containers are bounded by the frame, not by a smaller count, so a state
    value of a million small numbers still travels; map keys may be any
    msgpack value, as in the store.
    """
    return Decoder(max_frame, max_container=max_frame, strict_map_key=False)


def _req(value: Any) -> int:
    if type(value) is not int:
        raise RemoteProtocolError(f"a request id must be an integer, got {value!r}", "bad_id")
    return value


class Connection(FramedConnection):
    """One end of a process agent's channel; `role` is AGENT or RUNTIME.

    The RUNTIME sends Hello first, then one Reply per request; the AGENT sends
    requests, Ready and, last, ExitReport. Values are limited to `max_frame`.
    """

    def __init__(self, role: str, max_frame: int = MAX_FRAME) -> None:
        if role not in (AGENT, RUNTIME):
            raise ValueError(f"role must be {AGENT!r} or {RUNTIME!r}")
        super().__init__(role, channel_decoder(max_frame), Encoder(max_frame))
        self._hello = False  # sent (runtime) / received (agent)
        self._exited = False  # the agent's exit report was sent (agent) / received (runtime)
        self._open: set[int] = set()  # request ids sent (agent) / received (runtime), unanswered
        # Each role's half of the machine, picked once (no role test per frame).
        if role == AGENT:
            self._interpret, self._send = self._to_agent, self._send_as_agent
        else:
            self._interpret, self._send = self._to_runtime, self._send_as_runtime

    @property
    def open_requests(self) -> frozenset[int]:
        """Request ids not answered yet."""
        return frozenset(self._open)

    # -- input -----------------------------------------------------------------------

    def _to_runtime(self, msg: Any) -> Event:
        # The hot frame first, checked in one go: a well-formed state write.
        if type(msg) is list and len(msg) == 5 and msg[0] == "state" and type(msg[1]) is int \
                and msg[2] in STATE_OPS and msg[1] not in self._open and not self._exited:
            self._open.add(msg[1])
            return StateOp(msg[1], msg[2], msg[3], msg[4])
        return self._to_runtime_checked(msg)

    def _to_runtime_checked(self, msg: Any) -> Event:
        if type(msg) is not list or len(msg) < 2:
            raise RemoteProtocolError(f"expected a frame [kind, req, ...], got {_brief(msg)}")
        if self._exited:
            raise RemoteProtocolError(f"a {msg[0]!r} frame after the agent's exit report")
        kind, n = msg[0], len(msg)
        if kind == "state" and n == 5:
            if msg[2] not in STATE_OPS:
                raise RemoteProtocolError(f"unknown state op {msg[2]!r} (expected one of "
                                          f"{', '.join(sorted(STATE_OPS))})")
            event: Event = StateOp(self._opening(msg[1]), msg[2], msg[3], msg[4])
        elif kind == "send" and n == 5:
            event = Send(self._opening(msg[1]), msg[2], msg[3], msg[4])
        elif kind == "recv" and n == 2:
            event = Recv(self._opening(msg[1]))
        elif kind == "ack" and n == 3:
            event = Ack(self._opening(msg[1]), msg[2])
        elif kind == "ready" and n == 3:
            event = Ready()
        elif kind == "exit" and n == 3:
            if msg[2] is not None and type(msg[2]) is not str:
                raise RemoteProtocolError(f"an exit report's summary must be a string or nil, "
                                          f"got {_brief(msg[2])}")
            self._exited = True
            event = ExitReport(msg[2])
        else:
            raise RemoteProtocolError(f"not an agent request: {kind!r} frame of {n} items "
                                      "(expected state/5, send/5, recv/2, ack/3, ready/3, exit/3)")
        return event

    def _opening(self, req: Any) -> int:
        if _req(req) in self._open:
            raise RemoteProtocolError(f"request id {req} is already in use", "bad_id")
        self._open.add(req)
        return req

    def _to_agent(self, msg: Any) -> Event:
        # The hot frame first, checked in one go: a success reply to an open request.
        if type(msg) is list and len(msg) == 3 and msg[0] == "ok" and type(msg[1]) is int \
                and msg[1] in self._open:
            self._open.discard(msg[1])
            return Reply(msg[1], True, msg[2])
        return self._to_agent_checked(msg)

    def _to_agent_checked(self, msg: Any) -> Event:
        if type(msg) is not list or len(msg) != 3:
            raise RemoteProtocolError(f"expected a frame [kind, req, value], got {_brief(msg)}")
        kind, req, value = msg
        if not self._hello:
            if kind != "hello" or type(value) is not dict or type(value.get("state")) is not dict:
                raise RemoteProtocolError(f"expected the hello first, got a {_brief(kind)} frame",
                                          "no_hello")
            self._hello = True
            return Hello(value["state"])
        if kind == "ok" or kind == "err":
            if _req(req) not in self._open:
                raise RemoteProtocolError(f"a reply to request id {req}, which is not open",
                                          "bad_id")
            if kind == "err" and type(value) is not str:
                raise RemoteProtocolError(f"an error reply's value must be a message, got "
                                          f"{_brief(value)}")
            self._open.discard(req)
            return Reply(req, kind == "ok", value)
        raise RemoteProtocolError(f"not a runtime reply: {_brief(kind)} frame "
                                  "(expected ok or err)")

    # -- output ----------------------------------------------------------------------

    def _last_word(self, event: Event) -> bool:
        return type(event) is ExitReport and self.role == AGENT and not self._exited

    def _send_as_runtime(self, event: Event) -> bytes:
        kind = type(event)
        if kind is Reply:
            if not self._hello:
                raise LocalProtocolError("send the hello before any reply", "state")
            if event.req not in self._open:
                raise LocalProtocolError(f"request id {event.req} is not open", "bad_id")
            data = self._encode(["ok" if event.ok else "err", event.req, event.value])
            self._open.discard(event.req)
            return data
        if kind is Hello:
            if self._hello:
                raise LocalProtocolError("the hello was already sent", "state")
            data = self._encode(["hello", 0, {"state": event.state}])
            self._hello = True
            return data
        raise LocalProtocolError(f"the runtime sends Hello and Reply, not {kind.__name__}",
                                 "state")

    def _send_as_agent(self, event: Event) -> bytes:
        kind = type(event)
        if kind is StateOp and self._hello and not self._exited and event.op in STATE_OPS \
                and type(event.req) is int and event.req not in self._open:  # the hot one
            data = self._encode(["state", event.req, event.op, event.key, event.arg])
            self._open.add(event.req)
            return data
        if kind is ExitReport:
            if self._exited:
                raise LocalProtocolError("the exit report was already sent", "state")
            data = self._encode(["exit", 0, event.summary])
            self._exited = True
            return data
        if kind is Reply or kind is Hello:
            raise LocalProtocolError(f"an agent does not send {kind.__name__}", "state")
        if self._exited:
            raise LocalProtocolError(f"{kind.__name__} after the exit report", "state")
        if not self._hello:
            raise LocalProtocolError(f"{kind.__name__} before the runtime's hello", "state")
        if kind is Ready:
            return self._encode(["ready", 0, None])
        if event.req in self._open or type(event.req) is not int:
            raise LocalProtocolError(f"request id {event.req!r} is in use or not an integer",
                                     "bad_id")
        if kind is StateOp:
            raise LocalProtocolError(f"unknown state op {event.op!r}", "state")
        if kind is Send:
            data = self._encode(["send", event.req, event.to, event.msg, event.key])
        elif kind is Recv:
            data = self._encode(["recv", event.req])
        elif kind is Ack:
            data = self._encode(["ack", event.req, event.seq])
        else:
            raise TypeError(f"cannot send {event!r}")
        self._open.add(event.req)
        return data


def _brief(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
