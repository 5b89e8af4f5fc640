"""Fuzzing a live control socket: random, truncated, oversized and wrong-type frames,
plus abrupt disconnects. Shared by tests/control/test_fuzz.py (10k frames) and
scripts/chaos/control_fuzz.py (100k and more).

Only methods that cannot disturb the agents are called with random params
(no shutdown, agent actions, state writes, reload, send or maintain): the point
is that nothing a client sends, however malformed, reaches further than its
own connection. Every well-formed request must get an answer whose code is not
`internal` (a handler that crashes on a wrong type is a bug, even if caught).
"""

from __future__ import annotations

import random
import socket
import struct
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack

from runtime.control.protocol import (
    CLIENT,
    CLOSED,
    MAX_FRAME,
    NEED_DATA,
    Connection,
    ErrorResponse,
    Hello,
    ProtocolError,
    Request,
    Response,
)

SAFE_METHODS = ["status", "info", "metrics", "state.get", "events.query", "checkpoint"]
PARAM_KEYS = ["agent", "key", "since", "until", "type", "limit", "backlog", "format", "value",
              "message"]
# The names each method declares. Most requests use only these (with values of random
# types), so that enough of them get past validation for the handlers to be fuzzed too;
# the rest mix in names the method does not take, which must be refused (bad_params).
METHOD_PARAMS = {"status": ["agent"], "info": [], "metrics": ["format"], "checkpoint": [],
                 "state.get": ["agent", "key"], "events.query": ["since", "until", "agent",
                                                               "type", "limit"],
                 "events.follow": ["since", "agent", "type", "backlog"]}
_LEN = struct.Struct(">I")


@dataclass
class FuzzStats:
    """What one fuzz run did and what came back."""

    frames: int = 0  # fuzz frames sent (hellos not counted)
    connections: int = 0
    abrupt_disconnects: int = 0
    answers: Counter = field(default_factory=Counter)  # result / error code -> count
    closed_with: Counter = field(default_factory=Counter)  # connection-level error codes
    internal: list[str] = field(default_factory=list)  # `internal` errors: must stay empty
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"frames": self.frames, "connections": self.connections,
                "abrupt_disconnects": self.abrupt_disconnects,
                "answers": dict(self.answers), "closed_with": dict(self.closed_with),
                "internal_errors": self.internal, "seconds": round(self.seconds, 3)}


def random_value(rng: random.Random, depth: int = 0) -> Any:
    """A msgpack-able value of a random type (and sometimes an unkind one)."""
    kind = rng.randrange(12 if depth < 3 else 8)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice([True, False])
    if kind == 2:
        return rng.choice([0, -1, 1, 2**31, -(2**63), 2**64 - 1, rng.randint(-1000, 1000)])
    if kind == 3:
        return rng.choice([0.0, -0.0, 1e308, -1e-308, float("nan"), float("inf"),
                           float("-inf"), rng.uniform(-1e12, 1e12)])
    if kind == 4:
        return "".join(rng.choice("ab\u00e9\u4e2d\U0001f600 :/\\\0") for _ in range(
            rng.randint(0, 40)))
    if kind == 5:
        return rng.randbytes(rng.randint(0, 40))
    if kind == 6:
        return rng.choice(["counter", "busy", "", "x" * 300, "events", "status"])
    if kind == 7:
        return rng.choice([time.time(), time.time() - 60, 0, -5])
    if kind in (8, 9):
        return [random_value(rng, depth + 1) for _ in range(rng.randint(0, 5))]
    return {rng.choice([*PARAM_KEYS, "", "zz"]): random_value(rng, depth + 1)
            for _ in range(rng.randint(0, 4))}


def random_params(rng: random.Random, agents: list[str], method: str = "") -> dict[str, Any]:
    names = METHOD_PARAMS.get(method)
    pool = PARAM_KEYS if names is None or rng.random() < 0.3 else names
    params = {}
    for key in rng.sample(pool, rng.randint(0, min(4, len(pool)))):
        params[key] = random_value(rng)
    if agents and "agent" in pool and rng.random() < 0.5:
        params["agent"] = rng.choice(agents)
    return params


def _frame(obj: Any) -> bytes:
    body = msgpack.packb(obj, use_bin_type=True)
    return _LEN.pack(len(body)) + body


def _raw_frame(body: bytes) -> bytes:
    return _LEN.pack(len(body)) + body


class _Conn:
    """One blocking connection with a protocol parser for the server's answers."""

    def __init__(self, path: Path, timeout: float) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(str(path))
        self.conn = Connection(CLIENT)

    def read_event(self) -> Any:
        while True:
            event = self.conn.next_event()
            if event is NEED_DATA:
                try:
                    data = self.sock.recv(65536)
                except (ConnectionResetError, BrokenPipeError):
                    data = b""
                self.conn.receive_data(data)
                continue
            return event

    def drain_until_closed(self) -> list[Any]:
        """What the server says before it closes (it must close: we broke the protocol)."""
        said = []
        try:
            while (event := self.read_event()) is not CLOSED:
                said.append(event)
        except ProtocolError:
            pass  # a cut-off tail; the server closed on us, which is the point
        return said

    def abort(self) -> None:
        """Close with a RST (SO_LINGER 0): the most abrupt disconnect there is."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()

    def close(self) -> None:
        self.sock.close()


def _note_answer(stats: FuzzStats, event: Any, method: str, params: Any) -> None:
    if isinstance(event, Response):
        stats.answers["ok"] += 1
    elif isinstance(event, ErrorResponse):
        stats.answers[event.code] += 1
        if event.code == "internal":
            stats.internal.append(f"{method} {params!r:.200}: {event.message}")
    else:
        stats.answers[type(event).__name__] += 1


def _broken_frame(rng: random.Random) -> tuple[bytes, str]:
    """A frame the server must reject (and close on): (bytes, what it is)."""
    choice = rng.randrange(7)
    if choice == 0:
        return _LEN.pack(rng.randint(MAX_FRAME + 1, 2**32 - 1)), "oversized-header"
    if choice == 1:
        return _raw_frame(rng.randbytes(rng.randint(1, 200))), "random-body"
    if choice == 2:
        return _frame(rng.choice([[1, "status", {}], "status", 42, None, 1.5, b"x", True])), \
            "not-a-map"
    if choice == 3:
        return _frame(rng.choice([
            {"id": rng.choice(["1", 1.0, None, [1], True]), "method": "status"},
            {"id": 1, "method": rng.choice([None, 5, "", b"status", ["status"]])},
            {"id": 1, "method": "status", "params": rng.choice([[1], "x", 5, None])},
            {"method": "status", "params": {}},
        ])), "wrong-types"
    if choice == 4:
        return _raw_frame(msgpack.packb({1: "int key", "id": 1})), "int-keys"
    if choice == 5:
        return _raw_frame(b"\x92\x01"), "truncated-msgpack"
    return _raw_frame(msgpack.packb({"id": 1, "method": "status"}) + b"\x00\x01"), \
        "trailing-bytes"


def _session(path: Path, rng: random.Random, agents: list[str], stats: FuzzStats,
             timeout: float, budget: int) -> None:
    """One connection's worth of fuzz (at most `budget` frames)."""
    stats.connections += 1
    c = _Conn(path, timeout)
    try:
        scenario = rng.random()
        if scenario < 0.06:  # garbage instead of a hello
            c.sock.sendall(rng.randbytes(rng.randint(1, 300)))
            stats.frames += 1
            if rng.random() < 0.5:
                c.abort()
                stats.abrupt_disconnects += 1
                return
            said = c.drain_until_closed()
            for event in said:
                if isinstance(event, ErrorResponse):
                    stats.closed_with[event.code] += 1
            return
        if scenario < 0.09:  # connect, then vanish
            c.abort()
            stats.abrupt_disconnects += 1
            return
        if scenario < 0.12:  # a wrong hello
            c.sock.sendall(_frame(rng.choice([
                {"hello": "outpost", "version": rng.choice([0, 2, 99, -1, "1", True])},
                {"hello": "other", "version": 1}, {"id": 1, "method": "status"}])))
            stats.frames += 1
            for event in c.drain_until_closed():
                if isinstance(event, ErrorResponse):
                    stats.closed_with[event.code] += 1
            return
        c.sock.sendall(c.conn.send(Hello()))
        if not isinstance(c.read_event(), Hello):
            raise AssertionError("no hello back from the runtime")
        next_id = 1
        for _ in range(min(budget, rng.randint(1, 40))):
            roll = rng.random()
            if roll < 0.70:  # a well-formed request with random params
                method = rng.choice([*SAFE_METHODS, "nope", "Status", "state.get"])
                params = random_params(rng, agents, method)
                try:
                    data = c.conn.send(Request(next_id, method, params))
                except ProtocolError:
                    continue  # e.g. an int too big for msgpack: nothing was sent
                c.sock.sendall(data)
                stats.frames += 1
                event = c.read_event()
                _note_answer(stats, event, method, params)
                next_id += 1
            elif roll < 0.76:  # several pipelined, then read them all
                n = rng.randint(2, 8)
                sent = []
                for i in range(n):
                    params = random_params(rng, agents, "state.get")
                    try:
                        sent.append(c.conn.send(Request(next_id + i, "state.get", params)))
                    except ProtocolError:
                        break
                c.sock.sendall(b"".join(sent))
                stats.frames += len(sent)
                for _ in sent:
                    _note_answer(stats, c.read_event(), "state.get", "pipelined")
                next_id += n
            elif roll < 0.80:  # follow, then leave mid-stream
                params = random_params(rng, agents, "events.follow")
                params.pop("until", None)
                params["backlog"] = rng.choice([0, 1, 5])
                try:
                    c.sock.sendall(c.conn.send(Request(next_id, "events.follow", params)))
                except ProtocolError:
                    continue
                stats.frames += 1
                if rng.random() < 0.5:
                    # Bad params are answered at once; a valid follow may stay quiet
                    # (its filters can match nothing), so wait only briefly.
                    c.sock.settimeout(0.05)
                    try:
                        event = c.read_event()
                    except TimeoutError:
                        event = None
                    c.sock.settimeout(timeout)
                    if isinstance(event, ErrorResponse):
                        _note_answer(stats, event, "events.follow", params)
                        next_id += 1
                        continue
                    stats.answers[type(event).__name__] += 1
                c.abort()
                stats.abrupt_disconnects += 1
                return
            elif roll < 0.90:  # a frame that ends the connection
                data, what = _broken_frame(rng)
                c.sock.sendall(data)
                stats.frames += 1
                said = c.drain_until_closed()
                if not said or not isinstance(said[-1], ErrorResponse):
                    raise AssertionError(f"{what}: the runtime closed without an error")
                stats.closed_with[said[-1].code] += 1
                return
            elif roll < 0.95:  # half a frame, then disconnect
                data = c.conn.send(Request(next_id, "status",
                                           random_params(rng, agents, "status")))
                c.sock.sendall(data[: rng.randint(1, len(data) - 1)])
                stats.frames += 1
                if rng.random() < 0.5:
                    c.abort()
                else:
                    c.close()
                stats.abrupt_disconnects += 1
                return
            else:  # a request, then disconnect without reading the answer
                try:
                    method = rng.choice(SAFE_METHODS)
                    c.sock.sendall(c.conn.send(Request(next_id, method,
                                                       random_params(rng, agents, method))))
                except ProtocolError:
                    continue
                stats.frames += 1
                c.abort()
                stats.abrupt_disconnects += 1
                return
        c.close()
    finally:
        c.sock.close()


def run_fuzz(path: Path, frames: int, seed: int, agents: list[str],
             timeout: float = 10.0, large_every: int = 2000) -> FuzzStats:
    """Send at least `frames` fuzz frames to the runtime at `path`; returns the stats.

    Every `large_every` frames one request is near the 1 MiB limit (a big
    string param) and one just over it, so the size checks meet real bodies.
    """
    rng = random.Random(seed)
    stats = FuzzStats()
    started = time.monotonic()
    next_large = large_every
    while stats.frames < frames:
        _session(path, rng, agents, stats, timeout, frames - stats.frames)
        if stats.frames >= next_large:
            next_large += large_every
            _large(path, stats, timeout)
    stats.seconds = time.monotonic() - started
    return stats


def _large(path: Path, stats: FuzzStats, timeout: float) -> None:
    c = _Conn(path, timeout)
    try:
        stats.connections += 1
        c.sock.sendall(c.conn.send(Hello()))
        c.read_event()
        near = c.conn.send(Request(1, "status", {"pad": "x" * (MAX_FRAME - 100)}))
        c.sock.sendall(near)
        stats.frames += 1
        _note_answer(stats, c.read_event(), "status", "near-limit")
        over = msgpack.packb({"id": 2, "method": "status", "params": {"pad": "x" * MAX_FRAME}})
        c.sock.sendall(_raw_frame(over))
        stats.frames += 1
        said = c.drain_until_closed()
        if not said or not isinstance(said[-1], ErrorResponse) or said[-1].code != "too_large":
            raise AssertionError(f"an over-limit frame was not refused as too_large: {said}")
        stats.closed_with["too_large"] += 1
    except (BrokenPipeError, ConnectionResetError):
        stats.closed_with["too_large"] += 1  # refused and closed while we were still sending
    finally:
        c.close()

