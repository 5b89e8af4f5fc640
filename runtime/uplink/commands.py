"""Commands down: what a command message is, what its answer is, and the port they go to.

Pure functions over bytes (no NATS, no trio), so the shape is tested alone.

A command is a JetStream message on `<prefix>.<host>.cmd` whose body is JSON
`{"id": "...", "method": "agent.restart", "params": {"agent": "x"}}`. Its request id
is "id", else its `Nats-Msg-Id` header, else its stream sequence: the same id twice
applies once (JetStream drops a repeated Nats-Msg-Id inside the duplicate window; a
redelivery or a later repeat reaches the port, whose idempotency answers the first
result). The answer goes to the subject in the `Outpost-Reply-To` header (else to
`<prefix>.<host>.results`), as JSON `{"id", "host", "result"}` or
`{"id", "host", "error": {"code", "message"}}`.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

MAX_COMMAND_BYTES = 256 << 10
MAX_ANSWER_BYTES = 900 << 10
_MAX_DEPTH = 32


@dataclass(frozen=True)
class CommandCaller:
    """Who asks, as the control methods see it (mirrors runtime.control's Caller:
    kind "uplink", name = the sender if the command says, else None)."""

    kind: str = "uplink"
    name: str | None = None
    uid: int | None = None
    pid: int | None = None


class CommandPort(Protocol):
    """What the uplink needs of the runtime: the control methods, in process.

    `call` applies `method` once per `request_id` (a repeat answers the first result)
    and returns only when the effect is durable; it raises an exception with `.code`
    (runtime.control's MethodError) for a refusal. Part of issue 17's `Methods.call`.
    """

    def call(self, method: str, params: Mapping[str, Any] | None = None, *,
             request_id: str | None = None, caller: Any = None) -> Awaitable[Any]: ...


class CommandRefused(Exception):
    """A command that is not applied: `code` and a message that says what to fix."""

    def __init__(self, code: str, message: str, request_id: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.request_id = request_id


@dataclass(frozen=True)
class Command:
    method: str
    params: dict[str, Any]
    sender: str | None = None
    id: str | None = None


def parse(body: bytes, allow: tuple[str, ...] | frozenset[str]) -> Command:
    """The command in `body`, checked against the allow-list; CommandRefused if not."""
    if len(body) > MAX_COMMAND_BYTES:
        raise CommandRefused("bad_command", f"command of {len(body)} bytes is over the "
                             f"{MAX_COMMAND_BYTES}-byte limit")
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise CommandRefused("bad_command", f"the command is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise CommandRefused("bad_command", 'expected a JSON object {"method": ..., '
                             '"params": {...}}')
    method = doc.get("method")
    if not isinstance(method, str) or not method:
        raise CommandRefused("bad_command", "the command has no \"method\" (a string)")
    params = doc.get("params", {})
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise CommandRefused("bad_params", "\"params\" must be a JSON object")
    sender = doc.get("sender")
    if sender is not None and not isinstance(sender, str):
        raise CommandRefused("bad_command", "\"sender\" must be a string")
    request_id = doc.get("id")
    if request_id is not None and (not isinstance(request_id, str) or not request_id
                                   or len(request_id) > 200):
        raise CommandRefused("bad_command", "\"id\" must be a string of 1..200 characters")
    if method not in allow:
        raise CommandRefused("forbidden", f"method {method!r} is not allowed over the uplink; "
                             "[uplink.commands] allow lists " + ", ".join(sorted(allow)),
                             request_id)
    return Command(method, params, sender, request_id)


def encode_command(method: str, params: Mapping[str, Any] | None = None,
                   sender: str | None = None, request_id: str | None = None) -> bytes:
    doc: dict[str, Any] = {"method": method, "params": dict(params or {})}
    if request_id:
        doc["id"] = request_id
    if sender:
        doc["sender"] = sender
    return json.dumps(doc, separators=(",", ":")).encode()


def plain(value: Any, depth: int = 0) -> Any:
    """A method's result as JSON-able data: tables become lists of maps, bytes base64."""
    if depth > _MAX_DEPTH:
        raise ValueError("result nested too deeply")
    columns = getattr(value, "columns", None)
    rows = getattr(value, "rows", None)
    if columns is not None and rows is not None and not isinstance(value, dict):
        return [dict(zip(columns, (plain(v, depth + 1) for v in row), strict=False))
                for row in rows]
    if isinstance(value, dict):
        return {str(k): plain(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v, depth + 1) for v in value]
    if isinstance(value, bytes | bytearray | memoryview):
        return {"base64": base64.b64encode(bytes(value)).decode()}
    if value is None or isinstance(value, str | int | float | bool):
        return value
    raise ValueError(f"a {type(value).__name__} cannot be sent as an answer")


def answer(request_id: str, host: str, result: Any = None,
           error: tuple[str, str] | None = None) -> bytes:
    """The JSON answer to a command (an error if the result cannot be encoded)."""
    doc: dict[str, Any] = {"id": request_id, "host": host}
    if error is None:
        try:
            doc["result"] = plain(result)
            data = json.dumps(doc, separators=(",", ":"), allow_nan=False).encode()
        except (ValueError, TypeError) as exc:
            return answer(request_id, host, error=("internal", f"answer not encodable: {exc}"))
        if len(data) <= MAX_ANSWER_BYTES:
            return data
        error = ("too_large", f"the answer is {len(data)} bytes, over {MAX_ANSWER_BYTES}; "
                 "ask for less (e.g. a limit)")
    doc.pop("result", None)
    doc["error"] = {"code": error[0], "message": error[1]}
    return json.dumps(doc, separators=(",", ":")).encode()


def decode_answer(data: bytes) -> dict[str, Any]:
    """The fleet side: an answer's JSON (ValueError if it is not one)."""
    doc = json.loads(data)
    if not isinstance(doc, dict) or "id" not in doc or ("result" not in doc and
                                                        "error" not in doc):
        raise ValueError("not an outpost command answer")
    return doc
