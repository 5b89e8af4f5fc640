"""The process-agent channel's frames, in the old list-of-values form.

Kept for the runtime's side of the channel until it speaks
`runtime.agents.wire.Connection` (typed events, latched errors); the framing
itself is runtime.wire.framing, with the channel's limits.
"""

from __future__ import annotations

from typing import Any

from runtime.agents.wire import MAX_FRAME, channel_decoder
from runtime.wire.errors import ProtocolError
from runtime.wire.framing import NEED_DATA, Encoder, FrameReader

__all__ = ["MAX_FRAME", "FrameBuffer", "FrameError", "encode"]


class FrameError(ProtocolError):
    """A frame is too large, truncated or not msgpack."""


_encoder = Encoder(MAX_FRAME)  # the event loop's thread only: one Packer, reused


def encode(obj: Any) -> bytes:
    """One frame: 4-byte big-endian length + msgpack body."""
    try:
        return _encoder.frame(obj)
    except ProtocolError as exc:
        raise FrameError(str(exc), exc.code) from None


class FrameBuffer:
    """Accumulates received bytes and yields the complete frames in them."""

    def __init__(self) -> None:
        self._frames = FrameReader(channel_decoder())

    def feed(self, data: bytes) -> list[Any]:
        """The frames completed by `data` (FrameError for a bad one)."""
        if data:  # (b"" is not an end here: the caller handles the close)
            self._frames.receive_data(data)
        out = []
        try:
            while (frame := self._frames.next_frame()) is not NEED_DATA:
                out.append(frame)
        except ProtocolError as exc:
            raise FrameError(str(exc), exc.code) from None
        return out
