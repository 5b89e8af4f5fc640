"""A blocking control client for the CLI: the same sans-IO protocol over a plain socket."""

from __future__ import annotations

import itertools
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from runtime.control.protocol import (
    CLIENT,
    CLOSED,
    NEED_DATA,
    Connection,
    ErrorResponse,
    Hello,
    ProtocolError,
    Request,
    Response,
    StreamEnd,
    StreamItem,
)


class NotRunningError(Exception):
    """No runtime answers on the socket."""


class RemoteError(Exception):
    """The runtime answered with an error."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class ControlClient:
    """Connect to a runtime's control socket and call methods on it."""

    def __init__(self, path: str | Path, timeout: float = 10.0) -> None:
        self.path = Path(path)
        self._ids = itertools.count(1)
        self._conn = Connection(CLIENT)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(timeout)
        try:
            self._sock.connect(str(self.path))
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            self._sock.close()
            raise NotRunningError(f"no outpost runtime answers on {self.path} "
                                  f"({exc.strerror})") from None
        self._sock.sendall(self._conn.send(Hello()))
        event = self._next()
        if isinstance(event, ErrorResponse):
            self.close()
            raise RemoteError(event.code, event.message)
        if not isinstance(event, Hello):
            self.close()
            raise ProtocolError(f"expected hello from the runtime, got {event!r}")
        self.server = event.server

    def _next(self) -> Any:
        while True:
            event = self._conn.next_event()
            if event is NEED_DATA:
                self._conn.receive_data(self._sock.recv(65536))
                continue
            if event is CLOSED:
                raise NotRunningError("the runtime closed the connection")
            return event

    def call(self, method: str, **params: Any) -> Any:
        """Call `method` and return its result; RemoteError if it failed."""
        req_id = next(self._ids)
        self._sock.sendall(self._conn.send(Request(req_id, method, params)))
        event = self._next()
        if isinstance(event, ErrorResponse):
            raise RemoteError(event.code, event.message)
        if not isinstance(event, Response) or event.id != req_id:
            raise ProtocolError(f"unexpected reply {event!r}")
        return event.result

    def stream(self, method: str, **params: Any) -> Iterator[Any]:
        """Call a streaming method and yield its items until it ends."""
        req_id = next(self._ids)
        self._sock.sendall(self._conn.send(Request(req_id, method, params)))
        while True:
            event = self._next()
            if isinstance(event, ErrorResponse):
                raise RemoteError(event.code, event.message)
            if isinstance(event, StreamEnd):
                return
            if isinstance(event, StreamItem):
                yield event.item
            elif isinstance(event, Response):
                yield event.result
                return

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
