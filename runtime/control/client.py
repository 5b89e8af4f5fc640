"""A blocking control client for the CLI: the same sans-IO protocol over a plain socket."""

from __future__ import annotations

import itertools
import os
import socket
import struct
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
    RemoteProtocolError,
    Request,
    Response,
    StreamEnd,
    StreamItem,
)


def _kernel_timeout(sock: socket.socket, timeout: float | None) -> None:
    """Bound each blocking send/recv (and connect) on `sock` by `timeout` in the kernel.

    Not socket.settimeout: that makes every call poll() before it reads or
    writes, an extra syscall and an extra wakeup per call that cost 5-30 us of
    a 70-180 us round trip on our VM (scripts/bench/control.py). A timed-out call
    raises BlockingIOError (EAGAIN) instead of TimeoutError; the callers
    translate. None or 0 waits forever.
    """
    sec, usec = (0, 0) if not timeout else divmod(max(1, round(timeout * 1e6)), 1_000_000)
    timeval = struct.pack("ll", sec, usec)  # struct timeval: two native longs
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)


class NotRunningError(Exception):
    """No runtime answers on the socket (or it went away mid-conversation)."""


class RemoteError(Exception):
    """The runtime answered with an error {code, message}; `forbidden` also for a
    socket this user may not open."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class ControlClient:
    """Connect to a runtime's control socket and call methods on it.

    One request at a time; `timeout` bounds every socket operation except the
    waits of a `stream` (which may be quiet for a long time).
    """

    def __init__(self, path: str | Path, timeout: float | None = 10.0) -> None:
        self.path = Path(path)
        self.timeout = timeout
        self._ids = itertools.count(1)
        self._conn = Connection(CLIENT)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        _kernel_timeout(self._sock, timeout)
        try:
            self._sock.connect(str(self.path))
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            self._sock.close()
            raise NotRunningError(f"no outpost runtime answers on {self.path} "
                                  f"({exc.strerror})") from None
        except PermissionError:
            self._sock.close()
            raise RemoteError("forbidden", _permission_hint(self.path)) from None
        except BlockingIOError:  # SO_SNDTIMEO ran out: the accept backlog stayed full
            self._sock.close()
            raise TimeoutError(f"the runtime at {self.path} accepted no connection within "
                               f"{timeout} s") from None
        except BaseException:
            self._sock.close()
            raise
        try:
            self._sendall(self._conn.send(Hello()))
            event = self._next()
        except BaseException:
            self.close()
            raise
        if isinstance(event, ErrorResponse):
            self.close()
            raise RemoteError(event.code, event.message)
        if not isinstance(event, Hello):
            self.close()
            raise RemoteProtocolError(f"expected hello from the runtime, got {event!r}")
        self.server = event.server

    def _next(self) -> Any:
        while True:
            event = self._conn.next_event()
            if event is NEED_DATA:
                try:
                    data = self._sock.recv(65536)
                except (ConnectionResetError, BrokenPipeError):
                    data = b""
                except BlockingIOError:  # SO_RCVTIMEO ran out
                    raise TimeoutError(f"the runtime did not answer within {self.timeout} s") \
                        from None
                self._conn.receive_data(data)
                continue
            if event is CLOSED:
                raise NotRunningError("the runtime closed the connection")
            return event

    def _sendall(self, data: bytes) -> None:
        try:
            self._sock.sendall(data)
        except (ConnectionResetError, BrokenPipeError):
            raise NotRunningError("the runtime closed the connection") from None
        except BlockingIOError:  # SO_SNDTIMEO ran out
            raise TimeoutError(f"the runtime took no request within {self.timeout} s") from None

    def call(self, method: str, **params: Any) -> Any:
        """Call `method` and return its result; RemoteError if it failed.

        LocalProtocolError (code too_large or unencodable) if the params cannot
        travel; RemoteProtocolError if the runtime's answer breaks the protocol.
        """
        req_id = next(self._ids)
        self._sendall(self._conn.send(Request(req_id, method, params)))
        event = self._next()
        if isinstance(event, ErrorResponse):
            raise RemoteError(event.code, event.message)
        if not isinstance(event, Response) or event.id != req_id:
            raise RemoteProtocolError(f"unexpected reply {event!r}")
        return event.result

    def stream(self, method: str, **params: Any) -> Iterator[Any]:
        """Call a streaming method and yield its items until it ends.

        Waits without a timeout between items (a follower may be quiet for
        hours); closing the client is how a caller stops following.
        """
        req_id = next(self._ids)
        self._sendall(self._conn.send(Request(req_id, method, params)))
        _kernel_timeout(self._sock, None)
        try:
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
        finally:
            _kernel_timeout(self._sock, self.timeout)

    def close(self) -> None:
        """Close the connection (the runtime forgets it at once)."""
        self._sock.close()

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _permission_hint(path: Path) -> str:
    try:
        owner = os.stat(path).st_uid
    except OSError:
        owner = None
    who = f"uid {owner}" if owner is not None else "another user"
    return (f"permission denied opening {path}: the control socket belongs to {who}; "
            "run as that user or root")
