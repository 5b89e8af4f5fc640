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

from runtime.wire.errors import LocalProtocolError, RemoteProtocolError

HEADER = struct.Struct(">I")  # the length prefix of a frame
#: Bodies up to this size go through one reused Unpacker (its limits set once,
#: cheaper per frame than unpackb's keyword arguments); larger ones through
#: unpackb with limits of their own size, so no buffer that large is kept.
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
            raise LocalProtocolError(f"cannot encode a {self._unit}: {exc}",
                                     code="unencodable") from None
        if len(body) > self.limit:
            raise LocalProtocolError(f"{self._unit} of {len(body)} bytes exceeds the "
                                     f"{self.limit}-byte limit", code="too_large")
        return body

    def frame(self, obj: Any) -> bytes:
        """`obj` as one frame: length prefix + body."""
        body = self.pack(obj)
        return HEADER.pack(len(body)) + body


class Decoder:
    """msgpack bodies -> values, with limits; RemoteProtocolError for anything else.

    `limit` bounds strings, binaries and exts (and the body itself),
    `max_container` the elements of one array or map. Any body is also bounded
    by its own size: a container cannot declare more elements than it has bytes.
    """

    def __init__(self, limit: int, *, max_container: int, strict_map_key: bool = True,
                 max_ext: int | None = None, ext_hook: Callable[[int, bytes], Any] | None = None,
                 unit: str = "frame") -> None:
        self.limit = limit
        self._unit = unit
        ext = limit if max_ext is None else max_ext
        self._common: dict[str, Any] = {"raw": False, "strict_map_key": strict_map_key}
        if ext_hook is not None:
            self._common["ext_hook"] = ext_hook
        self._max_container = max_container
        self._max_ext = ext
        small = min(limit, SMALL_BODY)
        self._small_limits = dict(self._common, max_buffer_size=small, read_size=min(small, 4096),
                                  **_lengths(small, max_container, ext))
        self._unpacker = msgpack.Unpacker(**self._small_limits)

    def __call__(self, body: bytes | bytearray | memoryview) -> Any:
        """The one value in `body` (RemoteProtocolError if it is not exactly one)."""
        size = len(body)
        if size > self.limit:
            raise RemoteProtocolError(f"{self._unit} of {size} bytes exceeds the {self.limit}-"
                                      "byte limit", code="too_large")
        if size > SMALL_BODY:
            try:
                return msgpack.unpackb(body, **self._common,
                                       **_lengths(size, self._max_container, self._max_ext))
            except Exception as exc:
                raise self._error(exc) from None
        unpacker = self._unpacker
        start = unpacker.tell()
        try:
            unpacker.feed(body)
            value = unpacker.unpack()
        except Exception as exc:
            self._unpacker = msgpack.Unpacker(**self._small_limits)  # drop what it holds
            raise self._error(exc) from None
        used = unpacker.tell() - start
        if used != size:
            self._unpacker = msgpack.Unpacker(**self._small_limits)
            raise RemoteProtocolError(f"undecodable msgpack {self._unit}: {size - used} "
                                      "bytes after its value")
        return value

    def _error(self, exc: Exception) -> RemoteProtocolError:
        if isinstance(exc, msgpack.StackError):
            why = "nested deeper than msgpack's 1024 levels"
        elif isinstance(exc, msgpack.OutOfData):
            why = "incomplete input (the value ends past the body)"
        else:
            why = str(exc) or type(exc).__name__
        return RemoteProtocolError(f"undecodable msgpack {self._unit}: {why}")


def _lengths(size: int, max_container: int, max_ext: int) -> dict[str, int]:
    return {"max_bin_len": size, "max_str_len": size, "max_array_len": min(max_container, size),
            "max_map_len": min(max_container, size), "max_ext_len": min(max_ext, size)}


class FrameReader:
    """Received bytes -> the values of the complete frames in them, one at a time.

    `receive_data(b"")` means the peer closed. `next_frame()` returns a value,
    NEED_DATA or CLOSED, and raises RemoteProtocolError for an oversized
    length (before the body is buffered), an undecodable body, or a close in
    the middle of a frame. A driver that reads only on NEED_DATA holds at most
    one frame plus one read.
    """

    def __init__(self, decoder: Decoder) -> None:
        self._decode = decoder
        self.limit = decoder.limit
        self._buffer = bytearray()
        self._eof = False

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
        """The next frame's value, NEED_DATA or CLOSED."""
        buffer = self._buffer
        if len(buffer) < HEADER.size:
            return self._end_or_need()
        (length,) = HEADER.unpack_from(buffer)
        if length > self.limit:
            raise RemoteProtocolError(f"frame of {length} bytes exceeds the {self.limit}-byte "
                                      "limit", code="too_large")
        end = HEADER.size + length
        if len(buffer) < end:
            return self._end_or_need()
        if length <= SMALL_BODY:
            value = self._decode(buffer[HEADER.size:end])  # a small copy beats a memoryview
        else:  # decoded in place: a big body is not copied
            with memoryview(buffer) as view:
                body = view[HEADER.size:end]
                try:
                    value = self._decode(body)
                finally:
                    body.release()
        del buffer[:end]
        return value

    def _end_or_need(self) -> Sentinel:
        if self._eof:
            if self._buffer:
                raise RemoteProtocolError("connection closed in the middle of a frame")
            return CLOSED
        return NEED_DATA
