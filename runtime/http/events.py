"""Server-Sent Events from the event log's follow stream (GET /events).

Each durable event is one `data:` line of JSON with `id: <seq>`, so a browser
that reconnects (EventSource does by itself) sends Last-Event-ID and gets
what it missed from the stored log, up to the replay cap. A comment line every
15 s keeps proxies from closing an idle stream and finds dead peers. A
follower that falls too far behind is dropped by the event log: the stream
then ends with an `event: lagged` frame and the browser reconnects.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import trio

from runtime.control import MethodError

MAX_STREAMS = 16  # open event streams per runtime; more get 503
KEEPALIVE_S = 15.0
RETRY_MS = 2000
REPLAY_MAX = 1000  # events.follow's backlog cap

Send = Callable[[bytes], Awaitable[None]]
Producer = Callable[[Send], Awaitable[None]]


def _default(value: Any) -> Any:
    if isinstance(value, bytes | bytearray):
        return value.decode("utf-8", "replace")
    return str(value)


def frame(event: dict[str, Any]) -> bytes:
    """One SSE message for one event."""
    data = json.dumps(event, separators=(",", ":"), default=_default)
    return f"id: {event['seq']}\ndata: {data}\n\n".encode()


def _int(value: str | None, lo: int, hi: int, what: str) -> int | None:
    if value is None or value == "":
        return None
    try:
        number = int(value)
    except ValueError:
        number = lo - 1
    if not lo <= number <= hi:
        raise MethodError("bad_params", f"{what} must be an integer from {lo} to {hi}")
    return number


async def event_stream(call: Callable[..., Awaitable[Any]], query: Mapping[str, str],
                       last_event_id: str | None) -> Producer:
    """Start following (bad filters fail here, before any byte is sent) and return the
    producer that sends the stream."""
    params: dict[str, Any] = {k: query[k] for k in ("agent", "type") if query.get(k)}
    after = _int(last_event_id, 0, 2**63 - 1, "Last-Event-ID")
    backlog = _int(query.get("backlog"), 0, REPLAY_MAX, "backlog")
    params["backlog"] = REPLAY_MAX if after is not None else backlog or 0
    stream = await call("events.follow", params)
    items = stream.items

    async def produce(send: Send) -> None:
        lock = trio.Lock()

        async def emit(chunk: bytes) -> None:
            async with lock:
                await send(chunk)

        async def keepalive() -> None:
            while True:
                await trio.sleep(KEEPALIVE_S)
                await emit(b": keepalive\n\n")

        async with trio.open_nursery() as nursery:
            await emit(f"retry: {RETRY_MS}\n\n".encode())  # also gets the headers out now
            nursery.start_soon(keepalive)
            try:
                async for event in items:
                    if after is None or event["seq"] > after:
                        await emit(frame(event))
            except MethodError as exc:  # lagged: the browser reconnects with Last-Event-ID
                data = json.dumps({"code": exc.code, "message": str(exc)})
                await emit(f"event: {exc.code}\ndata: {data}\n\n".encode())
            finally:
                await items.aclose()
            nursery.cancel_scope.cancel()

    return produce
