"""The control protocol as a pure state machine (sans-IO, in the manner of h11).

Bytes go in with `receive_data`, events come out of `next_event`, and `send`
turns an event into bytes. No sockets, no clocks: the server (trio) and the CLI
(blocking sockets) drive the same object.

Wire format: frames of a 4-byte big-endian length followed by one msgpack map.

    client -> server  {"hello": "outpost", "version": 1}
    server -> client  {"hello": "outpost", "version": 1, "server": "<version>"}
    client -> server  {"id": int, "method": str, "params": map}
    server -> client  {"id": int, "result": any}
                    | {"id": int, "error": {"code": str, "message": str}}
                    | {"id": int, "stream": any}  ...  {"id": int, "end": true}

The handshake comes first: a server may answer a hello with an id-less error
(`forbidden`, `version`, `busy`) and close. After it, every request id is
tracked on both sides: a response, error or stream item for an id that is not
open is a ProtocolError, and a stream stays open until its end (or error).
Requests may be pipelined; answers come in request order.

Tables: a result may hold a list of maps that share their keys (status rows)
as msgpack ext type 1 whose data is the msgpack array [columns, rows]: the keys
once, then each row's values in column order. That is ~2.4x smaller than the
maps and cheaper to build and encode (decoding costs about the same); the
receiving Connection turns it back into the list of maps, so callers never see
the difference.

Errors say whose fault they are. A peer that breaks the protocol (oversized
or undecodable frame, wrong shape, request before hello, an answer to an id
that is not open) raises RemoteProtocolError from `next_event`; this side
sending what it may not (a request before hello, a reply to an id that is not
open) raises LocalProtocolError from `send`. Either latches the connection in
its ERROR state (runtime.wire.connection): every later `next_event()` or
`send()` raises again, except the server's id-less refusal, which may always
be sent so the peer learns why. A value that cannot travel (code too_large or
unencodable) is refused alone and the connection stays usable, so the server
can answer that request with an error instead. Both are ProtocolErrors.

Buffers are bounded by construction: the length prefix is checked before the
body is buffered, and drivers read more only when `next_event` says NEED_DATA,
so one connection holds at most one frame plus one read.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgpack

from runtime.wire.connection import ERROR, OPEN, FramedConnection
from runtime.wire.errors import LocalProtocolError, ProtocolError, RemoteProtocolError
from runtime.wire.framing import CLOSED, NEED_DATA, Decoder, Encoder

__all__ = [
    "CLIENT", "CLOSED", "ERROR", "MAX_CONTAINER", "MAX_FRAME", "NEED_DATA", "OPEN",
    "PROTOCOL_VERSION", "SERVER", "TABLE_EXT", "Connection", "ErrorResponse", "Event", "Hello",
    "LocalProtocolError", "ProtocolError", "RemoteProtocolError", "Request", "Response",
    "StreamEnd", "StreamItem", "Table",
]

PROTOCOL_VERSION = 1
MAX_FRAME = 1 << 20
MAX_CONTAINER = 65536  # elements per msgpack array/map: bounds the work one frame causes
TABLE_EXT = 1  # msgpack ext type of a Table

CLIENT, SERVER = "client", "server"


@dataclass(frozen=True)
class Hello:
    """The first frame each way: the protocol version, and the server's name on reply."""

    version: int = PROTOCOL_VERSION
    server: str | None = None


@dataclass(frozen=True)
class Request:
    """Call `method` with `params`; `id` pairs the answer with the call."""

    id: int
    method: str
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Table:
    """A list of maps that share their keys, sent compactly (see the module docstring).

    Put one anywhere in a result: `Table(("name", "state"), [("a", "up"), ...])`
    arrives as `[{"name": "a", "state": "up"}, ...]`.
    """

    columns: tuple[str, ...] | list[str]
    rows: list[tuple[Any, ...]] | list[list[Any]]


@dataclass(frozen=True)
class Response:
    """The result of the request `id` (ends it)."""

    id: int
    result: Any = None


@dataclass(frozen=True)
class ErrorResponse:
    """The request `id` failed (ends it); id None: the connection itself is refused."""

    id: int | None
    code: str
    message: str


@dataclass(frozen=True)
class StreamItem:
    """One item of a streaming answer to request `id` (more follow)."""

    id: int
    item: Any


@dataclass(frozen=True)
class StreamEnd:
    """The streaming answer to request `id` is complete (ends it)."""

    id: int


Event = Hello | Request | Response | ErrorResponse | StreamItem | StreamEnd


def _tables() -> Callable[[Any], msgpack.ExtType]:
    """The Packer `default` that turns a Table into ext type 1 (with a Packer of its own:
    a table is packed inside the frame that holds it)."""
    pack_table = msgpack.Packer(use_bin_type=True).pack

    def default(obj: Any) -> msgpack.ExtType:
        if isinstance(obj, Table):
            return msgpack.ExtType(TABLE_EXT, pack_table([obj.columns, obj.rows]))
        raise TypeError(f"cannot serialize {type(obj).__name__} object")
    return default


_TABLE_LIMITS = dict(raw=False, strict_map_key=True, max_ext_len=0,  # tables do not nest
                     max_array_len=MAX_CONTAINER, max_map_len=MAX_CONTAINER)


def _untable(code: int, data: bytes) -> list[dict[str, Any]]:
    """A Table's ext data -> the list of maps it stands for (ValueError if malformed)."""
    if code != TABLE_EXT:
        raise ValueError(f"unknown msgpack ext type {code}")
    table = msgpack.unpackb(data, max_bin_len=len(data), max_str_len=len(data), **_TABLE_LIMITS)
    if not (type(table) is list and len(table) == 2 and type(table[0]) is list
            and type(table[1]) is list and all(type(c) is str for c in table[0])):
        raise ValueError("a table must be [columns (strings), rows]")
    columns, rows = table
    width = len(columns)
    out = []
    for row in rows:
        if type(row) is not list or len(row) != width:
            raise ValueError(f"every table row must be an array of {width} values")
        out.append(dict(zip(columns, row, strict=False)))  # width checked just above
    return out


class Connection(FramedConnection):
    """One end of a control connection. `role` is CLIENT or SERVER.

    Tracks the handshake and the open request ids, so either side's mistakes
    (a reply to an unknown id, a request before hello) surface as errors here
    rather than as confusion in the driver: the peer's as RemoteProtocolError
    from `next_event`, ours as LocalProtocolError from `send`.
    """

    def __init__(self, role: str, max_frame: int = MAX_FRAME) -> None:
        if role not in (CLIENT, SERVER):
            raise ValueError(f"role must be {CLIENT!r} or {SERVER!r}")
        super().__init__(role,
                         Decoder(max_frame, max_container=MAX_CONTAINER, ext_hook=_untable),
                         Encoder(max_frame, default=_tables()))
        self.handshaken = False
        self._hello_sent = False
        self._open: set[int] = set()  # request ids sent (client) / received (server), unanswered
        self._streaming: set[int] = set()  # the subset answered by a stream in progress

    @property
    def open_requests(self) -> frozenset[int]:
        """Request ids not yet fully answered."""
        return frozenset(self._open)

    # -- input -------------------------------------------------------------------

    def _interpret(self, msg: Any) -> Event:
        if not isinstance(msg, dict):
            raise RemoteProtocolError(f"expected a map, got {type(msg).__name__}")
        if not self.handshaken:
            if self.role == CLIENT and "hello" not in msg and isinstance(msg.get("error"), dict):
                return _error(None, msg["error"])  # refused before the handshake
            if msg.get("hello") != "outpost" or not isinstance(msg.get("version"), int) \
                    or isinstance(msg.get("version"), bool):
                raise RemoteProtocolError("expected a hello frame first", code="no_hello")
            if msg["version"] != PROTOCOL_VERSION:
                raise RemoteProtocolError(f"protocol version {msg['version']} is not supported "
                                          f"(this side speaks {PROTOCOL_VERSION})", code="version")
            self.handshaken = True
            server = msg.get("server")
            return Hello(msg["version"], server if isinstance(server, str) else None)
        msg_id = msg.get("id")
        if not isinstance(msg_id, int) or isinstance(msg_id, bool):
            if self.role == CLIENT and msg_id is None and isinstance(msg.get("error"), dict):
                return _error(None, msg["error"])
            raise RemoteProtocolError("frame has no integer id")
        if self.role == SERVER:
            method, params = msg.get("method"), msg.get("params", {})
            if not isinstance(method, str) or not method:
                raise RemoteProtocolError("request has no method name", code="bad_request")
            if not isinstance(params, dict):
                raise RemoteProtocolError("request params must be a map", code="bad_request")
            if msg_id in self._open:
                raise RemoteProtocolError(f"request id {msg_id} is already in use", code="bad_id")
            self._open.add(msg_id)
            return Request(msg_id, method, params)
        if msg_id not in self._open:
            raise RemoteProtocolError(f"answer for request id {msg_id}, which is not open",
                                      code="bad_id")
        if "result" in msg:
            return self._closing(Response(msg_id, msg["result"]))
        if isinstance(msg.get("error"), dict):
            return self._closing(_error(msg_id, msg["error"]))
        if "stream" in msg:
            self._streaming.add(msg_id)
            return StreamItem(msg_id, msg["stream"])
        if msg.get("end") is True:
            return self._closing(StreamEnd(msg_id))
        raise RemoteProtocolError("response has neither result, error, stream nor end")

    def _closing(self, event: Event) -> Event:
        """`event` ends its request: forget the id."""
        self._open.discard(event.id)  # type: ignore[union-attr]
        self._streaming.discard(event.id)  # type: ignore[union-attr]
        return event

    # -- output ------------------------------------------------------------------

    def send(self, event: Event) -> bytes:
        """Bytes to write for `event`.

        Raises LocalProtocolError if this side may not send it now: a client
        sends Hello then Requests; a server answers Hello, then answers open
        requests. (An id-less ErrorResponse, refusing the connection, a server
        may always send, even in the ERROR state.)
        """
        return super().send(event)

    def _last_word(self, event: Event) -> bool:
        return self.role == SERVER and isinstance(event, ErrorResponse) and event.id is None

    def _send(self, event: Event) -> bytes:
        self._check_send(event)
        if isinstance(event, Hello):
            obj: dict[str, Any] = {"hello": "outpost", "version": event.version}
            if event.server is not None:
                obj["server"] = event.server
        elif isinstance(event, Request):
            obj = {"id": event.id, "method": event.method, "params": event.params}
        elif isinstance(event, Response):
            obj = {"id": event.id, "result": event.result}
        elif isinstance(event, ErrorResponse):
            obj = {"id": event.id, "error": {"code": event.code, "message": event.message}}
        elif isinstance(event, StreamItem):
            obj = {"id": event.id, "stream": event.item}
        elif isinstance(event, StreamEnd):
            obj = {"id": event.id, "end": True}
        else:
            raise TypeError(f"cannot send {event!r}")
        data = self._encode(obj)
        self._sent(event)
        return data

    def _check_send(self, event: Event) -> None:
        if isinstance(event, Hello):
            if self._hello_sent:
                raise LocalProtocolError("hello was already sent", code="state")
            if self.role == SERVER and not self.handshaken:
                raise LocalProtocolError("the server answers a hello; it cannot go first",
                                         code="state")
            return
        if self.role == CLIENT:
            if not isinstance(event, Request):
                raise LocalProtocolError(f"a client sends requests, not {type(event).__name__}",
                                         code="state")
            if not self._hello_sent:
                raise LocalProtocolError("send hello before any request", code="state")
            if event.id in self._open:
                raise LocalProtocolError(f"request id {event.id} is already in use",
                                         code="bad_id")
            return
        if isinstance(event, Request):
            raise LocalProtocolError("a server does not send requests", code="state")
        if isinstance(event, ErrorResponse) and event.id is None:
            return
        if event.id not in self._open:  # type: ignore[union-attr]
            raise LocalProtocolError(f"request id {event.id} is not open",  # type: ignore[union-attr]
                                     code="bad_id")

    def _sent(self, event: Event) -> None:
        if isinstance(event, Hello):
            self._hello_sent = True
        elif isinstance(event, Request):
            self._open.add(event.id)
        elif isinstance(event, StreamItem):
            self._streaming.add(event.id)
        elif isinstance(event, Response | ErrorResponse | StreamEnd) and event.id is not None:
            self._open.discard(event.id)
            self._streaming.discard(event.id)


def _error(msg_id: int | None, err: dict) -> ErrorResponse:
    return ErrorResponse(msg_id, str(err.get("code", "error")), str(err.get("message", "")))
