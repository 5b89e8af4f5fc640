"""The ASGI app of the HTTP face: routing, the token and host checks, errors as JSON.

Ports, and nothing else: `call(method, params)` for control methods (status,
info, events.query, events.follow, and agent.start/stop/restart only when
`read_only` is off) and the shared-memory `Segment`, read only. The app never
sees the supervisor or the Runtime. Any exception a route raises becomes a
500 with a one-line body and a log line: a client never sees a traceback.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import trio

from runtime.control import MethodError
from runtime.http import page
from runtime.http.events import MAX_STREAMS, Producer, Send, event_stream
from runtime.http.metrics import metrics_response
from runtime.http.ports import Call, Pane, plain
from shm import Segment, snapshot
from shm.metrics import slot_value

log = logging.getLogger("outpost.http")

STATIC_DIR = Path(__file__).parent / "static"
STATIC_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8",
                ".png": "image/png", ".txt": "text/plain; charset=utf-8",
                "": "text/plain; charset=utf-8"}
HANDLER_TIMEOUT_S = 30.0
ACTIONS = ("start", "stop", "restart")
_METHOD_STATUS = {"bad_params": 400, "not_found": 404, "forbidden": 403, "lagged": 409,
                  "failed": 409, "busy": 409, "not_available": 503, "unknown_method": 501}
SECURITY_HEADERS = [
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "no-referrer"),
    ("x-frame-options", "DENY"),
    ("content-security-policy", "default-src 'none'; script-src 'self'; style-src 'self'; "
     "img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'self'; "
     "frame-ancestors 'none'"),
]


@dataclass(frozen=True)
class Request:
    """What a route sees of an HTTP request."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-case names; repeated headers joined by ", "


@dataclass
class Response:
    """A whole response, or (with `stream`) one whose body a producer sends as it comes."""

    status: int
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: list[tuple[str, str]] = field(default_factory=list)
    stream: Producer | None = None


def text(status: int, message: str, headers: Sequence[tuple[str, str]] = ()) -> Response:
    return Response(status, (message + "\n").encode(), headers=list(headers))


def as_json(status: int, value: Any, headers: Sequence[tuple[str, str]] = ()) -> Response:
    return Response(status, json.dumps(plain(value), separators=(",", ":")).encode(),
                    "application/json", list(headers))


def _digest(token: bytes) -> bytes:
    return hashlib.sha256(token).digest()


class Console:
    """The ASGI application: `await console(scope, receive, send)`.

    `token`: the bearer token every request must carry (None: no auth, for loopback
    and Unix sockets). `local_only`: refuse Host headers that are not loopback names
    (a page on another site cannot rebind its name to 127.0.0.1 and read us).
    """

    def __init__(self, call: Call, segment: Segment, *, token: bytes | None = None,
                 read_only: bool = True, local_only: bool = False,
                 metrics_help: Mapping[str, str] | None = None,
                 panes: Sequence[Pane] = (), max_header_bytes: int = 8192) -> None:
        self.call = call
        self.max_header_bytes = max_header_bytes
        self.segment = segment
        self.read_only = read_only
        self.local_only = local_only
        self.metrics_help = dict(metrics_help or {})
        self.panes: dict[str, Pane] = {"agents": page.AgentsPane(read_only)}
        for pane in panes:
            if pane.name in self.panes:
                raise ValueError(f"a console pane named {pane.name!r} already exists")
            self.panes[pane.name] = pane
        self._token_digest = None if token is None else _digest(token)
        self.streams = 0  # event streams open now
        self.static = {p.name: p.read_bytes() for p in STATIC_DIR.iterdir() if p.is_file()}
        self._unauthorized_logged = 0.0
        self.routes: dict[str, dict[str, Callable[[Request], Awaitable[Response]]]] = {
            "/": {"GET": self.index},
            "/healthz": {"GET": self.healthz},
            "/readyz": {"GET": self.readyz},
            "/metrics": {"GET": self.metrics},
            "/events": {"GET": self.events},
            "/api/status": {"GET": self.api_status},
            "/api/events": {"GET": self.api_events},
            "/api/metrics": {"GET": self.api_metrics},
        }

    # -- ASGI ------------------------------------------------------------------------

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":  # websockets: not served
            return
        started = False

        async def send_tracked(message: dict) -> None:
            nonlocal started
            started = True
            await send(message)

        try:
            request = _request(scope)
            response = await self.respond(request)
            if request.method == "HEAD":
                response.stream = None
            await self._send(response, receive, send_tracked)
        except Exception:
            log.exception("http: %s %s failed", scope.get("method"), scope.get("path"))
            if not started:
                await self._send(text(500, "internal error (logged by the runtime)"),
                                 receive, send)

    async def respond(self, request: Request) -> Response:
        """The response to `request`: checks first, then its route."""
        # h11 bounds only headers still arriving; a block that came whole is checked here.
        if sum(len(k) + len(v) + 4 for k, v in request.headers.items()) > \
                self.max_header_bytes:
            return text(431, f"request headers over {self.max_header_bytes} bytes")
        if self.local_only and not _local_host(request.headers.get("host", "")):
            return text(421, "this console answers only to a loopback host name "
                        "(localhost, 127.0.0.1, [::1])")
        if self._token_digest is not None and not self._authorized(request):
            return text(401, "a valid token is required (Authorization: Bearer <token>, "
                        "or the token as the password of HTTP basic auth)",
                        [("www-authenticate", 'Basic realm="outpost", charset="UTF-8"'),
                         ("www-authenticate", 'Bearer realm="outpost"')])
        handler = self._route(request)
        if isinstance(handler, Response):
            return handler
        try:
            with trio.fail_after(HANDLER_TIMEOUT_S):
                return await handler(request)
        except MethodError as exc:
            return as_json(_METHOD_STATUS.get(exc.code, 500),
                           {"error": {"code": exc.code, "message": str(exc)}})
        except trio.TooSlowError:
            return text(504, f"the runtime did not answer within {HANDLER_TIMEOUT_S:g}s")

    def _route(self, request: Request) -> Callable[[Request], Awaitable[Response]] | Response:
        path, method = request.path, request.method
        if method == "HEAD":  # the server sends no body for HEAD
            method = "GET"
        if path.startswith("/static/"):
            return self.static_file if method == "GET" else _not_allowed("GET, HEAD")
        if path.startswith("/partial/"):
            return self.partial if method == "GET" else _not_allowed("GET, HEAD")
        if path.startswith("/api/agents/"):
            return self.agent_action if method == "POST" else _not_allowed("POST")
        methods = self.routes.get(path)
        if methods is None:
            return text(404, f"no such page: {path}")
        if method not in methods:
            return _not_allowed(", ".join([*methods, "HEAD"] if "GET" in methods else methods))
        return methods[method]

    def _authorized(self, request: Request) -> bool:
        header = request.headers.get("authorization", "")
        scheme, _, credentials = header.partition(" ")
        given = credentials.strip().encode()
        if scheme.lower() == "basic":  # browsers: any user name, the token as password
            try:
                given = base64.b64decode(given, validate=True).partition(b":")[2]
            except ValueError:
                given = b""
        elif scheme.lower() != "bearer":
            given = b""
        # Digests of both, so neither the token's length nor its bytes change the timing.
        ok = hmac.compare_digest(_digest(given), self._token_digest)
        if not ok and time.monotonic() - self._unauthorized_logged > 60:
            self._unauthorized_logged = time.monotonic()
            log.warning("http: refused a request without a valid token (%s %s); "
                        "further refusals this minute are not logged", request.method,
                        request.path)
        return ok

    async def _send(self, response: Response, receive: Callable, send: Callable) -> None:
        headers = [(b"content-type", response.content_type.encode())]
        if response.stream is None:
            headers.append((b"content-length", str(len(response.body)).encode()))
        if not any(name == "cache-control" for name, _ in response.headers):
            headers.append((b"cache-control", b"no-store"))
        headers += [(k.encode(), v.encode()) for k, v in (*SECURITY_HEADERS, *response.headers)]
        await send({"type": "http.response.start", "status": response.status,
                    "headers": headers})
        if response.stream is None:
            await send({"type": "http.response.body", "body": response.body})
            return
        await _send_stream(response.stream, receive, send)

    # -- routes ----------------------------------------------------------------------

    async def index(self, request: Request) -> Response:
        filters = {k: request.query[k] for k in ("agent", "type") if request.query.get(k)}
        info = await self.call("info", {})
        try:
            recent = (await self.call("events.query", {**filters, "limit": 50}))["events"]
        except MethodError as exc:
            recent, filters = [], {**filters, "error": str(exc)}
        panes = [(name, pane.title, await pane.render(self.call))
                 for name, pane in self.panes.items()]
        body = page.render(info, panes, recent, filters, self.read_only)
        return Response(200, body.encode(), "text/html; charset=utf-8")

    async def partial(self, request: Request) -> Response:
        pane = self.panes.get(request.path.removeprefix("/partial/"))
        if pane is None:
            return text(404, f"no such pane: {request.path}")
        return Response(200, (await pane.render(self.call)).encode(), "text/html; charset=utf-8")

    async def healthz(self, request: Request) -> Response:
        # Answered from inside the runtime's own event loop: if this returns, it is alive.
        info = await self.call("info", {})
        return as_json(200, {"status": "ok", "pid": info.get("pid"),
                             "uptime_s": info.get("uptime_s")})

    async def readyz(self, request: Request) -> Response:
        status = plain(await self.call("status", {}))
        # Agents stopped on purpose (or finished, if transient/temporary) are not "down".
        down = [{"agent": a["name"], "state": a["state"]} for a in status["agents"]
                if a["state"] not in ("running", "stopped")]
        writable = slot_reading(self.segment, "outpost:store_writable") != 0
        ready = not down and writable
        return as_json(200 if ready else 503, {"ready": ready, "agents_down": down,
                                                "store_writable": writable})

    async def metrics(self, request: Request) -> Response:
        body, content_type = metrics_response(self.segment, request.headers.get("accept", ""),
                                              self.metrics_help)
        return Response(200, body, content_type)

    async def events(self, request: Request) -> Response:
        if self.streams >= MAX_STREAMS:
            return text(503, f"too many event streams open ({MAX_STREAMS}); try again later",
                        [("retry-after", "5")])
        produce = await event_stream(self.call, request.query,
                                     request.headers.get("last-event-id"))

        async def counted(send: Send) -> None:
            self.streams += 1
            try:
                await produce(send)
            finally:
                self.streams -= 1

        return Response(200, content_type="text/event-stream; charset=utf-8",
                        headers=[("x-accel-buffering", "no")], stream=counted)

    async def api_status(self, request: Request) -> Response:
        status = await self.call("status", {})
        return as_json(200, {**status, "runtime": await self.call("info", {})})

    async def api_events(self, request: Request) -> Response:
        params: dict[str, Any] = {k: request.query[k] for k in ("agent", "type")
                                  if request.query.get(k)}
        for key, kind in (("limit", int), ("since", float), ("until", float)):
            if request.query.get(key):
                try:
                    params[key] = kind(request.query[key])
                except ValueError:
                    raise MethodError("bad_params", f"{key} must be a number") from None
        return as_json(200, await self.call("events.query", params))

    async def api_metrics(self, request: Request) -> Response:
        return as_json(200, {"metrics": snapshot(self.segment)})

    async def agent_action(self, request: Request) -> Response:
        if self.read_only:
            return text(403, "this console is read-only ([http] read_only = true)")
        # Only a script of this page (same origin, custom header) can send this: a form on
        # another site cannot set the header, and a cross-site fetch would need CORS.
        if request.headers.get("x-outpost-action") != "1" or \
                request.headers.get("sec-fetch-site", "same-origin") not in ("same-origin",
                                                                             "none"):
            return text(403, "actions need the X-Outpost-Action: 1 header, from this page")
        name, _, action = request.path.removeprefix("/api/agents/").rpartition("/")
        if not name or action not in ACTIONS:
            return text(404, "expected POST /api/agents/<name>/(start|stop|restart)")
        return as_json(200, await self.call(f"agent.{action}", {"agent": name}))

    async def static_file(self, request: Request) -> Response:
        name = request.path.removeprefix("/static/")
        body = self.static.get(name)
        if body is None:
            return text(404, f"no such file: {request.path}")
        content_type = STATIC_TYPES.get(Path(name).suffix, STATIC_TYPES[""])
        return Response(200, body, content_type, [("cache-control", "public, max-age=3600")])


def slot_reading(segment: Segment, name: str) -> Any:
    """The value of one slot, by name (None if there is no such slot)."""
    found = segment.find(name)
    return None if found is None else slot_value(segment, *found)


def _not_allowed(allow: str) -> Response:
    return text(405, f"method not allowed here (allowed: {allow})", [("allow", allow)])


def _local_host(host: str) -> bool:
    name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    name = name.strip("[]").lower()
    if name == "localhost":
        return True
    try:  # an IP literal, never a name: "127.evil.example" can resolve to anything
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _request(scope: dict) -> Request:
    headers: dict[str, str] = {}
    for raw_name, raw_value in scope.get("headers", []):
        name, value = raw_name.decode("latin-1").lower(), raw_value.decode("latin-1")
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
    return Request(scope["method"], scope["path"], query, headers)


async def _send_stream(produce: Producer, receive: Callable, send: Callable) -> None:
    """Run the producer until it is done or the client goes away, then end the body."""
    async def chunk(data: bytes) -> None:
        await send({"type": "http.response.body", "body": data, "more_body": True})

    async with trio.open_nursery() as nursery:
        async def watch_disconnect() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            nursery.cancel_scope.cancel()

        nursery.start_soon(watch_disconnect)
        await produce(chunk)
        nursery.cancel_scope.cancel()
    await send({"type": "http.response.body", "body": b""})


async def _lifespan(receive: Callable, send: Callable) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
