"""Values to msgpack bodies and length-prefixed frames, and back, always with limits.

A frame is a 4-byte big-endian length and one msgpack body. The length is
checked against the limit before any of the body is waited for, so a peer
cannot make us buffer more than one frame; the body is unpacked with limits on
every string, binary, container and ext, so it cannot make us allocate more
than its own size could describe (nor nest deeper than msgpack's 1024 levels).

One discipline for every byte stream of outpost (the control socket, the
process-agent channel) and, body only, for the template's datagrams.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

import msgpack

from runtime.wire.errors import LocalProtocolError, ProtocolError, RemoteProtocolError

HEADER = struct.Struct(">I")  # the length prefix of a frame
_header, _length_of, _HEAD = HEADER.pack, HEADER.unpack_from, HEADER.size
#: Bodies up to this size are copied out of the receive buffer to be decoded
#: (cheaper than a memoryview); larger ones are decoded in place.
SMALL_BODY = 64 << 10


class Sentinel:
    """A named marker that is not an event (NEED_DATA, CLOSED, ...)."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __repr__(self) -> str:
        return self._name


NEED_DATA = Sentinel("NEED_DATA")  # no complete frame yet: read more, then ask again
CLOSED = Sentinel("CLOSED")  # the peer closed the stream between frames


class Encoder:
    """Values -> msgpack bodies (`pack`) or frames (`frame`), refused past `limit` bytes.

    Keeps one msgpack Packer: msgpack.packb builds a new one (and its 256 KiB
    buffer) per call. One Encoder per connection, driven by one task or thread.
    """

    def __init__(self, limit: int, *, default: Callable[[Any], Any] | None = None,
                 unit: str = "frame") -> None:
        self.limit = limit
        self._unit = unit
        self._pack = msgpack.Packer(use_bin_type=True, default=default).pack

    def pack(self, obj: Any) -> bytes:
        """The msgpack body of `obj`; LocalProtocolError (too_large, unencodable) if it
        cannot travel. The Packer resets itself after a failure: nothing half-packed leaks."""
        try:
            body = self._pack(obj)
        except (TypeError, ValueError, OverflowError) as exc:
            raise self._unencodable(exc) from None
        if len(body) > self.limit:
            raise self._too_large(len(body))
        return body

    def frame(self, obj: Any) -> bytes:
        """`obj` as one frame: length prefix + body (the errors of `pack`)."""
        try:  # pack() inlined: this is every frame's path
            body = self._pack(obj)
        except (TypeError, ValueError, OverflowError) as exc:
            raise self._unencodable(exc) from None
        if len(body) > self.limit:
            raise self._too_large(len(body))
        return _header(len(body)) + body

    def _unencodable(self, exc: Exception) -> LocalProtocolError:
        return LocalProtocolError(f"cannot encode a {self._unit}: {exc}", code="unencodable")

    def _too_large(self, size: int) -> LocalProtocolError:
        return LocalProtocolError(f"{self._unit} of {size} bytes exceeds the {self.limit}-byte "
                                  "limit", code="too_large")


class Decoder:
    """msgpack bodies -> values, with limits; RemoteProtocolError for anything else.

    `limit` bounds the body, `max_container` the elements of one array or map,
    `max_ext` an ext's data. msgpack.unpackb already bounds every string,
    binary, container and ext by the body's own size (a container cannot
    declare more elements than it has bytes), so only limits tighter than the
    body limit are passed: for a channel whose containers may fill a frame,
    none, and decoding costs what a bare unpackb costs.
    """

    def __init__(self, limit: int, *, max_container: int, strict_map_key: bool = True,
                 max_ext: int | None = None, ext_hook: Callable[[int, bytes], Any] | None = None,
                 unit: str = "frame") -> None:
        self.limit = limit
        self._unit = unit
        self.strict_map_key = strict_map_key
        tighter: dict[str, Any] = {}
        if ext_hook is not None:
            tighter["ext_hook"] = ext_hook
        if max_container < limit:
            tighter["max_array_len"] = tighter["max_map_len"] = max_container
        if max_ext is not None and max_ext < limit:
            tighter["max_ext_len"] = max_ext
        self._kwargs = {"raw": False, "strict_map_key": strict_map_key, **tighter}
        self.plain = not tighter  # just raw=False and strict_map_key: no other keywords

    def __call__(self, body: bytes | bytearray | memoryview) -> Any:
        """The one value in `body` (RemoteProtocolError if it is not exactly one)."""
        if len(body) > self.limit:
            raise RemoteProtocolError(f"{self._unit} of {len(body)} bytes exceeds the "
                                      f"{self.limit}-byte limit", code="too_large")
        try:
            if self.plain:  # keywords spelt out: cheaper than ** on every frame
                return msgpack.unpackb(body, raw=False, strict_map_key=self.strict_map_key)
            return msgpack.unpackb(body, **self._kwargs)
        except Exception as exc:
            raise self._error(exc) from None

    def _error(self, exc: Exception) -> RemoteProtocolError:
        """What was wrong with a body msgpack refused, said plainly."""
        if isinstance(exc, msgpack.StackError):
            why = "nested deeper than msgpack's 1024 levels"
        elif isinstance(exc, msgpack.ExtraData):
            why = f"{len(exc.extra)} bytes after its value"
        else:
            why = str(exc) or type(exc).__name__
        return RemoteProtocolError(f"undecodable msgpack {self._unit}: {why}")


class FrameReader:
    """Received bytes -> the values of the complete frames in them, one at a time.

    `receive_data(b"")` means the peer closed. `next_frame()` returns the next
    frame's value (through `_interpret`, which a protocol overrides to turn it
    into an event), NEED_DATA or CLOSED. It raises RemoteProtocolError for an
    oversized length (before the body is buffered), an undecodable body or a
    close in the middle of a frame, and the first such error is kept in
    `error`: a byte stream cannot be resynchronised after a bad frame, so
    every later call raises again. A driver that reads only on NEED_DATA holds
    at most one frame plus one read.
    """

    def __init__(self, decoder: Decoder) -> None:
        self._decode = decoder
        self._plain, self._strict = decoder.plain, decoder.strict_map_key
        self.max_frame = decoder.limit
        self._buffer = bytearray()
        self._eof = False
        self._closed = False  # CLOSED was returned
        self.error: ProtocolError | None = None  # the first protocol error, kept

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as frames."""
        return len(self._buffer)

    def receive_data(self, data: bytes) -> None:
        """Feed bytes read from the peer; b"" means the peer closed."""
        if data:
            self._buffer += data
        else:
            self._eof = True

    def next_frame(self) -> Any:
        """The next frame's value (or event), NEED_DATA or CLOSED."""
        if self.error is not None:
            raise self._again()
        buffer = self._buffer
        if len(buffer) < _HEAD and not self._eof:
            return NEED_DATA
        try:
            if len(buffer) < _HEAD:
                return self._end()
            (length,) = _length_of(buffer)
            if length > self.max_frame:
                raise RemoteProtocolError(f"frame of {length} bytes exceeds the "
                                          f"{self.max_frame}-byte limit", code="too_large")
            end = _HEAD + length
            if len(buffer) < end:
                return self._end() if self._eof else NEED_DATA
            if length <= SMALL_BODY and self._plain:  # Decoder.__call__, inlined: every frame
                try:
                    value = msgpack.unpackb(buffer[_HEAD:end], raw=False,
                                            strict_map_key=self._strict)
                except Exception as exc:
                    raise self._decode._error(exc) from None
            elif length <= SMALL_BODY:
                value = self._decode(buffer[_HEAD:end])
            else:
                with memoryview(buffer) as view:
                    body = view[_HEAD:end]
                    try:
                        value = self._decode(body)
                    finally:
                        body.release()  # before the buffer shrinks below
            del buffer[:end]
            return self._interpret(value)
        except ProtocolError as exc:
            self.error = exc
            raise

    def _end(self) -> Sentinel:
        if self._buffer:
            raise RemoteProtocolError("connection closed in the middle of a frame")
        self._closed = True
        return CLOSED

    def _again(self) -> ProtocolError:
        first = self.error
        assert first is not None
        return type(first)(f"the connection is in its ERROR state after: {first}", first.code)

    def _interpret(self, value: Any) -> Any:
        """What a decoded frame stands for (a protocol's event; RemoteProtocolError if it
        is wrong here). As it is: the value."""
        return value
