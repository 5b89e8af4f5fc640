"""A real nats-server with JetStream for the tests: installed from Debian when missing,
started on free ports with a temporary store dir, killed -9 and restarted at will."""

from __future__ import annotations

import contextlib
import http.client
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

PACKAGE = "nats-server"
_installed: str | None = None
_why_not: str | None = None


def _find() -> str | None:
    return shutil.which("nats-server") or next(
        (p for p in ("/usr/sbin/nats-server", "/usr/bin/nats-server") if os.access(p, os.X_OK)),
        None)


def ensure_nats_server() -> tuple[str | None, str | None]:
    """(path, None) if nats-server is usable, else (None, why not). Installs Debian's
    package when missing (apt-get update once, as root)."""
    global _installed, _why_not
    if _installed or _why_not:
        return _installed, _why_not
    found = _find()
    if found is None:
        if os.geteuid() != 0:
            _why_not = f"{PACKAGE} is not installed and we are not root to apt-get install it"
            return None, _why_not
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", PACKAGE]):
            done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False,
                                  timeout=600)
            if done.returncode != 0:
                _why_not = f"{' '.join(cmd)} failed: {done.stderr.strip()[-300:]}"
                return None, _why_not
        found = _find()
        if found is None:
            _why_not = f"{PACKAGE} still missing after apt-get install"
            return None, _why_not
    _installed = found
    return found, None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class NatsServer:
    """`nats-server -js -a 127.0.0.1 -p PORT -m MPORT -sd DIR`; the same ports and store
    dir across restarts, so clients reconnect to it and JetStream keeps its data."""

    def __init__(self, binary: str, store_dir: Path, *, port: int | None = None,
                 extra: list[str] | None = None) -> None:
        self.binary = binary
        self.store_dir = store_dir
        self.port = port or free_port()
        self.monitor_port = free_port()
        self.extra = extra or []
        self.proc: subprocess.Popen | None = None
        self.log = store_dir.parent / f"nats-{self.port}.log"

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> NatsServer:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log, "ab")  # noqa: SIM115 - the child owns it
        self.proc = subprocess.Popen(
            [self.binary, "-js", "-a", "127.0.0.1", "-p", str(self.port),
             "-m", str(self.monitor_port), "-sd", str(self.store_dir), *self.extra],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float) -> None:
        """Until /healthz says JetStream is up (the server answers only when it is)."""
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"nats-server exited with {self.proc.returncode}: "
                                   + self.log.read_text()[-2000:])
            with contextlib.suppress(OSError, http.client.HTTPException):
                conn = http.client.HTTPConnection("127.0.0.1", self.monitor_port, timeout=2)
                conn.request("GET", "/healthz?js-enabled-only=true")
                if conn.getresponse().status == 200:
                    return
            if time.monotonic() > deadline:
                raise TimeoutError(f"nats-server not ready after {timeout} s: "
                                   + self.log.read_text()[-2000:])
            time.sleep(0.05)

    def kill9(self) -> None:
        """SIGKILL, and reap: the server is gone, whatever it was doing."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)
        self.proc = None

    def restart(self) -> None:
        self.kill9()
        self.start()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill9()
        self.proc = None
