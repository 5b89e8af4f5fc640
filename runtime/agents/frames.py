"""Length-prefixed msgpack frames: how a process agent and the runtime talk.

Plain data only (msgpack, never pickle), and every frame is size-limited on
both sides, so a confused or hostile agent cannot make the runtime allocate
without bound or execute anything.
"""

from __future__ import annotations

import struct
from typing import Any

import msgpack

MAX_FRAME = 4 << 20  # bytes of one msgpack frame (a state value or message must fit)
_LEN = struct.Struct(">I")


class FrameError(Exception):
    """A frame is too large, truncated or not msgpack."""


def encode(obj: Any) -> bytes:
    """One frame: 4-byte big-endian length + msgpack body."""
    body = msgpack.packb(obj, use_bin_type=True)
    if len(body) > MAX_FRAME:
        raise FrameError(f"frame of {len(body)} bytes exceeds the limit of {MAX_FRAME}")
    return _LEN.pack(len(body)) + body


def decode_body(body: bytes) -> Any:
    """The object in one frame body (its size was checked against MAX_FRAME already)."""
    try:
        return msgpack.unpackb(body, raw=False, strict_map_key=False)
    except Exception as exc:
        raise FrameError(f"bad frame: {exc}") from None


class FrameBuffer:
    """Accumulates received bytes and yields the complete frames in them."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[Any]:
        self._buf += data
        out = []
        while len(self._buf) >= 4:
            (n,) = _LEN.unpack_from(self._buf)
            if n > MAX_FRAME:
                raise FrameError(f"peer announced a frame of {n} bytes (limit {MAX_FRAME})")
            if len(self._buf) < 4 + n:
                break
            body = bytes(self._buf[4:4 + n])
            del self._buf[:4 + n]
            out.append(decode_body(body))
        return out
