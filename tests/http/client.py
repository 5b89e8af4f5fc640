"""A small blocking HTTP client for the tests (stdlib http.client, TCP or a Unix socket)."""

from __future__ import annotations

import base64
import http.client
import re
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.runtime_proc import RuntimeProc, wait_for, write_config


@dataclass
class Reply:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode()


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self._path)


def request(base: str, path: str, method: str = "GET", headers: dict | None = None,
            token: str | None = None, basic: str | None = None,
            timeout: float = 30.0) -> Reply:
    """`base` is 'http://host:port' or 'unix:/path/to.sock'."""
    headers = dict(headers or {})
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    if basic is not None:
        headers["Authorization"] = "Basic " + base64.b64encode(basic.encode()).decode()
    if base.startswith("unix:"):
        conn: http.client.HTTPConnection = _UnixConnection(base[5:], timeout)
    else:
        host, port = base.removeprefix("http://").rstrip("/").rsplit(":", 1)
        conn = http.client.HTTPConnection(host.strip("[]"), int(port), timeout=timeout)
    try:
        conn.request(method, path, headers=headers)
        response = conn.getresponse()
        return Reply(response.status, response.headers, response.read())
    finally:
        conn.close()


_LISTENING = re.compile(r"http: console and /metrics on (http://\S+?)/?$", re.MULTILINE)


def console_url(log: str) -> str | None:
    """The console's base URL from a runtime's log (it listens on port 0 in the tests)."""
    found = _LISTENING.search(log)
    return found.group(1).rstrip("/") if found else None


TOKEN = "s3cret-token-0123456789"  # noqa: S105 - the tests' own token


def token_file(directory: Path, token: str = TOKEN) -> Path:
    path = directory / "http.token"
    path.write_text(token + "\n")
    path.chmod(0o600)
    return path


def start_with_console(start_runtime: Callable[..., RuntimeProc], directory: Path,
                       agents: str, wait: Sequence[str],
                       http: str = '[http]\nlisten = "127.0.0.1:0"\n',
                       command: list[str] | None = None,
                       timeout: float = 20.0) -> tuple[RuntimeProc, str]:
    """Start `outpost run` (the `start_runtime` fixture), wait for the agents in `wait`
    and for the console; returns the runtime and the console's base URL."""
    rt = start_runtime(write_config(directory, agents, http), command)
    for name in wait:
        rt.wait_running(name, timeout=timeout)
    url = wait_for(lambda: console_url(rt.log()), timeout, "the console's address in the log")
    return rt, url.replace("0.0.0.0", "127.0.0.1")  # noqa: S104 - reach a wildcard listen
