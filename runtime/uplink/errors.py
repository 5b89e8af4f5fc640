"""The uplink's errors. Each message says what went wrong and what to do about it."""


class UplinkError(Exception):
    """Something the uplink was asked to do cannot be done (bad input, no connection)."""


class OutboxFullError(UplinkError):
    """The outbox holds `max_bytes` of unsent messages and `when_full = "refuse_new"`:
    the message was not stored. Retry later, or raise [uplink.outbox] max_bytes."""


class MessageError(UplinkError):
    """A message cannot be sent as given (bad subject, too large, not encodable)."""
