"""Serving the console: hypercorn's trio worker inside the runtime's root nursery.

No second event loop and no HTTP parsing of ours: hypercorn (over h11) parses,
and its limits cut off what a small box should not carry. A request line and
headers larger than `max_header_bytes` get 431 (h11 refuses a larger block still
arriving, the app one that came whole); headers that trickle in are
cut off `keep_alive_timeout_s` after the connection went idle (h11 counts a
request as started only once its headers are complete). There is no read
timeout on an open request, as an event stream's client sends nothing for
hours; routes read no request bodies.

The address is bound here, not by hypercorn, so a taken port is a plain error:
the runtime keeps running (its agents matter more than its console), logs
it, and tries again every `RETRY_S`. A Unix socket is born 0660 (owner and
group, e.g. a reverse proxy) and removed at the end.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.config import Sockets
from hypercorn.trio import serve

from runtime.config.schema import HttpSection, Listen
from runtime.http.app import Console
from runtime.http.ports import Call, Pane
from shm import Segment

log = logging.getLogger("outpost.http")
# hypercorn's own log: its errors matter, its "Running on ... (CTRL + C to quit)" does not.
server_log = logging.getLogger("outpost.http.server")
if server_log.level == logging.NOTSET:
    server_log.setLevel(logging.WARNING)

RETRY_S = 10.0
TOKEN_MIN_BYTES = 16
TOKEN_MAX_BYTES = 4096


@dataclass(frozen=True)
class Limits:
    """What hypercorn cuts off (see the module docstring)."""

    max_header_bytes: int = 8 * 1024
    keep_alive_timeout_s: float = 5.0
    max_h2_streams: int = 16
    graceful_timeout_s: float = 1.0


def read_token(path: Path) -> bytes:
    """The bearer token in `path` (surrounding whitespace stripped).

    OSError with a message saying what to fix if the file cannot serve as one:
    missing, readable by every user, empty or too short to be a secret.
    """
    try:
        with open(path, "rb") as f:
            mode = os.fstat(f.fileno()).st_mode
            raw = f.read(TOKEN_MAX_BYTES + 1)
    except OSError as exc:
        raise OSError(f"[http] auth_token_file {path}: {exc.strerror}") from None
    if mode & stat.S_IROTH:
        raise OSError(f"[http] auth_token_file {path} is readable by every user "
                      f"(mode {stat.S_IMODE(mode):04o}): chmod 600 it")
    token = raw.strip()
    if len(raw) > TOKEN_MAX_BYTES or len(token) < TOKEN_MIN_BYTES:
        raise OSError(f"[http] auth_token_file {path}: expected one token of "
                      f"{TOKEN_MIN_BYTES} to {TOKEN_MAX_BYTES} bytes, e.g. from "
                      "`head -c 32 /dev/urandom | base64`")
    return token


def bind(address: Listen, backlog: int = 64) -> socket.socket:
    """A listening, non-inheritable socket for `address` (OSError if it cannot be had)."""
    if address.path is not None:
        path = Path(address.path)
        _remove_stale_socket(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o117)  # born 0660: no window with wider modes
        try:
            sock.bind(str(path))
        except OSError:
            sock.close()
            raise
        finally:
            os.umask(old_umask)
    else:
        host = "127.0.0.1" if address.host == "localhost" else address.host
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.bind((host, address.port))
        except OSError:
            sock.close()
            raise
    sock.set_inheritable(False)
    sock.setblocking(False)
    sock.listen(backlog)
    return sock


def _remove_stale_socket(path: Path) -> None:
    try:
        if not stat.S_ISSOCK(path.lstat().st_mode):
            raise OSError(f"{path} exists and is not a socket; remove it or listen elsewhere")
    except FileNotFoundError:
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError:
        path.unlink()  # left by a runtime that died: nobody answers
    else:
        raise OSError(f"another process already answers on {path}")
    finally:
        probe.close()


def url_of(sock: socket.socket) -> str:
    """How to reach a bound socket, for the log."""
    name = sock.getsockname()
    if sock.family == socket.AF_UNIX:
        return f"unix:{name}"
    host = f"[{name[0]}]" if sock.family == socket.AF_INET6 else name[0]
    return f"http://{host}:{name[1]}/"


class _BoundConfig(HypercornConfig):
    """A hypercorn config that serves sockets we bound ourselves."""

    def __init__(self, sock: socket.socket, limits: Limits) -> None:
        super().__init__()
        self._sock = sock
        self.accesslog = None
        self.errorlog = server_log
        self.h11_max_incomplete_size = limits.max_header_bytes
        self.h2_max_header_list_size = limits.max_header_bytes
        self.h2_max_concurrent_streams = limits.max_h2_streams
        self.keep_alive_timeout = limits.keep_alive_timeout_s
        self.graceful_timeout = limits.graceful_timeout_s
        self.include_server_header = False

    def create_sockets(self) -> Sockets:
        return Sockets([], [self._sock], [])


class HttpFace:
    """The HTTP face of one runtime: `await nursery.start(face.run)`.

    Built before anything starts, so a token file that cannot serve refuses the
    start (OSError) instead of stopping a runtime already running agents.
    """

    def __init__(self, settings: HttpSection, call: Call, segment: Segment, *,
                 metrics_help: Mapping[str, str] | None = None, panes: Sequence[Pane] = (),
                 limits: Limits = Limits()) -> None:
        self.settings = settings
        self.address = settings.address
        token = None if settings.auth_token_file is None else read_token(
            Path(settings.auth_token_file))
        self.app = Console(call, segment, token=token, read_only=settings.read_only,
                           local_only=token is None and self.address.path is None,
                           metrics_help=metrics_help, panes=panes,
                           max_header_bytes=limits.max_header_bytes)
        self.limits = limits
        self.url: str | None = None  # where it listens, once it does

    async def run(self, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled; report started after the first attempt to bind."""
        failed_before = False
        while True:
            try:
                sock = bind(self.address)
            except OSError as exc:
                (log.debug if failed_before else log.error)(
                    "http: cannot listen on %s: %s; the runtime runs on without its HTTP "
                    "face and tries again every %.0fs (set [http] listen, or enabled = false)",
                    self.address, exc.strerror or exc, RETRY_S)
                failed_before = True
                task_status.started()
                task_status = trio.TASK_STATUS_IGNORED
                await trio.sleep(RETRY_S)
                continue
            try:
                self.url = url_of(sock)
                log.info("http: console and /metrics on %s", self.url)
                await serve(self.app, _BoundConfig(sock, self.limits), task_status=task_status)
                return
            finally:
                self.url = None
                sock.close()
                if self.address.path is not None:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(self.address.path)
