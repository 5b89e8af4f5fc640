"""Helpers to run a real `outpost run` process from source and talk to it like a user."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from runtime.config import load_config
from runtime.control import ControlClient, NotRunningError

ROOT = Path(__file__).resolve().parent.parent
FIXTURE_AGENTS = ROOT / "tests" / "fixtures" / "agents"


def write_config(directory: Path, agents: str, extra: str = "") -> Path:
    """Write an outpost.toml into `directory` with data/run dirs inside it.

    The console listens on a port of its own (0: the kernel picks one) unless `extra`
    says otherwise, so runtimes started side by side never contend for the default.
    """
    path = directory / "outpost.toml"
    http = "" if "[http]" in extra else '[http]\nlisten = "127.0.0.1:0"\n'
    path.write_text(
        '[runtime]\ndata_dir = "data"\nrun_dir = "run"\nlog_level = "info"\n'
        'shutdown_timeout_s = 10\n' + http + extra + "\n" + agents)
    return path


def agent_block(name: str, entry: str, **keys: object) -> str:
    lines = [f'[[agents]]\nname = "{name}"\nentry = "{entry}"']
    for key, value in keys.items():
        lines.append(f"{key} = {value!r}" if not isinstance(value, str) else f'{key} = "{value}"')
    return "\n".join(lines) + "\n"


def wait_for(condition, timeout: float = 20.0, what: str = "condition"):
    """Poll `condition()` until truthy (returning it) or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


class RuntimeProc:
    """One `outpost run` subprocess (from source, or a binary via `command`)."""

    def __init__(self, config: Path, command: list[str] | None = None) -> None:
        self.config = config
        self.command = command or [sys.executable, "-m", "runtime"]
        loaded = load_config(config)
        self.socket = loaded.socket_path
        self.segment = loaded.segment_path
        self.log_path = config.parent / "runtime.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> RuntimeProc:
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child owns it for its lifetime
        self.proc = subprocess.Popen(
            [*self.command, "run", "--config", str(self.config)],
            stdout=log, stderr=subprocess.STDOUT, cwd=self.config.parent,
            env={**os.environ, "PYTHONUNBUFFERED": "1"})
        log.close()
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def client(self) -> ControlClient:
        return ControlClient(self.socket)

    def try_status(self) -> dict | None:
        try:
            with self.client() as c:
                return c.call("status")
        except (NotRunningError, OSError):
            return None

    def wait_running(self, agent: str, timeout: float = 20.0) -> dict:
        """Wait until `agent` is running; returns the status result."""
        def ready():
            if self.proc.poll() is not None:
                raise AssertionError(f"runtime exited {self.proc.returncode}:\n{self.log()}")
            st = self.try_status()
            if st and any(a["name"] == agent and a["state"] == "running" for a in st["agents"]):
                return st
            return None
        return wait_for(ready, timeout, f"agent {agent} running")

    def cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run([*self.command, *args, "--config", str(self.config)],
                              capture_output=True, text=True, timeout=timeout,
                              cwd=self.config.parent)

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def terminate(self, timeout: float = 30) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def cleanup(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
