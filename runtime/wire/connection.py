"""The sans-IO connection over frames, with an explicit ERROR state (h11's model).

Bytes go in with `receive_data`, events come out of `next_event`, and `send`
turns an event into bytes; no sockets, no clocks. A subclass says what frames
mean (`_interpret`), what may be sent now (`_outgoing`) and what sending
changed (`_sent`).

The first protocol error is latched: a RemoteProtocolError from `next_event`
or a LocalProtocolError from `send` for a state violation puts the connection
in ERROR, and every later `next_event()` or `send()` raises again (with the
first error's class and code). Only this side's last word (`_last_word`: the
control server's refusal, an agent's exit report) may still be sent, to tell
the peer why the conversation ends. A value that cannot travel (too large,
not msgpack data) is refused alone: nothing is sent, nothing changes.
"""

from __future__ import annotations

from typing import Any

from runtime.wire.errors import ProtocolError
from runtime.wire.framing import CLOSED, NEED_DATA, Decoder, Encoder, FrameReader, Sentinel

OPEN = Sentinel("OPEN")  # conversing
ERROR = Sentinel("ERROR")  # a protocol error happened: nothing more can be said or heard
# (CLOSED, from framing, is the state once the peer has closed between frames.)


class FramedConnection:
    """One end of a conversation in frames; `role` says which end (the subclass's names)."""

    def __init__(self, role: str, decoder: Decoder, encoder: Encoder) -> None:
        self.role = role
        self.max_frame = decoder.limit
        self._frames = FrameReader(decoder)
        self._encode = encoder.frame
        self.error: ProtocolError | None = None  # the latched first error (state ERROR)
        self._closed = False

    @property
    def state(self) -> Sentinel:
        """OPEN, CLOSED (the peer closed between frames) or ERROR."""
        if self.error is not None:
            return ERROR
        return CLOSED if self._closed else OPEN

    @property
    def buffered(self) -> int:
        """Bytes received but not yet turned into events."""
        return self._frames.buffered

    def receive_data(self, data: bytes) -> None:
        """Feed bytes read from the peer; b"" means the peer closed."""
        self._frames.receive_data(data)

    def next_event(self) -> Any:
        """The next complete event, NEED_DATA, or CLOSED. Raises RemoteProtocolError
        (and stays in ERROR: later calls raise again)."""
        if self.error is not None:
            raise self._again()
        try:
            msg = self._frames.next_frame()
            if msg is NEED_DATA:
                return msg
            if msg is CLOSED:
                self._closed = True
                return msg
            return self._interpret(msg)
        except ProtocolError as exc:
            self.error = exc
            raise

    def send(self, event: Any) -> bytes:
        """Bytes to write for `event`; LocalProtocolError if this side may not send it now."""
        if self.error is not None and not self._last_word(event):
            raise self._again()
        try:
            obj = self._outgoing(event)
        except ProtocolError as exc:
            self.error = exc
            raise
        data = self._encode(obj)  # too_large / unencodable: refused alone, no state change
        self._sent(event)
        return data

    def _again(self) -> ProtocolError:
        first = self.error
        assert first is not None
        return type(first)(f"the connection is in its ERROR state after: {first}", first.code)

    # -- what a subclass defines ----------------------------------------------------

    def _interpret(self, msg: Any) -> Any:
        """The event a decoded frame stands for (RemoteProtocolError if it is wrong here)."""
        raise NotImplementedError

    def _outgoing(self, event: Any) -> Any:
        """The value to frame for `event` (LocalProtocolError if it may not be sent now);
        must not change state: the encoding may still fail."""
        raise NotImplementedError

    def _sent(self, event: Any) -> None:
        """Record that `event` was turned into bytes."""

    def _last_word(self, event: Any) -> bool:
        """Whether `event` may be sent even in the ERROR state."""
        return False

