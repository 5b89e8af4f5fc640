"""The control socket server: thin trio code around the sans-IO protocol.

Every connection is checked with SO_PEERCRED; requests are dispatched to the
runtime's handlers. A misbehaving client only ever loses its own connection.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

from runtime import __version__
from runtime.control.protocol import (
    CLOSED,
    NEED_DATA,
    SERVER,
    Connection,
    ErrorResponse,
    Hello,
    ProtocolError,
    Request,
    Response,
)

log = logging.getLogger("outpost.control")

Handler = Callable[[dict[str, Any]], Awaitable[Any]]
_IDLE_TIMEOUT_S = 300.0
_SEND_TIMEOUT_S = 5.0
_PEERCRED = struct.Struct("3i")


class MethodError(Exception):
    """A handler's refusal, sent to the client as {"error": {code, message}}."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class ControlServer:
    """Serve `handlers` on the Unix socket at `path` (mode 0600) until cancelled."""

    def __init__(self, path: Path, handlers: dict[str, Handler],
                 allowed_uids: tuple[int, ...] = (), allowed_gids: tuple[int, ...] = ()) -> None:
        self.path = path
        self.handlers = handlers
        self._uids = {os.getuid(), 0, *allowed_uids}
        self._gids = set(allowed_gids)

    async def _bind(self) -> trio.socket.SocketType:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if self.path.exists():
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(str(self.path))
            except OSError:
                self.path.unlink()  # left by a runtime that died: nobody answers
            else:
                raise OSError(f"another runtime already answers on {self.path}")
            finally:
                probe.close()
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)  # the socket is born 0600: no window with wider modes
        try:
            await sock.bind(str(self.path))
        finally:
            os.umask(old_umask)
        os.chmod(self.path, 0o600)
        sock.listen(64)
        return sock

    async def serve(self, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        sock = await self._bind()
        listener = trio.SocketListener(sock)
        try:
            async with trio.open_nursery() as nursery:
                task_status.started()
                while True:
                    stream = await listener.accept()
                    nursery.start_soon(self._handle, stream)
        finally:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
            sock.close()

    def _peer_allowed(self, stream: trio.SocketStream) -> tuple[bool, str]:
        raw = stream.socket.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
        pid, uid, gid = _PEERCRED.unpack(raw)
        return (uid in self._uids or gid in self._gids), f"pid {pid} uid {uid} gid {gid}"

    async def _handle(self, stream: trio.SocketStream) -> None:
        async with stream:
            allowed, who = self._peer_allowed(stream)
            conn = Connection(SERVER)
            if not allowed:
                log.warning("control: refused connection from %s (not an allowed user)", who)
                with trio.move_on_after(_SEND_TIMEOUT_S):
                    await stream.send_all(conn.send(ErrorResponse(
                        None, "forbidden", f"{who} may not control this runtime; "
                        "add the uid to [control] allowed_uids")))
                return
            try:
                await self._converse(stream, conn)
            except ProtocolError as exc:
                log.info("control: closing connection from %s: %s", who, exc)
                with trio.move_on_after(_SEND_TIMEOUT_S), contextlib.suppress(
                        trio.BrokenResourceError, trio.ClosedResourceError):
                    await stream.send_all(conn.send(ErrorResponse(None, exc.code, str(exc))))
            except (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError):
                pass

    async def _converse(self, stream: trio.SocketStream, conn: Connection) -> None:
        while True:
            event = conn.next_event()
            if event is NEED_DATA:
                with trio.fail_after(_IDLE_TIMEOUT_S):
                    conn.receive_data(await stream.receive_some(65536))
                continue
            if event is CLOSED:
                return
            if isinstance(event, Hello):
                reply = conn.send(Hello(server=f"outpost {__version__}"))
            else:
                assert isinstance(event, Request)
                response = await self._dispatch(event)
                try:
                    reply = conn.send(response)
                except ProtocolError as exc:  # e.g. a result larger than a frame
                    reply = conn.send(ErrorResponse(event.id, exc.code, str(exc)))
            with trio.fail_after(_SEND_TIMEOUT_S):
                await stream.send_all(reply)

    async def _dispatch(self, request: Request) -> Response | ErrorResponse:
        handler = self.handlers.get(request.method)
        if handler is None:
            return ErrorResponse(request.id, "unknown_method",
                                 f"no method {request.method!r}; known: "
                                 + ", ".join(sorted(self.handlers)))
        try:
            return Response(request.id, await handler(request.params))
        except MethodError as exc:
            return ErrorResponse(request.id, exc.code, str(exc))
        except Exception as exc:
            log.exception("control method %s failed", request.method)
            return ErrorResponse(request.id, "internal", f"{type(exc).__name__}: {exc}")
