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

A peer that breaks the protocol (oversized or undecodable frame, wrong shape,
request before hello) gets a ProtocolError; the connection is then done.

Buffers are bounded by construction: the length prefix is checked before the
body is buffered, and drivers read more only when `next_event` says NEED_DATA,
so one connection holds at most one frame plus one read.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

import msgpack

PROTOCOL_VERSION = 1
MAX_FRAME = 1 << 20
MAX_CONTAINER = 65536  # elements per msgpack array/map: bounds the work one frame causes
TABLE_EXT = 1  # msgpack ext type of a Table
_LEN = struct.Struct(">I")

CLIENT, SERVER = "client", "server"


class ProtocolError(Exception):
    """The peer sent something the protocol does not allow; close after reporting.

    `code` is machine-readable (bad_frame, too_large, no_hello, version,
    bad_request, bad_id) and is what the server sends back before closing.
    """

    def __init__(self, message: str, code: str = "bad_frame") -> None:
        super().__init__(message)
        self.code = code


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


class _Sentinel:
    def __init__(self, name: str) -> None:
        self._name = name

    def __repr__(self) -> str:
        return self._name


NEED_DATA = _Sentinel("NEED_DATA")
CLOSED = _Sentinel("CLOSED")

Event = Hello | Request | Response | ErrorResponse | StreamItem | StreamEnd


class _Encoder:
    """Values -> frames (length prefix + msgpack body); Table values become ext type 1.

    Keeps its msgpack Packers: msgpack.packb makes a new Packer per call, and each
    allocates a 256 KiB buffer (a table packed inside a frame, a second one);
    reusing them took a 10-row status reply from ~19 to ~4 us. One per
    Connection, which one task or thread drives.
    """

    def __init__(self, max_frame: int) -> None:
        self.max_frame = max_frame
        self._table_packer = msgpack.Packer(use_bin_type=True)
        self._packer = msgpack.Packer(use_bin_type=True, default=self._table)

    def __call__(self, obj: Any) -> bytes:
        """ProtocolError if the frame would exceed max_frame or `obj` is not msgpack data."""
        try:
            body = self._packer.pack(obj)
        except (TypeError, ValueError, OverflowError) as exc:  # the Packer resets itself
            raise ProtocolError(f"cannot encode a frame: {exc}", code="unencodable") from None
        if len(body) > self.max_frame:
            raise ProtocolError(f"frame of {len(body)} bytes exceeds the {self.max_frame}-byte "
                                "limit", code="too_large")
        return _LEN.pack(len(body)) + body

    def _table(self, obj: Any) -> msgpack.ExtType:
        if isinstance(obj, Table):
            return msgpack.ExtType(TABLE_EXT, self._table_packer.pack([obj.columns, obj.rows]))
        raise TypeError(f"cannot serialize {type(obj).__name__} object")


def _unpack_limits(max_frame: int, max_ext_len: int) -> dict[str, Any]:
    return dict(raw=False, strict_map_key=True, max_bin_len=max_frame, max_str_len=max_frame,
                max_array_len=MAX_CONTAINER, max_map_len=MAX_CONTAINER, max_ext_len=max_ext_len)


class _Decoder:
    """msgpack bodies -> values, with the frame's limits; tables become lists of maps."""

    def __init__(self, max_frame: int) -> None:
        self._frame_limits = _unpack_limits(max_frame, max_frame)
        self._table_limits = _unpack_limits(max_frame, 0)  # tables do not nest

    def __call__(self, body: bytes) -> Any:
        try:
            return msgpack.unpackb(body, ext_hook=self._table, **self._frame_limits)
        except Exception as exc:
            raise ProtocolError(f"undecodable msgpack frame: {exc}") from None

    def _table(self, code: int, data: bytes) -> list[dict[str, Any]]:
        if code != TABLE_EXT:
            raise ValueError(f"unknown msgpack ext type {code}")
        table = msgpack.unpackb(data, **self._table_limits)
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


class Connection:
    """One end of a control connection. `role` is CLIENT or SERVER.

    Tracks the handshake and the open request ids, so either side's mistakes
    (a reply to an unknown id, a request before hello) surface as errors here
    rather than as confusion in the driver.
    """

    def __init__(self, role: str, max_frame: int = MAX_FRAME) -> None:
        if role not in (CLIENT, SERVER):
            raise ValueError(f"role must be {CLIENT!r} or {SERVER!r}")
        self.role = role
        self.max_frame = max_frame
        self._encode = _Encoder(max_frame)
        self._decode = _Decoder(max_frame)
        self.handshaken = False
        self._hello_sent = False
        self._buffer = bytearray()
        self._eof = False
        self._open: set[int] = set()  # request ids sent (client) / received (server), unanswered
        self._streaming: set[int] = set()  # the subset answered by a stream in progress

    @property
    def buffered(self) -> int:
        """Bytes received but not yet turned into events."""
        return len(self._buffer)

    @property
    def open_requests(self) -> frozenset[int]:
        """Request ids not yet fully answered."""
        return frozenset(self._open)

    # -- input -------------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Feed bytes read from the peer; b"" means the peer closed."""
        if data:
            self._buffer += data
        else:
            self._eof = True

    def next_event(self) -> Event | _Sentinel:
        """The next complete event, NEED_DATA, or CLOSED. Raises ProtocolError."""
        if len(self._buffer) < _LEN.size:
            return self._end_or_need()
        (length,) = _LEN.unpack_from(self._buffer)
        if length > self.max_frame:
            raise ProtocolError(f"frame of {length} bytes exceeds the {self.max_frame}-byte "
                                "limit", code="too_large")
        if len(self._buffer) < _LEN.size + length:
            return self._end_or_need()
        body = bytes(self._buffer[_LEN.size: _LEN.size + length])
        del self._buffer[: _LEN.size + length]
        return self._interpret(self._decode(body))

    def _end_or_need(self) -> _Sentinel:
        if self._eof:
            if self._buffer:
                raise ProtocolError("connection closed in the middle of a frame")
            return CLOSED
        return NEED_DATA

    def _interpret(self, msg: Any) -> Event:
        if not isinstance(msg, dict):
            raise ProtocolError(f"expected a map, got {type(msg).__name__}")
        if not self.handshaken:
            if self.role == CLIENT and "hello" not in msg and isinstance(msg.get("error"), dict):
                return _error(None, msg["error"])  # refused before the handshake
            if msg.get("hello") != "outpost" or not isinstance(msg.get("version"), int) \
                    or isinstance(msg.get("version"), bool):
                raise ProtocolError("expected a hello frame first", code="no_hello")
            if msg["version"] != PROTOCOL_VERSION:
                raise ProtocolError(f"protocol version {msg['version']} is not supported "
                                    f"(this side speaks {PROTOCOL_VERSION})", code="version")
            self.handshaken = True
            server = msg.get("server")
            return Hello(msg["version"], server if isinstance(server, str) else None)
        msg_id = msg.get("id")
        if not isinstance(msg_id, int) or isinstance(msg_id, bool):
            if self.role == CLIENT and msg_id is None and isinstance(msg.get("error"), dict):
                return _error(None, msg["error"])
            raise ProtocolError("frame has no integer id")
        if self.role == SERVER:
            method, params = msg.get("method"), msg.get("params", {})
            if not isinstance(method, str) or not method:
                raise ProtocolError("request has no method name", code="bad_request")
            if not isinstance(params, dict):
                raise ProtocolError("request params must be a map", code="bad_request")
            if msg_id in self._open:
                raise ProtocolError(f"request id {msg_id} is already in use", code="bad_id")
            self._open.add(msg_id)
            return Request(msg_id, method, params)
        if msg_id not in self._open:
            raise ProtocolError(f"answer for request id {msg_id}, which is not open",
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
        raise ProtocolError("response has neither result, error, stream nor end")

    def _closing(self, event: Event) -> Event:
        """`event` ends its request: forget the id."""
        self._open.discard(event.id)  # type: ignore[union-attr]
        self._streaming.discard(event.id)  # type: ignore[union-attr]
        return event

    # -- output ------------------------------------------------------------------

    def send(self, event: Event) -> bytes:
        """Bytes to write for `event`.

        Raises ProtocolError if this side may not send it now: a client sends
        Hello then Requests; a server answers Hello, then answers open requests.
        (An id-less ErrorResponse, refusing the connection, a server may always send.)
        """
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
        self._after_send(event)
        return data

    def _check_send(self, event: Event) -> None:
        if isinstance(event, Hello):
            if self._hello_sent:
                raise ProtocolError("hello was already sent", code="state")
            if self.role == SERVER and not self.handshaken:
                raise ProtocolError("the server answers a hello; it cannot go first",
                                    code="state")
            return
        if self.role == CLIENT:
            if not isinstance(event, Request):
                raise ProtocolError(f"a client sends requests, not {type(event).__name__}",
                                    code="state")
            if not self._hello_sent:
                raise ProtocolError("send hello before any request", code="state")
            if event.id in self._open:
                raise ProtocolError(f"request id {event.id} is already in use", code="bad_id")
            return
        if isinstance(event, Request):
            raise ProtocolError("a server does not send requests", code="state")
        if isinstance(event, ErrorResponse) and event.id is None:
            return
        if event.id not in self._open:  # type: ignore[union-attr]
            raise ProtocolError(f"request id {event.id} is not open", code="bad_id")  # type: ignore[union-attr]

    def _after_send(self, event: Event) -> None:
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
