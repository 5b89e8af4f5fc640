"""Protocol errors, split by whose fault they are (as h11 does).

A `RemoteProtocolError` means the peer broke the protocol: garbage, a frame
over the limit, a wrong shape, an answer to nothing. A `LocalProtocolError`
means this side tried to do something the protocol forbids: a bug of ours, or
a value that cannot travel (too large, not msgpack data). Both are
`ProtocolError`s, so code that only needs "the conversation failed" catches
the base.
"""

from __future__ import annotations


class ProtocolError(Exception):
    """A protocol was broken; `code` is machine-readable (e.g. bad_frame, too_large).

    The control server sends `code` back to the client before closing.
    """

    def __init__(self, message: str, code: str = "bad_frame") -> None:
        super().__init__(message)
        self.code = code


class LocalProtocolError(ProtocolError):
    """This side tried to send something the protocol does not allow now (our fault).

    Codes `too_large` and `unencodable` refuse one value that cannot travel:
    nothing was sent and the connection stays usable. Any other code is a
    state violation, and the connection is in its ERROR state from then on.
    """


class RemoteProtocolError(ProtocolError):
    """The peer sent something the protocol does not allow (its fault, or its bug)."""


#: LocalProtocolError codes that refuse one value and leave the connection usable.
VALUE_REFUSALS = frozenset({"too_large", "unencodable"})
