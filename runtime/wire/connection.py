"""The sans-IO connection over frames, with an explicit ERROR state (h11's model).

Bytes go in with `receive_data`, events come out of `next_event` (the frame
reader's loop, runtime.wire.framing), and `send` turns an event into bytes; no
sockets, no clocks. A subclass says what a frame means (`_interpret`) and what
sending an event takes (`_send`: check it may be sent now, encode it, then
record that it was).

The first protocol error is latched: a RemoteProtocolError from `next_event`
or a LocalProtocolError from `send` puts the connection in ERROR, and every
later `next_event()` or `send()` raises again (with the first error's class
and code). Only this side's last word (`_last_word`: the control server's
refusal, an agent's exit report) may still be sent, to tell the peer why the
conversation ends. A value that cannot travel (codes in VALUE_REFUSALS: too
large, not msgpack data) is refused alone: nothing is sent, nothing changes.
"""

from __future__ import annotations

from typing import Any

from runtime.wire.errors import VALUE_REFUSALS, ProtocolError
from runtime.wire.framing import CLOSED, Decoder, Encoder, FrameReader, Sentinel

OPEN = Sentinel("OPEN")  # conversing
ERROR = Sentinel("ERROR")  # a protocol error happened: nothing more can be said or heard
# (CLOSED, from framing, is the state once the peer has closed between frames.)


class FramedConnection(FrameReader):
    """One end of a conversation in frames; `role` says which end (the subclass's names)."""

    def __init__(self, role: str, decoder: Decoder, encoder: Encoder) -> None:
        super().__init__(decoder)
        self.role = role
        self._encode = encoder.frame

    @property
    def state(self) -> Sentinel:
        """OPEN, CLOSED (the peer closed between frames) or ERROR."""
        if self.error is not None:
            return ERROR
        return CLOSED if self._closed else OPEN

    #: The next complete event, NEED_DATA, or CLOSED. Raises RemoteProtocolError (and
    #: stays in ERROR: later calls raise again). The reader's own loop: no extra call.
    next_event = FrameReader.next_frame

    def send(self, event: Any) -> bytes:
        """Bytes to write for `event`; LocalProtocolError if this side may not send it now."""
        if self.error is not None and not self._last_word(event):
            raise self._again()
        try:
            return self._send(event)
        except ProtocolError as exc:
            if exc.code not in VALUE_REFUSALS:
                self.error = exc
            raise

    # -- what a subclass defines (and _interpret, from FrameReader) -------------------

    def _send(self, event: Any) -> bytes:
        """The frame for `event`: LocalProtocolError if it may not be sent now; state is
        changed only once it is encoded (`self._encode` may refuse the value)."""
        raise NotImplementedError

    def _last_word(self, event: Any) -> bool:
        """Whether `event` may be sent even in the ERROR state."""
        return False
