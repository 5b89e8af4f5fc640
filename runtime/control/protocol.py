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

A peer that breaks the protocol (oversized or undecodable frame, wrong shape,
request before hello) gets a ProtocolError; the connection is then done.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

import msgpack

PROTOCOL_VERSION = 1
MAX_FRAME = 1 << 20
_LEN = struct.Struct(">I")

CLIENT, SERVER = "client", "server"


class ProtocolError(Exception):
    """The peer sent something the protocol does not allow; close after reporting."""

    def __init__(self, message: str, code: str = "bad_frame") -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Hello:
    version: int = PROTOCOL_VERSION
    server: str | None = None


@dataclass(frozen=True)
class Request:
    id: int
    method: str
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Response:
    id: int
    result: Any = None


@dataclass(frozen=True)
class ErrorResponse:
    id: int | None
    code: str
    message: str


@dataclass(frozen=True)
class StreamItem:
    id: int
    item: Any


@dataclass(frozen=True)
class StreamEnd:
    id: int


class _Sentinel:
    def __init__(self, name: str) -> None:
        self._name = name

    def __repr__(self) -> str:
        return self._name


NEED_DATA = _Sentinel("NEED_DATA")
CLOSED = _Sentinel("CLOSED")

Event = Hello | Request | Response | ErrorResponse | StreamItem | StreamEnd


def encode_frame(obj: Any, max_frame: int = MAX_FRAME) -> bytes:
    body = msgpack.packb(obj, use_bin_type=True)
    if len(body) > max_frame:
        raise ProtocolError(f"frame of {len(body)} bytes exceeds the {max_frame}-byte limit",
                            code="too_large")
    return _LEN.pack(len(body)) + body


def _decode_body(body: bytes, max_frame: int) -> Any:
    try:
        return msgpack.unpackb(body, raw=False, strict_map_key=True, max_bin_len=max_frame,
                               max_str_len=max_frame, max_array_len=65536, max_map_len=65536,
                               max_ext_len=0)
    except Exception as exc:
        raise ProtocolError(f"undecodable msgpack frame: {exc}") from None


class Connection:
    """One end of a control connection. `role` is CLIENT or SERVER."""

    def __init__(self, role: str, max_frame: int = MAX_FRAME) -> None:
        if role not in (CLIENT, SERVER):
            raise ValueError(f"role must be {CLIENT!r} or {SERVER!r}")
        self.role = role
        self.max_frame = max_frame
        self.handshaken = False
        self._buffer = bytearray()
        self._eof = False

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
        return self._interpret(_decode_body(body, self.max_frame))

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
            if msg.get("hello") != "outpost" or not isinstance(msg.get("version"), int):
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
            return Request(msg_id, method, params)
        if "result" in msg:
            return Response(msg_id, msg["result"])
        if isinstance(msg.get("error"), dict):
            return _error(msg_id, msg["error"])
        if "stream" in msg:
            return StreamItem(msg_id, msg["stream"])
        if msg.get("end") is True:
            return StreamEnd(msg_id)
        raise ProtocolError("response has neither result, error, stream nor end")

    # -- output ------------------------------------------------------------------

    def send(self, event: Event) -> bytes:
        """Bytes to write for `event`."""
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
        return encode_frame(obj, self.max_frame)


def _error(msg_id: int | None, err: dict) -> ErrorResponse:
    return ErrorResponse(msg_id, str(err.get("code", "error")), str(err.get("message", "")))
