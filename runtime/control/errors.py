"""The refusal a control method answers with, and every code it may carry.

A method (a handler in `runtime.methods` or any room's) raises `MethodError`;
the control server sends it as `{"error": {"code", "message"}}`, and an
in-process caller of `Methods.call` catches it by type. Codes are part of the
protocol: clients branch on them (the CLI maps `bad_params`, `bad_config` and
`unknown_method` to its usage exit code, `busy` of `maintain` to 75), so a new
code is added here, with its meaning, before any method uses it.

Connection-level codes (too_large, bad_frame, bad_request, version, no_hello,
forbidden, and busy for a full server) come from the protocol and the server,
not from methods; see runtime.control.protocol.
"""

from __future__ import annotations

METHOD_CODES: dict[str, str] = {
    "unknown_method": "no method by that name in this runtime",
    "bad_params": "a param is unknown, missing, of the wrong type or out of range; "
                  "the message names it",
    "not_found": "the named agent, group or state key does not exist",
    "not_available": "this runtime does not offer that (e.g. a maintenance task that runs "
                     "offline only)",
    "failed": "the request was understood but could not be done (the message says why)",
    "bad_config": "reload: the config file does not load; nothing was applied",
    "busy": "the agent is being changed by another request (or a rollout), or another "
            "maintenance task is running; try again later, or pass wait (--wait)",
    "conflict": "this request id was already used for a different request (another method "
                "or other params); use a new id for a new request",
    "lagged": "events.follow: this follower fell too far behind and was dropped",
    "internal": "a bug in the runtime (logged with its traceback); the runtime goes on",
}
"""Every code a method may answer with, and what it means to the caller."""


class MethodError(Exception):
    """A method's refusal: `code` (one of METHOD_CODES) and a message for a person.

    str() is the message: a full sentence that says what to fix.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
