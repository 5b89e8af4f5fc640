"""The control socket server: thin trio code around the sans-IO protocol.

Every connection is checked with SO_PEERCRED; requests go to the runtime's one
`Methods` table, with the peer as the caller. A misbehaving client only ever
loses its own connection: each connection is its own task with deadlines on
the hello, on finishing a started frame, on idling and on every send, and a
connection holds at most one frame plus one read of buffered input (see
protocol). Nothing a client does can raise out of `serve`, so the runtime
never dies because of a client.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import os
import socket
import struct
import time
from dataclasses import dataclass
from pathlib import Path

import trio

from runtime import __version__
from runtime.control.dispatch import Caller, Methods, Stream, acting_as, as_method_error
from runtime.control.errors import MethodError
from runtime.control.protocol import (
    CLOSED,
    MAX_FRAME,
    NEED_DATA,
    SERVER,
    Connection,
    ErrorResponse,
    Hello,
    LocalProtocolError,
    RemoteProtocolError,
    Request,
    Response,
    StreamEnd,
    StreamItem,
)

log = logging.getLogger("outpost.control")

_PEERCRED = struct.Struct("3i")
_SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)  # Linux >= 4.13
_READ = 65536
_DRAIN_S = 1.0  # how long a refused peer gets to take our error and hang up
_REFUSAL_LOG_BURST = 20  # refusals logged per minute; the rest are counted
_ACCEPT_LOG_BURST = 5  # accept failures logged per minute
_ACCEPT_RETRY_S = 0.1  # after a capacity error: long enough not to spin, short enough to serve
# accept() errors that mean "out of fds or memory, try again" (as trio's serve_listeners);
# trio's SocketListener already absorbs the per-connection ones (ECONNABORTED, EPROTO, ...).
ACCEPT_CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_BROKEN = (trio.BrokenResourceError, trio.ClosedResourceError)


@dataclass(frozen=True)
class Limits:
    """Per-connection bounds that keep one client from hurting the others.

    hello_timeout_s: to send the hello after connecting.
    frame_timeout_s: to finish a frame once its first byte arrived (half-frame senders).
    idle_timeout_s: between requests.
    send_timeout_s: for the client to take each answer (non-readers).
    """

    max_connections: int = 256
    max_frame: int = MAX_FRAME
    hello_timeout_s: float = 5.0
    frame_timeout_s: float = 10.0
    idle_timeout_s: float = 300.0
    send_timeout_s: float = 5.0


@dataclass(frozen=True)
class Peer:
    """Who is on the other end, from the kernel (SO_PEERCRED / SO_PEERGROUPS)."""

    pid: int
    uid: int
    gid: int
    groups: tuple[int, ...] = ()

    def __str__(self) -> str:
        return f"pid {self.pid} uid {self.uid} gid {self.gid}"


def peer_of(sock: socket.socket | trio.socket.SocketType) -> Peer:
    """The credentials the kernel recorded for the process that connected `sock`."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
    pid, uid, gid = _PEERCRED.unpack(raw)
    groups: tuple[int, ...] = ()
    with contextlib.suppress(OSError):  # older kernels, or > 256 groups: primary gid only
        raw = sock.getsockopt(socket.SOL_SOCKET, _SO_PEERGROUPS, 1024)  # Python's largest buflen
        groups = struct.unpack(f"{len(raw) // 4}I", raw[: len(raw) // 4 * 4])
    return Peer(pid, uid, gid, groups)


class ControlServer:
    """Serve `methods` on the Unix socket at `path` (mode 0600) until cancelled.

    Allowed peers: this process's uid, root, `allowed_uids`, and members
    (primary or supplementary group) of `allowed_gids`. Everyone else gets a
    `forbidden` error naming their uid, and the attempt is logged.
    """

    def __init__(self, path: Path, methods: Methods,
                 allowed_uids: tuple[int, ...] = (), allowed_gids: tuple[int, ...] = (),
                 limits: Limits = Limits()) -> None:
        self.path = path
        self.methods = methods
        self.limits = limits
        self.set_allowed(allowed_uids, allowed_gids)
        self.active = 0  # connections being served now
        self.refused = 0  # connections refused (credentials or capacity)
        self.requests = 0  # requests dispatched, ever (lets tests see who calls how often)
        self.accept_failures = 0  # capacity errors from accept, ever (each retried)
        # A local user hammering the socket, or a runtime out of fds, must not fill the disk.
        self._refusal_log = CappedLog(_REFUSAL_LOG_BURST, "refused connection(s)")
        self._accept_log = CappedLog(_ACCEPT_LOG_BURST, "failed accept(s)")

    def set_allowed(self, uids: tuple[int, ...], gids: tuple[int, ...]) -> None:
        """Replace the configured allowed uids/gids (a reload applies [control] this way)."""
        self._uids = {os.getuid(), 0, *uids}
        self._gids = set(gids)

    def allows(self, peer: Peer) -> bool:
        """May `peer` control this runtime?"""
        return peer.uid in self._uids or peer.gid in self._gids \
            or not self._gids.isdisjoint(peer.groups)

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
        sock.listen(socket.SOMAXCONN)
        return sock

    async def serve(self, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        """Bind, report started, and accept connections until cancelled.

        Out of fds or memory (ACCEPT_CAPACITY_ERRNOS), accept is retried after a
        short sleep while the connections being served go on; any other error
        from it is a bug or a broken socket, and is raised.
        """
        sock = await self._bind()
        listener = trio.SocketListener(sock)
        failing = 0  # capacity errors in a row
        try:
            async with trio.open_nursery() as nursery:
                task_status.started()
                while True:
                    try:
                        stream = await listener.accept()
                    except OSError as exc:
                        if exc.errno not in ACCEPT_CAPACITY_ERRNOS:
                            raise
                        self.accept_failures += 1
                        failing += 1
                        self._accept_log.error(
                            "control: accept failed: %s (%s); %d connection(s) open, "
                            "retrying every %.1fs", errno.errorcode[exc.errno],
                            os.strerror(exc.errno), self.active, _ACCEPT_RETRY_S)
                        await trio.sleep(_ACCEPT_RETRY_S)
                        continue
                    if failing:
                        log.warning("control: accepting connections again after %d failed "
                                    "accept(s)", failing)
                        failing = 0
                    nursery.start_soon(self._handle, stream)
        finally:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
            sock.close()

    async def _handle(self, stream: trio.SocketStream) -> None:
        self.active += 1
        try:
            async with stream:
                await self._handle_checked(stream)
        except (*_BROKEN, trio.TooSlowError):
            pass
        except Exception:  # a bug of ours must cost one connection, never the runtime
            log.exception("control: connection handler failed")
        finally:
            self.active -= 1

    async def _handle_checked(self, stream: trio.SocketStream) -> None:
        conn = Connection(SERVER, self.limits.max_frame)
        try:
            peer = peer_of(stream.socket)
        except OSError:
            return  # gone before we looked
        if not self.allows(peer):
            self.refused += 1
            self._refusal_log.warning("control: refused connection from %s (not an allowed "
                                      "user)", peer)
            await self._refuse(stream, conn, "forbidden",
                               f"uid {peer.uid} may not control this runtime (it runs as uid "
                               f"{os.getuid()}); run as that user or root, or add the uid "
                               "to [control] allowed_uids")
            return
        if self.active > self.limits.max_connections:
            self.refused += 1
            log.warning("control: refused connection from %s: %d connections already open",
                        peer, self.active - 1)
            await self._refuse(stream, conn, "busy",
                               f"the runtime serves {self.limits.max_connections} control "
                               "connections already; try again")
            return
        try:
            await self._converse(stream, conn, Caller("socket", uid=peer.uid, pid=peer.pid))
        except RemoteProtocolError as exc:  # the client broke the protocol: its loss
            log.info("control: closing connection from %s: %s", peer, exc)
            await self._refuse(stream, conn, exc.code, str(exc))
        except LocalProtocolError as exc:  # we tried to send what the protocol forbids: a bug
            log.exception("control: closing connection from %s after our own protocol "
                          "error", peer)
            await self._refuse(stream, conn, "internal", f"the runtime broke the protocol: {exc}")
        except trio.TooSlowError:
            log.info("control: closing connection from %s: too slow", peer)

    async def _refuse(self, stream: trio.SocketStream, conn: Connection, code: str,
                      message: str) -> None:
        """Send an id-less error, then close so that the peer can read it.

        Closing with the peer's bytes still unread makes the kernel reset the
        connection, and the peer may see ECONNRESET instead of our error: so
        we shut our side, then read and drop what the peer sent (bounded in
        bytes and time) until it closes too.
        """
        with trio.move_on_after(self.limits.send_timeout_s), contextlib.suppress(*_BROKEN):
            await stream.send_all(conn.send(ErrorResponse(None, code, message)))
            await stream.send_eof()
        with trio.move_on_after(_DRAIN_S), contextlib.suppress(*_BROKEN):
            dropped = 0
            while dropped < 2 * self.limits.max_frame:
                data = await stream.receive_some(_READ)
                if not data:
                    break
                dropped += len(data)

    async def _send(self, stream: trio.SocketStream, data: bytes | memoryview,
                    timer: trio.CancelScope) -> None:
        timer.deadline = trio.current_time() + self.limits.send_timeout_s
        await stream.send_all(data)
        timer.deadline = math.inf

    async def _converse(self, stream: trio.SocketStream, conn: Connection,
                        caller: Caller) -> None:
        # One cancel scope per connection whose deadline is moved around each
        # wait (cheaper than a scope per read and per write on the hot path).
        with trio.CancelScope() as timer:
            await self._converse_timed(stream, conn, caller, timer)
        if timer.cancelled_caught:
            raise trio.TooSlowError

    async def _converse_timed(self, stream: trio.SocketStream, conn: Connection,
                              caller: Caller, timer: trio.CancelScope) -> None:
        limits = self.limits
        hello_deadline = trio.current_time() + limits.hello_timeout_s
        frame_deadline: float | None = None
        while True:
            event = conn.next_event()
            if event is NEED_DATA:
                # Absolute deadlines: trickling one byte at a time does not extend them.
                if not conn.handshaken:
                    timer.deadline = hello_deadline
                elif conn.buffered:
                    if frame_deadline is None:
                        frame_deadline = trio.current_time() + limits.frame_timeout_s
                    timer.deadline = frame_deadline
                else:
                    timer.deadline = trio.current_time() + limits.idle_timeout_s
                conn.receive_data(await stream.receive_some(_READ))
                timer.deadline = math.inf
                continue
            frame_deadline = None
            if event is CLOSED:
                return
            if isinstance(event, Hello):
                await self._send(stream, conn.send(Hello(server=f"outpost {__version__}")),
                                 timer)
                continue
            assert isinstance(event, Request)
            self.requests += 1
            # Called here, not in a helper coroutine: one frame less per request.
            try:
                result = await self.methods.call(event.method, event.params, caller=caller)
            except MethodError as exc:
                answer: Response | ErrorResponse = ErrorResponse(event.id, exc.code, str(exc))
            else:
                if isinstance(result, Stream):
                    with acting_as(caller):
                        await self._stream(stream, conn, event.id, result, timer)
                    continue
                answer = Response(event.id, result)
            try:
                reply = conn.send(answer)
            except LocalProtocolError as exc:  # e.g. a result larger than a frame
                reply = conn.send(ErrorResponse(event.id, exc.code, str(exc)))
            sent = _write_now(stream, reply)
            if sent < len(reply):
                await self._send(stream, memoryview(reply)[sent:], timer)
            if conn.buffered:
                # Pipelined requests are answered without waiting to read: yield
                # between them so one client cannot hold the event loop.
                await trio.lowlevel.checkpoint()

    async def _stream(self, stream: trio.SocketStream, conn: Connection, req_id: int,
                      source: Stream, timer: trio.CancelScope) -> None:
        """Send `source`'s items until it ends, fails, or the client goes away."""
        peer_gone = False
        failure: BaseException | None = None
        items = source.items

        async def watch_peer(cancel: trio.CancelScope) -> None:
            # While streaming the client has nothing to say; its EOF (or a broken
            # socket) is how it stops following. Pipelined bytes are kept for later.
            nonlocal peer_gone
            with contextlib.suppress(*_BROKEN):
                while conn.buffered <= self.limits.max_frame:
                    data = await stream.receive_some(_READ)
                    if not data:
                        break
                    conn.receive_data(data)
                else:
                    await trio.sleep_forever()  # enough buffered: stop reading until done
            peer_gone = True
            cancel.cancel()

        async def pump() -> None:
            while True:
                try:
                    item = await items.__anext__()
                except StopAsyncIteration:
                    await self._send(stream, conn.send(StreamEnd(req_id)), timer)
                    return
                except Exception as exc:
                    error = as_method_error(exc, "stream")
                    await self._send(stream, conn.send(ErrorResponse(req_id, error.code,
                                                                     str(error))), timer)
                    return
                try:
                    data = conn.send(StreamItem(req_id, item))
                except LocalProtocolError as exc:  # an item too large for a frame
                    await self._send(stream, conn.send(ErrorResponse(req_id, exc.code,
                                                                     str(exc))), timer)
                    return
                await self._send(stream, data, timer)

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(watch_peer, nursery.cancel_scope)
                try:
                    await pump()
                except (trio.TooSlowError, *_BROKEN) as exc:
                    failure = exc  # raised below, outside the nursery (no exception group)
                nursery.cancel_scope.cancel()
        finally:
            aclose = getattr(items, "aclose", None)
            if aclose is not None:
                with trio.CancelScope(shield=True), contextlib.suppress(Exception):
                    await aclose()
        if failure is not None:
            raise failure
        if peer_gone:
            raise trio.ClosedResourceError  # the connection is over; let _handle close it


class CappedLog:
    """Log at most `burst` lines a minute; count the rest and say how many, once the
    minute is over (with the next line that is logged)."""

    def __init__(self, burst: int, what: str, window_s: float = 60.0) -> None:
        self.burst = burst
        self.what = what
        self.window_s = window_s
        self.logged = self.unlogged = 0
        self._window = -math.inf

    def warning(self, message: str, *args: object) -> None:
        self._log(logging.WARNING, message, args)

    def error(self, message: str, *args: object) -> None:
        self._log(logging.ERROR, message, args)

    def _log(self, level: int, message: str, args: tuple) -> None:
        now = time.monotonic()
        if now - self._window >= self.window_s:
            if self.unlogged:
                log.log(level, "control: %d more %s not logged in the last minute",
                        self.unlogged, self.what)
            self._window, self.logged, self.unlogged = now, 0, 0
        if self.logged < self.burst:
            self.logged += 1
            log.log(level, message, *args)
        else:
            self.unlogged += 1


def _write_now(stream: trio.SocketStream, data: bytes) -> int:
    """Write what the socket takes of `data` without waiting; how many bytes that was.

    The request loop's fast path: answers are small and the client is waiting,
    so the kernel nearly always takes all of it. trio's send_all is also a
    checkpoint (a scheduler pass), and each send needs its deadline armed and
    disarmed: ~10 us of a ~70 us round trip on our VM. Only the rest of a frame
    that did not fit pays for that.
    """
    fd = stream.socket.fileno()
    if fd < 0:
        raise trio.ClosedResourceError("the control connection was closed")
    try:
        return os.write(fd, data)  # the socket is non-blocking (trio made it so)
    except BlockingIOError:
        return 0
    except OSError as exc:  # EPIPE, ECONNRESET: the client left
        raise trio.BrokenResourceError(f"control client went away: {exc}") from None

