"""What the runtime and its template process say to each other, as a sans-IO protocol.

The socket is SOCK_SEQPACKET: one msgpack message per datagram, and the fds a
spawn hands over travel beside it (SCM_RIGHTS), outside this object.

    runtime -> template  ["spawn", req, spec]  (+ fds)     ["signal", pid, signum]
    template -> runtime  ["spawned", req, pid] | ["spawn-failed", req, why]
                         ["exit", pid, code | nil, signum | nil]

The kernel keeps datagram boundaries, so one malformed packet cannot
desynchronise the ones after it: `receive_packet` refuses it with a
RemoteProtocolError and the protocol stays usable (no ERROR state here). The
driver drops such a packet, with its fds, and carries on; neither the template
nor the runtime's reader ever dies of one.

The runtime's side tracks the spawn requests it has open and the agent pids
the template has reported and not yet reaped, so an answer to nothing is
refused and `alive(pid)` tells whether a signal could still reach the agent.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from runtime.wire.errors import LocalProtocolError, RemoteProtocolError
from runtime.wire.framing import CLOSED, Decoder, Encoder, Sentinel

MAX_PACKET = 1 << 20  # bytes of one packet (a spawn's spec: env, argv, cwd)
MAX_FDS = 8  # fds one packet may carry
TEMPLATE, RUNTIME = "template", "runtime"


@dataclass(slots=True)
class Spawn:
    """Fork an agent described by `spec`; its fds (stdout, stderr[, channel]) travel beside."""

    req: int
    spec: dict


@dataclass(slots=True)
class Signal:
    """Send `signum` to the process group of agent `pid` (if it is not reaped yet)."""

    pid: int
    signum: int


@dataclass(slots=True)
class Spawned:
    """Spawn request `req` became agent process `pid`."""

    req: int
    pid: int


@dataclass(slots=True)
class SpawnFailed:
    """Spawn request `req` failed: `why`."""

    req: int
    why: str


@dataclass(slots=True)
class Exited:
    """Agent `pid` was reaped: its exit code, or the signal that ended it."""

    pid: int
    code: int | None
    signum: int | None


Event = Spawn | Signal | Spawned | SpawnFailed | Exited


def _int(value: Any, what: str) -> int:
    if type(value) is not int:
        raise RemoteProtocolError(f"{what} must be an integer, got {value!r}")
    return value


def _int_or_nil(value: Any, what: str) -> int | None:
    return None if value is None else _int(value, what)


class TemplateWire:
    """One end of the template's socket; `role` is TEMPLATE or RUNTIME."""

    def __init__(self, role: str) -> None:
        if role not in (TEMPLATE, RUNTIME):
            raise ValueError(f"role must be {TEMPLATE!r} or {RUNTIME!r}")
        self.role = role
        self._decode = Decoder(MAX_PACKET, max_container=65536, unit="packet")
        self._pack = Encoder(MAX_PACKET, unit="packet").pack
        self._spawning: set[int] = set()  # runtime: spawn requests not answered yet
        self._alive: set[int] = set()  # runtime: pids reported spawned and not yet exited

    def alive(self, pid: int) -> bool:
        """Runtime side: whether `pid` was spawned and its exit not reported yet."""
        return pid in self._alive

    @property
    def open_spawns(self) -> frozenset[int]:
        """Runtime side: spawn request ids not answered yet."""
        return frozenset(self._spawning)

    def receive_packet(self, data: bytes) -> Event | Sentinel:
        """The event in one datagram; CLOSED for b"" (the peer is gone).

        RemoteProtocolError if it is not a well-formed packet for this side;
        nothing changes then, and the next packet is read as if it never came.
        """
        if not data:
            return CLOSED
        msg = self._decode(data)
        if type(msg) is not list or not msg:
            raise RemoteProtocolError(f"expected a packet [kind, ...], got {type(msg).__name__}")
        kind, n = msg[0], len(msg)
        if self.role == TEMPLATE:
            if kind == "spawn" and n == 3:
                if type(msg[2]) is not dict:
                    raise RemoteProtocolError("a spawn's spec must be a map")
                return Spawn(_int(msg[1], "a spawn's request id"), msg[2])
            if kind == "signal" and n == 3:
                return Signal(_int(msg[1], "a signal's pid"), _int(msg[2], "a signal number"))
            raise RemoteProtocolError(f"not a runtime packet: {kind!r} of {n} items "
                                      "(expected spawn/3 or signal/3)")
        if kind == "exit" and n == 4:
            pid = _int(msg[1], "an exit's pid")
            if pid not in self._alive:
                raise RemoteProtocolError(f"an exit report for pid {pid}, which is not an agent")
            event: Event = Exited(pid, _int_or_nil(msg[2], "an exit code"),
                                  _int_or_nil(msg[3], "an exit signal"))
            self._alive.discard(pid)
            return event
        if (kind == "spawned" or kind == "spawn-failed") and n == 3:
            req = _int(msg[1], "a spawn's request id")
            if req not in self._spawning:
                raise RemoteProtocolError(f"an answer to spawn request {req}, which is not open")
            if kind == "spawned":
                pid = _int(msg[2], "a spawned pid")
                if pid <= 0:
                    raise RemoteProtocolError(f"a spawned pid must be positive, got {pid}")
                event = Spawned(req, pid)
                self._alive.add(pid)
            else:
                if type(msg[2]) is not str:
                    raise RemoteProtocolError("a failed spawn's reason must be a string")
                event = SpawnFailed(req, msg[2])
            self._spawning.discard(req)
            return event
        raise RemoteProtocolError(f"not a template packet: {kind!r} of {n} items "
                                  "(expected spawned/3, spawn-failed/3 or exit/4)")

    def send(self, event: Event) -> bytes:
        """The datagram for `event`; LocalProtocolError if this side may not send it."""
        kind = type(event)
        if self.role == RUNTIME:
            if kind is Spawn:
                if type(event.spec) is not dict:
                    raise LocalProtocolError("a spawn's spec must be a dict", "state")
                if event.req in self._spawning:
                    raise LocalProtocolError(f"spawn request {event.req} is already open",
                                             "bad_id")
                data = self._pack(["spawn", event.req, event.spec])
                self._spawning.add(event.req)
                return data
            if kind is Signal:
                return self._pack(["signal", event.pid, event.signum])
        elif kind is Spawned:
            return self._pack(["spawned", event.req, event.pid])
        elif kind is SpawnFailed:
            return self._pack(["spawn-failed", event.req, event.why])
        elif kind is Exited:
            return self._pack(["exit", event.pid, event.code, event.signum])
        raise LocalProtocolError(f"the {self.role} does not send {kind.__name__}", "state")
