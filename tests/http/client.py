"""A small blocking HTTP client for the tests (stdlib http.client, TCP or a Unix socket)."""

from __future__ import annotations

import base64
import http.client
import re
import socket
from dataclasses import dataclass
from pathlib import Path


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
